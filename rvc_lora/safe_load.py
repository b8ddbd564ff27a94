"""The one way model files are read: ``torch.load(weights_only=True)``, with refusals explained.

Every model file (RVC models and bases, training checkpoints, HuBERT / ContentVec, RMVPE) is read by
:func:`load_torch_file`. First the file's pickles are disassembled (``pickletools``; nothing is executed)
and the globals they name are listed: a file naming one that could run code (``posix.system``,
``builtins.eval``, a class with ``__reduce__``) is refused before torch reads it, with a message naming
it. Torch's restricted unpickler stays the final guard; when it refuses, the same listing (not torch's
error text) tells a file that needs code from a damaged or foreign one.

fairseq checkpoints (RVC's ``hubert_base.pt``, ContentVec) also pickle their training configuration:
omegaconf ``DictConfig`` nodes, an ``argparse.Namespace`` in older files, ``fairseq.data.dictionary``
label tables. :func:`load_fairseq_file` lets exactly these through: the plain data containers are built
by their own libraries' code (omegaconf, argparse), and every ``fairseq.`` global becomes an inert recorder
(:class:`InertPickledObject`) that stores what the pickle gives it and runs nothing; fairseq is never
imported. Anything else still refuses the file.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import errno
import importlib
import io
import os
import pickle
import pickletools
import typing
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rvc_lora.utils import RVCLoraError, StorageError

__all__ = ["InertPickledObject", "UnsafeFileError", "code_globals", "load_fairseq_file", "load_torch_file",
           "pickled_globals"]

_STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOENT}
_MAX_PICKLES = 8  # torch's legacy format is a few pickles in a row (magic, protocol, info, data, keys)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_NO_PUSH_OPS = {"PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK"} | _PUT_OPS | {"MEMOIZE"}
# Globals that only build plain data. Names under ``torch.`` are left to torch's own allow-list (its
# tensor rebuild helpers, storages, dtypes); anything else is a callable that loading would run.
_DATA_NAMES = {f"builtins.{n}" for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                                         "str", "bytes", "bytearray", "bool", "slice", "range", "object")} | {
    "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
    "_codecs.encode"}


class UnsafeFileError(RVCLoraError):
    """A pickle that would import and run code when loaded; it was refused, not executed."""


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as unpicklers resolve it: Python 2 names of protocols 0-2 (``__builtin__.dict``,
    written by ``torch.save``) mapped to Python 3's, as ``pickle``'s ``fix_imports`` does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _globals_in_one_pickle(ops: Iterator[tuple[Any, Any, Any]]) -> list[str]:
    """Globals named by one pickle's opcodes (``GLOBAL``/``INST`` and ``STACK_GLOBAL``), in order.

    ``STACK_GLOBAL`` takes module and name from the stack, so the last pushed strings and the memo are
    tracked; a name computed in a way this does not follow is reported as ``<unknown>``.
    """
    found: list[str] = []
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in ops:
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(_python3_name(module, attr))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            ok = isinstance(module, str) and isinstance(attr, str)
            found.append(f"{module}.{attr}" if ok else "<unknown>")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name in _PUT_OPS:
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _GET_OPS:
            pushed.append(memo.get(int(arg)))
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        if name == "STOP":
            break
    return found


def _pickle_streams(path: Path) -> Iterator[io.BufferedIOBase]:
    """The pickles of a torch file: ``*.pkl`` records of a zip file, else the raw file from its start."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".pkl"):
                    yield io.BytesIO(archive.read(info))
        return
    with path.open("rb") as handle:
        yield handle


def pickled_globals(path: str | os.PathLike) -> list[str]:
    """Every global (``module.name``) the pickles in ``path`` would import, without executing anything.

    Reads zip-format torch files (``data.pkl``), torch's legacy format (several pickles in a row) and
    plain pickles. Stops quietly where the data stops being a pickle (tensor bytes, damaged files).
    """
    found: list[str] = []
    try:
        for stream in _pickle_streams(Path(path)):
            for _ in range(_MAX_PICKLES):
                start = stream.tell()
                try:
                    found += _globals_in_one_pickle(pickletools.genops(stream))
                except Exception:  # noqa: BLE001 - not (or no longer) pickle data: stop scanning
                    break
                if stream.tell() == start:
                    break
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        pass
    return list(dict.fromkeys(found))


def code_globals(names: list[str], allowed: Mapping[str, Any] | None = None) -> list[str]:
    """The globals among ``names`` that could run code: neither a plain data type, nor in ``allowed``, nor
    under ``torch.`` (torch's restricted unpickler decides those)."""
    allowed = allowed or {}
    return [n for n in names if n not in allowed and n not in _DATA_NAMES and not n.startswith("torch.")]


