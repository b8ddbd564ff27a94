"""Training: TensorBoard output, exact resume, DDP, NaN handling, frozen base, modes, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rvc_lora.checkpoint import load_rvc
from rvc_lora.train import NonFiniteLossError, Trainer, list_checkpoints, run_training
from rvc_lora.utils import RVCLoraError

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_setup, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> Path:
    return make_setup(tmp_path_factory.mktemp("train"))


def _cfg(setup_dir: Path, run: Path, **kw):
    cfg = tiny_config(setup_dir, **kw)
    cfg.run_dir = str(run)
    return cfg


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    return acc


def test_run_writes_events_checkpoints_and_final_files(setup_dir, tmp_path):
    cfg = _cfg(setup_dir, tmp_path / "run", **{"trainer.discriminator": "train", "trainer.keep_checkpoints": 1})
    result = run_training(cfg)
    run = tmp_path / "run"
    tags = _events(run).Tags()
    for name in ("loss/g/total", "loss/g/mel", "loss/g/kl", "loss/g/fm", "loss/g/adv", "loss/d/total", "lr",
                 "grad_norm/adapter", "grad_norm/d", "adapter/weight_norm", "speed/steps_per_sec",
                 "nan/skipped_steps", "val/mel_l1"):
        assert name in tags["scalars"], name
    assert "mel/val_0" in tags["images"] and "mel/train" in tags["images"]
    assert {"audio/val_0/real", "audio/val_0/reconstruction", "audio/val_0/conversion"} <= set(tags["audio"])
    # a fresh discriminator is announced, checkpoints are pruned to the last one
    assert any("base.d is not set" in w for w in result.warnings)
    assert [s for s, _ in list_checkpoints(run)] == [4]
    assert (run / "config.yaml").is_file() and (run / "best_adapter.safetensors").is_file()
    with safe_open(str(run / "adapter.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert any(k.startswith("dec.ups.0.lora_down") for k in keys)
    assert json.loads(meta["training"])["steps"] == 4 and json.loads(meta["base_fingerprint"])
    merged = load_rvc(run / "merged.pth")
    assert merged.format == "small" and merged.version == "v2"
    assert result.index_paths and result.index_paths[0].read_bytes() == b"not a real index"


def test_resume_matches_uninterrupted_run(setup_dir, tmp_path):
    common = {"trainer.batch_size": 1, "trainer.checkpoint_interval": 2, "trainer.discriminator": "every_k",
              "trainer.d_every": 2, "trainer.validation_interval": 100}
    full = Trainer(_cfg(setup_dir, tmp_path / "a", **common, **{"trainer.max_steps": 5}))
    full.fit()
    expected = full.adapter_tensors()
    full.close()

    first = Trainer(_cfg(setup_dir, tmp_path / "b", **common, **{"trainer.max_steps": 3}))
    first.fit()  # stops mid-epoch (4 batches per epoch) with a checkpoint at step 3
    first.close()
    second = Trainer(_cfg(setup_dir, tmp_path / "b", **common, **{"trainer.max_steps": 5}))
    assert second.step == 3 and second.resumed_from is not None
    second.fit()
    got = second.adapter_tensors()
    second.close()
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.skipif(os.environ.get("RVC_LORA_SKIP_DDP") == "1", reason="RVC_LORA_SKIP_DDP=1")
def test_two_gloo_processes_end_with_identical_adapters(setup_dir, tmp_path):
    work = tmp_path / "ddp"
    work.mkdir()
    for name in ("exp", "G.pth"):
        (work / name).symlink_to(setup_dir / name)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).parent / "train_helpers.py"), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(work / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_up.weight") and a[k].abs().sum() > 0 for k in a)  # it did train
    assert (work / "run" / "adapter.safetensors").is_file()


def test_nan_step_is_skipped_and_counted(setup_dir, tmp_path, monkeypatch):
    import rvc_lora.train.step as step

    calls = {"n": 0}
    real = step.mel_l1

    def flaky(a, b):
        calls["n"] += 1
        out = real(a, b)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(step, "mel_l1", flaky)
    result = run_training(_cfg(setup_dir, tmp_path / "run"))
    assert result.skipped_steps == 1 and result.steps == 4
    skipped = [e.value for e in _events(tmp_path / "run").Scalars("nan/skipped_steps")]
    assert skipped[-1] == 1.0


def test_nan_patience_stops_with_advice(setup_dir, tmp_path, monkeypatch):
    import rvc_lora.train.step as step

    monkeypatch.setattr(step, "mel_l1", lambda a, b: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="lower learning rate.*fp32.*data"):
        run_training(_cfg(setup_dir, tmp_path / "run", **{"trainer.nan_patience": 2}))


def test_base_weights_are_unchanged_and_only_adapters_train(setup_dir, tmp_path):
    trainer = Trainer(_cfg(setup_dir, tmp_path / "run", **{"trainer.discriminator": "frozen",
                                                            "trainer.max_steps": 2}))
    frozen = {n: p.detach().clone() for n, p in trainer.synth.named_parameters() if not p.requires_grad}
    disc = {n: p.detach().clone() for n, p in trainer.disc.named_parameters()}
    trainable = {n: p.detach().clone() for n, p in trainer.synth.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    trainer.fit()
    trainer.close()
    for n, p in trainer.synth.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(torch.equal(p, disc[n]) for n, p in trainer.disc.named_parameters())  # frozen mode
    assert any(not torch.equal(p, trainable[n]) for n, p in trainer.synth.named_parameters() if n in trainable)


def test_mel_only_has_no_discriminator(setup_dir, tmp_path):
    result = run_training(_cfg(setup_dir, tmp_path / "run", **{"trainer.max_steps": 2}))
    assert "loss/g/adv" not in result.final_losses and "loss/d/total" not in result.final_losses
    assert result.final_losses["loss/g/mel"] > 0 and (tmp_path / "run" / "merged.pth").is_file()


def test_full_fine_tune_trains_everything(setup_dir, tmp_path):
    trainer = Trainer(_cfg(setup_dir, tmp_path / "run", **{"adapter": "none", "trainer.max_steps": 1}))
    before = {n: p.detach().clone() for n, p in trainer.synth.named_parameters()}
    assert all(p.requires_grad for p in trainer.synth.parameters())
    trainer.fit()
    trainer.close()
    changed = {n.split(".")[0] for n, p in trainer.synth.named_parameters() if not torch.equal(p, before[n])}
    assert {"enc_p", "dec", "enc_q", "flow", "emb_g"} <= changed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"base.g": "/nonexistent/G.pth"}, "pretrained generator not found"),
        ({"data.experiment_dir": "/nonexistent/exp"}, "experiment folder not found"),
        ({"trainer.discriminator": "sometimes"}, r"trainer.discriminator: Invalid value 'sometimes', expected one "
                                                 r"of \[train, frozen, every_k, mel_only\]"),
        ({"trainer.batch_size": 0}, "trainer.batch_size must be an integer >= 1"),
        ({"model.sample_rate": 48000}, r"model.sample_rate=48000 contradicts the experiment.*\(model=v2_40k\)"),
        ({"trainer.grad_accum": 0}, "trainer.grad_accum must be an integer >= 1"),
        ({"lora.algorithm": "lokra"}, "lora: unknown adapter algorithm 'lokra'; choose one of lora, loha"),
        ({"lora.algorithm": "loha", "lora.dropout": 0.1}, "dropout applies to lora and dora only"),
    ],
)
def test_bad_configs_fail_before_training(setup_dir, tmp_path, override, message):
    with pytest.raises(RVCLoraError, match=message):
        Trainer(_cfg(setup_dir, tmp_path / "run", **override))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_experiment_contradicting_base_is_refused(tmp_path):
    make_setup(tmp_path, feature_dim=256)
    with pytest.raises(RVCLoraError, match="feature_dim 256 does not fit RVC v2"):
        Trainer(_cfg(tmp_path, tmp_path / "run"))
    info_path = tmp_path / "exp" / "experiment.json"
    info = json.loads(info_path.read_text())
    info.update(feature_dim=768, version="v2", f0=False)
    info_path.write_text(json.dumps(info))
    for f in (tmp_path / "exp" / "3_feature768").glob("*.npy"):
        f.unlink()
    (tmp_path / "exp" / "3_feature768").mkdir(exist_ok=True)
    torch.manual_seed(0)
    import numpy as np

    for name in [p.stem for p in (tmp_path / "exp" / "0_gt_wavs").glob("*.wav")]:
        np.save(tmp_path / "exp" / "3_feature768" / f"{name}.npy", np.zeros((60, 768), np.float32))
    cfg = _cfg(tmp_path, tmp_path / "run")
    cfg.model.f0 = False  # as the experiment: let the base / experiment comparison speak
    with pytest.raises(RVCLoraError, match="pitch model but the experiment was prepared without pitch"):
        Trainer(cfg)


def test_gradient_accumulation_averages_micro_batch_gradients(setup_dir, tmp_path):
    from rvc_lora.train.dataset import collate_pieces

    trainer = Trainer(_cfg(setup_dir, tmp_path / "run", **{"trainer.batch_size": 1}))
    for group in trainer.optim_g.param_groups:
        group["lr"] = 0.0  # the weights stay put, so each step's gradients can be compared
    try:
        b1, b2 = collate_pieces([trainer.dataset[0]]), collate_pieces([trainer.dataset[1]])
        params = trainer.models.trainable_g

        def grads():
            return [p.grad.detach().clone() for p in params]

        torch.manual_seed(0)
        trainer.train_step([b1, b2])
        together = grads()
        torch.manual_seed(0)  # same random draws (segments, noise) in the same order
        trainer.train_step(b1)
        first = grads()
        trainer.train_step(b2)
        second = grads()
    finally:
        trainer.close()
    assert any(g.abs().max() > 0 for g in together)
    for acc, g1, g2 in zip(together, first, second, strict=True):
        assert torch.allclose(acc, (g1 + g2) / 2, rtol=1e-4, atol=1e-7)


def test_gradient_accumulation_counts_optimiser_steps(setup_dir, tmp_path):
    result = run_training(_cfg(setup_dir, tmp_path / "run", **{
        "trainer.batch_size": 1, "trainer.grad_accum": 2, "trainer.max_steps": 100, "trainer.max_epochs": 2,
        "trainer.validation_interval": 100, "trainer.checkpoint_interval": 100}))
    # 4 training pieces, batch 1: 4 batches per epoch = 2 optimiser steps of 2 micro-batches
    assert (result.steps, result.epochs) == (4, 2)


def test_rerunning_a_finished_run_keeps_its_results(setup_dir, tmp_path):
    cfg = {"trainer.max_steps": 2, "trainer.validation_interval": 100}
    first = run_training(_cfg(setup_dir, tmp_path / "run", **cfg))
    again = run_training(_cfg(setup_dir, tmp_path / "run", **cfg))
    assert again.steps == first.steps == 2
    assert again.final_losses == first.final_losses and first.final_losses
    with safe_open(str(tmp_path / "run" / "adapter.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["training"])["final_losses"]


def test_trained_speaker_row_is_saved_and_loads_onto_the_base(setup_dir, tmp_path):
    from rvc_lora.generator_lora import SynthesizerLoRA
    from rvc_lora.lora import read_adapter

    result = run_training(_cfg(setup_dir, tmp_path / "run", **{
        "lora.train_speaker_embedding": True, "trainer.max_steps": 2, "trainer.validation_interval": 100}))
    adapter = read_adapter(result.adapter_path)
    diff = adapter.tensors["emb_g.diff"]
    assert adapter.metadata["speaker_row"] == 0
    assert diff[0].abs().sum() > 0 and diff[1:].abs().sum() == 0  # only the trained row moves
    base = load_rvc(setup_dir / "G.pth").model
    before = base.emb_g.weight.detach().clone()
    host = SynthesizerLoRA(base)
    host.load_adapter(result.adapter_path)
    host.merge()
    assert torch.allclose(base.emb_g.base.weight, before + diff.float(), atol=1e-3)


@pytest.fixture(scope="module")
def hubert_768(tmp_path_factory) -> Path:
    from rvc_lora.demo.random_hubert import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert.pt", size="tiny", embed_dim=768)


@pytest.mark.parametrize(("override", "algorithm", "zero_init_parts"), [
    ("lora=loha", "loha", ("hada_w2_a",)), ("lora=lokr", "lokr", ("lokr_w2", "lokr_w2_b")),
    ("lora=dora", "dora", ("lora_up",)), ("lora.algorithm=full", "full", ("diff",)),
])
def test_every_algorithm_trains_from_the_command_line_then_merges_reloads_and_converts(
        setup_dir, tmp_path, hubert_768, override, algorithm, zero_init_parts):
    from rvc_lora.infer import Converter, PipelineConstants
    from rvc_lora.lora import read_adapter
    from rvc_lora.lora.algorithms import split_key
    from rvc_lora.merge import merge_adapters

    cfg = _cfg(setup_dir, tmp_path / "run", groups=(override,), **{
        "trainer.max_steps": 2, "trainer.validation_interval": 100, "trainer.checkpoint_interval": 100,
        "trainer.best_metric": "mel_l1"})
    assert cfg.lora.algorithm == algorithm
    result = run_training(cfg)
    adapter = read_adapter(result.adapter_path)
    assert adapter.metadata["algorithm"] == algorithm
    assert set(adapter.modules.values()) == {"diff" if algorithm == "full" else algorithm}
    # The parts that start at zero (so that a new adapter is an identity) moved: it did train.
    trained = [t for k, t in adapter.tensors.items() if split_key(k)[1] in zero_init_parts]
    assert trained and any(t.abs().sum() > 0 for t in trained)
    assert load_rvc(tmp_path / "run" / "merged.pth").format == "small"
    merged = merge_adapters(setup_dir / "G.pth", [(result.adapter_path, 1.0)], tmp_path / "merged.pth",
                            dtype="fp32")
    assert load_rvc(merged).format == "small"  # RVC's small-model layout, loaded back
    # Converting with the adapter file on the base equals converting with the merged model.
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(12000) / 16000)).astype(np.float32)
    fast = PipelineConstants(x_pad=0.2, x_query=0.3, x_center=1.0, x_max=10.0)
    live = Converter(setup_dir / "G.pth", hubert_768, [result.adapter_path], device="cpu", f0_method="pm",
                     constants=fast).convert(audio, 16000, seed=0)[0]
    plain = Converter(merged, hubert_768, device="cpu", f0_method="pm", constants=fast).convert(audio, 16000,
                                                                                                 seed=0)[0]
    assert np.isfinite(live).all() and np.abs(live).max() > 0
    # measured 2.3e-7 (loha, lokr, dora) and 3.1e-7 (full) of the peak: fp32 rounding of W + dW
    assert np.abs(live - plain).max() <= 1e-5 * np.abs(plain).max()
