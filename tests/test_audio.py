"""Audio ingestion: decoding and its errors, resampling, high-pass, silence slicing, pieces, checks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import (
    harmonic_tone,
    noise,
    silence,
    write_garbage,
    write_header_only_wav,
    write_nan_wav,
    write_truncated_wav,
)

from rvc_lora.audio import (
    AudioError,
    Slicer,
    cut_pieces,
    highpass,
    inspect_audio,
    load_audio,
    normalize_piece,
    probe_audio,
    resample,
    slice_ranges,
    write_wav,
)
from rvc_lora.utils import RVCLoraError

SR = 16000


# ----------------------------------------------------------------------------------------------- io
def test_load_audio_mixes_stereo_to_mono_mean(tmp_path):
    tone = harmonic_tone(220.0, 0.3, SR)
    stereo = np.stack([tone, -0.5 * tone], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")
    audio, sr = load_audio(path)
    assert sr == SR and audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_allclose(audio, 0.25 * tone, atol=1e-6)


def test_load_audio_mixes_any_channel_count(tmp_path):
    chans = np.stack([np.full(800, v, dtype=np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)], axis=1)
    path = tmp_path / "six.wav"
    sf.write(path, chans, SR, subtype="FLOAT")
    audio, _ = load_audio(path)
    np.testing.assert_allclose(audio, 0.35, atol=1e-6)


def test_load_audio_resamples_on_request(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, harmonic_tone(220.0, 1.0, 44100), 44100)
    audio, sr = load_audio(path, sample_rate=16000)
    assert sr == 16000 and audio.shape == (16000,) and audio.dtype == np.float32


@pytest.mark.parametrize("ext, fmt, subtype", [("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"),
                                              ("mp3", "MP3", "MPEG_LAYER_III")])
def test_load_audio_compressed_formats(tmp_path, ext, fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile without {fmt}")
    path = tmp_path / f"c.{ext}"
    tone = harmonic_tone(220.0, 0.5, 44100)
    sf.write(path, tone, 44100, format=fmt, subtype=subtype)
    audio, sr = load_audio(path)
    assert sr == 44100 and audio.dtype == np.float32
    assert abs(audio.shape[0] - tone.shape[0]) < 0.05 * 44100  # codecs may add priming/padding
    assert float(np.sqrt(np.mean(audio**2))) == pytest.approx(float(np.sqrt(np.mean(tone**2))), rel=0.1)


def test_probe_audio_reads_header(tmp_path):
    path = tmp_path / "p.wav"
    sf.write(path, np.zeros((24000, 2), dtype=np.float32), 48000, subtype="PCM_16")
    info = probe_audio(path)
    assert (info.sample_rate, info.channels, info.frames) == (48000, 2, 24000)
    assert info.duration == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p, "not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (write_garbage, "unreadable"),
        (write_truncated_wav, "truncated"),
        (lambda p: write_truncated_wav(p, keep_fraction=0.001), "unreadable"),
        (write_header_only_wav, "zero length"),
        (write_nan_wav, "non-finite"),
    ],
    ids=["missing", "zero-bytes", "garbage", "truncated-data", "truncated-header", "no-frames", "nan"],
)
def test_load_audio_errors_name_the_file_and_problem(tmp_path, make, needle):
    path = make(tmp_path / "bad_input.wav")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "bad_input.wav" in str(err.value)
    assert needle in str(err.value)
    assert isinstance(err.value, RVCLoraError)


def test_write_wav_is_atomic_and_float32(tmp_path):
    x = noise(0.1, SR)
    out = write_wav(tmp_path / "sub" / "o.wav", x, SR)
    back, sr = sf.read(out, dtype="float32")
    assert sr == SR and sf.info(out).subtype == "FLOAT"
    np.testing.assert_array_equal(back, x)
    # a failing write leaves the previous file intact and no temp file behind
    with pytest.raises(ValueError):
        write_wav(out, x, SR, subtype="NOT_A_SUBTYPE")
    np.testing.assert_array_equal(sf.read(out, dtype="float32")[0], x)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.wav"]


# --------------------------------------------------------------------------------- resample/filter
def test_resample_matches_librosa_default_and_length():
    import librosa

    x = harmonic_tone(300.0, 0.31, 40000)
    y = resample(x, 40000, 16000)
    assert y.shape == (int(np.ceil(x.shape[0] * 0.4)),) and y.dtype == np.float32
    np.testing.assert_allclose(y, librosa.resample(x, orig_sr=40000, target_sr=16000), atol=1e-6)
    assert resample(x, 16000, 16000) is x


def _amplitude(x: np.ndarray, f: float, sr: int) -> float:
    t = np.arange(x.shape[0]) / sr
    return float(2 * np.abs(np.mean(x * np.exp(-2j * np.pi * f * t))))


@pytest.mark.parametrize("zero_phase", [False, True])
def test_highpass_removes_20hz_keeps_440hz(zero_phase):
    t = np.arange(3 * SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 20 * t) + 0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = highpass(x, SR, zero_phase=zero_phase)
    assert y.dtype == np.float32 and y.shape == x.shape
    mid = y[SR : 2 * SR]  # away from the filter's start-up transient
    assert _amplitude(mid, 20, SR) < 0.5 * 0.05
    assert _amplitude(mid, 440, SR) == pytest.approx(0.5, rel=0.02)


# ---------------------------------------------------------------------------------------- slicer
def _ttt(*parts):
    """Concatenate (kind, seconds) parts at SR; returns audio and part boundaries in samples."""
    chunks, bounds, pos = [], [], 0
    for kind, sec in parts:
        chunk = harmonic_tone(220.0, sec, SR) if kind == "tone" else silence(sec, SR)
        chunks.append(chunk)
        bounds.append((pos, pos + chunk.shape[0]))
        pos += chunk.shape[0]
    return np.concatenate(chunks), bounds


def test_slicer_derived_frame_sizes_follow_rvc_rounding():
    s = Slicer(40000)
    assert (s.hop, s.win) == (600, 2400)  # 15 ms hop; window min(400 ms, 4 hops)


def test_slicer_cuts_long_silence_and_keeps_half_second_margins():
    x, b = _ttt(("silence", 1.0), ("tone", 2.0), ("silence", 2.0), ("tone", 2.0), ("silence", 1.0))
    hop, half_win, keep = 240, 480, 33  # 15 ms hop, 60 ms RMS window, 500 ms kept = 33 hops at 16 kHz
    tone1, tone2 = b[1], b[3]

    def first_quiet_after(end):  # first RMS frame whose window lies wholly after ``end``
        return int(np.ceil((end + half_win) / hop)) * hop

    def first_loud_at(onset):  # first RMS frame whose window reaches ``onset``
        return (int(np.floor((onset - half_win) / hop)) + 1) * hop

    ranges = slice_ranges(x, SR)
    assert len(ranges) == 2
    (s1, e1), (s2, e2) = ranges
    # leading silence: max_sil_kept (500 ms) kept before the first onset
    assert abs(s1 - (first_loud_at(tone1[0]) - keep * hop)) <= hop
    # long middle silence (> 2 x max_sil_kept): clip 1 ends at its first quiet frame, clip 2 keeps 500 ms
    assert abs(e1 - first_quiet_after(tone1[1])) <= hop
    assert abs(s2 - (first_loud_at(tone2[0]) - keep * hop)) <= hop
    # trailing silence trimmed at the first quiet frame
    assert abs(e2 - first_quiet_after(tone2[1])) <= hop
    assert tone1[0] - s1 == pytest.approx(0.5 * SR, abs=2 * hop)


def test_slicer_does_not_split_short_pauses_or_short_clips():
    x, _ = _ttt(("tone", 2.0), ("silence", 0.2), ("tone", 2.0))
    assert slice_ranges(x, SR) == [(0, x.shape[0])]  # 200 ms pause < min_interval 400 ms
    x, _ = _ttt(("tone", 0.8), ("silence", 0.6), ("tone", 2.0))
    assert slice_ranges(x, SR) == [(0, x.shape[0])]  # clip + pause shorter than min_length 1.5 s


def test_slicer_pause_shorter_than_max_kept_becomes_one_cut_point():
    x, b = _ttt(("tone", 2.0), ("silence", 0.5), ("tone", 2.0))
    ranges = slice_ranges(x, SR)
    assert len(ranges) == 2
    (s1, e1), (s2, e2) = ranges
    assert e1 == s2  # 400 ms <= pause <= max_sil_kept: cut at the quietest frame, nothing dropped
    assert b[1][0] <= e1 <= b[1][1]
    assert (s1, e2) == (0, x.shape[0])


def test_slicer_all_noise_is_one_clip():
    x = noise(3.0, SR, amplitude=0.2)
    assert slice_ranges(x, SR) == [(0, x.shape[0])]


# -------------------------------------------------------------------------------------- pieces
def test_cut_pieces_rvc_rule():
    sr = 40000
    pieces = cut_pieces(10 * sr, sr)
    assert pieces == [(0, 148000), (136000, 284000), (272000, 400000)]
    for (_, a1), (b0, _) in zip(pieces[:-1], pieces[1:], strict=True):
        assert a1 - b0 == int(0.3 * sr)  # 0.3 s overlap
    assert cut_pieces(4 * sr, sr) == [(0, 4 * sr)]  # not longer than per + overlap: one piece
    assert cut_pieces(4 * sr + 1, sr) == [(0, 148000), (136000, 4 * sr + 1)]
    assert cut_pieces(0, sr) == []
    assert cut_pieces(7 * sr, sr, piece_s=3.0) == [(0, 120000), (108000, 228000), (216000, 280000)]


def test_normalize_piece_formula_and_skip():
    x = np.array([0.5, -0.25, 0.1], dtype=np.float32)
    y = normalize_piece(x)
    np.testing.assert_allclose(y, x / 0.5 * 0.675 + 0.25 * x, rtol=1e-6)
    assert float(np.max(np.abs(y))) == pytest.approx(0.8)
    assert normalize_piece(np.array([0.1, 2.6], dtype=np.float32)) is None
    assert normalize_piece(np.array([0.1, 2.5], dtype=np.float32)) is not None
    assert normalize_piece(np.zeros(10, dtype=np.float32)) is None


# -------------------------------------------------------------------------------------- checks
def test_inspect_audio_reports_problems():
    ok = harmonic_tone(220.0, 2.0, SR)
    assert inspect_audio(ok, SR) == []
    clipped = ok.copy()
    clipped[:7] = 1.0
    assert any("clipped (7 samples" in p for p in inspect_audio(clipped, SR))
    assert "all silent" in inspect_audio(silence(2.0, SR), SR)
    assert any("very long (20.0 min)" in p for p in inspect_audio(np.full(20 * 60 * 100 + 1, 0.1), 100))
    assert any("very short" in p for p in inspect_audio(ok[:1000], SR))
