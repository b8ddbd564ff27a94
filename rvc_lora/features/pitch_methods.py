"""Concrete pitch extractors (see ``rvc_lora.features.pitch_extractor`` for the shared interface and grid)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import numpy as np

from rvc_lora.features.pitch_extractor import F0_MAX, F0_MIN, HOP, SAMPLE_RATE, PitchExtractor
from rvc_lora.utils import RVCLoraError


def _device(device: str):
    from rvc_lora.utils import resolve_device

    return resolve_device(device)


class RMVPEPitch(PitchExtractor):
    """RMVPE (RVC's default): needs RVC's ``rmvpe.pt``; decode threshold 0.03."""

    name = "rmvpe"

    def __init__(self, rmvpe_path: str | os.PathLike | None, device: str = "auto", threshold: float = 0.03,
                 half: bool = False):
        if not rmvpe_path:
            raise RVCLoraError(
                "pitch method 'rmvpe' needs the RMVPE weights (RVC's assets/rmvpe/rmvpe.pt); "
                "set the rmvpe path, or use pitch method 'fcpe' which needs no download"
            )
        self.path = Path(rmvpe_path)
        if not self.path.is_file():
            raise RVCLoraError(f"{self.path}: RMVPE weights not found")
        self.device = device
        self.threshold = threshold
        self.half = half
        self._model = None

    def load(self) -> None:
        if self._model is None:
            from rvc_lora.features.rmvpe import load_rmvpe

            self._model = load_rmvpe(self.path, device=_device(self.device), half=self.half)

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        self.load()
        return self._model(audio16k, threshold=self.threshold)


class FCPEPitch(PitchExtractor):
    """FCPE via torchfcpe's bundled model (local-argmax decoder, threshold 0.006); f0 < 50 Hz -> 0."""

    name = "fcpe"

    def __init__(self, device: str = "auto", threshold: float = 0.006):
        self.device = device
        self.threshold = threshold
        self._model = None

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        import torch

        if self._model is None:
            import contextlib
            import io

            from torchfcpe import spawn_bundled_infer_model

            with contextlib.redirect_stdout(io.StringIO()):  # torchfcpe prints config notices
                self._model = spawn_bundled_infer_model(device=str(_device(self.device)))
        dev = next(self._model.parameters()).device
        wav = torch.from_numpy(audio16k).to(dev)[None, :, None]
        with torch.no_grad():
            f0 = self._model.infer(wav, sr=SAMPLE_RATE, decoder_mode="local_argmax", threshold=self.threshold,
                                   f0_min=F0_MIN, f0_max=F0_MAX, interp_uv=False)
        f0 = f0[0, :, 0].float().cpu().numpy()
        f0[f0 < F0_MIN] = 0.0
        return f0


class CrepePitch(PitchExtractor):
    """torchcrepe ("full" or "tiny"), viterbi decoding, RVC's post-filtering.

    Periodicity median-filtered (3 frames), f0 mean-filtered (3 frames), f0 = 0 where periodicity < 0.1.
    """

    def __init__(self, model: str = "full", device: str = "auto", batch_size: int = 512,
                 periodicity_threshold: float = 0.1):
        if model not in ("full", "tiny"):
            raise ValueError(f"crepe model must be 'full' or 'tiny', got {model!r}")
        self.model = model
        self.name = "crepe" if model == "full" else "crepe-tiny"
        self.device = device
        self.batch_size = batch_size
        self.periodicity_threshold = periodicity_threshold

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        import torch
        import torchcrepe

        audio = torch.from_numpy(audio16k.copy())[None]
        with torch.no_grad():
            f0, periodicity = torchcrepe.predict(
                audio, SAMPLE_RATE, HOP, F0_MIN, F0_MAX, self.model, batch_size=self.batch_size,
                device=str(_device(self.device)), return_periodicity=True,
            )
            periodicity = torchcrepe.filter.median(periodicity, 3)
            f0 = torchcrepe.filter.mean(f0, 3)
        f0[periodicity < self.periodicity_threshold] = 0
        return f0[0].cpu().numpy()


def _load_pyworld():
    """Import pyworld; pyworld <= 0.3.5 imports ``pkg_resources`` (gone from setuptools >= 81), so fall
    back to loading its compiled extension directly."""
    try:
        import pyworld

        return pyworld
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise
    spec = importlib.util.find_spec("pyworld")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pyworld is not installed")
    for folder in spec.submodule_search_locations:
        for candidate in Path(folder).glob("pyworld*.so"):
            loader = importlib.machinery.ExtensionFileLoader("pyworld", str(candidate))
            ext_spec = importlib.util.spec_from_loader("pyworld", loader)
            module = importlib.util.module_from_spec(ext_spec)
            loader.exec_module(module)
            return module
        for candidate in Path(folder).glob("pyworld*.pyd"):
            loader = importlib.machinery.ExtensionFileLoader("pyworld", str(candidate))
            ext_spec = importlib.util.spec_from_loader("pyworld", loader)
            module = importlib.util.module_from_spec(ext_spec)
            loader.exec_module(module)
            return module
    raise ModuleNotFoundError("pyworld's compiled extension was not found")


class WorldPitch(PitchExtractor):
    """WORLD harvest or dio (pyworld), frame period 10 ms, refined with stonemask.

    ``filter_radius > 2`` applies RVC's conversion-time 3-tap median filter (harvest only in RVC;
    training extraction uses no filter, the default here).
    """

    def __init__(self, method: str = "harvest", filter_radius: int = 0):
        if method not in ("harvest", "dio"):
            raise ValueError(f"WORLD method must be 'harvest' or 'dio', got {method!r}")
        self.name = method
        self.filter_radius = filter_radius

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        pw = _load_pyworld()
        x = audio16k.astype(np.double)
        track = pw.harvest if self.name == "harvest" else pw.dio
        period_ms = 1000.0 * HOP / SAMPLE_RATE
        f0, t = track(x, fs=SAMPLE_RATE, f0_ceil=F0_MAX, f0_floor=F0_MIN, frame_period=period_ms)
        f0 = pw.stonemask(x, f0, t, SAMPLE_RATE)
        if self.filter_radius > 2:
            from scipy import signal

            f0 = signal.medfilt(f0, 3)
        return f0


class PraatPitch(PitchExtractor):
    """Praat autocorrelation pitch (parselmouth ``to_pitch_ac``: 10 ms step, voicing threshold 0.6),
    zero-padded symmetrically to ``p_len`` as RVC does (Praat's first frame is not at t = 0)."""

    name = "pm"

    def __init__(self, voicing_threshold: float = 0.6):
        self.voicing_threshold = voicing_threshold

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        import parselmouth

        sound = parselmouth.Sound(audio16k.astype(np.float64), SAMPLE_RATE)
        try:
            pitch = sound.to_pitch_ac(time_step=HOP / SAMPLE_RATE, voicing_threshold=self.voicing_threshold,
                                      pitch_floor=F0_MIN, pitch_ceiling=F0_MAX)
            f0 = pitch.selected_array["frequency"]
        except parselmouth.PraatError:
            # Praat refuses signals shorter than its analysis window (3 periods of 50 Hz = 60 ms).
            return np.zeros(p_len)
        left = (p_len - len(f0) + 1) // 2
        right = p_len - len(f0) - left
        if left > 0 or right > 0:
            f0 = np.pad(f0, (max(left, 0), max(right, 0)))
        return f0


class PyinPitch(PitchExtractor):
    """librosa pYIN, 10 ms hop, centred 64 ms frames; unvoiced (NaN) -> 0. Slow (Viterbi over ~540 states)."""

    name = "pyin"

    def __init__(self, frame_length: int = 1024):
        self.frame_length = frame_length

    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        import librosa

        if audio16k.shape[0] < self.frame_length // 2 + 1:
            audio16k = np.pad(audio16k, (0, self.frame_length // 2 + 1 - audio16k.shape[0]))
        f0, _, _ = librosa.pyin(audio16k, fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE,
                                frame_length=self.frame_length, hop_length=HOP, center=True)
        return np.nan_to_num(f0, nan=0.0)
