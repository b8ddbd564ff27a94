"""Streaming: the synthesizer's realtime slicing (skip_head / return_length / start phase) and the
StreamingConverter against the offline pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvc_lora.checkpoint import load_rvc
from rvc_lora.features.pitch import coarse_pitch
from rvc_lora.infer import Converter, ConvertOptions, PipelineConstants
from rvc_lora.infer.streaming import StreamingConverter, StreamSettings, stream_convert
from rvc_lora.utils import RVCLoraError

# Small models stream in small steps: one torch thread costs a third of the CPU time of two on a shared
# 2-core machine (the second thread mostly waits at every op's barrier).
pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000
# Padding (0.2 s) shorter than the test signals' leading silence, so the offline reflect padding is silent
# like the stream's start; x_max above every test input (one window).
CONSTANTS = PipelineConstants(x_pad=0.2, x_query=0.3, x_center=20.0, x_max=30.0)
DECODER_REACH = 12  # frames: the decoder's receptive field reaches about 8 frames (measured 8 on the fixture)


@pytest.fixture
def no_noise(monkeypatch):
    """Replace the synthesizer's Gaussian draws (prior sample, NSF noise) by zeros, in every code path."""
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: torch.zeros_like(x))


@pytest.fixture(scope="module")
def synth(fixture_model_path):
    return load_rvc(fixture_model_path).model.float().eval()


def _inputs(frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    phone = torch.randn(1, frames, 768, generator=gen)
    f0 = 180.0 + 60.0 * torch.linspace(0, 1, frames).unsqueeze(0)
    f0[:, frames // 4:frames // 4 + 8] = 0.0  # an unvoiced stretch
    pitch = torch.from_numpy(coarse_pitch(f0.numpy()))
    return phone, torch.tensor([frames]), pitch, f0, torch.tensor([0])


@pytest.mark.parametrize("head", [10, 50])  # below and above the flow's 24-frame context
def test_sliced_decode_equals_the_full_decode_away_from_the_slice_edges(synth, no_noise, head):
    phone, lengths, pitch, f0, sid = _inputs(120)
    length, hop = 40, synth.hop_length
    with torch.inference_mode():
        full, _, (z_full, *_) = synth.infer(phone, lengths, pitch, f0, sid)
        start = synth.dec.phase_advance(f0[:, :head])
        part, mask, (z_part, *_) = synth.infer(phone, lengths, pitch, f0, sid, skip_head=head, return_length=length,
                                               start_phase=start)
        unphased = synth.infer(phone, lengths, pitch, f0, sid, skip_head=head, return_length=length)[0]
    assert part.shape == (1, 1, length * hop) and mask.shape == (1, 1, length)
    # The flow sees its whole receptive field: its output on the kept frames is the full run's.
    torch.testing.assert_close(z_part, z_full[:, :, head:head + length], rtol=0, atol=1e-5)
    inner = slice(DECODER_REACH * hop, (length - DECODER_REACH) * hop)
    reference = full[0, 0, head * hop:(head + length) * hop]
    # measured max difference 1e-6 (fixture model, CPU)
    torch.testing.assert_close(part[0, 0, inner], reference[inner], rtol=0, atol=1e-5)
    # Without the start phase the sine restarts (RVC's realtime behaviour) and the waveform differs.
    assert float((unphased[0, 0, inner] - reference[inner]).abs().max()) > 1e-3


def test_skip_head_zero_over_all_frames_is_the_plain_infer(synth):
    phone, lengths, pitch, f0, sid = _inputs(60, seed=1)
    with torch.inference_mode():
        torch.manual_seed(5)
        plain = synth.infer(phone, lengths, pitch, f0, sid)[0]
        torch.manual_seed(5)
        sliced = synth.infer(phone, lengths, pitch, f0, sid, skip_head=0, return_length=60)[0]
    assert torch.equal(plain, sliced)


def test_text_encoder_skip_head_drops_frames_after_attending_over_all(synth):
    phone, lengths, pitch, _, _ = _inputs(50, seed=2)
    with torch.inference_mode():
        m, logs, mask = synth.enc_p(phone, pitch, lengths)
        m_s, logs_s, mask_s = synth.enc_p(phone, pitch, lengths, skip_head=20)
    torch.testing.assert_close(m_s, m[:, :, 20:], rtol=0, atol=1e-6)
    torch.testing.assert_close(logs_s, logs[:, :, 20:], rtol=0, atol=1e-6)
    assert mask_s.shape == (1, 1, 30)


def test_phase_advance_is_the_phase_the_sine_reaches(synth):
    sine = synth.dec.m_source.l_sin_gen
    f0 = torch.tensor([[0.0, 110.0, 220.0, 233.3, 0.0, 440.0]])
    phase = sine.phase(f0, synth.hop_length)  # [1, 6 * hop], the phase of every sample
    advance = synth.dec.phase_advance(f0)
    assert abs(float(phase[0, -1]) % 1.0 - float(advance[0])) < 1e-5


def test_slice_bounds_are_checked(synth):
    phone, lengths, pitch, f0, sid = _inputs(30)
    with pytest.raises(ValueError, match="within the 30 input frames"):
        synth.infer(phone, lengths, pitch, f0, sid, skip_head=20, return_length=20)


# ------------------------------------------------------------------------------------------------
# StreamingConverter


class LocalContent(torch.nn.Module):
    """A content encoder without context: each 25 ms frame (stride 20 ms, HuBERT's framing) mapped by a
    fixed random projection. Lets the test separate the streaming machinery from the context HuBERT's
    global attention needs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.randn(400, 768, generator=torch.Generator().manual_seed(0)) / 20

    def feature_dim(self, version: str) -> int:
        return 768

    def encode(self, wave: torch.Tensor, version: str) -> torch.Tensor:
        return torch.tanh(wave.float().unfold(-1, 400, 320) @ self.proj)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """0.5 s of silence, then voiced notes with vibrato separated by pauses and noise bursts."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.3 * t) + 5.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (np.sin(2 * np.pi * 0.7 * t) > -0.3)
    noise = rng.standard_normal(n) * 0.05 * (np.sin(2 * np.pi * 1.9 * t) > 0.8)
    x = 0.25 * voiced + noise
    x[:SR // 2] = 0.0
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def hubert(tiny_hubert_v2):
    return tiny_hubert_v2


@pytest.fixture(scope="module")
def pm_converter(fixture_model_path, hubert):
    return Converter(fixture_model_path, hubert, device="cpu", f0_method="pm")


@pytest.fixture(scope="module")
def local_converter(fixture_model_path, hubert):
    """The fixture model with context-free content features and an attention-free text encoder, dio pitch."""
    conv = Converter(fixture_model_path, hubert, device="cpu", f0_method="dio", constants=CONSTANTS)
    conv.content = LocalContent()
    with torch.no_grad():
        for layer in conv.synth.enc_p.encoder.attn_layers:
            layer.conv_o.weight.zero_()
            layer.conv_o.bias.zero_()
    return conv


def _snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((estimate - reference) ** 2), 1e-30)))


