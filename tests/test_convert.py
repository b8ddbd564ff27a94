"""Conversion: RVC pipeline semantics, the Converter (adapters, swaps, folding) and ``rvc-lora convert``."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from train_helpers import make_adapter

from rvc_lora.checkpoint import load_rvc
from rvc_lora.demo.random_hubert import make_random_checkpoint
from rvc_lora.infer import Converter, ConvertOptions, PipelineConstants
from rvc_lora.infer.command import main as convert_main
from rvc_lora.infer.pipeline import convert_audio, cut_points
from rvc_lora.merge import attach_adapters, merge_adapters
from rvc_lora.utils import RVCLoraError

SR = 16000
# Short padding keeps the tiny tests fast; x_max is above every test input unless windowing is wanted.
FAST = PipelineConstants(x_pad=0.2, x_query=0.3, x_center=1.0, x_max=10.0)


def speech_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A 220 Hz harmonic tone with a noise burst in the middle (voiced + unvoiced frames)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.3 * (np.sin(2 * np.pi * 220 * t) + 0.4 * np.sin(2 * np.pi * 440 * t))
    mid = slice(int(0.4 * n), int(0.55 * n))
    x[mid] = 0.05 * rng.standard_normal(x[mid].shape[0])
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    # Tiny layers but 768 wide: the fixture model is an RVC v2 model (768-dim content features).
    return make_random_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert.pt", size="tiny", embed_dim=768)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, fixture_model_path):
    folder = tmp_path_factory.mktemp("adapters")
    return make_adapter(fixture_model_path, folder / "a.safetensors", 1), \
        make_adapter(fixture_model_path, folder / "b.safetensors", 2)


@pytest.fixture(scope="module")
def conv(fixture_model_path, hubert):
    return Converter(fixture_model_path, hubert, device="cpu", f0_method="pm", constants=FAST)


def _spy(monkeypatch, converter):
    calls = []
    real = converter.synth.infer

    def infer(phone, lengths, pitch, nsff0, sid, *args, **kwargs):
        calls.append({"phone": phone.clone(), "nsff0": None if nsff0 is None else nsff0.clone()})
        return real(phone, lengths, pitch, nsff0, sid, *args, **kwargs)

    monkeypatch.setattr(converter.synth, "infer", infer)
    return calls


def test_output_length_matches_input_duration(conv):
    audio = speech_like(1.3, sr=22050)
    out, sr = conv.convert(audio, 22050, seed=0)
    assert sr == 40000 and out.dtype == np.float32
    assert abs(out.shape[0] - 1.3 * 40000) <= conv.synth.hop_length
    assert np.abs(out).max() <= 0.99 + 1e-6 and np.isfinite(out).all()
    out24, sr24 = conv.convert(audio, 22050, seed=0, sample_rate=24000)
    assert sr24 == 24000 and abs(out24.shape[0] - 1.3 * 24000) <= 240


def test_same_seed_same_output(conv):
    audio = speech_like(0.8)
    a, _ = conv.convert(audio, SR, seed=3)
    b, _ = conv.convert(audio, SR, seed=3)
    c, _ = conv.convert(audio, SR, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_twelve_semitones_double_the_f0_fed_to_the_source(conv, monkeypatch):
    calls = _spy(monkeypatch, conv)
    audio = speech_like(0.8)
    conv.convert(audio, SR, seed=0)
    conv.convert(audio, SR, seed=0, pitch=12)
    f0, f12 = calls[0]["nsff0"], calls[1]["nsff0"]
    assert (f0 > 0).sum() > 20
    torch.testing.assert_close(f12, f0 * 2.0, rtol=1e-5, atol=1e-4)


def test_f0_file_replaces_f0(conv, monkeypatch, tmp_path):
    curve = tmp_path / "curve.csv"
    curve.write_text("0.0,300\n0.5,300\n", encoding="utf-8")
    calls = _spy(monkeypatch, conv)
    conv.convert(speech_like(0.8), SR, seed=0, f0_curve=curve)
    nsff0 = calls[0]["nsff0"][0]
    start = FAST.pad_frames
    assert torch.all(nsff0[start:start + 51] == 300.0)
    assert not torch.all(nsff0[start + 60:] == 300.0)  # after the curve, extracted f0 again


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    from rvc_lora.data.index import save_index, train_index

    feats = np.random.default_rng(0).standard_normal((400, 768)).astype(np.float32)
    return save_index(train_index(feats), tmp_path_factory.mktemp("index"), "test", "v2")


def test_index_rate_zero_ignores_the_index(fixture_model_path, hubert, index_file, conv):
    with_index = Converter(fixture_model_path, hubert, device="cpu", f0_method="pm", constants=FAST,
                           index=index_file)
    audio = speech_like(0.8)
    plain, _ = conv.convert(audio, SR, seed=0)
    zero, _ = with_index.convert(audio, SR, seed=0, index_rate=0.0)
    used, _ = with_index.convert(audio, SR, seed=0, index_rate=0.75)
    assert np.array_equal(plain, zero)
    assert not np.allclose(plain, used)


def test_protect_only_touches_unvoiced_frames_and_half_disables_it(fixture_model_path, hubert, index_file,
                                                                   monkeypatch):
    converter = Converter(fixture_model_path, hubert, device="cpu", f0_method="pm", constants=FAST,
                          index=index_file)
    calls = _spy(monkeypatch, converter)
    audio = speech_like(0.8)
    for protect in (0.5, 0.9, 0.33):
        converter.convert(audio, SR, seed=0, protect=protect)
    off, off2, on = (c["phone"][0] for c in calls)
    assert torch.equal(off, off2)  # >= 0.5: features unchanged by protect
    voiced = calls[2]["nsff0"][0] >= 1
    assert (~voiced).sum() > 0
    assert torch.equal(on[voiced], off[voiced])
    assert not torch.allclose(on[~voiced], off[~voiced])


def test_speaker_id_is_validated(conv):
    with pytest.raises(RVCLoraError, match="4 speaker"):
        conv.convert(speech_like(0.5), SR, speaker_id=4)


def test_silent_input_is_rejected(conv):
    with pytest.raises(RVCLoraError, match="silent"):
        conv.convert(np.zeros(SR, dtype=np.float32), SR)


def test_folded_weights_match_the_weight_normed_model(conv, fixture_model_path):
    assert not any(k.endswith(("weight_g", "weight_v")) for k in conv.synth.state_dict())
    audio = np.asarray(speech_like(0.8), dtype=np.float32)
    opts = ConvertOptions(seed=0)
    with torch.inference_mode():
        folded, _ = convert_audio(conv._models(), audio, opts)
        models = conv._models()
        reference = load_rvc(fixture_model_path).model.eval()  # legacy weight-norm hooks, as RVC runs it
        models.synth = reference
        unfolded, _ = convert_audio(models, audio, opts)
    np.testing.assert_allclose(folded, unfolded, atol=1e-4 * np.abs(unfolded).max() + 1e-6)


def test_merged_adapter_equals_live_adapter_and_merged_file(fixture_model_path, hubert, adapters, tmp_path):
    a, _ = adapters
    audio = speech_like(0.8)
    merged = Converter(fixture_model_path, hubert, [f"{a}:0.8"], device="cpu", f0_method="pm", constants=FAST)
    out_merged, _ = merged.convert(audio, SR, seed=0)

    live = Converter(fixture_model_path, hubert, device="cpu", f0_method="pm", constants=FAST)
    plain, _ = live.convert(audio, SR, seed=0)
    attach_adapters(live.synth, [(a, 0.8)], force=True)  # unmerged LoRA wrappers on the folded base
    out_live, _ = live.convert(audio, SR, seed=0)
    peak = np.abs(out_live).max()
    assert np.abs(out_live - plain).max() > 1e-2 * peak  # the adapter matters
    np.testing.assert_allclose(out_merged, out_live, atol=1e-4 * peak)

    file = merge_adapters(fixture_model_path, [(a, 0.8)], tmp_path / "merged.pth")  # fp16 RVC model
    from_file = Converter(file, hubert, device="cpu", f0_method="pm", constants=FAST)
    out_file, _ = from_file.convert(audio, SR, seed=0)
    np.testing.assert_allclose(out_file, out_merged, atol=2e-2 * peak)


def test_adapter_swap_changes_output_and_swapping_back_restores_it(fixture_model_path, hubert, adapters, conv):
    a, b = adapters
    audio = speech_like(0.8)
    converter = Converter(fixture_model_path, hubert, [a], device="cpu", f0_method="pm", constants=FAST)
    out_a, _ = converter.convert(audio, SR, seed=0)
    converter.set_adapters([(b, 1.0)])
    out_b, _ = converter.convert(audio, SR, seed=0)
    converter.set_adapters([a])
    again, _ = converter.convert(audio, SR, seed=0)
    converter.set_strength(0, 0.0)  # strength 0 = the plain base weights
    zero, _ = converter.convert(audio, SR, seed=0)
    converter.set_adapters([])
    base, _ = converter.convert(audio, SR, seed=0)
    plain, _ = conv.convert(audio, SR, seed=0)
    assert not np.allclose(out_a, out_b)
    assert np.array_equal(out_a, again)
    assert np.array_equal(base, plain) and np.array_equal(zero, plain)
    with pytest.raises(RVCLoraError):
        converter.set_adapters([(a, 1.0), (a.with_name("missing.safetensors"), 1.0)])
    assert np.array_equal(converter.convert(audio, SR, seed=0)[0], plain)  # unchanged after the error


def test_cut_points_land_in_quiet_places():
    constants = PipelineConstants(x_pad=0.1, x_query=0.2, x_center=0.5, x_max=0.8)
    x = speech_like(1.6)
    x[int(0.42 * SR):int(0.46 * SR)] = 0.0
    x[int(1.1 * SR):int(1.13 * SR)] = 0.0
    points = cut_points(x, constants)
    assert len(points) == 3
    assert int(0.42 * SR) <= points[0] < int(0.46 * SR)
    assert int(1.1 * SR) <= points[1] < int(1.13 * SR)
    assert cut_points(x[: int(0.7 * SR)], constants) == []


def test_long_input_is_converted_in_windows(fixture_model_path, hubert, monkeypatch):
    constants = PipelineConstants(x_pad=0.1, x_query=0.2, x_center=0.5, x_max=0.8)
    converter = Converter(fixture_model_path, hubert, device="cpu", f0_method="pm", constants=constants)
    calls = _spy(monkeypatch, converter)
    out, sr = converter.convert(speech_like(1.6), SR, seed=0)
    assert len(calls) == 4
    assert abs(out.shape[0] - 1.6 * sr) <= converter.synth.hop_length
    assert np.isfinite(out).all() and np.abs(out).max() > 0


def test_cli_folder_with_bad_files(fixture_model_path, hubert, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "one.wav", speech_like(0.6, sr=22050), 22050)
    sf.write(src / "sub" / "two.flac", speech_like(0.5), SR)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x01\x02\x03not really a wave file" * 4)
    (src / "empty.wav").write_bytes(b"")
    sf.write(src / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    (src / "notes.txt").write_text("ignored", encoding="utf-8")
    out = tmp_path / "out"
    code = convert_main([str(src), "--model", str(fixture_model_path), "--hubert", str(hubert), "--out", str(out),
                         "--f0-method", "pm", "--format", "flac", "--seed", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    for name in ("corrupt.wav", "empty.wav", "silent.wav"):
        assert name in err
    assert "3 input(s) failed" in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["one.flac", "sub", "sub/two.flac"]
    data, sr = sf.read(out / "one.flac")
    assert sr == 40000 and abs(data.shape[0] - 0.6 * 40000) <= 400


def test_cli_single_file_and_missing_hubert(fixture_model_path, hubert, tmp_path, capsys, monkeypatch):
    wav = tmp_path / "in.wav"
    sf.write(wav, speech_like(0.5), SR)
    out = tmp_path / "x" / "out.wav"
    code = convert_main([str(wav), "--model", str(fixture_model_path), "--hubert", str(hubert), "--out", str(out),
                         "--f0-method", "pm", "--sample-rate", "16000", "--key", "3", "--device", "cpu"])
    assert code == 0
    info = sf.info(str(out))
    assert info.samplerate == 16000 and abs(info.frames - 8000) <= 160
    assert [p.name for p in out.parent.iterdir()] == ["out.wav"]  # no temp files left behind
    monkeypatch.setenv("RVC_LORA_HOME", str(tmp_path / "empty-home"))
    code = convert_main([str(wav), "--model", str(fixture_model_path), "--out", str(out)])
    assert code == 2
    assert "rvc-lora assets download hubert" in capsys.readouterr().err


def test_output_planning(tmp_path):
    from rvc_lora.infer.command import plan_jobs

    wav = tmp_path / "a.wav"
    sf.write(wav, speech_like(0.2), SR)
    jobs, missing, fmt = plan_jobs([str(wav)], str(tmp_path / "o.flac"), None)
    assert (jobs[0].target.name, fmt, missing) == ("o.flac", "flac", [])
    jobs, _, fmt = plan_jobs([str(wav)], str(tmp_path / "folder"), None)  # no suffix: a folder
    assert jobs[0].target == tmp_path / "folder" / "a.wav" and fmt == "wav"
    jobs, missing, _ = plan_jobs([str(wav), str(tmp_path / "nope.wav")], str(tmp_path / "o"), "flac")
    assert [j.target.name for j in jobs] == ["a.flac"] and missing[0][1] == "file not found"
    with pytest.raises(RVCLoraError, match="overwrite"):
        plan_jobs([str(wav)], str(wav), None)
    with pytest.raises(RVCLoraError, match="looks like a file name"):  # two inputs cannot go into one file
        plan_jobs([str(wav), str(wav)], str(tmp_path / "two.wav"), None)


def test_adapter_with_a_trained_speaker_row_converts_like_its_merged_file(fixture_model_path, hubert, adapters,
                                                                          tmp_path):
    from rvc_lora.lora import read_adapter, save_adapter

    a, _ = adapters
    source = read_adapter(a)
    tensors = dict(source.tensors)
    diff = torch.zeros_like(load_rvc(fixture_model_path).model.emb_g.weight)
    diff[0] = 0.5
    tensors["emb_g.diff"] = diff
    spk = save_adapter(tmp_path / "spk.safetensors", tensors, source.metadata, dtype="fp32")
    audio = speech_like(0.8)
    with_row = Converter(fixture_model_path, hubert, [spk], device="cpu", f0_method="pm", constants=FAST)
    without = Converter(fixture_model_path, hubert, [a], device="cpu", f0_method="pm", constants=FAST)
    out_row, _ = with_row.convert(audio, SR, seed=0)
    out_plain, _ = without.convert(audio, SR, seed=0)
    peak = np.abs(out_row).max()
    assert np.abs(out_row - out_plain).max() > 1e-3 * peak  # the speaker row matters
    merged = merge_adapters(fixture_model_path, [(spk, 1.0)], tmp_path / "m.pth", dtype="fp32")
    out_file, _ = Converter(merged, hubert, device="cpu", f0_method="pm", constants=FAST).convert(audio, SR, seed=0)
    np.testing.assert_allclose(out_file, out_row, atol=1e-3 * peak)
    with_row.set_adapters([])
    assert torch.equal(with_row.synth.emb_g.weight, without.synth.emb_g.weight)
