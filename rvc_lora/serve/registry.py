"""The adapter registry: a folder of ``NAME.safetensors`` files that clients refer to by NAME only.

Client-supplied names are checked against :data:`NAME_PATTERN` and looked up in a listing of the folder;
they are never joined onto a path (uploads join only a name that passed the pattern).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from rvc_lora.utils import RVCLoraError

SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class UnknownAdapter(RVCLoraError):
    """A name that is not in the registry."""


class BadAdapterName(RVCLoraError):
    """A name that can never be in the registry (path-like, empty, odd characters)."""


def check_name(name: object) -> str:
    """``name`` if it is a valid registry name, else BadAdapterName."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise BadAdapterName(f"{name!r} is not an adapter name: use the name of a registry entry (letters, digits, "
                             "'.', '_', '-'; no paths)")
    return name


@dataclass(frozen=True)
class AdapterEntry:
    """One registry file: its name, path, size and change stamp (mtime ns, size)."""

    name: str
    path: Path
    size: int
    stamp: tuple[int, int]


class AdapterRegistry:
    """The ``*.safetensors`` files directly in ``folder`` (re-listed when a name is not found)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RVCLoraError(f"adapter folder not found: {self.folder}")
        self._lock = threading.Lock()
        self._entries: dict[str, AdapterEntry] = {}
        self.rescan()

    def rescan(self) -> dict[str, AdapterEntry]:
        """List the folder again; returns name -> entry."""
        entries = {}
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            name = path.name[:-len(SUFFIX)]
            if not NAME_PATTERN.match(name) or ".." in name:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                entries[name] = AdapterEntry(name, path, st.st_size, (st.st_mtime_ns, st.st_size))
        with self._lock:
            self._entries = entries
        return dict(entries)

    def entries(self) -> dict[str, AdapterEntry]:
        with self._lock:
            return dict(self._entries)

    def get(self, name: object) -> AdapterEntry:
        """The entry named ``name``; raises BadAdapterName / UnknownAdapter."""
        name = check_name(name)
        entry = self.entries().get(name)
        if entry is None or not entry.path.is_file():
            entry = self.rescan().get(name)
        if entry is None:
            raise UnknownAdapter(f"no adapter named {name!r} in the registry")
        try:
            st = entry.path.stat()
        except OSError:
            raise UnknownAdapter(f"adapter {name!r} was removed from the registry") from None
        stamp = (st.st_mtime_ns, st.st_size)
        return entry if stamp == entry.stamp else AdapterEntry(name, entry.path, st.st_size, stamp)

    def target(self, name: object) -> Path:
        """Where an upload named ``name`` is stored (the name checked first)."""
        return self.folder / f"{check_name(name)}{SUFFIX}"


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether a file starting with ``head`` (>= 9 bytes) of ``size`` bytes has a safetensors header:
    an 8-byte little-endian header length that fits in the file, then a JSON object."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= min(SAFETENSORS_MAX_HEADER, size - 8) and head[8:9] == b"{"