def _converted_span(offline: np.ndarray) -> slice:
    """The part of an offline conversion the synthesizer produced: as RVC, the pipeline ends 1-2 frames short
    of the input and pads the rest with silence, which the stream (converting to the end) does not."""
    return slice(0, int(np.flatnonzero(offline).max()) + 1)


def _seam_mask(stream: StreamingConverter, n: int) -> np.ndarray:
    """True away from block seams: outside [seam - 20 ms, seam + crossfade + 20 ms) of every block start."""
    hop, lay = stream.hop, stream.layout
    away = np.ones(n, dtype=bool)
    for seam in range(-stream.lag, n, lay.block * hop):
        away[max(0, seam - 2 * hop):max(0, seam + (lay.crossfade + 2) * hop)] = False
    return away


@pytest.fixture(scope="module")
def dio_converter(fixture_model_path, hubert):
    return Converter(fixture_model_path, hubert, device="cpu", f0_method="dio", constants=CONSTANTS)


def test_streaming_10s_matches_offline_conversion_away_from_block_seams(dio_converter, no_noise):
    audio = speech_like(10.0)
    options = ConvertOptions(rms_mix=1.0)  # the offline loudness mix uses whole-file envelopes
    offline, sr = dio_converter.convert(audio, SR, options)
    # 1 s blocks: 11 blocks instead of 21 at 0.5 s (7.6 -> 5.4 s CPU on one thread), same fidelity or better
    streamed, sr_s, stream = stream_convert(dio_converter, audio, SR, options, StreamSettings(block=1.0))
    assert sr_s == sr and streamed.shape == offline.shape
    lay = stream.layout
    assert len(stream.stats.block_seconds) == 1000 // lay.block + int(np.ceil(lay.crossfade / lay.block))
    away = _seam_mask(stream, streamed.shape[0])
    # measured (fixture model, tiny random HuBERT, CPU): 32.1 dB away from seams, 30.7 dB over the converted
    # span (0.5 s blocks: 31.7 / 30.4 dB). What remains is context: HuBERT and the text encoder attend over a
    # 2-3 s window, not the whole file.
    assert _snr(streamed[away], offline[away]) > 28.0
    span = _converted_span(offline)
    assert offline.shape[0] - span.stop <= 2 * stream.hop
    assert _snr(streamed[span], offline[span]) > 27.0


