"""GeneratorLoRA / SynthesizerLoRA on the RVC fixture: exact adapters, merged back into RVC files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rvc_lora.checkpoint import load_rvc, save_rvc
from rvc_lora.cli import main
from rvc_lora.generator_lora import GeneratorLoRA, SynthesizerLoRA
from rvc_lora.lora import LoRAConfig, LoRALayer, read_adapter
from rvc_lora.merge import extract_adapter, merge_adapters, parse_adapter_spec
from rvc_lora.utils import RVCLoraError


def _inputs(frames: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    phone = torch.randn(1, frames, 768, generator=g)
    f0 = 180 + 40 * torch.rand(1, frames, generator=g)
    return phone, torch.tensor([frames]), torch.full((1, frames), 90, dtype=torch.long), f0, torch.tensor([0])


def _run(synth, args, seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return synth.infer(*args)[0]


def _randomize(host, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in host.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture()
def synth(fixture_model_path: Path):
    return load_rvc(fixture_model_path).model


def test_fresh_adapter_is_identity_and_targets_ups_and_resblocks(synth):
    args = _inputs()
    before = _run(synth, args)
    lora = GeneratorLoRA(synth.dec, LoRAConfig(rank=4))
    layers = {n for n, m in synth.dec.named_modules() if isinstance(m, LoRALayer)}
    assert {f"ups.{i}" for i in range(4)} <= layers
    assert "resblocks.11.convs2.2" in layers and "conv_pre" not in layers
    assert len(layers) == 4 + 12 * 6
    assert torch.allclose(_run(synth, args), before, atol=1e-6)
    assert lora.summary().splitlines()[-1].startswith("total")


def test_only_adapter_parameters_receive_gradients(synth):
    lora = SynthesizerLoRA(synth, LoRAConfig(rank=2))
    for p in synth.parameters():
        p.requires_grad_(False)
    for p in lora.lora_parameters():
        p.requires_grad_(True)
    _randomize(lora)
    out = synth.infer(*_inputs())[0]
    out.square().mean().backward()
    assert all(p.grad is not None for p in lora.lora_parameters())
    adapter_ids = {id(p) for p in lora.lora_parameters()}
    assert all(p.grad is None for p in synth.parameters() if id(p) not in adapter_ids)


def test_merge_and_unload_save_load_reproduces_live_adapter(synth, tmp_path: Path):
    args = _inputs()
    lora = GeneratorLoRA(synth.dec, LoRAConfig(rank=8))
    _randomize(lora)
    live = _run(synth, args)
    lora.merge()
    assert torch.allclose(_run(synth, args), live, atol=1e-5)
    lora.unmerge()
    plain = lora.merge_and_unload()
    assert not any(isinstance(m, LoRALayer) for m in plain.modules())
    assert type(plain.ups[0]) is torch.nn.ConvTranspose1d
    path = save_rvc(synth, tmp_path / "merged.pth")
    reloaded = load_rvc(path).model
    scale = live.abs().max()
    assert (_run(reloaded, args) - live).abs().max() <= 2e-3 * scale  # fp16 rounding of the weights


def _trained_adapter(fixture_model_path: Path, tmp_path: Path, name: str, seed: int, rank: int = 4) -> Path:
    synth = load_rvc(fixture_model_path).model
    lora = SynthesizerLoRA(synth, LoRAConfig(rank=rank), base_desc="fixture")
    _randomize(lora, seed=seed)
    return lora.save_adapter(tmp_path / f"{name}.safetensors", metadata={"steps": 10}, dtype="fp32")


def test_adapter_file_format_and_metadata(fixture_model_path: Path, tmp_path: Path):
    path = _trained_adapter(fixture_model_path, tmp_path, "alice", seed=1)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"dec.ups.0.lora_down.weight", "dec.ups.0.lora_up.weight", "dec.ups.0.alpha"} <= keys
    assert all(k.startswith("dec.") for k in keys)
    adapter = read_adapter(path)
    for field in ("format", "format_version", "rank", "alpha", "targets", "rvc_version", "sample_rate", "f0",
                  "base_fingerprint", "dtype", "training"):
        assert field in meta, field
    assert adapter.metadata["rvc_version"] == "v2" and adapter.metadata["sample_rate"] == 40000
    assert adapter.metadata["training"] == {"steps": 10}


def _factor_delta(adapter: dict[str, torch.Tensor], module: str, transposed: bool) -> torch.Tensor:
    """A module's weight delta computed straight from an adapter file's tensors (kohya rule: x alpha / rank).

    Conv1d ``[O, I, K]``: sum_j up[o, j] down[j, i, k]; ConvTranspose1d ``[I, O, K]``: sum_j down[j, i] up[j, o, k].
    """
    down = adapter[f"{module}.lora_down.weight"].double()
    up = adapter[f"{module}.lora_up.weight"].double()
    scale = float(adapter[f"{module}.alpha"]) / down.shape[0]
    if transposed:
        return torch.einsum("ji,jok->iok", down[..., 0], up) * scale
    return torch.einsum("oj,jik->oik", up[..., 0], down) * scale


def test_loaded_adapter_matches_trained_one_and_strengths_are_linear(fixture_model_path: Path, tmp_path: Path):
    args = _inputs(frames=12)
    trained = {}  # name -> (file, output of the model it was trained on)
    for name, seed, config in (("a", 1, LoRAConfig(rank=4, alpha=2.0)),
                               ("b", 2, LoRAConfig(rank=4, alpha=8.0, rs_lora=True))):
        synth = load_rvc(fixture_model_path).model
        host = SynthesizerLoRA(synth, config, flow=True, base_desc="fixture")
        _randomize(host, seed=seed)
        trained[name] = (host.save_adapter(tmp_path / f"{name}.safetensors", dtype="fp32"), _run(synth, args))

    def loaded(specs):
        synth = load_rvc(fixture_model_path).model
        host = SynthesizerLoRA(synth)
        for path, strength in specs:
            host.load_adapter(path, strength=strength, adapter_name=path.stem)
        return synth, host

    # Loaded from its file, each adapter gives the output of the model it was trained on (scales included:
    # alpha/rank = 0.5 for a, rsLoRA alpha/sqrt(rank) = 4 for b).
    base = _run(loaded([])[0], args)
    for path, want in trained.values():
        got = _run(loaded([(path, 1.0)])[0], args)
        assert (want - base).abs().max() > 0.02 * base.abs().max()  # the adapter matters (measured 6% and 49%)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))  # measured: equal

    # Strengths combine linearly: merged weights = base + 0.7 delta_a - 0.4 delta_b, with each delta
    # computed directly from the file's factors.
    synth, host = loaded([(trained["a"][0], 0.7), (trained["b"][0], -0.4)])
    live = _run(synth, args)
    files = {k: read_adapter(p).tensors for k, (p, _) in trained.items()}
    before = {m: synth.get_submodule(m).base.weight.detach().double().clone()
              for m in ("dec.ups.0", "dec.resblocks.2.convs1.1", "flow.flows.2.enc.in_layers.1")}
    host.merge()
    for module, w0 in before.items():
        transposed = module.startswith("dec.ups.")
        expected = w0 + 0.7 * _factor_delta(files["a"], module, transposed) \
            - 0.4 * _factor_delta(files["b"], module, transposed)
        merged = synth.get_submodule(module).base.weight.detach().double()
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-7)  # float32 rounding: 9e-9 (deltas ~0.05)
    # measured 1.5e-6 of the peak (the merged weights are summed in another order than the live branches)
    torch.testing.assert_close(_run(synth, args), live, rtol=1e-4, atol=1e-5 * float(live.abs().max()))


def test_merge_command_writes_base_key_set(fixture_model_path: Path, tmp_path: Path):
    a = _trained_adapter(fixture_model_path, tmp_path, "a", seed=1)
    b = _trained_adapter(fixture_model_path, tmp_path, "b", seed=2)
    out = tmp_path / "merged.pth"
    assert main(["merge", "--base", str(fixture_model_path), "--adapter", f"{a}:0.5", "--adapter", str(b),
                 "--out", str(out)]) == 0
    base = torch.load(fixture_model_path, weights_only=True)
    merged = torch.load(out, weights_only=True)
    assert list(merged["weight"]) == list(base["weight"])
    assert all(merged["weight"][k].shape == v.shape for k, v in base["weight"].items())
    assert all(v.dtype == torch.float16 for v in merged["weight"].values())
    assert merged["config"] == base["config"]
    # Untouched layers are bit-identical; adapted ones changed.
    assert torch.equal(merged["weight"]["enc_p.emb_phone.weight"], base["weight"]["enc_p.emb_phone.weight"])
    assert torch.equal(merged["weight"]["dec.conv_pre.weight"], base["weight"]["dec.conv_pre.weight"])
    assert not torch.equal(merged["weight"]["dec.ups.0.weight_v"], base["weight"]["dec.ups.0.weight_v"])
    # The merged file equals base + adapters applied live.
    args = _inputs()
    synth = load_rvc(fixture_model_path).model
    host = SynthesizerLoRA(synth)
    host.load_adapter(a, 0.5, "a")
    host.load_adapter(b, 1.0, "b")
    live = _run(synth, args)
    merged_out = _run(load_rvc(out).model, args)
    assert (merged_out - live).abs().max() <= 2e-3 * live.abs().max()


def test_adapter_for_another_base_is_refused_unless_forced(fixture_model_path: Path, tmp_path: Path):
    a = _trained_adapter(fixture_model_path, tmp_path, "a", seed=1)
    other = load_rvc(fixture_model_path).model
    with torch.no_grad():
        other.dec.ups[0].weight_v.mul_(1.5)
    other_path = save_rvc(other, tmp_path / "other.pth")
    with pytest.raises(RVCLoraError) as err:
        merge_adapters(other_path, [(a, 1.0)], tmp_path / "x.pth")
    message = str(err.value)
    assert "a.safetensors" in message and "fingerprint" in message and "other.pth" in message
    merge_adapters(other_path, [(a, 1.0)], tmp_path / "x.pth", force=True)
    assert (tmp_path / "x.pth").is_file()


def test_malformed_adapter_files_give_clear_errors(fixture_model_path: Path, tmp_path: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(RVCLoraError, match="junk.safetensors"):
        merge_adapters(fixture_model_path, [(junk, 1.0)], tmp_path / "x.pth")
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"dec.nope.lora_down.weight": torch.zeros(2, 3, 1), "dec.nope.lora_up.weight": torch.zeros(3, 2, 1)},
              str(wrong))
    with pytest.raises(RVCLoraError, match="nope"):
        merge_adapters(fixture_model_path, [(wrong, 1.0)], tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_adapter_spec_parsing():
    assert parse_adapter_spec("a.safetensors:0.7") == (Path("a.safetensors"), 0.7)
    assert parse_adapter_spec("a.safetensors:-1.5") == (Path("a.safetensors"), -1.5)
    assert parse_adapter_spec("dir:x/a.safetensors") == (Path("dir:x/a.safetensors"), 1.0)


def _planted_tuned_model(fixture_model_path: Path, tmp_path: Path, rank: int) -> Path:
    """A 'fully fine-tuned' model whose generator layers differ from the base by rank-r deltas."""
    synth = load_rvc(fixture_model_path).model
    lora = GeneratorLoRA(synth.dec, LoRAConfig(rank=rank))
    _randomize(lora, scale=0.2, seed=3)
    lora.merge_and_unload()
    save_rvc(synth, tmp_path / "tuned.pth", dtype=torch.float32)
    base = load_rvc(fixture_model_path).model
    save_rvc(base, tmp_path / "base32.pth", dtype=torch.float32)
    return tmp_path / "tuned.pth"


def test_extract_recovers_planted_low_rank_delta(fixture_model_path: Path, tmp_path: Path):
    tuned = _planted_tuned_model(fixture_model_path, tmp_path, rank=2)
    base32 = tmp_path / "base32.pth"
    rows = extract_adapter(base32, tuned, tmp_path / "x2.safetensors", rank=2, dtype="fp32")
    lowrank = [r for r in rows if r.stored_as == "lora"]
    assert lowrank and max(r.rel_error for r in lowrank) < 1e-4
    rows1 = extract_adapter(base32, tuned, tmp_path / "x1.safetensors", rank=1, dtype="fp32")
    err1 = {r.module: r.rel_error for r in rows1 if r.stored_as == "lora"}
    assert all(err1[r.module] >= r.rel_error for r in lowrank if r.module in err1)
    assert max(err1.values()) > 1e-3
    # Merging the extracted adapter onto the base reproduces the tuned model.
    merged = merge_adapters(base32, [(tmp_path / "x2.safetensors", 1.0)], tmp_path / "m.pth", dtype="fp32")
    args = _inputs()
    y_tuned, y_merged = _run(load_rvc(tuned).model, args), _run(load_rvc(merged).model, args)
    assert (y_tuned - y_merged).abs().max() <= 1e-3 * y_tuned.abs().max()


def test_extract_command_prints_table_and_energy_mode(fixture_model_path: Path, tmp_path: Path, capsys):
    tuned = _planted_tuned_model(fixture_model_path, tmp_path, rank=2)
    out = tmp_path / "e.safetensors"
    assert main(["extract", "--base", str(tmp_path / "base32.pth"), "--tuned", str(tuned), "--energy", "0.999",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dec.ups.0" in text and "rel. error" in text and "total" in text
    assert main(["inspect", str(out)]) == 0
    assert "fingerprint" in capsys.readouterr().out


def test_trained_speaker_row_is_applied_with_strength_and_removed_exactly(fixture_model_path: Path, tmp_path: Path):
    synth = load_rvc(fixture_model_path).model
    lora = SynthesizerLoRA(synth, LoRAConfig(rank=2))
    _randomize(lora)
    tensors = lora.adapter_state_dict()
    diff = torch.zeros_like(synth.emb_g.weight)
    diff[1] = 0.5
    tensors["emb_g.diff"] = diff
    from rvc_lora.lora import save_adapter

    path = save_adapter(tmp_path / "spk.safetensors", tensors, lora.metadata(), dtype="fp32")
    target = load_rvc(fixture_model_path).model
    original = target.emb_g.weight.detach().clone()
    host = SynthesizerLoRA(target)
    host.load_adapter(path, strength=0.5, adapter_name="v")
    ids = torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(target.emb_g(ids), torch.stack([original[0], original[1] + 0.25]))
        host.merge()  # the same merge as every other layer: the row lands in the table
        assert torch.allclose(target.emb_g.base.weight[1], original[1] + 0.25)
        assert torch.equal(target.emb_g.base.weight[0], original[0])
        host.remove_adapter("v")
        assert torch.equal(target.emb_g.base.weight, original) and torch.equal(target.emb_g(ids), original[ids])
    with pytest.raises(RVCLoraError, match="speaker row"):
        GeneratorLoRA(load_rvc(fixture_model_path).model.dec).load_adapter(path)


ALGORITHM_NAMES = ["lora", "loha", "lokr", "dora", "full"]


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_every_algorithm_live_equals_merged_and_unmerge_restores_the_base_bit_for_bit(synth, algorithm):
    args = _inputs()
    plain = _run(synth, args)
    host = SynthesizerLoRA(synth, LoRAConfig(rank=4, alpha=2.0, algorithm=algorithm))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in host.lora_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    base = {n: p.detach().clone() for n, p in synth.named_parameters() if ".adapters." not in n}
    live = _run(synth, args)
    assert ((live - plain).norm() / plain.norm()).item() > 1e-3  # the adapter changes the audio
    host.merge()
    merged = _run(synth, args)
    assert ((merged - live).norm() / live.norm()).item() < 1e-5  # measured 0 (same fp32 sums)
    host.unmerge()
    assert all(torch.equal(p, base[n]) for n, p in synth.named_parameters() if n in base)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_every_algorithm_file_merges_into_an_rvc_model_and_inspects(fixture_model_path, tmp_path, algorithm, capsys):
    synth = load_rvc(fixture_model_path).model
    host = SynthesizerLoRA(synth, LoRAConfig(rank=4, algorithm=algorithm), base_desc="fixture")
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in host.lora_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    path = host.save_adapter(tmp_path / f"{algorithm}.safetensors", dtype="fp32")
    args = _inputs()
    live = _run(synth, args)
    out = merge_adapters(fixture_model_path, [(path, 1.0)], tmp_path / "merged.pth")
    merged = load_rvc(out)
    assert merged.format == "small"
    assert (_run(merged.model, args) - live).abs().max() <= 2e-3 * live.abs().max()  # fp16 weights in the file
    assert main(["inspect", str(path)]) == 0
    assert f"{'diff' if algorithm == 'full' else algorithm} (" in capsys.readouterr().out
