"""Adapter files: round trips in every dtype, peft and diff readers, malformed files, fingerprints."""

import json

import pytest
import torch
from safetensors.torch import save_file

from rvc_lora.lora.adapter_file import check_fingerprint, fingerprint_tensors, read_adapter, save_adapter
from rvc_lora.utils import RVCLoraError


def _tensors():
    torch.manual_seed(0)
    return {
        "dec.ups.0.lora_down.weight": torch.randn(4, 16, 1),
        "dec.ups.0.lora_up.weight": torch.randn(4, 8, 10),
        "dec.ups.0.alpha": torch.tensor(2.0),
        "dec.resblocks.0.convs1.0.lora_down.weight": torch.randn(4, 8, 3),
        "dec.resblocks.0.convs1.0.lora_up.weight": torch.randn(8, 4, 1),
        "dec.resblocks.0.convs1.0.alpha": torch.tensor(4.0),
    }


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("fp32", torch.float32),
                                               ("bf16", torch.bfloat16)])
def test_roundtrip(tmp_path, dtype, torch_dtype):
    t = _tensors()
    meta = {"rank": 4, "alpha": 4.0, "targets": ["ups.*"], "f0": True, "training": {"steps": 10}}
    path = save_adapter(tmp_path / "a.safetensors", t, meta, dtype=dtype)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left behind
    af = read_adapter(path)
    assert af.metadata["format"] == "rvc-lora" and af.metadata["format_version"] == "1"
    assert af.metadata["dtype"] == dtype and af.metadata["training"] == {"steps": 10}
    assert af.metadata["targets"] == ["ups.*"] and af.metadata["f0"] is True
    assert af.modules == {"dec.ups.0": "lora", "dec.resblocks.0.convs1.0": "lora"}
    assert af.ranks() == {"dec.ups.0": 4, "dec.resblocks.0.convs1.0": 4}
    for k, v in t.items():
        got = af.tensors[k]
        if k.endswith(".alpha"):
            assert got.dtype == torch.float32 and float(got) == float(v)
        else:
            assert got.dtype == torch_dtype
            assert torch.equal(got, v.to(torch_dtype))


def test_fingerprint_agrees_between_fp16_file_and_fp32_memory(tmp_path):
    t = _tensors()
    path = save_adapter(tmp_path / "a.safetensors", t, {}, dtype="fp16")
    assert fingerprint_tensors(read_adapter(path).tensors) == fingerprint_tensors(t)
    changed = dict(t)
    changed["dec.ups.0.lora_up.weight"] = t["dec.ups.0.lora_up.weight"].clone()
    changed["dec.ups.0.lora_up.weight"][0, 0, 0] += 1.0
    assert fingerprint_tensors(changed) != fingerprint_tensors(t)
    renamed = {k.replace("ups.0", "ups.1"): v for k, v in t.items()}
    assert fingerprint_tensors(renamed) != fingerprint_tensors(t)


class _ConvLinear(torch.nn.Module):
    """A small model with layer kinds RVC adapters use: Conv1d (kernel 3) and Linear. (peft's conv LoRA
    does not carry a dilation over to lora_A, so this one has none.)"""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(6, 10, 3, padding=1)
        self.head = torch.nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, 6, T]`` -> ``[B, T, 4]``."""
        return self.head(torch.tanh(self.conv(x)).transpose(1, 2))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_real_peft_adapter_loads_at_peft_scale(tmp_path, use_rslora):
    """An adapter written by peft's own save_pretrained (alpha != r, per-module patterns, optionally rsLoRA)
    gives peft's output when loaded through rvc-lora."""
    import peft

    from rvc_lora.lora import load_lora_state_dict

    torch.manual_seed(0)
    model = _ConvLinear()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["conv", "head"], use_rslora=use_rslora,
                             rank_pattern={"head": 2}, alpha_pattern={"head": 5.0},
                             init_lora_weights=False)  # random B: a non-identity adapter
    peft_model = peft.get_peft_model(model, config)
    x = torch.randn(2, 6, 20)
    with torch.no_grad():
        want = peft_model(x)
    peft_model.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_config.json").is_file()

    for source in (tmp_path / "peft" / "adapter_model.safetensors", tmp_path / "peft"):
        adapter = read_adapter(source)
        assert adapter.modules == {"conv": "lora", "head": "lora"}
        assert adapter.ranks() == {"conv": 4, "head": 2}
        ours = _ConvLinear()
        ours.load_state_dict(base_state)
        load_lora_state_dict(ours, adapter.tensors)
        with torch.no_grad():
            got = ours(x)
        plain = _ConvLinear()
        plain.load_state_dict(base_state)
        with torch.no_grad():
            assert (plain(x) - want).abs().max() > 0.1  # the adapter matters
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # measured: identical; slack for rounding


