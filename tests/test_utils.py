"""Shared helpers: atomic writes never leave partial files; allocator tuning takes effect unless opted out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rvc_lora.utils import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_atomic_write_gives_normal_permissions(tmp_path: Path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "model.pth") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "model.pth").stat().st_mode & 0o777 == 0o644  # readable by others, like any output


_ALLOCATOR_PROBE = """
import ctypes, os
from rvc_lora.utils import tune_allocator

libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def served_by_mmap(nbytes):
    before = libc.mallinfo2().hblkhd  # bytes in blocks glibc mmap()ed (and unmaps on free)
    block = libc.malloc(nbytes)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grew >= nbytes

os.environ["RVC_LORA_NO_MALLOC_TUNING"] = "1"
print(tune_allocator(), served_by_mmap(64 << 20))
del os.environ["RVC_LORA_NO_MALLOC_TUNING"]
print(tune_allocator(), served_by_mmap(64 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="allocator tuning is for glibc")
def test_allocator_tuning_keeps_large_blocks_on_the_heap_unless_disabled():
    """glibc serves a 64 MB allocation with mmap (and unmaps it on free) by default; tune_allocator() makes it
    come from the heap, so freed activations are reused; RVC_LORA_NO_MALLOC_TUNING=1 leaves glibc alone.
    Checked in a fresh process: the tuning is process-wide and cannot be undone."""
    env = {k: v for k, v in os.environ.items() if k != "RVC_LORA_NO_MALLOC_TUNING"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    disabled, enabled = proc.stdout.split()[-4:-2], proc.stdout.split()[-2:]
    assert disabled == ["False", "True"]  # opted out: not applied, glibc still uses mmap
    assert enabled == ["True", "False"]  # applied: the block comes from the heap
