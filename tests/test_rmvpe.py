"""RMVPE: state-dict layout of RVC's rmvpe.pt, strict safe loading, front end, decoding, frame grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_fixtures import harmonic_tone

from rvc_lora.features import get_pitch_extractor
from rvc_lora.features.rmvpe import (
    CENTS_OFFSET,
    RMVPE,
    LogMel,
    RMVPENet,
    load_rmvpe,
    salience_to_f0,
)
from rvc_lora.utils import RVCLoraError

# Full-size layout derived from RVC-Project/Retrieval-based-Voice-Conversion-WebUI, infer/lib/rmvpe.py
# (commit 04a33b9709e9b5f2d88bc8c12d41cf60bd65d56d): RMVPE builds E2E(4, 1, (2, 2)) = 5 encoder stages
# (16..256 ch), 4 intermediate stages (512 ch), 5 decoder stages, 4 residual blocks per stage, cnn 16->3,
# BiGRU(384, 256) and Linear(512, 360). That gives 741 state-dict entries (118 BatchNorm layers, each with
# a num_batches_tracked counter) and 90,423,165 parameters; stored in fp16 that is the ~181 MB of the
# distributed rmvpe.pt.
FULL_KEYS = 741
FULL_PARAMS = 90_423_165
KNOWN_SHAPES = {
    "unet.encoder.bn.weight": (1,),
    "unet.encoder.layers.0.conv.0.conv.0.weight": (16, 1, 3, 3),
    "unet.encoder.layers.0.conv.0.shortcut.weight": (16, 1, 1, 1),
    "unet.encoder.layers.0.conv.0.shortcut.bias": (16,),
    "unet.intermediate.layers.0.conv.0.shortcut.weight": (512, 256, 1, 1),
    "unet.intermediate.layers.3.conv.3.conv.4.running_var": (512,),
    "unet.decoder.layers.0.conv1.0.weight": (512, 256, 3, 3),
    "unet.decoder.layers.0.conv2.0.conv.0.weight": (256, 512, 3, 3),
    "unet.decoder.layers.4.conv2.3.conv.4.weight": (16,),
    "cnn.weight": (3, 16, 3, 3),
    "cnn.bias": (3,),
    "fc.0.gru.weight_ih_l0": (768, 384),
    "fc.0.gru.weight_hh_l0_reverse": (768, 256),
    "fc.1.weight": (360, 512),
    "fc.1.bias": (360,),
}


@pytest.fixture(scope="module")
def full_checkpoint(formula_rmvpe):
    """The full-size RMVPE of the rvc_convert reference (formula weights; non-trivial BN statistics),
    saved like rmvpe.pt (plain fp16 state dict): (path, state)."""
    path = formula_rmvpe.paths["rmvpe"]
    return path, torch.load(path, map_location="cpu", weights_only=True)


def test_full_layout_matches_rvc():
    net = RMVPENet()
    state = net.state_dict()
    assert len(state) == FULL_KEYS
    assert sum(p.numel() for p in net.parameters()) == FULL_PARAMS
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("mel") for k in state)  # the front end is not part of rmvpe.pt


def test_load_full_checkpoint_strictly(full_checkpoint):
    path, state = full_checkpoint
    model = load_rmvpe(path, device="cpu")
    loaded = model.net.state_dict()
    assert loaded.keys() == state.keys()
    for key in ("fc.1.weight", "unet.decoder.layers.4.conv2.3.conv.1.running_var"):
        torch.testing.assert_close(loaded[key], state[key].float())
    audio = harmonic_tone(200.0, 0.2, 16000)  # 3200 samples -> 21 frames (padded to 32 inside)
    sal = model.salience(audio)
    assert sal.shape == (21, 360) and np.all((sal > 0) & (sal < 1))
    f0 = get_pitch_extractor("rmvpe", device="cpu", rmvpe_path=path)(audio)
    assert f0.shape == (20,) and f0.dtype == np.float32


def test_checkpoint_without_bn_counters_loads(tmp_path, full_checkpoint):
    _, state = full_checkpoint
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    assert isinstance(load_rmvpe(path), RMVPE)


def test_wrong_checkpoints_raise_clear_errors(tmp_path, full_checkpoint):
    _, state = full_checkpoint
    bad = dict(state)
    bad["fc.1.weight"] = torch.zeros(361, 512)
    path = tmp_path / "bad_shape.pt"
    torch.save(bad, path)
    with pytest.raises(RVCLoraError, match=r"bad_shape\.pt.*shape mismatch.*fc\.1\.weight"):
        load_rmvpe(path)
    missing = {k: v for k, v in state.items() if not k.startswith("cnn.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(RVCLoraError, match="2 missing keys"):
        load_rmvpe(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RVCLoraError, match="junk.pt"):
        load_rmvpe(tmp_path / "junk.pt")
    with pytest.raises(RVCLoraError, match="not found"):
        load_rmvpe(tmp_path / "absent.pt")


def test_log_mel_front_end_matches_librosa():
    """Compared where the values are well conditioned: near the 1e-5 floor a float32 rounding of the
    magnitude is a large step in log (2.1e-3 measured at a bin of 1.8e-5), so the check is on linear
    magnitudes (all bins) and on the log only for bins within 60 dB of the peak."""
    import librosa

    audio = harmonic_tone(180.0, 0.25, 16000)
    mel = LogMel()(torch.from_numpy(audio)[None])[0].numpy().astype(np.float64)
    ref = librosa.feature.melspectrogram(
        y=audio, sr=16000, n_fft=1024, hop_length=160, win_length=1024, center=True, pad_mode="reflect",
        power=1.0, n_mels=128, fmin=30, fmax=8000, htk=True,
    ).astype(np.float64)
    assert mel.shape == (128, audio.shape[0] // 160 + 1)
    peak = ref.max()
    # linear magnitudes: measured max |diff| 1.6e-7 x peak (AMD EPYC, torch 2.14.1, librosa 0.11)
    np.testing.assert_allclose(np.exp(mel), np.maximum(ref, 1e-5), rtol=0, atol=1e-6 * peak)
    loud = ref > 1e-3 * peak  # 42 % of the bins here
    # natural log of loud bins: measured max |diff| 1.1e-5
    np.testing.assert_allclose(mel[loud], np.log(ref[loud]), rtol=0, atol=1e-4)


def test_salience_decoding():
    sal = np.zeros((4, 360), dtype=np.float32)
    sal[0, 100] = 0.9  # single peak -> that bin's cents
    sal[1, 200:202] = 0.5  # two equal bins -> halfway
    sal[2, 0] = 0.6  # edge bin: zero-padded neighbours
    sal[3, 50] = 0.03  # at the threshold -> unvoiced
    f0 = salience_to_f0(sal, threshold=0.03)
    cents = np.array([100 * 20, 200 * 20 + 10, 0]) + CENTS_OFFSET
    np.testing.assert_allclose(f0[:3], 10 * 2 ** (cents / 1200), rtol=1e-9)
    assert f0[3] == 0
    assert salience_to_f0(np.zeros((0, 360))).shape == (0,)


@pytest.mark.parametrize("n_samples", [160 * 31, 160 * 32 + 7, 900])
def test_frame_grid_and_padding_to_multiple_of_32(n_samples):
    torch.manual_seed(0)
    tiny = RMVPENet(n_blocks=1, n_inter=1, width=4)
    model = RMVPE(tiny)
    audio = harmonic_tone(150.0, n_samples / 16000, 16000)
    sal = model.salience(audio)
    assert sal.shape == (n_samples // 160 + 1, 360)
    assert model(audio).shape == (n_samples // 160 + 1,)
