"""RVC checkpoint interop: every file format loads strictly; save_rvc writes RVC's format exactly."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from rvc_lora.checkpoint import load_rvc, rvc_state_dict, save_pretrained, save_rvc
from rvc_lora.cli import main
from rvc_lora.models import build_discriminator, build_synthesizer, shipped_config
from rvc_lora.models.configs import tiny_config
from rvc_lora.utils import RVCLoraError

# rvc_reference.md section 2: keys without enc_q per variant.
KEYS_WITHOUT_ENC_Q = {
    ("v1", 32000, True): 516, ("v1", 32000, False): 503,
    ("v1", 40000, True): 457, ("v1", 40000, False): 446,
    ("v1", 48000, True): 516, ("v1", 48000, False): 503,
    ("v2", 32000, True): 457, ("v2", 32000, False): 446,
    ("v2", 40000, True): 457, ("v2", 40000, False): 446,
    ("v2", 48000, True): 457, ("v2", 48000, False): 446,
}


def _tiny(f0: bool = True, version: str = "v2", seed: int = 0):
    torch.manual_seed(seed)
    return build_synthesizer(config=tiny_config(), version=version, f0=f0).eval()


def _materialized(version: str, sr: int, f0: bool):
    with torch.device("meta"):
        model = build_synthesizer(version=version, sample_rate=sr, f0=f0)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    return model


def test_fixture_loads_strictly_with_its_metadata(fixture_model_path: Path):
    ckpt = load_rvc(fixture_model_path)
    assert ckpt.format == "small" and ckpt.kind == "generator"
    assert (ckpt.version, ckpt.sample_rate, ckpt.f0) == ("v2", 40000, True)
    assert ckpt.dtype == torch.float16
    assert ckpt.n_speakers == 4 and ckpt.info == "1epoch"
    assert not hasattr(ckpt.model, "enc_q")


def test_save_rvc_round_trip_reproduces_fixture_file_exactly(fixture_model_path: Path, tmp_path: Path):
    original = torch.load(fixture_model_path, map_location="cpu", weights_only=True)
    ckpt = load_rvc(fixture_model_path)
    out = save_rvc(ckpt.model, tmp_path / "copy.pth", info="1epoch")
    written = torch.load(out, map_location="cpu", weights_only=True)
    assert list(written) == ["weight", "config", "info", "sr", "f0", "version"]
    assert written["config"] == original["config"]
    assert (written["sr"], written["f0"], written["version"]) == ("40k", 1, "v2")
    assert list(written["weight"]) == list(original["weight"])
    for key, value in original["weight"].items():
        assert written["weight"][key].dtype == torch.float16
        assert torch.equal(written["weight"][key], value), key


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("sr", [32000, 40000, 48000])
@pytest.mark.parametrize("f0", [True, False])
def test_save_rvc_full_size_variants_have_rvcs_key_set(version: str, sr: int, f0: bool, tmp_path: Path):
    model = _materialized(version, sr, f0)
    path = save_rvc(model, tmp_path / "m.pth")
    written = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(written, OrderedDict)
    assert list(written) == ["weight", "config", "info", "sr", "f0", "version"]
    weight = written["weight"]
    assert len(weight) == KEYS_WITHOUT_ENC_Q[(version, sr, f0)]
    assert not any("enc_q" in k for k in weight)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    assert {k: v.shape for k, v in weight.items()} == expected
    assert all(v.dtype == torch.float16 for v in weight.values())
    config = shipped_config(version, sr)
    assert written["config"] == [config[0], 32, *config[2:-1], sr]
    assert written["sr"] == f"{sr // 1000}k" and written["f0"] == int(f0) and written["version"] == version
    assert ("dec.m_source.l_linear.weight" in weight) == f0


def test_save_rvc_resplits_plain_weights_into_g_and_v(fixture_model_path: Path, tmp_path: Path):
    model = load_rvc(fixture_model_path).model
    phone = torch.randn(1, 20, 768)
    args = (phone, torch.tensor([20]), torch.full((1, 20), 100), torch.full((1, 20), 220.0), torch.tensor([0]))
    torch.manual_seed(3)
    expected = model.infer(*args)[0]
    for module in model.dec.modules():  # fold every legacy weight norm into a plain weight
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)
    assert "dec.ups.0.weight" in model.state_dict()
    state = rvc_state_dict(model)
    assert "dec.ups.0.weight_g" in state and "dec.ups.0.weight" not in state
    reloaded = load_rvc(save_rvc(model, tmp_path / "plain.pth", dtype=torch.float32)).model
    torch.manual_seed(3)
    assert torch.allclose(reloaded.infer(*args)[0], expected, atol=1e-5)


def test_pretrained_base_layout_loads_strictly_and_infers_its_variant(tmp_path: Path):
    model = _materialized("v1", 48000, False)
    path = tmp_path / "G48k.pth"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, path)
    ckpt = load_rvc(path)
    assert ckpt.format == "pretrained"
    assert (ckpt.version, ckpt.sample_rate, ckpt.f0) == ("v1", 48000, False)
    assert hasattr(ckpt.model, "enc_q")


def test_training_checkpoints_and_discriminators_load(tmp_path: Path):
    model = _tiny()
    torch.save({"model": model.state_dict(), "iteration": 3, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 1e-4, "config": tiny_config(), "version": "v2", "f0": 1},
               tmp_path / "G_100.pth")
    ckpt = load_rvc(tmp_path / "G_100.pth")
    assert ckpt.format == "training" and ckpt.extra["iteration"] == 3
    disc = build_discriminator("v2")
    torch.save({"model": {k: v.half() for k, v in disc.state_dict().items()}}, tmp_path / "f0D40k.pth")
    dckpt = load_rvc(tmp_path / "f0D40k.pth")
    assert dckpt.kind == "discriminator" and dckpt.version == "v2" and dckpt.discriminator is dckpt.model


def test_parametrization_style_and_applio_metadata_load(fixture_model_path: Path, tmp_path: Path):
    original = torch.load(fixture_model_path, map_location="cpu", weights_only=True)
    renamed = OrderedDict()
    for key, value in original["weight"].items():
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
        renamed[key] = value
    applio = dict(original, weight=renamed, author="someone", model_hash="abc", speakers_id=0,
                  overtrain_info="none", dataset_length=12, embedder_model="contentvec")
    torch.save(applio, tmp_path / "applio.pth")
    ckpt = load_rvc(tmp_path / "applio.pth")
    assert ckpt.extra["author"] == "someone"
    reference = load_rvc(fixture_model_path).model.state_dict()
    for key, value in ckpt.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_runs_code_is_refused_and_not_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(RVCLoraError, match="refused"):
        load_rvc(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_give_one_line_errors(fixture_model_path: Path, tmp_path: Path):
    data = fixture_model_path.read_bytes()
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RVCLoraError) as err:
        load_rvc(truncated)
    assert str(truncated) in str(err.value) and "\n" not in str(err.value)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(RVCLoraError, match="notes.pth"):
        load_rvc(text)
    html = tmp_path / "download.pth"  # e.g. an HTML error page saved instead of the model
    html.write_text("<html><body>rate limited</body></html>")
    with pytest.raises(RVCLoraError) as err:
        load_rvc(html)
    assert "not a PyTorch checkpoint" in str(err.value) and "refused" not in str(err.value)
    with pytest.raises(RVCLoraError, match="not found"):
        load_rvc(tmp_path / "missing.pth")
    torch.save({"foo": 1}, tmp_path / "foreign.pth")
    with pytest.raises(RVCLoraError, match="not an RVC checkpoint"):
        load_rvc(tmp_path / "foreign.pth")


def test_wrong_missing_and_extra_keys_are_named(fixture_model_path: Path, tmp_path: Path):
    original = torch.load(fixture_model_path, map_location="cpu", weights_only=True)
    weight = dict(original["weight"])
    weight.pop("dec.conv_post.weight")
    weight["dec.ups.0.lora_up.weight"] = torch.zeros(3)
    torch.save(dict(original, weight=weight), tmp_path / "bad.pth")
    with pytest.raises(RVCLoraError) as err:
        load_rvc(tmp_path / "bad.pth")
    assert "dec.conv_post.weight" in str(err.value) and "lora_up" in str(err.value)
    partial = load_rvc(tmp_path / "bad.pth", strict=False)
    assert partial.missing_keys == ["dec.conv_post.weight"]
    assert partial.unexpected_keys == ["dec.ups.0.lora_up.weight"]
    weight = dict(original["weight"])
    weight["dec.conv_pre.bias"] = torch.zeros(5, dtype=torch.float16)
    torch.save(dict(original, weight=weight), tmp_path / "shape.pth")
    with pytest.raises(RVCLoraError, match=r"dec\.conv_pre\.bias"):
        load_rvc(tmp_path / "shape.pth", strict=False)


def test_save_pretrained_round_trip_for_non_shipped_config(tmp_path: Path):
    model = _tiny(seed=1)
    path = save_pretrained(model, tmp_path / "base.pth", config=tiny_config(), version="v2", f0=1)
    ckpt = load_rvc(path)
    assert ckpt.format == "pretrained" and hasattr(ckpt.model, "enc_q")
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value.half().float()), key


def test_inspect_command_describes_a_model(fixture_model_path: Path, capsys):
    assert main(["inspect", str(fixture_model_path)]) == 0
    out = capsys.readouterr().out
    for text in ("small", "v2", "40000", "float16", "enc_p", "dec", "flow", "emb_g", "speakers:    4"):
        assert text in out


def test_cli_reports_bad_file_without_traceback(tmp_path: Path, capsys):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"\x00" * 10)
    assert main(["inspect", str(bad)]) == 2
    assert "x.pth" in capsys.readouterr().err


def test_narrow_discriminator_round_trips_through_pretrained_layout(tmp_path: Path):
    disc = build_discriminator("v1", divisor=16)
    assert sum(p.numel() for p in disc.parameters()) < 300_000  # RVC's v1 discriminator has 54.97M
    path = save_pretrained(disc, tmp_path / "D.pth", dtype=torch.float32)
    loaded = load_rvc(path)
    assert loaded.kind == "discriminator" and loaded.model.divisor == 16
    for key, value in disc.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
