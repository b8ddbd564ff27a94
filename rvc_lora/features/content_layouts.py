"""HuBERT checkpoint layouts (fairseq, Hugging Face) mapped onto torchaudio's ``Wav2Vec2Model``.

Both layouts are renamed to torchaudio's parameter names first (``to_torchaudio_keys``); the model's
sizes are then read off the tensor shapes (``infer_spec``), with the few facts that shapes cannot tell
(conv strides, attention heads, pre/post layer norm, input normalisation) taken from the checkpoint's
configuration when it has one and from HuBERT-base defaults otherwise.

torchaudio names used below (``W`` = ``Wav2Vec2Model``)::

    feature_extractor.conv_layers.{i}.conv.{weight,bias}         conv front end
    feature_extractor.conv_layers.{i}.layer_norm.{weight,bias}   GroupNorm (i = 0) or LayerNorm (all i)
    encoder.feature_projection.{layer_norm,projection}.*
    encoder.transformer.pos_conv_embed.conv.{bias,parametrizations.weight.original0 (g),original1 (v)}
    encoder.transformer.layer_norm.*
    encoder.transformer.layers.{n}.attention.{q,k,v,out}_proj.*
    encoder.transformer.layers.{n}.{layer_norm,final_layer_norm}.*
    encoder.transformer.layers.{n}.feed_forward.{intermediate_dense,output_dense}.*
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from rvc_lora.utils import RVCLoraError

# fairseq's conv_feature_layers for every HuBERT / wav2vec 2.0 model: (channels, kernel, stride)
HUBERT_CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)
HUBERT_CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)

_POS_G = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"
_POS_V = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"


@dataclass
class HubertSpec:
    """Sizes of a HuBERT-style encoder plus the RVC-relevant extras (final_proj, input normalisation)."""

    conv_layers: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(512, k, s) for k, s in zip(HUBERT_CONV_KERNELS, HUBERT_CONV_STRIDES, strict=True)]
    )
    conv_norm: str = "group_norm"  # "group_norm" (first conv only) or "layer_norm" (every conv)
    conv_bias: bool = False
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_first: bool = False
    final_proj_dim: int | None = 256
    normalize: bool = False


@dataclass
class Hints:
    """Facts from a checkpoint's configuration that tensor shapes cannot provide (None = unknown)."""

    conv_strides: list[int] | None = None
    num_heads: int | None = None
    layer_norm_first: bool | None = None
    normalize: bool | None = None


# --------------------------------------------------------------------------------------------------
# key renaming

_FAIRSEQ_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)"),
     r"feature_extractor.conv_layers.\1.conv.\2"),
    (re.compile(r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)"),
     r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (re.compile(r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)"),
     r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (re.compile(r"layer_norm\.(weight|bias)"), r"encoder.feature_projection.layer_norm.\1"),
    (re.compile(r"post_extract_proj\.(weight|bias)"), r"encoder.feature_projection.projection.\1"),
    (re.compile(r"encoder\.pos_conv\.0\.bias"), "encoder.transformer.pos_conv_embed.conv.bias"),
    (re.compile(r"encoder\.pos_conv\.0\.weight_g"), _POS_G),
    (re.compile(r"encoder\.pos_conv\.0\.weight_v"), _POS_V),
    (re.compile(r"encoder\.pos_conv\.0\.parametrizations\.weight\.original0"), _POS_G),
    (re.compile(r"encoder\.pos_conv\.0\.parametrizations\.weight\.original1"), _POS_V),
    (re.compile(r"encoder\.layer_norm\.(weight|bias)"), r"encoder.transformer.layer_norm.\1"),
    (re.compile(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)"),
     r"encoder.transformer.layers.\1.attention.\2_proj.\3"),
    (re.compile(r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)"),
     r"encoder.transformer.layers.\1.layer_norm.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)"),
     r"encoder.transformer.layers.\1.feed_forward.intermediate_dense.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)"),
     r"encoder.transformer.layers.\1.feed_forward.output_dense.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)"),
     r"encoder.transformer.layers.\1.final_layer_norm.\2"),
    (re.compile(r"final_proj\.(weight|bias)"), r"final_proj.\1"),
    # pre-training only: masking embedding, label embeddings, quantiser / target projections
    (re.compile(r"(mask_emb|label_embs_concat|label_embs\..*|quantizer\..*|project_q\..*|target_glu\..*)"),
     None),
]

