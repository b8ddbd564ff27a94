"""The pitch, content and index stages of ``rvc-lora prepare`` (per piece, resumable).

A piece whose outputs exist is not recomputed (its f0 statistics are read back from ``2b-f0nsf``);
``force=True`` recomputes everything (used when the pitch method / content model changed).
Every array is written to a temporary file and renamed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_lora.data.experiment import ExperimentLayout
from rvc_lora.utils import atomic_write

# Pitch methods that run on the CPU without torch; these go to the worker pool.
CPU_PITCH_METHODS = ("harvest", "dio", "pm", "pyin")
# Fewer pieces than this are not worth starting worker processes for (each imports torch).
POOL_MIN_PIECES = 24


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and rename."""
    with atomic_write(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)


def read_wav(path: Path) -> np.ndarray:
    """A mono float32 WAV as [T]."""
    import soundfile as sf

    x, _ = sf.read(str(path), dtype="float32", always_2d=False)
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float32)


@dataclass
class F0Stats:
    """Pitch statistics of one piece (Hz over voiced frames; 0 when nothing is voiced)."""

    median_hz: float = 0.0
    min_hz: float = 0.0
    max_hz: float = 0.0
    voiced_ratio: float = 0.0

    @classmethod
    def of(cls, hz: np.ndarray) -> F0Stats:
        hz = np.asarray(hz, dtype=np.float64)
        voiced = hz[hz > 0]
        if hz.size == 0 or voiced.size == 0:
            return cls()
        return cls(round(float(np.median(voiced)), 2), round(float(voiced.min()), 2),
                   round(float(voiced.max()), 2), round(voiced.size / hz.size, 4))


# ----------------------------------------------------------------------------------------------------
# pitch

_EXTRACTORS: dict[tuple, object] = {}


def _extractor(method: str, rmvpe_path: str | None, device: str):
    from rvc_lora.features.pitch import get_pitch_extractor

    key = (method, rmvpe_path, device)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = get_pitch_extractor(method, device=device, rmvpe_path=rmvpe_path)
    return _EXTRACTORS[key]


@dataclass(frozen=True)
class PitchJob:
    """Picklable pitch work for one piece."""

    root: str
    version: str
    name: str
    method: str
    rmvpe_path: str | None
    device: str


