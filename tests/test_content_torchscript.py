"""TorchScript content encoders: the contract (frames, width), detection, and use by prepare and convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import harmonic_tone, silence
from torch import nn

from rvc_lora.checkpoint import save_rvc
from rvc_lora.config import load_config
from rvc_lora.data.experiment import ExperimentLayout, read_info, read_manifest
from rvc_lora.demo.random_hubert import make_random_checkpoint
from rvc_lora.features.content import ContentEncoder, load_content_model
from rvc_lora.features.content_torchscript import TorchScriptContentEncoder, is_torchscript_archive, rvc_frame_count
from rvc_lora.infer import Converter
from rvc_lora.infer.command import main as convert_main
from rvc_lora.models import build_synthesizer
from rvc_lora.models.configs import tiny_config
from rvc_lora.prepare import run_prepare
from rvc_lora.utils import RVCLoraError


class FrameEncoder(nn.Module):
    """400-sample windows every 320 samples, a linear map and tanh: [1, N] -> [(N - 400) // 320 + 1, dim]."""

    def __init__(self, dim: int = 256, hop: int = 320) -> None:
        super().__init__()
        self.hop = hop
        self.proj = nn.Linear(400, dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(audio[0].unfold(0, 400, self.hop)))


def script(path: Path, dim: int = 256, hop: int = 320, seed: int = 0) -> tuple[Path, FrameEncoder]:
    torch.manual_seed(seed)
    eager = FrameEncoder(dim, hop).eval()
    torch.jit.save(torch.jit.script(eager), str(path))
    return path, eager


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> tuple[Path, FrameEncoder]:
    return script(tmp_path_factory.mktemp("enc") / "enc.pt")


def test_scripted_encoder_is_detected_and_matches_the_eager_module(encoder_file, tmp_path):
    path, eager = encoder_file
    assert is_torchscript_archive(path)
    hubert = make_random_checkpoint(tmp_path / "hubert.pt", layout="fairseq", size="tiny")
    assert not is_torchscript_archive(hubert)  # a torch.save zip is not mistaken for TorchScript
    assert isinstance(load_content_model(hubert), ContentEncoder)
    enc = load_content_model(path)
    assert isinstance(enc, TorchScriptContentEncoder) and enc.feature_dim("v1") == 256
    audio = torch.randn(3, 16000 + 123, generator=torch.Generator().manual_seed(1)) * 0.1
    out = enc.encode(audio, "v1")
    assert out.shape == (3, rvc_frame_count(16123), 256) == (3, 50, 256)
    with torch.no_grad():
        expected = torch.stack([eager(row.unsqueeze(0)) for row in audio])
    torch.testing.assert_close(out, expected)  # scripting changes nothing (same ops, same order)


@pytest.mark.parametrize("samples", [399, 400, 719, 720, 16000, 48000])
def test_frame_count_is_hubert_s(samples):
    hubert_frames = (samples - 400) // 320 + 1 if samples >= 400 else 0  # 400-sample field, 320 stride
    assert rvc_frame_count(samples) == hubert_frames


def test_contract_violations_are_clear_errors(tmp_path, encoder_file):
    wide, _ = script(tmp_path / "wide.pt", dim=128)
    with pytest.raises(RVCLoraError, match=r"wide\.pt: gives 128-dim features, but RVC v1 models take 256"):
        load_content_model(wide).feature_dim("v1")
    path, _ = encoder_file
    with pytest.raises(RVCLoraError, match="768"):
        load_content_model(path).feature_dim("v2")
    fast, _ = script(tmp_path / "fast.pt", hop=160)  # 100 frames/s instead of 50
    with pytest.raises(RVCLoraError, match=r"fast\.pt: returned 98 frames for 16000 samples; RVC needs 49"):
        load_content_model(fast)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not an archive")
    with pytest.raises(RVCLoraError, match=r"junk\.pt: not a TorchScript archive"):
        load_content_model(junk, kind="torchscript")
    with pytest.raises(RVCLoraError, match="content.kind 'onnx' is unknown"):
        load_content_model(path, kind="onnx")


def _write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, f0 in enumerate((140.0, 190.0, 240.0)):
        wave = np.concatenate([harmonic_tone(f0, 4.0, 16000, amplitude=0.5), silence(0.8, 16000)] * 2)
        sf.write(folder / f"v{i}.wav", wave, 16000)


def test_prepare_uses_the_scripted_encoder(tmp_path, encoder_file):
    path, eager = encoder_file
    _write_inputs(tmp_path / "in")
    cfg = load_config(["model=tiny_v1", f"data.input_dir={tmp_path / 'in'}", f"data.experiment_dir={tmp_path / 'exp'}",
                       "data.name=ts", "pitch.method=dio", f"content.path={path}", "content.kind=torchscript",
                       "data.min_total_seconds=10", "data.num_workers=0", "data.progress=false"])
    run_prepare(cfg)
    info = read_info(tmp_path / "exp")
    assert info.version == "v1" and info.feature_dim == 256
    layout = ExperimentLayout(tmp_path / "exp", "v1")
    ok = [r for r in read_manifest(layout.manifest_path) if r.status == "ok"]
    assert len(ok) >= 4
    for row in ok[:3]:
        wav, _ = sf.read(layout.wav16k(row.name), dtype="float32")
        with torch.no_grad():
            expected = eager(torch.from_numpy(wav).unsqueeze(0)).numpy()
        np.testing.assert_allclose(np.load(layout.feature(row.name)), expected, rtol=0, atol=1e-6)


def test_convert_cli_takes_a_content_model(tmp_path, encoder_file):
    path, _ = encoder_file
    torch.manual_seed(0)
    model = save_rvc(build_synthesizer(config=tiny_config(), version="v1", f0=True), tmp_path / "v1.pth")
    wav = tmp_path / "in.wav"
    sf.write(wav, harmonic_tone(200.0, 1.0, 16000, amplitude=0.4), 16000)
    out = tmp_path / "out.wav"
    code = convert_main([str(wav), "--model", str(model), "--content-model", str(path), "--out", str(out),
                         "--f0-method", "pm", "--device", "cpu", "--seed", "0"])
    assert code == 0
    audio, sr = sf.read(out)
    assert sr == 40000 and abs(audio.shape[0] - 40000) <= 400 and np.isfinite(audio).all()
    converter = Converter(model, path, device="cpu", f0_method="pm")
    assert isinstance(converter.content, TorchScriptContentEncoder)
    wide, _ = script(tmp_path / "wide.pt", dim=768)
    with pytest.raises(RVCLoraError, match=r"wide\.pt: gives 768-dim features, but RVC v1 models take 256"):
        Converter(model, wide, device="cpu", f0_method="pm")
