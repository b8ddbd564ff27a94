"""Finding the input recordings: a recursive, sorted, reproducible file list."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from rvc_lora.utils import RVCLoraError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")


def find_audio_files(
    input_dir: str | os.PathLike | None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """Audio files under ``input_dir`` (recursively, case-insensitive suffixes), sorted by relative path.

    The order is the file index used in piece names (``<file_index>_<piece_index>``), so it is stable
    across re-runs as long as the set of files is unchanged. Hidden files/folders (leading ".") and
    anything under an ``exclude`` folder (e.g. the experiment folder itself) are ignored.
    Raises ``RVCLoraError`` when the folder is unset, missing, or holds no audio.
    """
    if input_dir is None or str(input_dir) in ("", "None"):
        raise RVCLoraError("data.input_dir is not set: pass data.input_dir=/path/to/recordings")
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise RVCLoraError(f"data.input_dir {root}: folder not found")
    suffixes = {"." + e.lower().lstrip(".") for e in extensions}
    excluded = [Path(e).expanduser().resolve() for e in exclude]
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        resolved = path.resolve()
        if any(resolved.is_relative_to(e) for e in excluded):
            continue
        found.append(path)
    if not found:
        raise RVCLoraError(
            f"data.input_dir {root}: no audio files found (searched recursively for "
            f"{', '.join(sorted(suffixes))})"
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def file_key(path: Path) -> dict:
    """Identity of an input file for resume decisions: size and modification time."""
    st = path.stat()
    return {"source": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def fingerprint(*parts: object) -> str:
    """A short stable hash of ``parts`` (their ``repr``)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]