def test_streaming_machinery_reproduces_offline_when_the_models_need_no_context(local_converter, no_noise):
    audio = speech_like(3.0, seed=1)
    options = ConvertOptions(rms_mix=1.0)
    offline, _ = local_converter.convert(audio, SR, options)
    streamed, _, stream = stream_convert(local_converter, audio, SR, options, StreamSettings(block=0.5))
    away = _seam_mask(stream, streamed.shape[0])
    # measured: 91.7 dB away from seams, 50.5 dB over the converted span (68.1 / 36.0 dB on the 10 s signal): caches,
    # skip_head decoding, phase continuation and crossfade add nothing beyond float rounding away from seams.
    assert _snr(streamed[away], offline[away]) > 50.0
    span = _converted_span(offline)
    assert _snr(streamed[span], offline[span]) > 30.0


def test_stream_output_does_not_depend_on_how_the_input_is_chunked(local_converter):
    audio = speech_like(1.0, seed=1)
    options = ConvertOptions(rms_mix=0.5, seed=0)
    settings = StreamSettings(block=0.2, crossfade=0.04, search=0.01, context=0.6)
    whole = StreamingConverter(local_converter, options, settings)
    a = np.concatenate([whole.process(audio), whole.flush()])
    chunked = StreamingConverter(local_converter, options, settings)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, audio.shape[0]), size=25, replace=False))
    b = np.concatenate([chunked.process(piece) for piece in np.split(audio, cuts)] + [chunked.flush()])
    assert np.array_equal(a, b)
    assert a.shape[0] % (20 * whole.hop) == 0 and a.shape[0] >= audio.shape[0] * 2.5 + whole.lag
    assert np.all(np.abs(a) <= 1.0)


def test_stream_resamples_input_and_output(local_converter):
    audio = speech_like(0.8, seed=2)
    from rvc_lora.audio.resample import resample

    audio22 = resample(audio, SR, 22050)
    out, sr, stream = stream_convert(local_converter, audio22, 22050, ConvertOptions(sample_rate=24000, seed=0),
                                     StreamSettings(block=0.3, context=0.5))
    assert sr == 24000 and out.shape[0] == round(audio22.shape[0] * 24000 / 22050)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3
    assert stream.latency == pytest.approx(0.35)


@pytest.mark.parametrize("kwargs, message", [
    ({"block": 0.0}, "block must be within"),
    ({"block": float("nan")}, "block must be within"),
    ({"crossfade": 0.6}, "must not exceed the block"),
    ({"crossfade": -0.1}, "non-negative"),
    ({"context": 0.05, "margin": 0.1}, "at least the margin"),
])
def test_bad_stream_settings_are_refused(kwargs, message):
    with pytest.raises(RVCLoraError, match=message):
        StreamSettings(**kwargs)


def test_stream_refuses_f0_curves_and_bad_blocks(local_converter):
    with pytest.raises(RVCLoraError, match="f0 curve"):
        StreamingConverter(local_converter, ConvertOptions(f0_curve=np.zeros((2, 2), np.float32)))
    stream = StreamingConverter(local_converter)
    with pytest.raises(RVCLoraError, match="NaN"):
        stream.process(np.array([0.0, np.nan], dtype=np.float32))


def test_live_command_streams_a_file_to_a_file(fixture_model_path, hubert, pm_converter, tmp_path):
    import soundfile as sf

    from rvc_lora.cli import main

    audio = speech_like(0.6, seed=3)
    source, target = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(source, audio, SR, subtype="FLOAT")
    code = main(["live", "--input", str(source), "--output", str(target), "--model", str(fixture_model_path),
                 "--hubert", str(hubert), "--f0-method", "pm", "--device", "cpu", "--seed", "0", "--pitch", "2",
                 "--block", "0.2", "--context", "0.6", "--threads", "1"])
    assert code == 0 and torch.get_num_threads() == 1
    written, sr = sf.read(target, dtype="float32")
    expected, _, _ = stream_convert(pm_converter, audio, SR, ConvertOptions(seed=0, pitch=2),
                                    StreamSettings(block=0.2, context=0.6))
    assert sr == 40000 and written.shape == (24000,)
    assert np.array_equal(written, expected)


def test_live_from_the_microphone_without_sounddevice_says_what_to_install(fixture_model_path, monkeypatch, capsys):
    import builtins

    from rvc_lora.cli import main

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    assert main(["live", "--model", str(fixture_model_path)]) == 2
    assert "pip install sounddevice" in capsys.readouterr().err


def test_live_refuses_a_thread_count_below_one(fixture_model_path, tmp_path, capsys):
    from rvc_lora.cli import main

    assert main(["live", "--input", str(tmp_path / "in.wav"), "--model", str(fixture_model_path),
                 "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
