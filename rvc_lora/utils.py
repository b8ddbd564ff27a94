"""Small shared helpers: user-facing errors, atomic file writes, device selection."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class RVCLoraError(Exception):
    """An error caused by user input (a file, a config value); its message names the culprit.

    ``exit_code`` is what the ``rvc-lora`` command exits with (2: bad input or settings).
    """

    exit_code = 2


class StorageError(RVCLoraError):
    """The file system refused a read or write (no space, permission, read-only, missing folder).

    ``problem`` says what happened to which file, ``fix`` what to do; the message is both.
    """

    exit_code = 1

    def __init__(self, problem: str, fix: str, path: Path | None = None, errno_: int | None = None):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix, self.path, self.errno = problem, fix, path, errno_

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike | None = None,
                      writing: bool = True) -> StorageError:
        """Describe ``exc`` for ``path`` (default: the file the error names) in one line with a fix."""
        where = Path(path if path is not None else (exc.filename or "?"))
        code = exc.errno
        verb, doing = ("write", "writing") if writing else ("read", "reading")
        if code in (errno.ENOSPC, errno.EDQUOT):
            return cls(f"no space left while writing {where}", "free space and re-run", where, code)
        if code == errno.EFBIG:
            return cls(f"no space left while writing {where} (the file-size limit was reached)",
                       "free space or raise the limit (ulimit -f) and re-run", where, code)
        if code in (errno.EACCES, errno.EPERM):
            fix = "make its folder writable or choose another output location" if writing else \
                "check the file's permissions"
            return cls(f"permission denied {doing} {where}", fix, where, code)
        if code == errno.EROFS:
            return cls(f"{where} is on a read-only file system", "choose another output location", where, code)
        if code == errno.ENOENT:
            what = "its folder does not exist" if writing else "no such file or folder"
            return cls(f"cannot {verb} {where}: {what}", "check the path", where, code)
        if code in (errno.ENOTDIR, errno.EEXIST):
            return cls(f"cannot {verb} {where}: a part of the path is a file, not a folder",
                       "choose another output location", where, code)
        if code == errno.EISDIR:
            return cls(f"cannot {verb} {where}: it is a folder", "give a file name", where, code)
        if code in (errno.EMFILE, errno.ENFILE):
            return cls(f"too many open files while {doing} {where}", "raise the limit (ulimit -n) and re-run",
                       where, code)
        reason = exc.strerror or type(exc).__name__
        return cls(f"cannot {verb} {where}: {reason}", "check the disk and the path, then re-run", where, code)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception inside the block leaves any existing ``path`` untouched and removes the
    temporary file, so readers never see a half-written output. File-system failures raise
    :class:`StorageError` naming ``path``, also when the writer (torch, libsndfile, safetensors) hides
    the cause behind its own error type: a full disk or a reached file-size limit is detected here.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
        except (OSError, RVCLoraError):
            raise
        except Exception as exc:
            cause = _hidden_storage_error(tmp)
            if cause is None:
                raise
            raise StorageError.from_os_error(cause, target) from exc
        os.chmod(tmp, _mode_for(target))  # mkstemp files are private (0600); outputs are not
        os.replace(tmp, target)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError.from_os_error(exc, target) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _hidden_storage_error(tmp: Path) -> OSError | None:
    """After a writer failed with its own error type: an OSError if the disk is full or ``tmp`` hit the
    process's file-size limit, else None (the failure was something else)."""
    import resource

    try:
        size = tmp.stat().st_size
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and size >= soft:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        fs = os.statvfs(tmp.parent)
        free_blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        if free_blocks * fs.f_frsize < FULL_DISK_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        return None
    return None


FULL_DISK_BYTES = 1 << 20  # below this much free space a failed write is put down to a full disk


def temp_files(folder: str | os.PathLike, name_glob: str) -> list[Path]:
    """Temporary files that :func:`atomic_write` made for targets in ``folder`` matching ``name_glob``."""
    folder = Path(folder)
    return sorted(folder.glob(f".{name_glob}.*.tmp")) if folder.is_dir() else []


def remove_stale_temp_files(folder: str | os.PathLike, name_globs: Iterable[str], older_than: float) -> list[Path]:
    """Delete :func:`atomic_write` temporaries of ``name_globs`` in ``folder`` last modified before
    ``older_than`` (a ``time.time()`` value): leftovers of a killed process. Returns what was removed."""
    removed = []
    for pattern in name_globs:
        for tmp in temp_files(folder, pattern):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < older_than:
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def check_writable_folder(folder: str | os.PathLike, create: bool = True) -> Path:
    """Check that files can be created in ``folder`` (created if ``create``; else its nearest existing
    ancestor is probed, so nothing is left behind); raises StorageError naming ``folder``."""
    folder = Path(folder)
    probe_in = folder
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            while not probe_in.exists() and probe_in.parent != probe_in:
                probe_in = probe_in.parent
            if not probe_in.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_in))
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError.from_os_error(exc, folder) from exc
    return folder


def _mode_for(target: Path) -> int:
    """The permissions a normally created ``target`` would get: the old file's, else 0666 minus umask."""
    if target.exists():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"`` into the best available device (CUDA, then MPS, then CPU); pass others through."""
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_torch_threads(count: int) -> None:
    """``torch.set_num_threads(count)`` for a ``--threads`` option; below 1 is a one-line error."""
    import torch

    if count < 1:
        raise RVCLoraError(f"--threads must be at least 1, got {count}")
    torch.set_num_threads(count)


def tune_allocator() -> bool:
    """Keep large freed blocks in the process (glibc), so big tensors reuse pages instead of faulting them in.

    PyTorch on CPU allocates and frees activations of hundreds of MB per call; by default glibc serves
    each from a fresh ``mmap`` and unmaps it on free, and page faults dominate. This raises glibc's mmap
    and trim thresholds (measured: the v2 40k generator on 30 s of audio, 22.2 s -> 13.3 s on 2 cores,
    system time 35.7 s -> 1.4 s). The cost: the process keeps its peak memory until it exits. Linux with
    glibc only; ``RVC_LORA_NO_MALLOC_TUNING=1`` disables it. Returns True when applied. The ``rvc-lora``
    command calls it at start; call it early (before large allocations) in your own programs.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("RVC_LORA_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    # Setting any of these freezes glibc's dynamic mmap threshold, so all three are set together.
    settings = ((m_mmap_threshold, 2**31 - 1), (m_trim_threshold, 2**31 - 1), (m_top_pad, 1 << 30))
    return all(mallopt(option, ctypes.c_int(value)) for option, value in settings)
