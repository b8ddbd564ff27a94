"""Adapter layers, every algorithm and layer kind: exact identity when fresh, rebuild == bypass == merged,
bit-exact unmerge, strengths, grads."""

import pytest
import torch
from torch import nn

from rvc_lora.lora import ALGORITHMS, LoRAConfig
from rvc_lora.lora.layers import LoRAConv1d, LoRAConvTranspose1d, LoRAEmbedding, LoRALinear


def _randomise(layer, name):
    """Give an adapter non-zero tensors so it changes the output."""
    with torch.no_grad():
        for p in layer.adapters[name].parameters():
            p.add_(torch.randn_like(p) * 0.3)


def _cfg(rank=3, alpha=None, algorithm="lora", **kw):
    return LoRAConfig(rank=rank, alpha=alpha, algorithm=algorithm, **kw)


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


CONV_CASES = [  # (C_in, C_out, K, stride, padding, dilation)
    (4, 6, 3, 1, 1, 1), (5, 3, 7, 2, 3, 1), (3, 4, 3, 1, 2, 2), (6, 2, 1, 3, 0, 1), (2, 5, 5, 2, 4, 3),
]
CONVT_CASES = [  # (C_in, C_out, K, stride, padding, output_padding, dilation)
    (8, 4, 16, 8, 4, 0, 1), (6, 3, 4, 2, 1, 1, 1), (4, 5, 3, 1, 1, 0, 2), (5, 2, 11, 5, 3, 2, 1),
    (3, 3, 4, 3, 0, 1, 2),
]


def _conv(case):
    ci, co, k, s, p, d = case
    return LoRAConv1d(nn.Conv1d(ci, co, k, s, p, d)), torch.randn(2, ci, 23)


def _convt(case):
    ci, co, k, s, p, op, d = case
    return LoRAConvTranspose1d(nn.ConvTranspose1d(ci, co, k, s, p, op, dilation=d)), torch.randn(2, ci, 9)


def _linear(_):
    return LoRALinear(nn.Linear(7, 5)), torch.randn(3, 4, 7)


ALL = [(_conv, c) for c in CONV_CASES] + [(_convt, c) for c in CONVT_CASES] + [(_linear, None)]


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("make,case", ALL)
def test_fresh_adapter_is_exact_identity(make, case, algorithm):
    torch.manual_seed(0)
    layer, x = make(case)
    ref = layer.base(x)
    layer.add_adapter("a", _cfg(alpha=6.0, algorithm=algorithm))
    for mode in ("rebuild", "bypass"):
        layer.forward_mode = mode
        assert torch.equal(layer(x), ref), mode


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("make,case", ALL)
def test_rebuild_bypass_and_merged_agree_and_unmerge_is_bit_exact(make, case, algorithm):
    torch.manual_seed(1)
    layer, x = make(case)
    layer.add_adapter("a", _cfg(alpha=6.0, algorithm=algorithm))
    layer.add_adapter("b", _cfg(rank=2, alpha=1.0, rs_lora=True, algorithm=algorithm))
    _randomise(layer, "a")
    _randomise(layer, "b")
    layer.set_strength("a", 0.7)
    layer.set_strength("b", -1.5)
    w0 = layer.base.weight.detach().clone()
    b0 = layer.base.bias.detach().clone()
    layer.forward_mode = "rebuild"
    live = layer(x)
    assert _rel(live, layer.base(x)) > 1e-3  # adapters really change the output
    layer.forward_mode = "bypass"
    assert _rel(layer(x), live) < 1e-5  # measured <= 3e-7
    assert layer.merge() == ["a", "b"]
    merged = layer(x)
    assert _rel(merged, live) < 1e-5  # measured <= 3e-7
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0) and torch.equal(layer.base.bias, b0)
    layer.forward_mode = "rebuild"
    assert torch.equal(layer(x), live)


