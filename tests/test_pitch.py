"""Pitch extractors: accuracy on a known glide, RVC's frame grid and lengths, coarse quantisation."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import cents_error, glide, harmonic_tone, silence, true_f0_on_grid

from rvc_lora.features import coarse_pitch, default_pitch_method, get_pitch_extractor, shift_pitch
from rvc_lora.features import pitch as pitch_mod
from rvc_lora.utils import RVCLoraError

# Median abs error on voiced frames of a 150->300 Hz harmonic glide, measured ~0.2 c (harvest, dio),
# 6 c (pm: RVC's symmetric zero pad puts Praat frames half a hop off), 2 c (pyin), 1.5 c (fcpe),
# 4-5 c (crepe). The tolerance leaves room for platform differences while catching frame-offset or
# octave errors (a one-frame shift on this glide is 12 c; an octave 1200 c).
TOLERANCE_CENTS = 25.0
FAST_METHODS = [("harvest", 1.0), ("dio", 1.0), ("pm", 1.0), ("fcpe", 1.0), ("crepe-tiny", 0.5), ("pyin", 0.4),
                ("crepe", 0.2)]


@pytest.fixture(scope="module")
def extractors():
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = get_pitch_extractor(method, device="cpu")
        return cache[method]

    return get


@pytest.mark.parametrize("method, seconds", FAST_METHODS, ids=[m for m, _ in FAST_METHODS])
def test_glide_accuracy_and_length(extractors, method, seconds):
    start, end = 150.0, 150.0 * 2 ** seconds  # one octave per second
    x, f = glide(start, end, seconds)
    p_len = x.shape[0] // 160
    f0 = extractors(method)(x)
    assert f0.shape == (p_len,) and f0.dtype == np.float32
    truth = true_f0_on_grid(f, p_len)
    voiced = f0 > 0
    assert voiced.mean() >= 0.8, f"{method}: only {voiced.mean():.0%} frames voiced"
    err = cents_error(f0, truth)
    assert np.median(err) < TOLERANCE_CENTS, f"{method}: median error {np.median(err):.1f} cents"


@pytest.mark.parametrize("method", ["harvest", "dio", "pm", "fcpe", "crepe-tiny"])
def test_output_fits_requested_p_len(extractors, method):
    x = harmonic_tone(220.0, 0.3, 16000)
    ex = extractors(method)
    for p_len in (30, 25, 40, 0):
        f0 = ex(x, p_len)
        assert f0.shape == (p_len,)
    longer = ex(x, 40)
    voiced = np.flatnonzero(longer > 0)
    if method == "pm":  # RVC pads Praat's frames symmetrically to p_len
        assert abs(voiced[0] - (39 - voiced[-1])) <= 1
    else:  # frames past the audio are unvoiced padding at the end
        assert voiced[-1] <= 30 and np.all(longer[31:] == 0)


@pytest.mark.parametrize("method", ["harvest", "dio", "pm", "fcpe"])
def test_silence_is_unvoiced(extractors, method):
    f0 = extractors(method)(silence(0.3))
    assert f0.shape == (30,) and np.all(f0 == 0)


def test_harvest_filter_radius_applies_median_filter():
    x, _ = glide(150, 300, 0.5)
    raw = get_pitch_extractor("harvest")(x)
    filtered = get_pitch_extractor("harvest", filter_radius=3)(x)
    from scipy.signal import medfilt

    np.testing.assert_allclose(filtered, medfilt(raw.astype(np.float64), 3).astype(np.float32), rtol=1e-6)


def test_invalid_inputs_raise():
    ex = get_pitch_extractor("dio")
    with pytest.raises(ValueError, match="NaN"):
        ex(np.array([0.0, np.nan] * 200, dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        ex(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(ValueError, match="unknown pitch method"):
        get_pitch_extractor("yin")


def test_rmvpe_needs_weights_and_default_method(tmp_path):
    with pytest.raises(RVCLoraError, match="fcpe"):
        get_pitch_extractor("rmvpe")
    with pytest.raises(RVCLoraError, match="not found"):
        get_pitch_extractor("rmvpe", rmvpe_path=tmp_path / "missing.pt")
    assert default_pitch_method(None) == "fcpe"
    assert default_pitch_method(tmp_path / "rmvpe.pt") == "rmvpe"


# ------------------------------------------------------------------------------------- coarse
def test_coarse_pitch_edges_and_formula():
    # constants quoted in the design reference (section 5): mel(50 Hz), mel(1100 Hz)
    assert pitch_mod.F0_MEL_MIN == pytest.approx(77.75497, abs=1e-5)
    assert pitch_mod.F0_MEL_MAX == pytest.approx(1064.40823, abs=1e-5)
    out = coarse_pitch(np.array([0.0, 50.0, 1100.0, 2000.0, 30.0, -5.0, np.nan]))
    assert out.dtype == np.int64
    assert out.tolist() == [1, 1, 255, 255, 1, 1, 1]
    f = np.array([100.0, 220.0, 440.0, 880.0])
    mel = 1127 * np.log(1 + f / 700)
    expected = np.rint((mel - 77.754969) * 254 / (1064.408227 - 77.754969) + 1)
    assert coarse_pitch(f).tolist() == expected.astype(int).tolist()
    assert coarse_pitch(np.float32([220.0])).tolist() == coarse_pitch(np.float64([220.0])).tolist()


def test_coarse_pitch_is_monotonic_over_range():
    c = coarse_pitch(np.geomspace(50, 1100, 2000))
    assert c[0] == 1 and c[-1] == 255 and np.all(np.diff(c) >= 0)
    assert len(np.unique(c)) == 255


def test_shift_pitch():
    f0 = np.array([0.0, 100.0, 220.0], dtype=np.float32)
    np.testing.assert_allclose(shift_pitch(f0, 12), [0.0, 200.0, 440.0], rtol=1e-6)
    np.testing.assert_allclose(shift_pitch(f0, -12), [0.0, 50.0, 110.0], rtol=1e-6)
    assert shift_pitch(f0, 3).dtype == np.float32
