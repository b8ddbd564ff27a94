"""Shared helpers: atomic writes never leave partial files; allocator tuning honours its opt-out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rvc_lora.utils import atomic_write, tune_allocator


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


def test_allocator_tuning_can_be_disabled(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RVC_LORA_NO_MALLOC_TUNING", "1")
    assert tune_allocator() is False
    monkeypatch.delenv("RVC_LORA_NO_MALLOC_TUNING")
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert tune_allocator() is True
