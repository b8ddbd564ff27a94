"""Content encoder: both checkpoint layouts, RVC layer semantics, shapes, normalisation, safe loading."""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rvc_lora.demo.random_hubert import SIZES, make_random_checkpoint
from rvc_lora.features.content import (
    ContentEncoder,
    ContentModelMissing,
    conv_output_frames,
    load_content_encoder,
)
from rvc_lora.utils import RVCLoraError


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hubert")
    return {
        "fairseq": make_random_checkpoint(root / "hubert_base.pt", "fairseq", "tiny", seed=3),
        "hf": make_random_checkpoint(root / "hf", "hf", "tiny", seed=3),
        "fairseq_norm": make_random_checkpoint(root / "norm.pt", "fairseq", "tiny", seed=3, normalize=True),
        "hf_norm": make_random_checkpoint(root / "hf_norm", "hf", "tiny", seed=3, normalize=True),
    }


@pytest.fixture(scope="module")
def tiny_encoder(tiny_paths: dict[str, Path]) -> ContentEncoder:
    return load_content_encoder(tiny_paths["fairseq"], device="cpu")


def _audio(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * 220 * t)
    return tone + 0.05 * torch.randn(batch, samples, generator=gen)


def _reference_fairseq_forward(ckpt: dict, audio: torch.Tensor, output_layer: int) -> torch.Tensor:
    """fairseq HuBERT (post-norm, group-norm front end) written out by hand from the raw state dict."""
    sd, mcfg = ckpt["model"], ckpt["cfg"]["model"]
    x = audio[:, None, :]
    strides = [5, 2, 2, 2, 2, 2, 2]
    for i, stride in enumerate(strides):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(x, x.shape[1], sd["feature_extractor.conv_layers.0.2.weight"],
                             sd["feature_extractor.conv_layers.0.2.bias"])
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    g, v = sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"]
    w = g * v / v.norm(dim=(0, 1), keepdim=True)
    k = w.shape[-1]
    pos = F.conv1d(x.transpose(1, 2), w, sd["encoder.pos_conv.0.bias"], padding=k // 2,
                   groups=mcfg["conv_pos_groups"])
    pos = F.gelu(pos[..., :-1] if k % 2 == 0 else pos).transpose(1, 2)
    x = x + pos
    x = F.layer_norm(x, x.shape[-1:], sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    heads = mcfg["encoder_attention_heads"]
    b, t, d = x.shape
    for n in range(output_layer):
        p = f"encoder.layers.{n}."

        def lin(name: str, inp: torch.Tensor, p: str = p) -> torch.Tensor:
            return F.linear(inp, sd[p + name + ".weight"], sd[p + name + ".bias"])

        q, kk, vv = (lin(f"self_attn.{m}_proj", x).view(b, t, heads, d // heads).transpose(1, 2)
                     for m in ("q", "k", "v"))
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ vv
        x = x + lin("self_attn.out_proj", att.transpose(1, 2).reshape(b, t, d))
        x = F.layer_norm(x, (d,), sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"])
        x = x + lin("fc2", F.gelu(lin("fc1", x)))
        x = F.layer_norm(x, (d,), sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"])
    return x


def test_both_layouts_give_identical_features(tiny_paths: dict[str, Path]) -> None:
    fs = load_content_encoder(tiny_paths["fairseq"], device="cpu")
    hf = load_content_encoder(tiny_paths["hf"], device="cpu")
    audio = _audio(2, 8000)
    for version in ("v1", "v2"):
        a, b = fs.encode(audio, version), hf.encode(audio, version)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fs.spec == hf.spec


def test_layer_semantics_match_a_manual_fairseq_forward(tiny_paths: dict[str, Path]) -> None:
    enc = load_content_encoder(tiny_paths["fairseq"], device="cpu")
    ckpt = torch.load(tiny_paths["fairseq"], weights_only=True)  # the file holds only plain types
    audio = _audio(1, 6400, seed=1)
    layer9 = _reference_fairseq_forward(ckpt, audio, 9)
    layer12 = _reference_fairseq_forward(ckpt, audio, 12)
    v1_ref = F.linear(layer9, ckpt["model"]["final_proj.weight"], ckpt["model"]["final_proj.bias"])
    torch.testing.assert_close(enc.encode(audio, "v1"), v1_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(enc.encode(audio, "v2"), layer12, rtol=1e-4, atol=1e-4)
    # layers 9 and 12 really differ, so the check above distinguishes them
    assert (layer9 - layer12).abs().max() > 1e-2


@pytest.mark.parametrize("samples", [400, 3200, 16000, 16160, 24037])
def test_shapes_and_frame_counts(tiny_encoder: ContentEncoder, samples: int) -> None:
    enc = tiny_encoder
    frames = conv_output_frames(samples, enc.spec.conv_layers)
    assert frames == enc.num_frames(samples)
    assert abs(frames - samples / 320) <= 1.5
    audio = _audio(2, samples)
    assert enc.encode(audio, "v1").shape == (2, frames, 256)
    assert enc.encode(audio, "v2").shape == (2, frames, 64)  # tiny embed width
    assert enc.feature_dim("v1") == 256 and enc.feature_dim("v2") == 64


def test_base_size_dims() -> None:
    # real HuBERT-base sizes, built in memory (a file would be 380 MB; loading is covered by tiny models)
    enc = ContentEncoder(SIZES["base"])
    audio = _audio(1, 16000)
    assert enc.encode(audio, "v1").shape == (1, 49, 256)
    assert enc.encode(audio, "v2").shape == (1, 49, 768)
    assert (enc.feature_dim("v1"), enc.feature_dim("v2")) == (256, 768)


def test_normalisation_flag_is_honoured(tiny_paths: dict[str, Path]) -> None:
    plain = load_content_encoder(tiny_paths["fairseq"], device="cpu")
    norm = load_content_encoder(tiny_paths["fairseq_norm"], device="cpu")
    hf_norm = load_content_encoder(tiny_paths["hf_norm"], device="cpu")
    assert not plain.normalize and norm.normalize and hf_norm.normalize
    audio = _audio(1, 8000) * 0.1 + 0.02
    normed = F.layer_norm(audio, audio.shape[-1:])
    # same weights: the normalising model on raw audio == the plain model on normalised audio
    torch.testing.assert_close(norm.encode(audio, "v2"), plain.encode(normed, "v2"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf_norm.encode(audio, "v2"), plain.encode(normed, "v2"), rtol=1e-5, atol=1e-5)
    assert (norm.encode(audio, "v2") - plain.encode(audio, "v2")).abs().max() > 1e-3


def test_missing_model_raises_content_model_missing(tmp_path: Path) -> None:
    with pytest.raises(ContentModelMissing, match="assets download hubert"):
        load_content_encoder(None)
    with pytest.raises(ContentModelMissing, match="nope.pt"):
        load_content_encoder(tmp_path / "nope.pt")
    assert issubclass(ContentModelMissing, RVCLoraError)


_MARKER: Path | None = None


def _touch_marker() -> None:  # what a malicious pickle would run
    assert _MARKER is not None
    _MARKER.write_text("pwned")


class _Evil:
    def __reduce__(self):
        return (_touch_marker, ())


def test_pickle_needing_code_is_refused_and_not_executed(tmp_path: Path, tiny_paths: dict[str, Path]) -> None:
    global _MARKER
    _MARKER = tmp_path / "marker"
    ckpt = torch.load(tiny_paths["fairseq"], weights_only=True)
    ckpt["cfg"]["evil"] = _Evil()
    bad = tmp_path / "evil.pt"
    torch.save(ckpt, bad)
    _touch_marker()  # sanity: the payload works when called directly ...
    assert _MARKER.exists()
    _MARKER.unlink()
    with pytest.raises(RVCLoraError, match="it was not executed"):
        load_content_encoder(bad, device="cpu")
    assert not _MARKER.exists()  # ... but loading never ran it


def test_fairseq_config_objects_load_without_fairseq(tmp_path: Path, tiny_paths: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Real fairseq files pickle omegaconf configs, argparse args and fairseq Dictionary objects."""
    from omegaconf import OmegaConf

    marker = tmp_path / "dictionary_ran"

    class Dictionary:  # stands in for fairseq.data.dictionary.Dictionary
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>"]

        def __setstate__(self, state: dict) -> None:  # would run if the real class were used
            marker.write_text("ran")
            self.__dict__.update(state)

    fake = types.ModuleType("fairseq.data.dictionary")
    Dictionary.__module__ = fake.__name__
    Dictionary.__qualname__ = "Dictionary"
    fake.Dictionary = Dictionary
    for name in ("fairseq", "fairseq.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)

    ckpt = torch.load(tiny_paths["fairseq_norm"], weights_only=True)
    ckpt["cfg"] = OmegaConf.create(ckpt["cfg"])
    ckpt["args"] = argparse.Namespace(normalize=True, encoder_layers=12)
    ckpt["task_state"] = {"dictionaries": [Dictionary()]}
    path = tmp_path / "fairseq_like.pt"
    torch.save(ckpt, path)
    for name in ("fairseq", "fairseq.data", fake.__name__):
        monkeypatch.delitem(sys.modules, name)

    enc = load_content_encoder(path, device="cpu")
    assert enc.normalize  # read from the DictConfig's task.normalize
    assert not marker.exists()
    ref = load_content_encoder(tiny_paths["fairseq_norm"], device="cpu")
    audio = _audio(1, 4000)
    torch.testing.assert_close(enc.encode(audio, "v1"), ref.encode(audio, "v1"), rtol=0, atol=0)


def test_bad_version_and_short_audio(tiny_paths: dict[str, Path]) -> None:
    enc = load_content_encoder(tiny_paths["hf"], device="cpu")
    with pytest.raises(RVCLoraError, match="v3"):
        enc.encode(_audio(1, 4000), "v3")
    with pytest.raises(RVCLoraError, match="too short"):
        enc.encode(_audio(1, 300), "v2")
