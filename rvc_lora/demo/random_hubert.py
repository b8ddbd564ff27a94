"""Randomly initialised HuBERT checkpoints in the real on-disk layouts: the offline demo's stand-in for RVC's
``hubert_base.pt`` (tests and benchmarks use them too).

``make_random_checkpoint`` writes the same random weights (given the seed) either as a fairseq file
like RVC's ``hubert_base.pt`` or as a Hugging Face ``HubertModel`` folder with ``final_proj``, so both
loaders can be exercised and compared. The fairseq file holds only plain dicts, tensors, strings and
numbers, so it loads with ``torch.load(weights_only=True)``.

Sizes: ``"base"`` = HuBERT-base (conv 512 ch, embed 768, 12 layers, ffn 3072, 12 heads, pos conv 128/16,
final_proj 768->256, ~95M parameters). ``"tiny"`` = conv 32 ch, embed 64, 12 layers, ffn 64, 2 heads,
pos conv 16/4, final_proj 64->256 (~0.2M parameters). Both keep the 320-sample hop and 12 layers, so
layer 9 / layer 12 read-outs and frame counts behave like the real model; only feature widths differ
(tiny v2 features are 64 wide). Any :class:`HubertSpec` field can be overridden by keyword.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from rvc_lora.features.content_layouts import HUBERT_CONV_KERNELS, HUBERT_CONV_STRIDES, HubertSpec
from rvc_lora.utils import RVCLoraError, atomic_write

SIZES: dict[str, HubertSpec] = {
    "base": HubertSpec(),
    "tiny": HubertSpec(
        conv_layers=[(32, k, s) for k, s in zip(HUBERT_CONV_KERNELS, HUBERT_CONV_STRIDES, strict=True)],
        embed_dim=64,
        num_layers=12,
        num_heads=2,
        ffn_dim=64,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        final_proj_dim=256,
    ),
}


def _random_state(spec: HubertSpec, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under neutral (layout-free) names, deterministic in ``seed``.

    Names (each ``.weight`` / ``.bias``): conv.{i}, conv.{i}.norm, proj_norm, proj, enc_norm,
    layer.{n}.{q,k,v,out,ln1,fc1,fc2,ln2}, final; plus pos.bias / pos.g / pos.v, mask_emb, label_embs.
    """
    gen = torch.Generator().manual_seed(seed)

    def weight(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / math.sqrt(fan_in)

    def small(*shape: int) -> torch.Tensor:
        return 0.1 * torch.randn(*shape, generator=gen)

    def gain(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    s: dict[str, torch.Tensor] = {}
    in_ch = 1
    for i, (ch, k, _) in enumerate(spec.conv_layers):
        s[f"conv.{i}.weight"] = weight(ch, in_ch, k, fan_in=in_ch * k)
        if spec.conv_bias:
            s[f"conv.{i}.bias"] = small(ch)
        if spec.conv_norm == "layer_norm" or i == 0:
            s[f"conv.{i}.norm.weight"], s[f"conv.{i}.norm.bias"] = gain(ch), small(ch)
        in_ch = ch
    d, f = spec.embed_dim, spec.ffn_dim
    s["proj_norm.weight"], s["proj_norm.bias"] = gain(in_ch), small(in_ch)
    s["proj.weight"], s["proj.bias"] = weight(d, in_ch, fan_in=in_ch), small(d)
    per_group = d // spec.pos_conv_groups
    s["pos.v"] = weight(d, per_group, spec.pos_conv_kernel, fan_in=per_group * spec.pos_conv_kernel)
    s["pos.g"] = (0.5 + torch.rand(1, 1, spec.pos_conv_kernel, generator=gen)) * math.sqrt(d)
    s["pos.bias"] = small(d)
    s["enc_norm.weight"], s["enc_norm.bias"] = gain(d), small(d)
    for n in range(spec.num_layers):
        for p in ("q", "k", "v", "out"):
            s[f"layer.{n}.{p}.weight"], s[f"layer.{n}.{p}.bias"] = weight(d, d, fan_in=d), small(d)
        s[f"layer.{n}.ln1.weight"], s[f"layer.{n}.ln1.bias"] = gain(d), small(d)
        s[f"layer.{n}.fc1.weight"], s[f"layer.{n}.fc1.bias"] = weight(f, d, fan_in=d), small(f)
        s[f"layer.{n}.fc2.weight"], s[f"layer.{n}.fc2.bias"] = weight(d, f, fan_in=f), small(d)
        s[f"layer.{n}.ln2.weight"], s[f"layer.{n}.ln2.bias"] = gain(d), small(d)
    if spec.final_proj_dim is not None:
        s["final.weight"], s["final.bias"] = weight(spec.final_proj_dim, d, fan_in=d), small(spec.final_proj_dim)
        s["label_embs"] = small(504 if d == 768 else 10, spec.final_proj_dim)
    s["mask_emb"] = small(d)
    return s


_P = r"(weight|bias)"
_FAIRSEQ_NAMES = [
    (rf"conv\.(\d+)\.{_P}", r"feature_extractor.conv_layers.\1.0.\2"),
    (rf"proj_norm\.{_P}", r"layer_norm.\1"),
    (rf"proj\.{_P}", r"post_extract_proj.\1"),
    (r"pos\.bias", "encoder.pos_conv.0.bias"),
    (r"pos\.g", "encoder.pos_conv.0.weight_g"),
    (r"pos\.v", "encoder.pos_conv.0.weight_v"),
    (rf"enc_norm\.{_P}", r"encoder.layer_norm.\1"),
    (rf"layer\.(\d+)\.(q|k|v|out)\.{_P}", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (rf"layer\.(\d+)\.ln1\.{_P}", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (rf"layer\.(\d+)\.fc(1|2)\.{_P}", r"encoder.layers.\1.fc\2.\3"),
    (rf"layer\.(\d+)\.ln2\.{_P}", r"encoder.layers.\1.final_layer_norm.\2"),
    (rf"final\.{_P}", r"final_proj.\1"),
    (r"label_embs", "label_embs_concat"),
    (r"mask_emb", "mask_emb"),
]

_HF_NAMES = [
    (rf"conv\.(\d+)\.{_P}", r"feature_extractor.conv_layers.\1.conv.\2"),
    (rf"conv\.(\d+)\.norm\.{_P}", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (rf"proj_norm\.{_P}", r"feature_projection.layer_norm.\1"),
    (rf"proj\.{_P}", r"feature_projection.projection.\1"),
    (r"pos\.bias", "encoder.pos_conv_embed.conv.bias"),
    (r"pos\.g", "encoder.pos_conv_embed.conv.weight_g"),
    (r"pos\.v", "encoder.pos_conv_embed.conv.weight_v"),
    (rf"enc_norm\.{_P}", r"encoder.layer_norm.\1"),
    (rf"layer\.(\d+)\.(q|k|v|out)\.{_P}", r"encoder.layers.\1.attention.\2_proj.\3"),
    (rf"layer\.(\d+)\.ln1\.{_P}", r"encoder.layers.\1.layer_norm.\2"),
    (rf"layer\.(\d+)\.fc1\.{_P}", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (rf"layer\.(\d+)\.fc2\.{_P}", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (rf"layer\.(\d+)\.ln2\.{_P}", r"encoder.layers.\1.final_layer_norm.\2"),
    (rf"final\.{_P}", r"final_proj.\1"),
    (r"mask_emb", "masked_spec_embed"),
    (r"label_embs", ""),  # not part of a Transformers HubertModel
]


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], spec: HubertSpec,
            layout: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if layout == "fairseq" and (m := re.fullmatch(rf"conv\.(\d+)\.norm\.{_P}", key)):
            # fairseq: the GroupNorm is module 2 of conv block 0; a LayerNorm sits at 2.1 (in a Sequential)
            sub = "2" if spec.conv_norm == "group_norm" else "2.1"
            out[f"feature_extractor.conv_layers.{m.group(1)}.{sub}.{m.group(2)}"] = value
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                name = re.sub(pattern, repl, key)
                if name:
                    out[name] = value
                break
        else:  # pragma: no cover - every neutral name has a rule
            raise KeyError(key)
    return out


def _fairseq_cfg(spec: HubertSpec) -> dict:
    conv = " + ".join(f"[({c}, {k}, {s})]" for c, k, s in spec.conv_layers)
    return {
        "_name": None,
        "model": {
            "_name": "hubert",
            "extractor_mode": "default" if spec.conv_norm == "group_norm" else "layer_norm",
            "encoder_layers": spec.num_layers,
            "encoder_embed_dim": spec.embed_dim,
            "encoder_ffn_embed_dim": spec.ffn_dim,
            "encoder_attention_heads": spec.num_heads,
            "activation_fn": "gelu",
            "layer_norm_first": spec.layer_norm_first,
            "conv_feature_layers": conv,
            "conv_bias": spec.conv_bias,
            "conv_pos": spec.pos_conv_kernel,
            "conv_pos_groups": spec.pos_conv_groups,
            "final_dim": spec.final_proj_dim or 0,
        },
        "task": {"_name": "hubert_pretraining", "normalize": spec.normalize, "sample_rate": 16000},
    }


def _hf_config(spec: HubertSpec) -> dict:
    return {
        "model_type": "hubert",
        "architectures": ["HubertModelWithFinalProj"],
        "hidden_size": spec.embed_dim,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": spec.ffn_dim,
        "hidden_act": "gelu",
        "conv_dim": [c for c, _, _ in spec.conv_layers],
        "conv_kernel": [k for _, k, _ in spec.conv_layers],
        "conv_stride": [s for _, _, s in spec.conv_layers],
        "conv_bias": spec.conv_bias,
        "feat_extract_norm": "group" if spec.conv_norm == "group_norm" else "layer",
        "num_conv_pos_embeddings": spec.pos_conv_kernel,
        "num_conv_pos_embedding_groups": spec.pos_conv_groups,
        "do_stable_layer_norm": spec.layer_norm_first,
        "feat_proj_layer_norm": True,
        "classifier_proj_size": spec.final_proj_dim or 256,
        "layer_norm_eps": 1e-5,
    }


def make_random_checkpoint(
    path: str | os.PathLike,
    layout: str = "fairseq",
    size: str = "tiny",
    seed: int = 0,
    normalize: bool = False,
    **overrides: object,
) -> Path:
    """Write a randomly initialised HuBERT checkpoint; return its path.

    ``layout="fairseq"``: ``path`` is a file ``{"cfg": {...}, "model": state_dict, "args": None}``.
    ``layout="hf"``: ``path`` is a folder with config.json, preprocessor_config.json and model.safetensors.
    The same (size, seed, overrides) give the same weights in both layouts. ``normalize`` sets the
    checkpoint's input-normalisation flag.
    """
    if size not in SIZES:
        raise RVCLoraError(f"unknown content model size {size!r} (choose from {sorted(SIZES)})")
    spec = replace(SIZES[size], normalize=normalize, **overrides)  # type: ignore[arg-type]
    state = _random_state(spec, seed)
    path = Path(path)
    if layout == "fairseq":
        payload = {"args": None, "cfg": _fairseq_cfg(spec), "model": _rename(state, _FAIRSEQ_NAMES, spec, layout)}
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
        return path
    if layout == "hf":
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in _rename(state, _HF_NAMES, spec, layout).items()}
        with atomic_write(path / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        with atomic_write(path / "config.json") as tmp:
            tmp.write_text(json.dumps(_hf_config(spec), indent=2), encoding="utf-8")
        with atomic_write(path / "preprocessor_config.json") as tmp:
            prep = {"do_normalize": spec.normalize, "sampling_rate": 16000, "feature_size": 1}
            tmp.write_text(json.dumps(prep, indent=2), encoding="utf-8")
        return path
    raise RVCLoraError(f"unknown checkpoint layout {layout!r} (expected 'fairseq' or 'hf')")