_HF_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)"),
     r"feature_extractor.conv_layers.\1.\2.\3"),
    (re.compile(r"feature_projection\.(layer_norm|projection)\.(weight|bias)"),
     r"encoder.feature_projection.\1.\2"),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.bias"), "encoder.transformer.pos_conv_embed.conv.bias"),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.weight_g"), _POS_G),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.weight_v"), _POS_V),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0"), _POS_G),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1"), _POS_V),
    (re.compile(r"encoder\.layer_norm\.(weight|bias)"), r"encoder.transformer.layer_norm.\1"),
    (re.compile(r"encoder\.layers\.(\d+)\.(attention\.(?:q|k|v|out)_proj|layer_norm|final_layer_norm|"
                r"feed_forward\.(?:intermediate|output)_dense)\.(weight|bias)"),
     r"encoder.transformer.layers.\1.\2.\3"),
    (re.compile(r"final_proj\.(weight|bias)"), r"final_proj.\1"),
    (re.compile(r"masked_spec_embed"), None),
]


def detect_layout(state: dict[str, Any]) -> str:
    """Return ``"fairseq"`` or ``"hf"`` from a state dict's key names, or raise RVCLoraError."""
    keys = [k.removeprefix("hubert.").removeprefix("w2v_model.") for k in state]
    if any(k.startswith("post_extract_proj.") or ".self_attn." in k for k in keys):
        return "fairseq"
    if any(k.startswith("feature_projection.") or ".attention.q_proj." in k for k in keys):
        return "hf"
    raise RVCLoraError("not a HuBERT state dict (neither fairseq nor Hugging Face parameter names found)")


def to_torchaudio_keys(state: dict[str, Any], layout: str, source: str = "checkpoint") -> dict[str, Any]:
    """Rename a fairseq or Hugging Face HuBERT state dict to torchaudio's names (+ ``final_proj.*``).

    Unknown keys raise RVCLoraError naming ``source``, so a different architecture is never half-loaded.
    """
    rules = _FAIRSEQ_RULES if layout == "fairseq" else _HF_RULES
    prefixes = ("w2v_model.",) if layout == "fairseq" else ("hubert.",)
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = key
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        for pattern, replacement in rules:
            if pattern.fullmatch(name):
                if replacement is not None:
                    out[pattern.sub(replacement, name)] = value
                break
        else:
            raise RVCLoraError(f"{source}: unexpected parameter {key!r} for a {layout} HuBERT checkpoint")
    return out


# --------------------------------------------------------------------------------------------------
# configuration hints


def _get(section: Any, key: str) -> Any:
    """Read ``key`` from a dict, argparse.Namespace or omegaconf DictConfig (None if absent)."""
    if section is None:
        return None
    try:
        if hasattr(section, "get") and not isinstance(section, type):
            return section.get(key)
    except Exception:  # an unresolvable interpolation, a stub object, ...
        return None
    return getattr(section, key, None)


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string (list/tuple literals joined by + and *) safely."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)}")

    value = ev(ast.parse(text, mode="eval"))
    layers = [tuple(int(v) for v in item) for item in value]
    if not layers or any(len(t) != 3 for t in layers):
        raise ValueError(f"expected a list of (dim, kernel, stride) triples, got {text!r}")
    return layers  # type: ignore[return-value]


def fairseq_hints(checkpoint: dict[str, Any]) -> Hints:
    """Hints from a fairseq checkpoint's ``cfg`` (``cfg.model`` / ``cfg.task``) or legacy ``args``."""
    cfg = checkpoint.get("cfg")
    args = checkpoint.get("args")
    model_cfg = _get(cfg, "model") if cfg is not None else None
    task_cfg = _get(cfg, "task") if cfg is not None else None
    if model_cfg is None:
        model_cfg = args
    if task_cfg is None:
        task_cfg = args
    hints = Hints(
        num_heads=_as_int(_get(model_cfg, "encoder_attention_heads")),
        layer_norm_first=_as_bool(_get(model_cfg, "layer_norm_first")),
        normalize=_as_bool(_get(task_cfg, "normalize")),
    )
    conv_text = _get(model_cfg, "conv_feature_layers")
    if isinstance(conv_text, str):
        try:
            hints.conv_strides = [s for _, _, s in parse_conv_layers(conv_text)]
        except (ValueError, SyntaxError, TypeError):
            hints.conv_strides = None
    return hints


