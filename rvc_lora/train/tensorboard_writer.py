"""TensorBoard output of a run: scalars, mel images, audio and hyper-parameters (rank 0 only).

A thin wrapper over ``torch.utils.tensorboard.SummaryWriter``; a disabled writer accepts every call
and does nothing, so the training loop needs no ``if rank == 0`` around logging. A failed write (full
disk) raises ``StorageError`` naming the event file.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvc_lora.utils import StorageError

__all__ = ["RunWriter", "launch_tensorboard", "mel_image"]


def _colour(x: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ``[H, W]`` to an RGB heat map ``[H, W, 3]`` (dark blue -> yellow)."""
    r = np.clip(1.5 * x - 0.25, 0, 1)
    g = np.clip(1.2 * x - 0.1, 0, 1) ** 1.2
    b = np.clip(0.6 - 0.8 * np.abs(x - 0.35), 0, 1)
    return np.stack([r, g, b], axis=-1)


def mel_image(*mels: torch.Tensor) -> np.ndarray:
    """Stack log-mels ``[n_mels, frames]`` vertically (low frequencies at the bottom of each panel)
    on a shared colour scale, separated by a white line -> float RGB image ``[H, W, 3]`` in [0, 1]."""
    arrays = [m.detach().float().cpu().numpy() for m in mels]
    width = max(a.shape[1] for a in arrays)
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    scale = hi - lo if hi > lo else 1.0
    panels = []
    for i, a in enumerate(arrays):
        padded = np.full((a.shape[0], width), lo, dtype=np.float32)
        padded[:, : a.shape[1]] = a
        panels.append(_colour((padded[::-1] - lo) / scale))
        if i + 1 < len(arrays):
            panels.append(np.ones((2, width, 3), dtype=np.float32))
    return np.concatenate(panels, axis=0).astype(np.float32)


class RunWriter:
    """Event-file writer for one run (``enabled=False`` on non-zero ranks or with tensorboard off)."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            with self._storage_errors():
                self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """OSError from the writer (or its background thread) -> StorageError naming the event file."""
        try:
            yield
        except OSError as exc:
            events = sorted(self.log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
            raise StorageError.from_os_error(exc, events[-1] if events else self.log_dir) from exc

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        with self._storage_errors():
            for tag, value in values.items():
                self._writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self._writer is not None:
            with self._storage_errors():
                self._writer.add_image(tag, image, step, dataformats="HWC")

    def audio(self, tag: str, wave: torch.Tensor, step: int, sample_rate: int) -> None:
        """``wave``: any shape with ``T`` samples in [-1, 1] (flattened)."""
        if self._writer is not None:
            clip = wave.detach().float().cpu().reshape(1, -1).clamp(-1.0, 1.0)
            with self._storage_errors():
                self._writer.add_audio(tag, clip, step, sample_rate=sample_rate)

    def hparams(self, params: dict[str, Any], metrics: tuple[str, ...]) -> None:
        """Register hyper-parameters for the HParams dashboard; ``metrics`` are scalar tags logged later."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        exp, ssi, sei = hparams(clean, {m: float("nan") for m in metrics})
        file_writer = self._writer._get_file_writer()
        with self._storage_errors():
            for summary in (exp, ssi, sei):
                file_writer.add_summary(summary)

    def flush(self) -> None:
        if self._writer is not None:
            with self._storage_errors():
                self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with self._storage_errors():
                writer.close()


def launch_tensorboard(run_dir: str | Path, port: int = 6006, host: str = "localhost") -> subprocess.Popen:
    """Start ``tensorboard --logdir <run_dir>`` in the background; returns the process (caller stops it)."""
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir), "--port", str(port),
           "--host", host]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
