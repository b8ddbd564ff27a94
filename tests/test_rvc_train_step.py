"""RVC's training, proven against the original code: one full fine-tune step and one dataset item.

The reference (tests/fixtures/rvc_train_step, a copy of the project's shared fixture; see its README) was
computed by RVC's own train.py step on CPU in float32: a tiny v2 generator (``G_init.pth``) and the
full-size v2 discriminator with weights given by a formula, with ``randn`` -> 0 and ``rand`` -> 0.5 during
the step. The full-size discriminator is the expensive part, so the step runs once for the module.

Measured on this machine (2-core Xeon, torch 2.14.1; the reference came from another CPU): every loss and
gradient norm within 1.2e-5 relative (loss_gen); the whole generator gradient within 3.5e-5 relative. Per
tensor, gradients agree within 2.2e-4 relative: that is float32 noise of the full-size discriminator's
backward, not a difference of method — the same step in float64 is 3.3e-4 from the float32 reference on the
same tensors (dec.resblocks.8.convs2.0.bias). Tolerances below are at least 2x those figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from rvc_lora.checkpoint import load_rvc
from rvc_lora.config import CONF_DIR
from rvc_lora.data.experiment import ExperimentLayout
from rvc_lora.models import mel_settings
from rvc_lora.train.dataset import PieceDataset
from rvc_lora.train.setup import adamw_settings
from rvc_lora.train.step import StepModels, StepSettings, train_step
from tests.rvc_step_reference import FIXTURE, formula_discriminator, rel, rvc_noise_convention

# Relative tolerances (measured value in the comment).
LOSS_RTOL = 1e-4  # losses, per-sub-discriminator terms, gradient norms: max 1.2e-5 (loss_gen)
GRAD_RTOL = 1e-4  # all generator gradients as one vector: 3.5e-5 (1 thread), 2.9e-5 (2 threads)
GRAD_TENSOR_RTOL = 1e-3  # each generator gradient tensor: 2.2e-4 (float64 math vs the reference: 3.3e-4)
AFTER_RTOL = 1e-4  # the generator after the AdamW step, as one vector: 7.5e-6
AFTER_TENSOR_RTOL = 2e-4  # each tensor after the step: 8.7e-5
Y_HAT_RTOL = 1e-6  # generator output: 1.0e-7
MEL_FAKE_RTOL = 3e-5  # log-mel of the generated audio: 8.8e-6 (log amplifies rounding of quiet bins)
D_GRAD_NORM_RTOL = 3e-2  # per discriminator tensor: 9.8e-3 (tensors with tiny gradients, norm ~1e-5)
D_DELTA_NORM_RTOL = 1e-2  # per discriminator tensor, norm of the change of its AdamW step: 1.7e-3 (float64: 4.1e-3)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE / "step.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def rvc_step(reference: dict) -> dict:
    return run_step_on_reference(reference)


def run_step_on_reference(reference: dict) -> dict:
    """Our step on the reference's models and batch: its output and the models' state after it."""
    synth = load_rvc(FIXTURE / "G_init.pth").model.train()
    disc = formula_discriminator().train()
    assert synth.segment_frames == 32
    optim = adamw_settings(OmegaConf.load(CONF_DIR / "optim" / "adamw.yaml"))  # the project's default optimiser
    optim_g = torch.optim.AdamW(synth.parameters(), **optim)
    optim_d = torch.optim.AdamW(disc.parameters(), **optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    settings = StepSettings(mel_settings("v2", 40000), segment_frames=32)
    g_before = {k: p.detach().clone() for k, p in synth.named_parameters()}
    d_before = {k: p.detach().clone() for k, p in disc.named_parameters()}
    with rvc_noise_convention():
        out = train_step(StepModels(synth, list(synth.parameters()), disc), [reference["inputs"]], optim_g,
                         optim_d, scaler, settings, update_d=True)
    assert out is not None
    return {
        "out": out,
        "g_grads": {k: p.grad.detach().clone() for k, p in synth.named_parameters()},
        "g_before": g_before,
        "g_after": {k: p.detach().clone() for k, p in synth.named_parameters()},
        "d_grad_norms": {k: torch.linalg.vector_norm(p.grad) for k, p in disc.named_parameters()},
        "d_delta_norms": {k: torch.linalg.vector_norm(p.detach() - d_before[k]) for k, p in disc.named_parameters()},
        "optim": optim,
    }


def test_step_slices_the_same_segments_and_generates_the_same_audio(rvc_step, reference):
    expected, t = reference["expected"], rvc_step["out"].tensors
    assert torch.equal(t.ids_slice, expected["ids_slice"])
    assert torch.equal(t.wave_real, expected["wave_seg"])
    torch.testing.assert_close(t.mel_real, expected["y_mel"], rtol=1e-6, atol=1e-6)  # same ops (measured 0)
    assert rel(t.wave_hat, expected["y_hat"]) < Y_HAT_RTOL
    assert rel(t.mel_fake, expected["y_hat_mel"]) < MEL_FAKE_RTOL


def test_step_losses_and_gradient_norms_are_rvcs(rvc_step, reference):
    expected, out = reference["expected"], rvc_step["out"]
    s = out.scalars
    pairs = {"loss_disc": s["loss/d/total"], "loss_mel": s["loss/g/mel"], "loss_kl": s["loss/g/kl"],
             "loss_fm": s["loss/g/fm"], "loss_gen": s["loss/g/adv"], "loss_gen_all": s["loss/g/total"],
             "grad_norm_d": s["grad_norm/d"], "grad_norm_g": s["grad_norm/adapter"]}
    for name, got in pairs.items():
        want = float(expected[name])
        assert abs(got - want) <= LOSS_RTOL * abs(want), (name, got, want)
    for ours, theirs in ((out.d_real, expected["losses_disc_r"]), (out.d_fake, expected["losses_disc_g"])):
        assert len(ours) == len(theirs) == 9  # the scale discriminator and periods 2 ... 37
        torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), theirs.double(), rtol=LOSS_RTOL, atol=0)


def test_step_gives_every_generator_gradient_of_rvc(rvc_step, reference):
    want, got = reference["expected"]["g_grads"], rvc_step["g_grads"]
    assert set(got) == set(want) and len(want) == 488  # every parameter, enc_q included (full fine-tune)
    total = torch.sqrt(sum(torch.linalg.vector_norm(w.double()) ** 2 for w in want.values()))
    error = torch.sqrt(sum(torch.linalg.vector_norm(got[k].double() - w.double()) ** 2 for k, w in want.items()))
    assert float(error / total) < GRAD_RTOL
    for key, w in want.items():
        if key.endswith("conv_k.bias"):
            # Adding a constant to every key of a query shifts all its logits alike: softmax ignores it, so
            # the exact gradient is 0 and both sides hold rounding noise only.
            assert float(got[key].abs().max()) < 1e-6 * float(total)
            assert float(w.abs().max()) < 1e-6 * float(total)
            continue
        assert rel(got[key], w) < GRAD_TENSOR_RTOL, key


def test_step_leaves_the_generator_of_rvc_after_one_adamw_step(rvc_step, reference):
    want, got, before = reference["expected"]["g_after"], rvc_step["g_after"], rvc_step["g_before"]
    total = torch.sqrt(sum(torch.linalg.vector_norm(w.double()) ** 2 for w in want.values()))
    error = torch.sqrt(sum(torch.linalg.vector_norm(got[k].double() - w.double()) ** 2 for k, w in want.items()))
    assert float(error / total) < AFTER_RTOL
    for key, w in want.items():
        if not key.endswith("conv_k.bias"):  # its update is the sign of rounding noise (see above)
            assert rel(got[key], w) < AFTER_TENSOR_RTOL, key
    # The optimiser settings alone: our AdamW applied to RVC's own gradients gives RVC's weights.
    params = {k: torch.nn.Parameter(v.clone()) for k, v in before.items()}
    optim = torch.optim.AdamW(params.values(), **rvc_step["optim"])
    for key, p in params.items():
        p.grad = reference["expected"]["g_grads"][key].clone()
    optim.step()
    for key, p in params.items():
        torch.testing.assert_close(p.detach(), want[key], rtol=2e-7, atol=1e-9)  # float32 rounding only


def test_step_updates_the_discriminator_like_rvc(rvc_step, reference):
    expected = reference["expected"]
    for key, want in expected["d_grad_norms"].items():
        got = rvc_step["d_grad_norms"][key]
        assert abs(float(got) / float(want) - 1) < D_GRAD_NORM_RTOL, key
    for key, want in expected["d_delta_norms"].items():
        got = rvc_step["d_delta_norms"][key]
        assert abs(float(got) / float(want) - 1) < D_DELTA_NORM_RTOL, key


def test_dataset_item_is_rvcs_loader_output(tmp_path):
    """The spectrogram covers the whole piece before trimming; features are repeated x2; all lengths are
    trimmed to min(feature frames, spectrogram frames)."""
    ref = torch.load(FIXTURE / "dataset_item.pt", map_location="cpu", weights_only=True)
    inputs, expected = ref["inputs"], ref["expected"]
    layout = ExperimentLayout(tmp_path, "v2")
    layout.make_dirs()
    sf.write(layout.gt_wav("0_0"), inputs["audio"].numpy(), 40000, subtype="FLOAT")
    np.save(layout.feature("0_0"), inputs["features_50hz"].numpy())
    np.save(layout.f0_coarse("0_0"), inputs["f0_coarse"].numpy())
    np.save(layout.f0_hz("0_0"), inputs["f0_hz"].numpy().astype(np.float64))
    item = PieceDataset(layout, ["0_0"], mel_settings("v2", 40000), True, int(inputs["speaker"]))[0]
    assert item["spec"].shape == expected["spec"].shape == (1025, 45)
    # The same STFT on the same samples (measured: bit-identical here); a float32 ulp of slack for other CPUs.
    torch.testing.assert_close(item["spec"], expected["spec"], rtol=1e-6, atol=0)
    assert torch.equal(item["wave"], expected["wave"][0])
    assert torch.equal(item["phone"], expected["phone"])
    assert torch.equal(item["pitch"], expected["pitch"]) and torch.equal(item["pitchf"], expected["pitchf"])
    assert int(item["sid"]) == int(expected["sid"][0])
