"""Weight-norm folding (both torch styles) and the (g, v) split used when writing RVC files."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from rvc_lora.models.weight_norm import (
    fold_all_weight_norm,
    fold_weight_norm,
    split_weight_norm,
    weight_norm_effective,
)


def _legacy(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


MODULES = [
    lambda: nn.Conv1d(4, 6, 5, padding=2),
    lambda: nn.ConvTranspose1d(6, 3, 8, 4, 2),
    lambda: nn.Linear(5, 7),
]
STYLES = {"legacy": _legacy, "parametrize": parametrizations.weight_norm}


def _input(m):
    if isinstance(m, nn.Linear):
        return torch.randn(2, 5)
    return torch.randn(2, m.in_channels, 11)


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("make", MODULES)
def test_fold_keeps_output_and_leaves_one_plain_weight(style, make):
    torch.manual_seed(0)
    m = STYLES[style](make())
    with torch.no_grad():  # a g that is not simply ||v|| so folding has to use it
        g = m.weight_g if style == "legacy" else m.parametrizations.weight.original0
        g.mul_(torch.rand_like(g) + 0.5)
    x = _input(m)
    ref = m(x)
    assert fold_weight_norm(m) is True
    out = m(x)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-6
    names = {n for n, _ in m.named_parameters()}
    assert names == {"weight", "bias"}
    assert isinstance(m.weight, nn.Parameter)
    assert not m._forward_pre_hooks
    assert "weight" in m.state_dict() and "weight_g" not in m.state_dict()


def test_fold_returns_false_without_weight_norm():
    m = nn.Conv1d(2, 2, 3)
    w = m.weight.detach().clone()
    assert fold_weight_norm(m) is False
    assert torch.equal(m.weight, w)


def test_fold_all_reports_qualified_names():
    torch.manual_seed(1)
    root = nn.Module()
    root.ups = nn.ModuleList([_legacy(nn.ConvTranspose1d(4, 2, 4, 2, 1)), nn.ConvTranspose1d(2, 2, 4, 2, 1)])
    root.post = parametrizations.weight_norm(nn.Conv1d(2, 1, 3))
    assert fold_all_weight_norm(root) == ["ups.0", "post"]
    assert all("weight_g" not in k and "original" not in k for k in root.state_dict())


def test_split_then_effective_roundtrip_and_shapes():
    torch.manual_seed(2)
    w = torch.randn(6, 3, 8)  # e.g. a ConvTranspose1d weight: dim 0 = in-channels
    g, v = split_weight_norm(w)
    assert g.shape == (6, 1, 1) and torch.equal(v, w)
    assert torch.allclose(weight_norm_effective(g, v), w, rtol=1e-6, atol=1e-7)
    # a split weight loaded into torch's own weight norm gives back the same module output
    m = _legacy(nn.ConvTranspose1d(6, 3, 8, 4, 2))
    with torch.no_grad():
        m.weight_g.copy_(g)
        m.weight_v.copy_(v)
    plain = nn.ConvTranspose1d(6, 3, 8, 4, 2)
    with torch.no_grad():
        plain.weight.copy_(w)
        plain.bias.copy_(m.bias)
    x = torch.randn(1, 6, 5)
    assert torch.allclose(m(x), plain(x), rtol=1e-5, atol=1e-6)
