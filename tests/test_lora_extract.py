"""SVD extraction: planted low-rank deltas are recovered and load back into the LoRA layers exactly."""

import pytest
import torch
from torch import nn

from rvc_lora.lora.extract import extract_lowrank, extracted_tensors
from rvc_lora.lora.layers import LoRAConv1d, LoRAConvTranspose1d, LoRALinear

CASES = {  # kind -> (base module, planted delta builder)
    "conv1d": (lambda: nn.Conv1d(12, 10, 5, padding=2),
               lambda r: torch.einsum("oj,jik->oik", torch.randn(10, r), torch.randn(r, 12, 5))),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(12, 6, 8, 4, 2),
                         lambda r: torch.einsum("ji,jok->iok", torch.randn(r, 12), torch.randn(r, 6, 8))),
    "linear": (lambda: nn.Linear(12, 9), lambda r: torch.randn(9, r) @ torch.randn(r, 12)),
}
WRAP = {"conv1d": LoRAConv1d, "conv_transpose1d": LoRAConvTranspose1d, "linear": LoRALinear}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_planted_rank_is_recovered_and_loads_into_layer(kind):
    torch.manual_seed(0)
    make_base, make_delta = CASES[kind]
    delta = make_delta(3)
    ex = extract_lowrank(delta, kind, rank=3)
    assert ex.rank == 3 and ex.rel_error < 1e-4
    layer = WRAP[kind](make_base())
    layer.set_parts("x", {"lora_down": ex.down, "lora_up": ex.up, "alpha": torch.tensor(float(ex.rank))})
    assert ((layer.delta_weight("x") - delta).norm() / delta.norm()).item() < 1e-4
    x = torch.randn(2, 12) if kind == "linear" else torch.randn(2, 12, 9)
    tuned = make_base()
    tuned.load_state_dict(layer.base.state_dict())
    with torch.no_grad():
        tuned.weight.add_(delta)
    assert torch.allclose(layer(x), tuned(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_error_decreases_with_rank(kind):
    torch.manual_seed(1)
    delta = CASES[kind][1](6) + 0.05 * torch.randn_like(CASES[kind][1](6))
    errors = [extract_lowrank(delta, kind, rank=r).rel_error for r in (1, 2, 4, 6)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    # the reported error is the real reconstruction error
    ex = extract_lowrank(delta, kind, rank=2)
    layer = WRAP[kind](CASES[kind][0]())
    layer.set_parts("x", {"lora_down": ex.down, "lora_up": ex.up})
    real = ((layer.delta_weight("x") - delta).norm() / delta.norm()).item()
    assert abs(real - ex.rel_error) < 1e-5


def test_energy_mode_picks_smallest_rank():
    # singular values 4, 2, 1 (energies 16, 4, 1 of 21)
    u, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))
    delta = (u * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    assert extract_lowrank(delta, "linear", energy=0.70).rank == 1
    assert extract_lowrank(delta, "linear", energy=16 / 21).rank == 1
    assert extract_lowrank(delta, "linear", energy=0.80).rank == 2
    assert extract_lowrank(delta, "linear", energy=0.99).rank == 3
    with pytest.raises(ValueError, match="exactly one"):
        extract_lowrank(delta, "linear")


def test_use_diff_when_factors_are_bigger():
    delta = torch.randn(4, 4, 3)
    ex = extract_lowrank(delta, "conv1d", rank=4)
    assert ex.use_diff and ex.bytes_lowrank >= ex.bytes_diff
    tensors = extracted_tensors("dec.m", ex, delta, bias_delta=torch.ones(4))
    assert set(tensors) == {"dec.m.diff", "dec.m.diff_b"}
    small = extract_lowrank(torch.randn(64, 64, 3), "conv1d", rank=2)
    assert not small.use_diff
    assert set(extracted_tensors("m", small, torch.zeros(1))) == {"m.lora_down.weight", "m.lora_up.weight",
                                                                  "m.alpha"}