def _torch_refused(path: Path) -> list[str]:
    """Globals of a zip-format torch file that torch's restricted unpickler does not allow."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or unreadable: nothing to name
        return []


def _damaged(path: Path, detail: str) -> RVCLoraError:
    return RVCLoraError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {detail}); is it a "
                        "complete .pth file?")


def _refusal(path: Path, names: list[str]) -> UnsafeFileError:
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return UnsafeFileError(f"{path}: refused: this file would run code when loaded (it references {listed}); "
                           "it was not executed")


def load_torch_file(path: str | os.PathLike, allowed: Mapping[str, Any] | None = None,
                    decide: Callable[[str], Any] | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors naming the file.

    ``allowed`` maps extra global names (``module.name``) to the objects the unpickler may build for them
    (plain data containers only). ``decide(name)`` may supply an object for other names (e.g. an inert
    stand-in) or return None to refuse them. Raises ``UnsafeFileError`` for a pickle that would run code
    (naming the globals; nothing is executed), ``StorageError`` when the file cannot be opened, and
    ``RVCLoraError`` for a missing, truncated or foreign file.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise RVCLoraError(f"{path}: file not found")
    if not path.is_file():
        raise RVCLoraError(f"{path}: is a folder, not a model file")
    extra = dict(allowed or {})
    names = pickled_globals(path)
    if decide is not None:
        for name in code_globals(names, extra):
            obj = decide(name)
            if obj is not None:
                extra[name] = obj
    risky = code_globals(names, extra)
    if risky:  # refuse before torch sees the file
        raise _refusal(path, risky)
    safe = [(obj, name) for name, obj in extra.items()]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError as exc:
        if exc.errno in _STORAGE_ERRNOS:
            raise StorageError.from_os_error(exc, path, writing=False) from None
        raise _damaged(path, exc.strerror or type(exc).__name__) from None
    except pickle.UnpicklingError:
        # torch refused something left to its judgement (a torch global outside its allow-list).
        refused = [n for n in _torch_refused(path) if n not in extra]
        if refused:
            raise _refusal(path, refused) from None
        raise RVCLoraError(f"{path}: not a PyTorch checkpoint (its pickle data is damaged or of another "
                           "kind); is it a complete .pth file?") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError,
            AttributeError, IndexError, UnicodeDecodeError, MemoryError) as exc:
        raise _damaged(path, type(exc).__name__) from None


# ---- fairseq checkpoints -------------------------------------------------------------------------------
class InertPickledObject:
    """Stand-in for a pickled third-party object: remembers what the pickle gave it, runs nothing.

    Attributes: ``pickled_name`` (the global it replaces), ``args`` / ``kwargs`` (constructor or reduce
    arguments) and ``state`` (whatever the pickle's BUILD step supplied).
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertPickledObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _inert_class(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[-1], (InertPickledObject,), {"pickled_name": full_name})


def _fairseq_config_globals() -> dict[str, Any]:
    """Name -> object for the plain data a fairseq checkpoint's configuration holds (see the module text)."""
    allowed: dict[str, Any] = {"argparse.Namespace": argparse.Namespace, "typing.Any": typing.Any}
    for name in _DATA_NAMES:
        module, _, attr = name.rpartition(".")
        allowed[name] = getattr(importlib.import_module(module), attr)
    from omegaconf import base, dictconfig, listconfig, nodes

    for module, names in (
        (dictconfig, ["DictConfig"]),
        (listconfig, ["ListConfig"]),
        (base, ["ContainerMetadata", "Metadata"]),
        (nodes, ["AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode"]),
    ):
        for name in names:
            obj = getattr(module, name, None)
            if obj is not None:
                allowed[f"{module.__name__}.{name}"] = obj
    return allowed


def _inert_fairseq(name: str) -> type | None:
    """An inert stand-in for a ``fairseq.`` global (never imported or called); None for anything else."""
    return _inert_class(name) if name.startswith("fairseq.") else None


def load_fairseq_file(path: str | os.PathLike) -> Any:
    """:func:`load_torch_file` for fairseq / Hugging Face ``torch.save`` files: their configuration's plain
    data is allowed and ``fairseq.`` globals become inert recorders. Errors as :func:`load_torch_file`."""
    return load_torch_file(path, allowed=_fairseq_config_globals(), decide=_inert_fairseq)
