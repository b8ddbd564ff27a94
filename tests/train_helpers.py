"""Fabricate a tiny prepared experiment folder and a tiny base model for training tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf

from rvc_lora.checkpoint import save_pretrained
from rvc_lora.data.experiment import (
    ExperimentInfo,
    ExperimentLayout,
    ManifestRow,
    write_filelist,
    write_info,
    write_manifest,
)
from rvc_lora.models import build_synthesizer
from rvc_lora.models import configs as model_configs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_common import random_adapter  # noqa: E402

TINY = model_configs.tiny_config()
SR = 40000


def make_experiment(root: Path, n_pieces: int = 5, n_val: int = 1, seed: int = 0, name: str = "tiny",
                    feature_dim: int = 768, index: bool = True) -> ExperimentLayout:
    """A prepared v2 40 kHz f0 experiment: ``n_pieces`` random pieces of 1-2 s, the last ``n_val`` marked val."""
    rng = np.random.default_rng(seed)
    layout = ExperimentLayout(root, "v2")
    layout.make_dirs()
    rows = []
    names = []
    for i in range(n_pieces):
        piece = f"0_{i}"
        seconds = 1.0 + 0.5 * rng.random()
        n = int(seconds * SR)
        t = np.arange(n) / SR
        wave = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        sf.write(layout.gt_wav(piece), wave, SR, subtype="FLOAT")
        sf.write(layout.wav16k(piece), wave[:: 5][: int(seconds * 16000)], 16000, subtype="FLOAT")
        feat_frames = int(seconds * 50)
        np.save(layout.feature(piece), rng.standard_normal((feat_frames, feature_dim)).astype(np.float32))
        f0_frames = int(seconds * 100) + 1
        hz = (150 + 50 * rng.random(f0_frames)).astype(np.float64)
        hz[::7] = 0.0
        coarse = np.clip(np.round((1127 * np.log1p(hz / 700) - 77.8) * 254 / 830 + 1), 1, 255).astype(np.int64)
        np.save(layout.f0_hz(piece), hz)
        np.save(layout.f0_coarse(piece), coarse)
        split = "val" if i >= n_pieces - n_val else "train"
        rows.append(ManifestRow(name=piece, source=f"src{i}.wav", end_s=seconds, duration_s=seconds, split=split))
        names.append(piece)
    write_manifest(layout.manifest_path, rows)
    write_filelist(layout, names, f0=True, speaker_id=0)
    write_info(layout, ExperimentInfo(name=name, version="v2", sample_rate=SR, f0=True, feature_dim=feature_dim,
                                      pitch_method="test", content_model="random"))
    if index:
        (root / f"added_IVF1_Flat_nprobe_1_{name}_v2.index").write_bytes(b"not a real index")
    return layout


def make_base(path: Path, seed: int = 0) -> Path:
    """A tiny v2 f0 base generator in the pretrained layout (fp16, with enc_q)."""
    torch.manual_seed(seed)
    synth = build_synthesizer(config=TINY, version="v2", f0=True)
    return save_pretrained(synth, path, config=TINY, version="v2", f0=1, sr="40k")


def make_adapter(model_path: Path, out: Path, seed: int) -> Path:
    """A rank-4 adapter over ``model_path`` with random up factors large enough to change the output."""
    return random_adapter(model_path, out, seed=seed, rank=4, scale=0.3)


def tiny_config(tmp: Path, groups: tuple[str, ...] = (), **trainer: object) -> DictConfig:
    """A composed training config for the tiny experiment under ``tmp`` (built by ``make_setup``).

    ``groups`` are command-line overrides composed first (``lora=loha``); ``trainer`` maps dotted keys to
    values set after, checked against the schema as command-line overrides are.
    """
    from omegaconf.errors import OmegaConfBaseException

    from rvc_lora.config import composition_error, load_config

    overrides = [
        "model=tiny", f"data.experiment_dir={tmp / 'exp'}", "data.name=tiny", f"run_dir={tmp / 'run'}",
        f"base.g={tmp / 'G.pth'}", "trainer.batch_size=2", "trainer.max_steps=4", "trainer.log_interval=1",
        "trainer.validation_interval=2", "trainer.checkpoint_interval=2", "trainer.discriminator=mel_only",
        "logging.audio_clips=1", "lora.rank=2", "lora.alpha=2", "trainer.segment_frames=8", *groups,
    ]
    cfg = load_config(overrides)
    for key, value in trainer.items():
        try:
            OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
        except OmegaConfBaseException as exc:
            raise composition_error(exc, {}) from None
    return cfg


def make_setup(tmp: Path, **kwargs: object) -> Path:
    make_experiment(tmp / "exp", **kwargs)
    make_base(tmp / "G.pth")
    return tmp


def ddp_worker(tmp: str) -> None:
    """Entry point for the torchrun test: train a few steps, then each rank saves its adapter tensors."""
    import os

    torch.set_num_threads(1)
    from rvc_lora.train import Trainer

    cfg = tiny_config(Path(tmp), **{"trainer.max_steps": 2, "trainer.batch_size": 1})
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
        torch.save(trainer.adapter_tensors(), Path(tmp) / f"rank{os.environ['RANK']}.pt")
        trainer.export(result)
    finally:
        trainer.close()


if __name__ == "__main__":
    import sys

    ddp_worker(sys.argv[1])
