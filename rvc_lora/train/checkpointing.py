"""Resumable training state on disk: ``<run_dir>/checkpoints/step_XXXXXXXX.pt``.

Files are written atomically, hold only tensors and plain containers (they load with
``torch.load(weights_only=True)``), and only the newest ``keep`` are kept. A state holding NaN or
infinite values is never written, and a failed write (full disk) leaves the previous checkpoint as it
was. RNG states of torch (CPU and CUDA), numpy and Python are captured so that a resumed run continues
exactly. Temporary files of a killed run are removed by :func:`remove_stale_temp_files`.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvc_lora.safe_load import UnsafeFileError, load_torch_file
from rvc_lora.utils import RVCLoraError, StorageError, atomic_write, remove_stale_temp_files

__all__ = [
    "capture_rng_state",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_run_temp_files",
    "restore_rng_state",
    "save_checkpoint",
    "with_last_good_checkpoint",
]

_NAME = re.compile(r"^step_(\d{8,})\.pt$")
# What a run writes with atomic_write: (sub-folder of the run folder, file-name glob).
RUN_FILES = (("checkpoints", "step_*.pt"), (".", "adapter.safetensors"), (".", "best_adapter.safetensors"),
             (".", "merged.pth"), (".", "best.pth"), (".", "G_full.pth"), (".", "D_full.pth"), (".", "config.yaml"))


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in the run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``.

    Refuses (RVCLoraError naming the newest checkpoint) a state with NaN / infinite values, and raises
    StorageError when the disk refuses the write; in both cases the previous checkpoints are untouched.
    """
    path = checkpoint_path(run_dir, step)
    bad = _non_finite(state)
    if bad:
        raise with_last_good_checkpoint(
            RVCLoraError(f"step {step}: the training state holds NaN or infinite values ({bad}); the checkpoint "
                         "was not written"), run_dir,
            fix="lower optim.lr or use trainer.precision=fp32")
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(run_dir)[: -max(1, int(keep))]:
        old.unlink(missing_ok=True)
    return path


def with_last_good_checkpoint(exc: RVCLoraError, run_dir: str | Path, fix: str | None = None) -> RVCLoraError:
    """``exc`` restated for a training run: what happened, that nothing was lost and where the newest
    checkpoint is, and what to do before re-running (the same command resumes)."""
    latest = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been written yet"
    if isinstance(exc, StorageError):
        return StorageError(f"{exc.problem}; nothing was lost, {kept}", f"{exc.fix}", exc.path, exc.errno)
    return type(exc)(f"{exc}; nothing was lost, {kept}; {fix or 'fix this'} and re-run")


def _non_finite(state: Any, prefix: str = "") -> str | None:
    """The key path of the first floating tensor in a nested state holding NaN / inf, else None."""
    if torch.is_tensor(state):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return (prefix or "tensor") if bad else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a corrupt or unsafe file raises naming it."""
    try:
        return load_torch_file(path)
    except (UnsafeFileError, StorageError):
        raise
    except RVCLoraError as exc:
        raise RVCLoraError(f"{exc}; delete it to resume from the previous one") from None


def remove_run_temp_files(run_dir: str | Path, older_than: float) -> list[Path]:
    """Delete the temporary files a killed run left in ``run_dir`` (only this run's own file names)."""
    removed = []
    for sub, pattern in RUN_FILES:
        removed += remove_stale_temp_files(Path(run_dir) / sub, [pattern], older_than)
    return removed


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state as tensors / plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