def pitch_piece(job: PitchJob) -> tuple[str, F0Stats | None, str]:
    """Extract and save f0 (Hz, float64) and coarse pitch (int64) for one piece: (name, stats, error)."""
    from rvc_lora.features.pitch import HOP, coarse_pitch

    layout = ExperimentLayout(job.root, job.version)
    try:
        x = read_wav(layout.wav16k(job.name))
        hz = _extractor(job.method, job.rmvpe_path, job.device)(x, x.shape[0] // HOP).astype(np.float64)
    except Exception as err:  # a broken piece must not stop the run; it is reported instead
        return job.name, None, f"pitch extraction failed ({type(err).__name__}: {err})"
    save_npy(layout.f0_hz(job.name), hz)
    save_npy(layout.f0_coarse(job.name), coarse_pitch(hz))
    return job.name, F0Stats.of(hz), ""


def pitch_stage(layout: ExperimentLayout, names: list[str], method: str, rmvpe_path: str | None,
                device: str, executor: Callable[[], Executor | None] | None = None, force: bool = False,
                progress: Callable[[Iterable, int], Iterable] = lambda it, n: it
                ) -> tuple[dict[str, F0Stats], dict[str, str], int]:
    """f0 for every piece in ``names``: (stats by name, errors by name, number computed).

    ``executor``: a factory for the worker pool, called only when CPU-method work is left.
    """
    stats: dict[str, F0Stats] = {}
    errors: dict[str, str] = {}
    todo = []
    for name in names:
        if not force and layout.f0_hz(name).is_file() and layout.f0_coarse(name).is_file():
            try:
                stats[name] = F0Stats.of(np.load(layout.f0_hz(name)))
                continue
            except (OSError, ValueError):
                pass  # unreadable leftovers are recomputed
        todo.append(PitchJob(str(layout.root), layout.version, name, method, rmvpe_path, device))
    parallel = executor is not None and method in CPU_PITCH_METHODS and len(todo) >= POOL_MIN_PIECES
    pool = executor() if parallel else None
    if pool is not None:
        results = pool.map(pitch_piece, todo, chunksize=max(1, len(todo) // 32))
    else:
        results = map(pitch_piece, todo)
    for name, st, err in progress(results, len(todo)):
        if st is None:
            errors[name] = err
        else:
            stats[name] = st
    _EXTRACTORS.clear()  # free the pitch model of this process
    return stats, errors, len(todo)


# ----------------------------------------------------------------------------------------------------
# content


def content_stage(layout: ExperimentLayout, names: list[str], encoder, batch_size: int = 8,
                  force: bool = False, progress: Callable[[Iterable, int], Iterable] = lambda it, n: it
                  ) -> tuple[dict[str, str], int]:
    """Content features for every piece in ``names``: (errors by name, number computed).

    Pieces of identical length are encoded together (no padding, so results match one-by-one
    encoding up to float rounding, ~1e-6); features are saved as float32 [frames @ 50 fps, dim].
    Pieces whose features contain NaN are not saved (as RVC) and reported.
    """
    import soundfile as sf
    import torch

    errors: dict[str, str] = {}
    groups: dict[int, list[str]] = defaultdict(list)
    for name in names:
        if not force and layout.feature(name).is_file():
            continue
        try:
            groups[sf.info(str(layout.wav16k(name))).frames].append(name)
        except (RuntimeError, OSError) as err:
            errors[name] = f"cannot read 16 kHz audio ({err})"
    batches = [(n, group[i:i + batch_size]) for n, group in sorted(groups.items())
               for i in range(0, len(group), max(1, batch_size))]
    total = sum(len(b) for _, b in batches)

    def run():
        for length, batch in batches:
            if encoder.num_frames(length) < 1:
                for name in batch:
                    errors[name] = f"too short for the content encoder ({length} samples at 16 kHz)"
                    yield name
                continue
            audio = torch.from_numpy(np.stack([read_wav(layout.wav16k(n)) for n in batch]))
            feats = encoder.encode(audio, layout.version).cpu().numpy().astype(np.float32)
            for name, feat in zip(batch, feats, strict=True):
                if not np.isfinite(feat).all():
                    errors[name] = "content features contain NaN"
                else:
                    save_npy(layout.feature(name), feat)
                yield name

    for _ in progress(run(), total):
        pass
    return errors, total


# ----------------------------------------------------------------------------------------------------
# index


def index_stage(layout: ExperimentLayout, names: list[str], exp_name: str, token: str, force: bool = False,
                progress: Callable[[Iterable, int], Iterable] = lambda it, n: it) -> tuple[Path | None, bool]:
    """Train and save the faiss index on the features of ``names``: (index path, built now?).

    Skipped when ``.prepare/index.json`` records the same ``token`` (train pieces + content model) and the
    index file still exists. Index files of other sizes (``added_IVF*``) are removed after saving.
    """
    from rvc_lora.data.index import save_index, train_index

    state = layout.root / ".prepare" / "index.json"
    if not force and state.is_file():
        try:
            recorded = json.loads(state.read_text())
            path = layout.root / recorded["file"]
            if recorded.get("token") == token and path.is_file():
                return path, False
        except (ValueError, KeyError, TypeError):
            pass
    if not names:
        return None, False
    feats = [np.load(layout.feature(n)) for n in progress(names, len(names))]
    index = train_index(np.concatenate(feats, axis=0))
    path = save_index(index, layout.root, exp_name, layout.version)
    for other in layout.index_files():
        if other != path:
            other.unlink(missing_ok=True)
    with atomic_write(state) as tmp:
        tmp.write_text(json.dumps({"token": token, "file": path.name}))
    return path, True


def default_device(device: str) -> str:
    """``auto`` under torchrun with CUDA becomes ``cuda:LOCAL_RANK``; anything else passes through."""
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device
