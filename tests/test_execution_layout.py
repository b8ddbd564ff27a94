"""The generator's fast execution: channels-last convolutions are RVC's numbers; reduced precision is planned
per device and stays close.

References: RVC's own decoder output in the tiny fixture (computed by the original RVC code) and the same
weights run the plain way (weight-norm hooks, ``[B, C, T]`` layout), as RVC runs them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rvc_lora.infer.precision import plan_execution
from rvc_lora.lora import LoRAConfig, LoRAConv1d, LoRAConvTranspose1d, fold_all_weight_norm
from rvc_lora.models import Synthesizer, build_synthesizer
from rvc_lora.models.configs import tiny_config
from rvc_lora.models.layout import apply_conv, from_nwc, restride_conv_weights, to_nwc
from rvc_lora.models.modules import weight_norm
from rvc_lora.utils import RVCLoraError
from tests.conftest import FIXTURE_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

# "exact" = within 1e-5 of the plain path, relative to the output's peak. Measured: 1.2e-6 on the full-size
# v2 40k decoder (1 s of audio), 1.4e-6 on the tiny fixture, 2.2e-6 for the tiny no-f0 ResBlock2 generator.
EXACT = 1e-5


def _fixture_model() -> Synthesizer:
    ckpt = torch.load(FIXTURE_DIR / "model.pth", map_location="cpu", weights_only=True)
    net = Synthesizer(ckpt["config"], ckpt["version"], bool(ckpt["f0"]))
    del net.enc_q
    net.load_state_dict(ckpt["weight"], strict=True)
    return net.float().eval()


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE_DIR / "expected.pt", map_location="cpu", weights_only=True)


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_channels_last_decoder_reproduces_rvcs_output_and_the_plain_path(expected: dict) -> None:
    plain = _fixture_model()  # weight-norm hooks, [B, C, T]: RVC's way
    fast = _fixture_model()
    fold_all_weight_norm(fast.dec)
    fast.dec.set_execution(channels_last=True)
    args = (expected["z"], expected["nsff0"])
    noise = expected["dec_noise_seeded_1234"]
    with torch.inference_mode():
        want = plain.dec(*args, g=expected["g"], noise=noise)
        got = fast.dec(*args, g=expected["g"], noise=noise)
    assert got.shape == want.shape and got.is_contiguous()
    assert _relative(got, want) < EXACT  # measured 1.4e-6
    torch.testing.assert_close(got, expected["dec_out_seeded_1234"], atol=1e-5, rtol=1e-4)  # RVC's own output


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_channels_last_matches_plain_for_the_no_f0_generator_and_both_resblocks(resblock: str) -> None:
    config = tiny_config()
    config[9] = resblock
    torch.manual_seed(0)
    plain = build_synthesizer("v2", 40000, f0=False, config=config).eval()
    fast = build_synthesizer("v2", 40000, f0=False, config=config).eval()
    fast.load_state_dict(plain.state_dict())
    fold_all_weight_norm(fast.dec)
    fast.dec.set_execution(channels_last=True)
    z, g = torch.randn(2, 16, 30), torch.randn(2, 16, 1)
    with torch.inference_mode():
        want, got = plain.dec(z, g=g), fast.dec(z, g=g)
    assert got.shape == want.shape == (2, 1, 30 * 400)
    assert _relative(got, want) < EXACT  # measured 4.9e-7 (ResBlock1), 2.2e-6 (ResBlock2)


def test_modules_that_cannot_run_channels_last_fall_back_to_their_own_forward() -> None:
    """Weight-norm hooks (unfolded) and wrapped layers give the same result through the fallback."""
    torch.manual_seed(1)
    plain = weight_norm(nn.Conv1d(4, 6, 5, padding=2))
    x = torch.randn(1, 4, 50)
    with torch.no_grad():
        want = plain(x)
        got = from_nwc(apply_conv(plain, to_nwc(x)))
        reflect = nn.Conv1d(4, 6, 5, padding=2, padding_mode="reflect")
        got_reflect = from_nwc(apply_conv(reflect, to_nwc(x)))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_reflect, reflect(x))


@pytest.mark.parametrize("state", ["merged", "live", "bypass"])
def test_adapter_layers_run_channels_last_when_merged_or_rebuilt_and_fall_back_in_bypass_mode(state: str) -> None:
    """Merged and live (rebuilt) adapters run as the 2-D convolution, the wrapper not called as a module (a
    wrapper that fell back cost conversion 1.25x); bypass mode needs its branch and falls back. Same values."""
    torch.manual_seed(2)
    for base, wrapper in ((nn.Conv1d(8, 6, 5, padding=4, dilation=2), LoRAConv1d),
                          (nn.ConvTranspose1d(8, 6, 16, 10, padding=3), LoRAConvTranspose1d)):
        x = torch.randn(1, 8, 40)
        with torch.no_grad():
            unadapted = base(x)
        layer = wrapper(base)
        layer.add_adapter("a", LoRAConfig(rank=2, alpha=2))
        with torch.no_grad():
            for p in layer.adapters["a"].parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        restride_conv_weights(layer)
        if state == "merged":
            layer.merge()
        layer.forward_mode = "bypass" if state == "bypass" else "auto"
        calls: list[int] = []
        layer.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        with torch.no_grad():
            want = layer(x)
            got = from_nwc(apply_conv(layer, to_nwc(x)))
        assert len(calls) == (2 if state == "bypass" else 1), type(base).__name__
        assert _relative(got, want) < EXACT, type(base).__name__
        assert _relative(want, unadapted) > 1e-2  # the adapter changes the output


def test_restrided_weights_keep_their_values_and_layout_through_in_place_writes() -> None:
    """Adapter merging writes weights in place (``torch.add(out=)``, ``copy_``): the channels-last memory stays."""
    conv = nn.ConvTranspose1d(8, 4, 16, 10, padding=3)
    before = conv.weight.detach().clone()
    assert restride_conv_weights(conv) == 1
    torch.testing.assert_close(conv.weight, before, rtol=0, atol=0)
    with torch.no_grad():
        torch.add(before, torch.ones_like(before), alpha=0.5, out=conv.weight)
    assert conv.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.weight, before + 0.5, rtol=0, atol=0)


def test_reduced_stages_change_only_a_little_and_the_full_rate_stage_matters_most(expected: dict) -> None:
    model = _fixture_model()
    fold_all_weight_norm(model.dec)
    args = (expected["z"], expected["nsff0"])
    kwargs = {"g": expected["g"], "noise": expected["dec_noise_seeded_1234"]}
    outs = {}
    for stages in (0, 3, 4):
        model.dec.set_execution(channels_last=True, reduced_stages=stages)
        with torch.inference_mode():
            outs[stages] = model.dec(*args, **kwargs)
    assert outs[0].dtype == outs[3].dtype == outs[4].dtype == torch.float32
    mixed, bf16 = _relative(outs[3], outs[0]), _relative(outs[4], outs[0])
    assert 0 < mixed < 0.05 and 0 < bf16 < 0.1  # measured 0.017 and 0.031 (bf16 keeps ~3 significant digits)
    assert mixed < bf16
    with pytest.raises(ValueError, match="reduced_stages"):
        model.dec.set_execution(reduced_stages=5)


def test_precision_plans_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = plan_execution("auto", cpu, 4)
    assert (auto.precision, auto.dtype, auto.channels_last, auto.note) == ("fp32", torch.float32, True, None)
    assert plan_execution("fp32", cpu, 4, layout="default").channels_last is False
    mixed = plan_execution("mixed", cpu, 4, native_bf16=True)
    assert (mixed.reduced_stages, mixed.reduced_dtype, mixed.note) == (3, torch.bfloat16, None)
    emulated = plan_execution("bf16", cpu, 4, native_bf16=False)
    assert emulated.reduced_stages == 4 and "emulated" in emulated.note
    with pytest.raises(RVCLoraError, match="fp16 needs a CUDA"):
        plan_execution("fp16", cpu, 4)
    with pytest.raises(RVCLoraError, match="unknown precision"):
        plan_execution("int8", cpu, 4)
    gpu = plan_execution("auto", cuda, 4)  # planning only: nothing runs on the device
    assert (gpu.precision, gpu.dtype, gpu.channels_last) == ("fp16", torch.float16, False)
    assert plan_execution("mixed", cuda, 4).reduced_dtype == torch.float16


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    from rvc_lora.demo.random_hubert import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert.pt", size="tiny", embed_dim=768)


def test_converter_precisions_on_cpu(fixture_model_path, tiny_hubert, monkeypatch) -> None:
    """fp32 channels-last converts like the default layout; mixed is close; fp16 is refused on CPU; emulated bf16
    is announced."""
    import numpy as np

    from rvc_lora.infer import Converter, PipelineConstants
    from rvc_lora.infer import precision as precision_module

    fast = PipelineConstants(x_pad=0.2, x_query=0.3, x_center=1.0, x_max=10.0)
    t = np.arange(12000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)

    def convert(**kwargs) -> tuple[np.ndarray, Converter]:
        conv = Converter(fixture_model_path, tiny_hubert, device="cpu", f0_method="pm", constants=fast, **kwargs)
        return conv.convert(audio, 16000, seed=0)[0], conv

    default, _ = convert(layout="default")
    fp32, conv = convert()
    assert conv.synth.dec.channels_last and conv.note is None
    assert float(np.abs(fp32 - default).max() / np.abs(default).max()) < EXACT  # measured 2.0e-6
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    mixed, conv = convert(precision="mixed")
    assert "emulated" in conv.note and conv.synth.dec.reduced_stages == 3
    relative = float(np.abs(mixed - fp32).max() / np.abs(fp32).max())
    assert 0 < relative < 0.05  # measured 0.018
    with pytest.raises(RVCLoraError, match="fp16 needs a CUDA"):
        convert(precision="fp16")