def test_peft_adapter_without_its_config_is_refused(tmp_path):
    torch.manual_seed(1)
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    save_file({"base_model.model.dec.head.lora_A.weight": a, "base_model.model.dec.head.lora_B.weight": b},
              str(tmp_path / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RVCLoraError, match=r"adapter_model.safetensors: peft adapter without its "
                                           r"adapter_config.json.*'dec.head' cannot be known"):
        read_adapter(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(RVCLoraError, match="'dec.head' has rank 2 but .*adapter_config.json says r = 4"):
        read_adapter(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA", "r": 2}))
    with pytest.raises(RVCLoraError, match="adapter_config.json: not a usable peft LoRA config.*LOHA"):
        read_adapter(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 6}))
    af = read_adapter(tmp_path)
    assert af.modules == {"dec.head": "lora"} and float(af.tensors["dec.head.alpha"]) == 6.0


def test_diff_files(tmp_path):
    d, db = torch.randn(4, 3, 5), torch.randn(4)
    save_file({"dec.conv_post.diff": d, "dec.conv_post.diff_b": db}, str(tmp_path / "d.safetensors"))
    af = read_adapter(tmp_path / "d.safetensors")
    assert af.modules == {"dec.conv_post": "diff"}
    assert torch.equal(af.tensors["dec.conv_post.diff"], d) and torch.equal(af.tensors["dec.conv_post.diff_b"], db)


def test_lycoris_families_and_dora_are_read_with_their_algorithm(tmp_path):
    tensors = {
        "dec.a.hada_w1_a": torch.randn(8, 2), "dec.a.hada_w1_b": torch.randn(2, 12),
        "dec.a.hada_w2_a": torch.randn(8, 2), "dec.a.hada_w2_b": torch.randn(2, 12), "dec.a.alpha": torch.tensor(1.0),
        "dec.b.lokr_w1": torch.randn(2, 4), "dec.b.lokr_w2_a": torch.randn(4, 3), "dec.b.lokr_w2_b": torch.randn(3, 6),
        "dec.b.alpha": torch.tensor(3.0),
        "dec.c.lokr_w1": torch.randn(2, 2), "dec.c.lokr_w2": torch.randn(4, 4, 3),
        "dec.d.lora_down.weight": torch.randn(2, 8, 3), "dec.d.lora_up.weight": torch.randn(8, 2, 1),
        "dec.d.dora_scale": torch.rand(8, 1, 1), "dec.d.diff_b": torch.randn(8),
    }
    path = save_adapter(tmp_path / "lyco.safetensors", tensors, {"algorithm": "mixed"}, dtype="fp32")
    af = read_adapter(path)
    assert af.modules == {"dec.a": "loha", "dec.b": "lokr", "dec.c": "lokr", "dec.d": "dora"}
    assert af.ranks() == {"dec.a": 2, "dec.b": 3, "dec.d": 2}  # two full LoKr factors have no rank
    assert set(af.tensors) == set(tensors) | {"dec.d.alpha"}  # LoRA-family alpha defaults to the rank
    assert torch.equal(af.tensors["dec.b.lokr_w2_b"], tensors["dec.b.lokr_w2_b"])


@pytest.mark.parametrize("tensors,problem", [
    ({"m.lora_down.weight": torch.zeros(2, 3, 1)}, "missing its lora_up"),
    ({"m.lora_down.weight": torch.zeros(2, 3, 1), "m.lora_up.weight": torch.zeros(4, 3, 1)}, "rank mismatch"),
    ({"m.oft_blocks": torch.zeros(2, 3)}, "unknown tensor key 'm.oft_blocks'"),
    ({"m.hada_w1_a": torch.zeros(2, 3)}, "LoHa adapter has no hada_w1_b"),
    ({"m.hada_w1_a": torch.zeros(4, 2), "m.hada_w1_b": torch.zeros(2, 3), "m.hada_w2_a": torch.zeros(4, 3),
      "m.hada_w2_b": torch.zeros(2, 3)}, "disagree on the rank"),
    ({"m.hada_w1_a": torch.zeros(4, 2), "m.hada_w1_b": torch.zeros(2, 3), "m.hada_w2_a": torch.zeros(4, 2),
      "m.hada_w2_b": torch.zeros(2, 3), "m.hada_t1": torch.zeros(2, 2, 3)}, "Tucker"),
    ({"m.diff": torch.zeros(2, 2), "m.lokr_w1": torch.zeros(2, 2)}, "mixes several algorithms"),
    ({"m.lokr_w1": torch.zeros(2, 2), "m.lokr_w2": torch.zeros(2, 2), "m.hada_w1_a": torch.zeros(2, 2)},
     "mixes several algorithms"),
    ({"m.lokr_w1": torch.zeros(2, 2)}, "needs lokr_w1"),
    ({"m.alpha": torch.tensor(1.0)}, "neither a diff nor"),
    ({"m.lora_A.x.weight": torch.zeros(2, 3), "m.lora_B.y.weight": torch.zeros(3, 2)}, "several peft"),
])
def test_malformed_contents(tmp_path, tensors, problem):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(RVCLoraError, match=problem) as err:
        read_adapter(path)
    assert "bad.safetensors" in str(err.value)


def test_not_safetensors_and_truncated(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(RVCLoraError, match="junk.safetensors"):
        read_adapter(junk)
    good = save_adapter(tmp_path / "good.safetensors", _tensors(), {})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(RVCLoraError, match="cut.safetensors"):
        read_adapter(cut)
    with pytest.raises(RVCLoraError, match="missing.safetensors"):
        read_adapter(tmp_path / "missing.safetensors")


def test_metadata_is_json_in_the_header(tmp_path):
    path = save_adapter(tmp_path / "a.safetensors", _tensors(), {"sample_rate": 40000})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert json.loads(header["__metadata__"]["sample_rate"]) == 40000
    with pytest.raises(ValueError, match="JSON"):
        save_adapter(tmp_path / "b.safetensors", _tensors(), {"x": object()})


def test_check_fingerprint():
    assert check_fingerprint("abc", "abc", "a.safetensors", "base.pth")
    assert check_fingerprint(None, "abc", "a.safetensors", "base.pth")
    with pytest.raises(RVCLoraError) as err:
        check_fingerprint("abc", "def", "a.safetensors", "base.pth")
    assert all(s in str(err.value) for s in ("abc", "def", "a.safetensors", "base.pth"))
    assert check_fingerprint("abc", "def", "a.safetensors", "base.pth", force=True) is False
