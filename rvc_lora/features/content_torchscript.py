"""Any content encoder as a TorchScript file: 16 kHz audio ``[1, N]`` -> features ``[frames, dim]`` at 50 Hz.

The contract (what a user's encoder must do to stand in for HuBERT in ``prepare`` and ``convert``):

* input: one mono waveform at 16 kHz, float32, shape ``[1, N]``;
* output: ``[frames, dim]`` float features at 50 frames/s with RVC's frame count for ``N`` samples, i.e.
  HuBERT's (a 400-sample window every 320 samples: ``frames = (N - 400) // 320 + 1``);
* ``dim`` = 256 for RVC v1 models, 768 for v2 (checked against the model version).

Loading runs ``torch.jit.load`` on the archive: that executes the archive's scripted graph (TorchScript's
interpreter, not Python and not arbitrary pickled objects). Use encoders you trust, as with any model code.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from rvc_lora.models.synthesizer import CONTENT_DIMS
from rvc_lora.utils import RVCLoraError

WINDOW = 400        # HuBERT's receptive field in samples at 16 kHz ...
HOP = 320           # ... and its stride (50 frames/s)
PROBE_SAMPLES = 16000


def rvc_frame_count(num_samples: int) -> int:
    """RVC's (HuBERT's) content frame count for ``num_samples`` samples at 16 kHz (0 when too short)."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a ``torch.jit.save`` archive (a zip with a ``code/`` folder), False for anything else."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


class TorchScriptContentEncoder(nn.Module):
    """A scripted content model behind the interface prepare and convert use (``encode``, ``num_frames``,
    ``feature_dim``), like :class:`rvc_lora.features.content.ContentEncoder`.

    Attributes: ``module`` (the ``torch.jit.ScriptModule``), ``dim`` (its feature width, found by a probe
    run at load), ``source`` (file name).
    """

    def __init__(self, module: torch.jit.ScriptModule, source: str) -> None:
        super().__init__()
        self.module = module
        self.source = source
        self._dtype = torch.float32
        self._device = torch.device("cpu")
        self.dim = self._probe()
        self.eval()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):  # type: ignore[override]
        """Move the scripted module (``device``) and choose its precision (``dtype``)."""
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = dtype
        self.module.to(device=self._device, dtype=self._dtype)
        return self

    def _run(self, audio: Tensor) -> Tensor:
        """[1, N] -> [frames, dim] float32, checked against the contract."""
        try:
            out = self.module(audio.to(device=self._device, dtype=self._dtype))
        except Exception as err:  # TorchScript raises torch.jit.Error / RuntimeError with its own text
            raise RVCLoraError(f"{self.source}: the content model failed on {audio.shape[-1]} samples "
                               f"({type(err).__name__}: {str(err).strip().splitlines()[-1]})") from None
        if not isinstance(out, Tensor) or out.ndim != 2:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RVCLoraError(f"{self.source}: a content model must return [frames, dim]; got {shape}")
        expected = rvc_frame_count(audio.shape[-1])
        if out.shape[0] != expected:
            raise RVCLoraError(f"{self.source}: returned {out.shape[0]} frames for {audio.shape[-1]} samples; "
                               f"RVC needs {expected} (50 frames/s: (N - 400) // 320 + 1)")
        return out.float()

    def _probe(self) -> int:
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            out = self._run(0.01 * torch.randn(1, PROBE_SAMPLES, generator=gen))
        return int(out.shape[1])

    def num_frames(self, num_samples: int) -> int:
        """Feature frames for ``num_samples`` input samples (RVC's count)."""
        return rvc_frame_count(num_samples)

    def feature_dim(self, version: str) -> int:
        """The feature width, after checking it is the one RVC ``version`` models take (v1 256, v2 768)."""
        if version not in CONTENT_DIMS:
            raise RVCLoraError(f"unknown RVC version {version!r} (expected 'v1' or 'v2')")
        if self.dim != CONTENT_DIMS[version]:
            raise RVCLoraError(f"{self.source}: gives {self.dim}-dim features, but RVC {version} models take "
                               f"{CONTENT_DIMS[version]}-dim content features")
        return self.dim

    @torch.inference_mode()
    def encode(self, audio16k: Tensor, version: str) -> Tensor:
        """[B, N] 16 kHz audio -> [B, frames, dim] float32 (each row encoded on its own)."""
        self.feature_dim(version)
        if audio16k.ndim != 2:
            raise RVCLoraError(f"content encoder expects audio of shape [batch, samples], got "
                               f"{list(audio16k.shape)}")
        if rvc_frame_count(audio16k.shape[-1]) < 1:
            raise RVCLoraError(f"audio too short for the content encoder ({audio16k.shape[-1]} samples at "
                               f"16 kHz; need at least {WINDOW})")
        return torch.stack([self._run(row.unsqueeze(0)) for row in audio16k])

    def forward(self, audio16k: Tensor, version: str = "v1") -> Tensor:
        return self.encode(audio16k, version)


def load_torchscript_encoder(path: str | os.PathLike, device: torch.device | str = "cpu",
                             half: bool = False) -> TorchScriptContentEncoder:
    """Load a TorchScript content model (module docstring) and check it with a 1 s probe.

    Raises RVCLoraError when the file is not a TorchScript archive or breaks the contract.
    """
    path = Path(path)
    if not is_torchscript_archive(path):
        raise RVCLoraError(f"{path}: not a TorchScript archive (save one with torch.jit.save(torch.jit.script(m), "
                           "path)); content.kind=torchscript needs one")
    try:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it still loads and runs
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise RVCLoraError(f"{path}: unreadable TorchScript archive ({str(err).strip().splitlines()[0]})") from None
    module.eval()
    encoder = TorchScriptContentEncoder(module, str(path))
    return encoder.to(device=device, dtype=torch.float16 if half else torch.float32)