@pytest.mark.parametrize("make,case", [ALL[0], ALL[len(CONV_CASES)], ALL[-1]])
def test_delta_weight_matches_functional_difference(make, case):
    torch.manual_seed(2)
    layer, x = make(case)
    layer.add_adapter("a", _cfg(rank=4, alpha=2.0))
    _randomise(layer, "a")
    d = layer.delta_weight("a")
    assert d.shape == layer.base.weight.shape
    layer.forward_mode = "bypass"  # the low-rank branch on the activations, independent of delta_weight
    expected = layer(x) - layer.base(x)
    got = layer.op(x, d, None)
    assert _rel(got, expected) < 1e-5


@pytest.mark.parametrize("make,case", [ALL[1], ALL[len(CONV_CASES) + 1], ALL[-1]])
def test_strengths_act_linearly(make, case):
    torch.manual_seed(3)
    layer, x = make(case)
    layer.add_adapter("a", _cfg(rank=2))
    layer.add_adapter("b", _cfg(rank=3, alpha=1.0))
    _randomise(layer, "a")
    _randomise(layer, "b")
    base = layer.base(x)

    def out(s1, s2):
        layer.set_strength("a", s1)
        layer.set_strength("b", s2)
        return layer(x)

    a1 = out(1.0, 0.0) - base
    a2 = out(0.0, 1.0) - base
    combo = out(0.3, -2.0) - base
    assert _rel(combo, 0.3 * a1 - 2.0 * a2) < 1e-5
    # the same holds for the merged weight
    layer.merge()
    assert _rel(layer(x) - base, 0.3 * a1 - 2.0 * a2) < 1e-4


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_only_adapter_params_get_gradients_and_both_modes_give_the_same(algorithm):
    torch.manual_seed(4)
    layer = LoRAConvTranspose1d(nn.ConvTranspose1d(4, 3, 4, 2, 1))
    layer.add_adapter("a", _cfg(rank=2, algorithm=algorithm))
    _randomise(layer, "a")
    x = torch.randn(1, 4, 5)
    grads = {}
    for mode in ("rebuild", "bypass"):
        layer.forward_mode = mode
        layer.zero_grad()
        layer(x).square().sum().backward()
        assert layer.base.weight.grad is None and layer.base.bias.grad is None
        grads[mode] = [p.grad.clone() for p in layer.adapters["a"].parameters()]
        assert all(g.abs().sum() > 0 for g in grads[mode])
    assert all(_rel(b, r) < 1e-5 for r, b in zip(grads["rebuild"], grads["bypass"], strict=True))


def test_disable_and_strength_on_merged_adapter_remerge():
    torch.manual_seed(5)
    layer, x = _conv(CONV_CASES[0])
    layer.add_adapter("a", _cfg(rank=2))
    _randomise(layer, "a")
    base = layer.base(x).detach()
    w0 = layer.base.weight.detach().clone()
    live = layer(x).detach()
    layer.merge()
    layer.set_strength("a", 2.0)  # re-merged with the new strength
    assert _rel(layer(x) - base, 2 * (live - base)) < 1e-5
    layer.disable("a")
    assert torch.equal(layer.base.weight, w0)
    assert torch.equal(layer(x), base)


def test_diff_adapter_live_and_merged():
    torch.manual_seed(6)
    layer, x = _convt(CONVT_CASES[1])
    diff = torch.randn_like(layer.base.weight) * 0.1
    bias = torch.randn(layer.base.out_channels) * 0.1
    tuned = nn.ConvTranspose1d(6, 3, 4, 2, 1, 1)
    with torch.no_grad():
        tuned.weight.copy_(layer.base.weight + 0.5 * diff)
        tuned.bias.copy_(layer.base.bias + 0.5 * bias)
    layer.set_parts("d", {"diff": diff, "diff_b": bias})
    layer.set_strength("d", 0.5)
    assert _rel(layer(x), tuned(x)) < 1e-5
    layer.merge()
    assert _rel(layer(x), tuned(x)) < 1e-5