def hf_hints(config: dict[str, Any] | None, preprocessor: dict[str, Any] | None) -> Hints:
    """Hints from a Hugging Face ``config.json`` and ``preprocessor_config.json`` (either may be None)."""
    config = config or {}
    strides = config.get("conv_stride")
    return Hints(
        conv_strides=[int(s) for s in strides] if isinstance(strides, list) else None,
        num_heads=_as_int(config.get("num_attention_heads")),
        layer_norm_first=_as_bool(config.get("do_stable_layer_norm")),
        normalize=_as_bool((preprocessor or {}).get("do_normalize")),
    )


# --------------------------------------------------------------------------------------------------
# spec inference and model construction


def infer_spec(state: dict[str, torch.Tensor], hints: Hints, source: str = "checkpoint") -> HubertSpec:
    """Read the encoder sizes off a torchaudio-named state dict; ``hints`` fill in the rest."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise RVCLoraError(f"{source}: HuBERT checkpoint lacks {key!r}")
        return state[key]

    conv_weights = []
    while f"feature_extractor.conv_layers.{len(conv_weights)}.conv.weight" in state:
        conv_weights.append(state[f"feature_extractor.conv_layers.{len(conv_weights)}.conv.weight"])
    if not conv_weights:
        raise RVCLoraError(f"{source}: HuBERT checkpoint has no convolutional front end")
    strides = hints.conv_strides
    if strides is None:
        if len(conv_weights) != len(HUBERT_CONV_STRIDES):
            raise RVCLoraError(f"{source}: {len(conv_weights)} conv layers and no conv strides in its config")
        strides = list(HUBERT_CONV_STRIDES)
    if len(strides) != len(conv_weights):
        raise RVCLoraError(f"{source}: config lists {len(strides)} conv layers, weights have {len(conv_weights)}")
    conv_layers = [(int(w.shape[0]), int(w.shape[2]), int(s)) for w, s in zip(conv_weights, strides, strict=True)]

    norms = [f"feature_extractor.conv_layers.{i}.layer_norm.weight" in state for i in range(len(conv_weights))]
    if all(norms):
        conv_norm = "layer_norm"
    elif norms[0] and not any(norms[1:]):
        conv_norm = "group_norm"
    else:
        raise RVCLoraError(f"{source}: unsupported normalisation pattern in the conv front end")

    embed_dim = int(need("encoder.feature_projection.projection.weight").shape[0])
    if "encoder.feature_projection.layer_norm.weight" not in state:
        raise RVCLoraError(f"{source}: feature projection without layer norm is not supported")
    num_layers = 0
    while f"encoder.transformer.layers.{num_layers}.attention.q_proj.weight" in state:
        num_layers += 1
    if num_layers == 0:
        raise RVCLoraError(f"{source}: HuBERT checkpoint has no transformer layers")
    ffn_dim = int(need("encoder.transformer.layers.0.feed_forward.intermediate_dense.weight").shape[0])
    pos_v = need(_POS_V)
    pos_groups = embed_dim // int(pos_v.shape[1])
    num_heads = hints.num_heads or (embed_dim // 64 if embed_dim % 64 == 0 else 0)
    if num_heads <= 0 or embed_dim % num_heads:
        raise RVCLoraError(f"{source}: cannot tell the number of attention heads (embed dim {embed_dim})")
    final_proj = state.get("final_proj.weight")
    return HubertSpec(
        conv_layers=conv_layers,
        conv_norm=conv_norm,
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
        pos_conv_kernel=int(pos_v.shape[2]),
        pos_conv_groups=pos_groups,
        layer_norm_first=bool(hints.layer_norm_first),
        final_proj_dim=None if final_proj is None else int(final_proj.shape[0]),
        normalize=bool(hints.normalize),
    )


def build_torchaudio_model(spec: HubertSpec) -> torch.nn.Module:
    """A torchaudio ``Wav2Vec2Model`` with ``spec``'s sizes, all dropouts 0 (inference only)."""
    from torchaudio.models import wav2vec2_model

    return wav2vec2_model(
        extractor_mode=spec.conv_norm,
        extractor_conv_layer_config=list(spec.conv_layers),
        extractor_conv_bias=spec.conv_bias,
        encoder_embed_dim=spec.embed_dim,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=spec.pos_conv_kernel,
        encoder_pos_conv_groups=spec.pos_conv_groups,
        encoder_num_layers=spec.num_layers,
        encoder_num_heads=spec.num_heads,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=spec.ffn_dim,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=spec.layer_norm_first,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
