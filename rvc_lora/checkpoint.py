"""Read and write every RVC checkpoint format, safely and strictly.

Formats (see ``rvc_reference.md`` section 3):

- ``small``: RVC's inference model (``assets/weights/*.pth``): ``weight`` (fp16 state dict without
  ``enc_q``), ``config`` (18 items), ``info``, ``sr``, ``f0``, ``version``.
- ``pretrained``: a pretrained base (``f0G40k.pth``, ``f0D40k.pth``): ``{"model": full state dict}``.
- ``training``: RVC's training checkpoints ``G_*.pth`` / ``D_*.pth`` with ``optimizer`` and ``iteration``.

Files whose weight norm uses ``parametrizations.weight.original0/1`` keys are renamed to RVC's
``weight_g`` / ``weight_v`` on load. Nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvc_lora.models import (
    SHIPPED_CONFIGS,
    Synthesizer,
    build_discriminator,
    shipped_config,
)
from rvc_lora.models.weight_norm import split_weight_norm
from rvc_lora.safe_load import load_torch_file
from rvc_lora.utils import RVCLoraError, atomic_write

_PARAM_G = re.compile(r"\.parametrizations\.weight\.original0$")
_PARAM_V = re.compile(r"\.parametrizations\.weight\.original1$")
SAMPLE_RATES = (32000, 40000, 48000)
_NOT_WRITTEN = ("nothing was written (an input holds NaN, or the weights exceed the file's dtype range: try "
                "fp32 or smaller adapter strengths)")


@dataclass
class RVCCheckpoint:
    """What ``load_rvc`` found in a file.

    ``model`` is a float32 ``Synthesizer`` (generator files; small models have no ``enc_q``) or a
    multi-period discriminator (D files). ``dtype`` is the dtype the weights were stored in.
    """

    path: Path
    format: str
    kind: str
    model: nn.Module
    version: str
    sample_rate: int | None
    f0: bool | None
    config: list | None
    info: str
    dtype: torch.dtype
    extra: dict[str, Any] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    @property
    def discriminator(self) -> nn.Module | None:
        """The discriminator for D files, else None."""
        return self.model if self.kind == "discriminator" else None

    @property
    def n_speakers(self) -> int | None:
        """Rows of the speaker embedding (generator files)."""
        emb = getattr(self.model, "emb_g", None)
        return None if emb is None else int(emb.weight.shape[0])


def read_checkpoint_file(path: str | Path) -> Any:
    """Read a model file safely (:func:`rvc_lora.safe_load.load_torch_file`); errors name the file."""
    return load_torch_file(path)


def check_finite(tensors: Mapping[str, Any], source: str | Path, fix: str = "the file is damaged") -> None:
    """Raise RVCLoraError naming ``source`` and the first floating tensor holding NaN or infinity."""
    for key, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RVCLoraError(f"{source}: tensor {key} holds NaN or infinite values; {fix}")


def normalize_weight_norm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``*.parametrizations.weight.original0/1`` to RVC's ``*.weight_g`` / ``*.weight_v``."""
    out: dict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        key = _PARAM_G.sub(".weight_g", key)
        key = _PARAM_V.sub(".weight_v", key)
        out[key] = value
    return out


def _stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    for value in state.values():
        if torch.is_tensor(value) and value.is_floating_point():
            return value.dtype
    return torch.float32