def test_convtranspose_output_size_is_honoured():
    torch.manual_seed(7)
    layer = LoRAConvTranspose1d(nn.ConvTranspose1d(3, 2, 4, 2, 1))
    layer.add_adapter("a", _cfg(rank=2))
    _randomise(layer, "a")
    layer.set_parts("d", {"diff": torch.randn_like(layer.base.weight)})
    for mode in ("rebuild", "bypass"):
        layer.forward_mode = mode
        y = layer(torch.randn(1, 3, 5), output_size=[11])
        assert y.shape == (1, 2, 11)


def test_merge_keeps_dtype():
    layer = LoRAConv1d(nn.Conv1d(3, 4, 3).to(torch.bfloat16))
    layer.add_adapter("a", _cfg(rank=2))
    _randomise(layer, "a")
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("base,match", [
    (nn.Conv1d(4, 4, 3, groups=2), "groups"),
    (nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    (nn.ConvTranspose1d(4, 4, 3, groups=4), "groups"),
])
def test_unsupported_convs_are_refused_naming_module(base, match):
    cls = LoRAConv1d if isinstance(base, nn.Conv1d) else LoRAConvTranspose1d
    with pytest.raises(ValueError, match=match) as err:
        cls(base, name="dec.ups.0")
    assert "dec.ups.0" in str(err.value)


def test_set_parts_checks_shapes_and_scale():
    torch.manual_seed(8)
    layer, x = _conv(CONV_CASES[1])  # Conv1d(5 -> 3, K=7)
    down, up = torch.randn(2, 5, 7), torch.randn(3, 2)  # up without its trailing 1x1 dim
    layer.set_parts("f", {"lora_down": down, "lora_up": up, "alpha": torch.tensor(4.0)})
    expected = torch.einsum("oj,jik->oik", up, down) * 2.0
    assert torch.allclose(layer.delta_weight("f"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="lora_up"):
        layer.set_parts("g", {"lora_down": down, "lora_up": torch.randn(4, 2, 1)})
    assert "g" not in layer.adapter_names
    with pytest.raises(ValueError, match="hada_w1_b"):
        layer.set_parts("h", {"hada_w1_a": torch.randn(3, 2)})


def test_embedding_takes_full_deltas_only():
    layer = LoRAEmbedding(nn.Embedding(5, 4), "emb_g")
    diff = torch.zeros(5, 4)
    diff[2] = 1.0
    layer.set_parts("row", {"diff": diff})
    layer.set_strength("row", 0.5)
    ids = torch.tensor([0, 2])
    assert torch.equal(layer(ids), layer.base(ids) + torch.tensor([[0.0] * 4, [0.5] * 4]))
    with pytest.raises(ValueError, match="lora does not adapt Embedding"):
        layer.add_adapter("x", _cfg())


def test_delete_merged_adapter_keeps_others_merged():
    torch.manual_seed(9)
    layer, x = _linear(None)
    layer.add_adapter("a", _cfg(rank=2))
    layer.add_adapter("b", _cfg(rank=2))
    _randomise(layer, "a")
    _randomise(layer, "b")
    layer.disable("a")
    only_b = layer(x).detach()
    layer.enable("a")
    layer.merge()
    layer.delete_adapter("a")
    assert layer.merged.keys() == {"b"}
    assert _rel(layer(x), only_b) < 1e-5


def test_auto_mode_rebuilds_without_gradients_follows_the_training_table_and_bypasses_for_dropout(monkeypatch):
    from rvc_lora.lora.layers import TRAINING_MODE

    torch.manual_seed(10)
    layer, x = _conv(CONV_CASES[0])
    layer.add_adapter("a", _cfg(rank=2, dropout=0.5))
    _randomise(layer, "a")
    rebuilds = []
    real = layer.effective_weight
    monkeypatch.setattr(layer, "effective_weight", lambda: rebuilds.append(1) or real())
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert rebuilds == [1]  # inference: one rebuilt weight
    layer(x)
    assert len(rebuilds) == (2 if TRAINING_MODE["conv1d"] == "rebuild" else 1)  # gradients on: the table
    layer.train()
    layer(x)
    assert len(rebuilds) == (2 if TRAINING_MODE["conv1d"] == "rebuild" else 1)  # active dropout: bypass
    layer.merge()
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))  # merged: the plain base runs
