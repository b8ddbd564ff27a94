"""Adapter files read once and kept for fast swaps: a small LRU keyed by path, checked by mtime and size."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from rvc_lora.lora import AdapterFile, read_adapter
from rvc_lora.utils import RVCLoraError

CACHE_SIZE = 4


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        raise RVCLoraError(f"adapter file not found: {path}") from None
    return st.st_mtime_ns, st.st_size


class AdapterFileCache:
    """``read(path)`` returns the decoded adapter file, re-reading it only when it changed on disk."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._files: OrderedDict[Path, tuple[tuple[int, int], AdapterFile]] = OrderedDict()
        self.hits = 0  # reads answered from the cache
        self.misses = 0  # reads that decoded the file

    def read(self, path: str | os.PathLike) -> AdapterFile:
        path = Path(path)
        key, stamp = path.resolve(), _stamp(path)
        cached = self._files.get(key)
        if cached is not None and cached[0] == stamp:
            self._files.move_to_end(key)
            self.hits += 1
            return cached[1]
        self.misses += 1
        adapter = read_adapter(path)
        self._files[key] = (stamp, adapter)
        while len(self._files) > self.size:
            self._files.popitem(last=False)
        return adapter