def _classify(obj: Any, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Return (format, state dict) for a loaded object, or raise naming the file."""
    if not isinstance(obj, dict):
        raise RVCLoraError(f"{path}: not an RVC checkpoint (top level is {type(obj).__name__}, not a dict)")
    if isinstance(obj.get("weight"), dict):
        return "small", obj["weight"]
    if isinstance(obj.get("model"), dict):
        fmt = "training" if ("optimizer" in obj or "iteration" in obj) else "pretrained"
        return fmt, obj["model"]
    if obj and all(torch.is_tensor(v) for v in obj.values()) and any(
        k.startswith(("enc_p.", "dec.", "discriminators.")) for k in obj
    ):
        return "state_dict", obj
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise RVCLoraError(
        f"{path}: not an RVC checkpoint: expected a 'weight' (inference model) or 'model' (pretrained / "
        f"training) entry, found keys: {keys or 'none'}"
    )


def _expected_shapes(module: nn.Module, drop_enc_q: bool) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in module.state_dict().items()
        if not (drop_enc_q and k.startswith("enc_q."))
    }


def _key_problems(
    expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} (file {tuple(state[k].shape)}, model {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    return missing, unexpected, mis_shaped


def _describe(names: list[str], limit: int = 6) -> str:
    head = ", ".join(names[:limit])
    return head + (f" … and {len(names) - limit} more" if len(names) > limit else "")


def _strict_load(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool, drop_enc_q: bool
) -> tuple[list[str], list[str]]:
    expected = _expected_shapes(model, drop_enc_q)
    missing, unexpected, mis_shaped = _key_problems(expected, state)
    if mis_shaped:
        raise RVCLoraError(f"{path}: tensors with the wrong shape: {_describe(mis_shaped)}")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        raise RVCLoraError(
            f"{path}: keys do not match the model ({'; '.join(parts)}); pass strict=False for a partial load"
        )
    usable = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in expected}
    model.load_state_dict(usable, strict=False)
    return missing, unexpected


def _generator_spec_from_state(state: dict[str, torch.Tensor], path: Path) -> tuple[str, bool, int, list]:
    """Infer (version, f0, sample_rate, config) of a generator state dict without a config list.

    Version comes from the content width of ``enc_p.emb_phone``, f0 from the harmonic source,
    and the sample rate from the shipped configuration whose shapes match.
    """
    emb = state.get("enc_p.emb_phone.weight")
    if emb is None:
        raise RVCLoraError(f"{path}: no 'enc_p.emb_phone.weight': not an RVC generator")
    version = {256: "v1", 768: "v2"}.get(int(emb.shape[1]))
    if version is None:
        raise RVCLoraError(f"{path}: content width {emb.shape[1]} is neither 256 (v1) nor 768 (v2)")
    f0 = "dec.m_source.l_linear.weight" in state
    for sr in SAMPLE_RATES:
        config = list(shipped_config(version, sr))
        if "emb_g.weight" in state:
            config[15] = int(state["emb_g.weight"].shape[0])
        with torch.device("meta"):
            candidate = Synthesizer(config, version, f0)
        expected = _expected_shapes(candidate, drop_enc_q=not any(k.startswith("enc_q.") for k in state))
        _, _, mis_shaped = _key_problems(expected, state)
        if not mis_shaped and set(expected) <= set(state):
            return version, f0, sr, config
    raise RVCLoraError(
        f"{path}: the weights match none of RVC's shipped {version} configurations "
        f"({', '.join(str(s) for s in SAMPLE_RATES)} Hz) and the file carries no 'config' list"
    )


def _discriminator_spec(state: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """(version, width divisor) of a discriminator state dict: 7 sub-discriminators = v1, 9 = v2."""
    indices = {int(m.group(1)) for k in state if (m := re.match(r"discriminators\.(\d+)\.", k))}
    version = {7: "v1", 9: "v2"}.get(len(indices))
    if version is None:
        raise RVCLoraError(f"{path}: {len(indices)} sub-discriminators: expected 7 (v1) or 9 (v2)")
    first = state.get("discriminators.0.convs.0.weight_v")
    divisor = 16 // int(first.shape[0]) if first is not None and int(first.shape[0]) in (1, 2, 4, 8, 16) else 1
    return version, divisor


def _sample_rate_from(value: Any) -> int:
    if isinstance(value, str):
        named = {"32k": 32000, "40k": 40000, "48k": 48000}
        if value in named:
            return named[value]
        return int(value)
    return int(value)


def load_rvc(path: str | Path, strict: bool = True) -> RVCCheckpoint:
    """Load any RVC generator or discriminator file into a float32 model.

    Raises ``RVCLoraError`` naming the file for missing, truncated, non-RVC or unsafe files, and for
    missing, unexpected or mis-shaped keys (``strict=False`` loads what matches and reports the rest).
    """
    path = Path(path)
    obj = read_checkpoint_file(path)
    fmt, raw_state = _classify(obj, path)
    check_finite(raw_state, path)
    dtype = _stored_dtype(raw_state)
    state = normalize_weight_norm_keys(raw_state)
    extra = {k: v for k, v in obj.items() if k not in ("weight", "model", "optimizer")}
    info = str(obj.get("info", ""))

    if any(k.startswith("discriminators.") for k in state):
        version, divisor = _discriminator_spec(state, path)
        model = build_discriminator(version, divisor)
        missing, unexpected = _strict_load(model, state, path, strict, drop_enc_q=False)
        return RVCCheckpoint(
            path, fmt, "discriminator", model.eval(), version, None, None, None, info, dtype, extra,
            missing, unexpected,
        )

    if isinstance(obj.get("config"), list):
        config = list(obj["config"])
        version = str(obj.get("version", "v1"))
        f0 = bool(int(obj.get("f0", 1)))
        if "emb_g.weight" in state:  # RVC trusts the embedding over the config for the speaker count
            config[15] = int(state["emb_g.weight"].shape[0])
        sample_rate = _sample_rate_from(config[-1])
    else:
        version, f0, sample_rate, config = _generator_spec_from_state(state, path)
    if version not in ("v1", "v2"):
        raise RVCLoraError(f"{path}: unknown RVC version {version!r} (expected 'v1' or 'v2')")
    try:
        model = Synthesizer(config, version, f0)
    except Exception as exc:  # a malformed config list
        raise RVCLoraError(f"{path}: cannot build a synthesizer from its config {config!r}: {exc}") from None
    has_enc_q = any(k.startswith("enc_q.") for k in state)
    if not has_enc_q:
        del model.enc_q  # inference-only file: RVC drops the posterior encoder too
    missing, unexpected = _strict_load(model, state, path, strict, drop_enc_q=not has_enc_q)
    return RVCCheckpoint(
        path, fmt, "generator", model.eval(), version, sample_rate, f0, config, info, dtype, extra,
        missing, unexpected,
    )


def rvc_state_dict(model: Synthesizer) -> dict[str, torch.Tensor]:
    """The synthesizer's state dict with exactly RVC's key names (enc_q dropped).

    Works whatever the in-memory weight-norm state: legacy ``weight_g``/``weight_v`` pass through,
    parametrization keys are renamed, and plain ``weight`` tensors of layers that RVC weight-norms are
    re-split into g / v. Raises if the result is not exactly RVC's key set (e.g. unmerged LoRA layers).
    """
    with torch.device("meta"):
        reference = Synthesizer(list(model.config), model.version, model.f0)
    wanted = {k: tuple(v.shape) for k, v in reference.state_dict().items() if not k.startswith("enc_q.")}
    state = normalize_weight_norm_keys(
        {k: v for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    )
    out: dict[str, torch.Tensor] = OrderedDict()
    for key in wanted:
        if key in state:
            out[key] = state[key]
        elif key.endswith(".weight_g") or key.endswith(".weight_v"):
            plain = state.get(key[: -len("_g")])
            if plain is None:
                continue
            g, v = split_weight_norm(plain)
            out[key] = g if key.endswith("_g") else v
    extra = [k for k in state if k not in wanted and not (k.endswith(".weight") and k + "_g" in wanted)]
    missing = [k for k in wanted if k not in out]
    if extra or missing:
        hint = " (merge LoRA adapters with merge_and_unload() first)" if any(".lora_" in k or ".base." in k
                                                                            for k in extra) else ""
        raise RVCLoraError(
            "model does not map onto RVC's key set"
            + (f"; unexpected: {_describe(extra)}" if extra else "")
            + (f"; missing: {_describe(missing)}" if missing else "")
            + hint
        )
    bad = [f"{k} {tuple(out[k].shape)} != {wanted[k]}" for k in wanted if tuple(out[k].shape) != wanted[k]]
    if bad:
        raise RVCLoraError(f"model tensors have the wrong shape for RVC: {_describe(bad)}")
    return out


def plain(value: Any) -> Any:
    """Plain lists / dicts / scalars for values that may be tuples or OmegaConf containers.

    ``torch.load(weights_only=True)`` refuses anything else, so files must hold only these.
    """
    if isinstance(value, (str, bytes, int, float, bool)) or value is None or torch.is_tensor(value):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [plain(v) for v in value]
    raise TypeError(f"cannot store a {type(value).__name__} in an RVC checkpoint")


def rvc_config_list(model: Synthesizer, sample_rate: int) -> list:
    """The 18-item config RVC stores: position 1 is the literal 32, the last the rate in Hz."""
    config = plain(model.config)
    config[1] = 32
    config[15] = int(model.emb_g.weight.shape[0])
    config[-1] = int(sample_rate)
    return config


def save_rvc(
    model: Synthesizer,
    path: str | Path,
    version: str | None = None,
    f0: bool | None = None,
    sample_rate: int | None = None,
    info: str = "",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write RVC's small inference format exactly (fp16 by default), atomically.

    Keys are RVC's (``weight_g``/``weight_v`` re-split where needed, no ``enc_q``); top level is an
    ordered dict ``weight, config, info, sr, f0, version`` like RVC's own ``savee``.
    """
    version = version or model.version
    f0 = model.f0 if f0 is None else f0
    sample_rate = int(sample_rate or model.sample_rate)
    state = rvc_state_dict(model)
    weight = OrderedDict(
        (k, v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()) for k, v in state.items()
    )
    check_finite(weight, path, _NOT_WRITTEN)
    payload: OrderedDict[str, Any] = OrderedDict()
    payload["weight"] = weight
    payload["config"] = rvc_config_list(model, sample_rate)
    payload["info"] = info
    payload["sr"] = f"{sample_rate // 1000}k"
    payload["f0"] = int(bool(f0))
    payload["version"] = version
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_pretrained(model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float16,
                    **metadata: Any) -> Path:
    """Write a pretrained-base layout file ``{"model": full state dict}`` (RVC reads only ``model``).

    Extra ``metadata`` (e.g. ``config``, ``version``, ``f0``, ``sr``) is stored beside it so that
    non-shipped configurations can be loaded back; RVC ignores these keys.
    """
    state = OrderedDict(
        (k, v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
        for k, v in normalize_weight_norm_keys(model.state_dict()).items()
    )
    check_finite(state, path, _NOT_WRITTEN)
    payload: dict[str, Any] = {"model": state, **plain(metadata)}
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level submodule (enc_p, dec, flow, enc_q, emb_g, ...)."""
    counts: dict[str, int] = {}
    for name, child in model.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


__all__ = [
    "RVCCheckpoint",
    "SHIPPED_CONFIGS",
    "load_rvc",
    "check_finite",
    "normalize_weight_norm_keys",
    "parameter_counts",
    "read_checkpoint_file",
    "rvc_config_list",
    "rvc_state_dict",
    "save_pretrained",
    "save_rvc",
]
