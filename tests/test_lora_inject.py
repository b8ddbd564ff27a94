"""Injection by glob pattern into a nested toy tree, state dicts, merge/unload, parameter summary."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rvc_lora.lora import (
    LoRAConfig,
    LoRAConv1d,
    LoRAConvTranspose1d,
    LoRATargetError,
    freeze_non_lora,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    parameter_summary,
    set_adapters_enabled,
    unmerge_lora,
)
from rvc_lora.utils import RVCLoraError


class Block(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.convs1 = nn.ModuleList([nn.Conv1d(ch, ch, 3, padding=d, dilation=d) for d in (1, 3)])
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        for c in self.convs1:
            x = x + c(self.act(x))
        return x


class Toy(nn.Module):
    """conv_pre -> ups[i] (weight-normed) -> resblocks[i] -> conv_post, plus an unsupported Embedding."""

    def __init__(self):
        super().__init__()
        self.conv_pre = nn.Conv1d(3, 8, 5, padding=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.ups = nn.ModuleList([nn.utils.weight_norm(nn.ConvTranspose1d(8, 4, 4, 2, 1)),
                                      nn.utils.weight_norm(nn.ConvTranspose1d(4, 2, 6, 3, 2, 1))])
        self.resblocks = nn.ModuleList([Block(4), Block(2)])
        self.conv_post = nn.Conv1d(2, 1, 3, padding=1)
        self.emb = nn.Embedding(3, 8)
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        x = self.conv_pre(x) + self.emb.weight[0][:, None]
        for up, rb in zip(self.ups, self.resblocks, strict=True):
            x = rb(up(F.leaky_relu(x, 0.1)))
        return self.head(torch.tanh(self.conv_post(x)).transpose(1, 2))


def _randomise(root, name="default"):
    with torch.no_grad():
        for p in lora_parameters(root, name):
            p.normal_(0, 0.2)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return Toy(), torch.randn(2, 3, 7)


def test_inject_by_glob_folds_weight_norm_and_freezes_base(toy):
    model, x = toy
    ref = model(x)
    names = inject_lora(model, LoRAConfig(rank=2, targets=("ups.*", "resblocks.*")))
    assert names == ["ups.0", "ups.1", "resblocks.0.convs1.0", "resblocks.0.convs1.1",
                     "resblocks.1.convs1.0", "resblocks.1.convs1.1"]
    assert isinstance(model.ups[1], LoRAConvTranspose1d) and isinstance(model.resblocks[1].convs1[0], LoRAConv1d)
    assert "weight_g" not in str(list(model.state_dict()))
    assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)  # fresh adapters + folded norm: same output
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable if n.startswith(("ups", "resblocks")))
    freeze_non_lora(model)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (".lora_" in n), n


def test_pattern_errors_name_available_modules(toy):
    model, _ = toy
    with pytest.raises(RVCLoraError, match="conv_pre") as err:
        inject_lora(model, LoRAConfig(targets=("decoder.*",)))
    assert "decoder.*" in str(err.value)
    with pytest.raises(LoRATargetError, match="Embedding"):
        inject_lora(model, LoRAConfig(targets=("emb",)))
    assert inject_lora(model, LoRAConfig(targets=("emb",), algorithm="full")) == ["emb"]  # a full delta can


def test_second_adapter_goes_into_existing_wrappers(toy):
    model, x = toy
    inject_lora(model, LoRAConfig(rank=2, targets=("ups.*",)), "a")
    inject_lora(model, LoRAConfig(rank=3, targets=("ups.0", "head")), "b")
    assert lora_layers(model)["ups.0"].adapter_names == ["a", "b"]
    assert lora_layers(model)["ups.1"].adapter_names == ["a"]
    assert set(lora_layers(model)) == {"ups.0", "ups.1", "head"}


def test_merge_unmerge_and_merge_and_unload(toy):
    model, x = toy
    inject_lora(model, LoRAConfig(rank=2, alpha=4, targets=("ups.*", "resblocks.*", "head")))
    _randomise(model)
    live = model(x).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_lora(model)
    assert torch.allclose(model(x), live, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    set_adapters_enabled(model, False)
    plain_out = model(x).detach()
    set_adapters_enabled(model, True)
    out = merge_and_unload(model)
    assert out is model and not lora_layers(model)
    assert type(model.ups[0]) is nn.ConvTranspose1d and type(model.resblocks[0].convs1[1]) is nn.Conv1d
    assert type(model.head) is nn.Linear
    assert not model.ups[0]._forward_pre_hooks
    assert torch.allclose(model(x), live, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(x), plain_out, atol=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # original flags restored


def test_state_dict_roundtrip_into_a_fresh_tree(toy):
    model, x = toy
    inject_lora(model, LoRAConfig(rank=3, alpha=1.5, targets=("ups.*", "resblocks.1.*")))
    _randomise(model)
    live = model(x).detach()
    sd = lora_state_dict(model, prefix="dec.")
    assert "dec.ups.0.lora_down.weight" in sd and "dec.ups.0.lora_up.weight" in sd
    assert sd["dec.ups.0.alpha"].shape == () and float(sd["dec.ups.0.alpha"]) == 1.5
    assert sd["dec.ups.0.lora_down.weight"].shape == (3, 8, 1)
    assert sd["dec.ups.0.lora_up.weight"].shape == (3, 4, 4)
    torch.manual_seed(0)
    fresh = Toy()  # same base weights (same seed), not yet wrapped, still weight-normed
    loaded = load_lora_state_dict(fresh, sd, "voice", strength=1.0, prefix="dec.")
    assert loaded[0] == "ups.0" and len(loaded) == 4
    assert torch.allclose(fresh(x), live, rtol=1e-5, atol=1e-6)
    with pytest.raises(LoRATargetError, match="nope"):
        load_lora_state_dict(fresh, {"dec.nope.lora_down.weight": torch.zeros(1)}, "x", prefix="dec.")


@pytest.mark.parametrize("algorithm", ["lora", "loha", "lokr", "dora", "full"])
def test_every_algorithm_roundtrips_through_its_state_dict_with_its_scale(toy, algorithm):
    model, x = toy
    inject_lora(model, LoRAConfig(rank=2, alpha=3.0, rs_lora=True, algorithm=algorithm,
                                  targets=("ups.*", "resblocks.*", "head")))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn_like(p) * 0.2)
    live = model(x).detach()
    sd = lora_state_dict(model, prefix="dec.")
    torch.manual_seed(0)
    fresh = Toy()
    load_lora_state_dict(fresh, sd, "voice", prefix="dec.")
    assert {type(m).__name__ for layer in lora_layers(fresh).values() for m in layer.adapters.values()} == \
        {type(m).__name__ for layer in lora_layers(model).values() for m in layer.adapters.values()}
    assert torch.allclose(fresh(x), live, rtol=1e-5, atol=1e-6)  # rsLoRA's alpha / sqrt(r) survives the file


def test_parameter_summary_counts(toy):
    model, _ = toy
    inject_lora(model, LoRAConfig(rank=2, targets=("ups.0",)))
    rows = parameter_summary(model)
    assert rows[0].target == "ups.0"
    assert rows[0].trainable == 2 * 8 * 1 + 2 * 4 * 4  # down [2,8,1] + up [2,4,4]
    assert rows[0].total == rows[0].trainable + 8 * 4 * 4 + 4
    assert rows[-1].target == "total" and rows[-1].total == sum(p.numel() for p in model.parameters())


def test_config_defaults_validation_and_dict_roundtrip():
    c = LoRAConfig(rank=4, targets=("ups.*",))
    assert c.alpha == 4.0 and c.scale == 1.0
    assert LoRAConfig(rank=4, alpha=8, rs_lora=True).scale == 4.0
    assert LoRAConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown LoRA config keys"):
        LoRAConfig.from_dict({"rnak": 4})
    with pytest.raises(ValueError, match="unknown adapter algorithm 'lokra'"):
        LoRAConfig(algorithm="lokra")
    with pytest.raises(ValueError, match="dropout applies to lora and dora only"):
        LoRAConfig(algorithm="loha", dropout=0.1)
    with pytest.raises(ValueError, match="factor"):
        LoRAConfig(algorithm="lokr", factor=0)
