"""Load third-party ``torch.save`` pickles (fairseq / Hugging Face checkpoints) without running their code.

Every load goes through ``torch.load(weights_only=True)``, torch's restricted unpickler, which can only
build tensors, plain containers and classes it was told about. fairseq checkpoints (e.g. RVC's
``hubert_base.pt``) also pickle their training configuration: omegaconf ``DictConfig`` objects, an
``argparse.Namespace`` in older files, and ``fairseq.data.dictionary.Dictionary`` label tables. Those
are let through as follows, and nothing else is:

* a short allow-list of plain data containers (omegaconf's config nodes, ``argparse.Namespace``,
  ``typing.Any``, ``collections.defaultdict``, builtin container types). These only hold values; the
  unpickler creates them and sets their state, and their own library code (omegaconf, argparse) is what
  runs, never code named by the file.
* any global under the ``fairseq.`` namespace is replaced by an inert recorder class defined here
  (:class:`InertPickledObject`): it stores the arguments and state it is given and does nothing else.
  fairseq itself is never imported, and no fairseq callable is ever invoked.

Anything else (``os.system``, ``builtins.eval``, a user class with a ``__reduce__``, ...) makes the
load fail with :class:`~rvc_lora.safe_load.UnsafeFileError`, before that callable is executed.
"""

from __future__ import annotations

import argparse
import collections
import os
import typing
from typing import Any

from rvc_lora.safe_load import load_torch_file


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


def _harmless_globals() -> dict[str, Any]:
    """Fully qualified name -> object for the plain data containers we accept in a checkpoint."""
    allowed: dict[str, Any] = {
        "argparse.Namespace": argparse.Namespace,
        "typing.Any": typing.Any,
        "collections.defaultdict": collections.defaultdict,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.dict": dict,
        "builtins.list": list,
        "builtins.tuple": tuple,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.int": int,
        "builtins.float": float,
        "builtins.str": str,
        "builtins.bool": bool,
        "builtins.bytes": bytes,
        "builtins.object": object,
    }
    try:  # omegaconf is a dependency (hydra), but keep the loader usable without it
        from omegaconf import base, dictconfig, listconfig, nodes
    except ImportError:  # pragma: no cover - omegaconf is installed with hydra-core
        return allowed
    for module, names in (
        (dictconfig, ["DictConfig"]),
        (listconfig, ["ListConfig"]),
        (base, ["ContainerMetadata", "Metadata"]),
        (nodes, ["AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
                 "PathNode"]),
    ):
        for name in names:
            obj = getattr(module, name, None)
            if obj is not None:
                allowed[f"{module.__name__}.{name}"] = obj
    return allowed


def _inert_fairseq(name: str) -> type | None:
    """An inert stand-in for a ``fairseq.`` global (never imported or called); None for anything else."""
    return _inert_class(name) if name.startswith("fairseq.") else None


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` plus the allow-list described above.

    Raises RVCLoraError (naming the file) if the pickle references any other global, or is not a torch
    file at all.
    """
    return load_torch_file(path, allowed=_harmless_globals(), decide=_inert_fairseq)
