"""Adapter algorithms against independent references: lycoris-lora's own modules (LoRA/LoCon, LoHa, LoKr)
and peft's DoRA, for the same factor tensors, on the layer kinds those libraries support (Conv1d, Linear)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from rvc_lora.lora import LoRAConfig
from rvc_lora.lora.algorithms import factorize
from rvc_lora.lora.layers import WRAPPERS

lycoris = pytest.importorskip("lycoris")
from lycoris.functional import factorization  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

logging.getLogger("LyCORIS").setLevel(logging.ERROR)  # "using full matrix mode" notices


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _bases():
    return [nn.Conv1d(64, 48, 5, padding=2), nn.Linear(64, 48)]


def _randomised(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values in every LyCORIS parameter; returns its file tensors (LyCORIS' custom_state_dict)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return {k: v.detach().clone() for k, v in module.custom_state_dict().items()}


def _ours(base: nn.Module, tensors: dict[str, torch.Tensor]):
    layer = WRAPPERS[type(base)](base, "m")
    layer.set_parts("a", {k.removesuffix(".weight"): v for k, v in tensors.items()})
    return layer


@pytest.mark.parametrize("dim", [1, 7, 12, 48, 64, 127, 128, 250, 256, 360, 512, 768, 1024])
@pytest.mark.parametrize("factor", [-1, 2, 4, 8, 16])
def test_factorize_matches_lycoris(dim, factor):
    assert factorize(dim, factor) == factorization(dim, factor)


REFERENCES = {  # algorithm: (LyCORIS module with rank 4 and alpha 3, the delta its forward adds)
    "lora": (lambda b: LoConModule("m", b, 1, 4, 3.0), lambda m: m.get_diff_weight()[0]),
    "loha": (lambda b: LohaModule("m", b, 1, 4, 3.0), lambda m: m.get_weight(m.shape)),
}


@pytest.mark.parametrize("algorithm", list(REFERENCES))
@pytest.mark.parametrize("base_index", [0, 1], ids=["conv1d", "linear"])
def test_lora_and_loha_deltas_equal_lycoris_modules(algorithm, base_index):
    torch.manual_seed(0)
    base = _bases()[base_index]
    make, delta = REFERENCES[algorithm]
    reference = make(base)
    layer = _ours(base, _randomised(reference, seed=1))
    assert layer.adapters["a"].algorithm == algorithm
    # measured: ~1e-7 (fp32 matmul order); alpha (3) differs from the rank (4), so the scale is checked too
    assert _rel(layer.delta_weight("a"), delta(reference).reshape(base.weight.shape)) < 1e-5


LOKR_CASES = {  # name: (rank, factor, decompose_both) -> which factors LyCORIS makes full or low-rank
    "full_w2": (8, 4, False),
    "lowrank_w2": (2, 4, False),
    "decompose_both": (1, 8, True),
}


@pytest.mark.parametrize("case", list(LOKR_CASES))
@pytest.mark.parametrize("base_index", [0, 1], ids=["conv1d", "linear"])
def test_lokr_delta_and_factor_layout_equal_lycoris_module(case, base_index):
    torch.manual_seed(0)
    rank, factor, both = LOKR_CASES[case]
    base = _bases()[base_index]
    reference = LokrModule("m", base, 1, rank, 3.0, factor=factor, decompose_both=both)
    tensors = _randomised(reference, seed=2)
    layer = _ours(base, tensors)
    assert _rel(layer.delta_weight("a"), reference.get_weight(reference.shape)) < 1e-5  # measured ~1e-7
    # A fresh adapter of ours chooses the same factors, with the same shapes and alpha.
    layer.add_adapter("fresh", LoRAConfig(rank=rank, alpha=3.0, algorithm="lokr", factor=factor, decompose_both=both))
    ours = layer.adapters["fresh"].parts()
    theirs = dict(tensors)
    both_full = "lokr_w1" in theirs and "lokr_w2" in theirs
    if both_full:  # scale 1 whatever alpha says (LyCORIS ignores the alpha it stores then)
        theirs.pop("alpha")
        assert layer.adapters["fresh"].scale == 1.0
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert float(ours.get("alpha", 0.0)) == float(theirs.get("alpha", 0.0))


@pytest.mark.parametrize("base_index", [0, 1], ids=["conv1d", "linear"])
def test_dora_equals_peft_live_and_merged(base_index):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)

    class Host(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)

    base = _bases()[base_index]
    plain = copy.deepcopy(base)
    x = torch.randn(2, 64, 30) if base_index == 0 else torch.randn(2, 30, 64)
    model = peft.get_peft_model(Host(base), peft.LoraConfig(r=4, lora_alpha=3, target_modules=["layer"],
                                                             use_dora=True))
    peft_layer = model.base_model.model.layer
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        magnitude = peft_layer.lora_magnitude_vector["default"].weight
        magnitude.mul_(1 + 0.2 * torch.rand(magnitude.shape, generator=g))
    with torch.no_grad():
        expected = model(x)
    parts = {"lora_down": peft_layer.lora_A["default"].weight, "lora_up": peft_layer.lora_B["default"].weight,
             "alpha": torch.tensor(3.0), "dora_scale": magnitude.detach()}
    ours = WRAPPERS[type(plain)](plain, "layer")
    ours.set_parts("a", parts)
    for mode in ("rebuild", "bypass"):
        ours.forward_mode = mode
        with torch.no_grad():
            assert _rel(ours(x), expected) < 1e-5, mode  # measured ~2e-7
    merged = model.merge_and_unload().layer.weight.detach()
    ours.merge()
    assert _rel(ours.base.weight, merged) < 1e-5  # measured ~1e-7
