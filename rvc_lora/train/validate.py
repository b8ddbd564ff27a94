"""Check a training configuration before anything heavy happens; every problem in one readable error.

Two stages: :func:`check_config` looks at values, folders and files (cheap), and
:func:`check_base_against_experiment` compares a loaded base model with the experiment it will train on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from rvc_lora.data.experiment import FEATURE_DIMS, ExperimentInfo, ExperimentLayout, read_info
from rvc_lora.lora import LoRAConfig
from rvc_lora.utils import RVCLoraError

from .speaker_similarity import resolve_best_metric

__all__ = ["check_base_against_experiment", "check_config", "lora_config"]


def _int_at_least(problems: list[str], value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")


def _fail(problems: list[str]) -> None:
    if len(problems) == 1:
        raise RVCLoraError(f"invalid training configuration: {problems[0]}")
    if problems:  # several: one per line, so that all can be fixed at once
        raise RVCLoraError("invalid training configuration:\n  - " + "\n  - ".join(problems))


def lora_config(cfg: DictConfig) -> LoRAConfig:
    """The adapter settings ``cfg.lora`` as a ``LoRAConfig`` (the one place they are read); ``RVCLoraError``
    naming the problem if they are invalid."""
    lora = cfg.lora
    try:
        return LoRAConfig(rank=lora.rank, alpha=lora.alpha, dropout=float(lora.dropout),
                          targets=tuple(lora.targets or ()), rs_lora=bool(lora.rs_lora), algorithm=str(lora.algorithm),
                          factor=lora.factor, decompose_both=bool(lora.decompose_both))
    except ValueError as exc:
        raise RVCLoraError(f"lora: {exc}") from None


def check_config(cfg: DictConfig) -> tuple[ExperimentLayout, ExperimentInfo]:
    """Validate ``cfg`` for training; returns the experiment's layout and description.

    Raises ``RVCLoraError`` listing every problem found (ranges, missing folders and files, contradictions
    between the model settings and the experiment). Types and choices were checked at composition
    (``rvc_lora.config_schema``).
    """
    problems: list[str] = []
    t = cfg.trainer
    if cfg.adapter == "lora":
        try:
            lora_config(cfg)
        except RVCLoraError as exc:
            problems.append(str(exc))
    _int_at_least(problems, t.batch_size, "trainer.batch_size", 1)
    _int_at_least(problems, t.grad_accum, "trainer.grad_accum", 1)
    _int_at_least(problems, t.d_every, "trainer.d_every", 1)
    _int_at_least(problems, t.checkpoint_interval, "trainer.checkpoint_interval", 1)
    _int_at_least(problems, t.keep_checkpoints, "trainer.keep_checkpoints", 1)
    _int_at_least(problems, t.nan_patience, "trainer.nan_patience", 1)
    _int_at_least(problems, t.log_interval, "trainer.log_interval", 1)
    _int_at_least(problems, t.validation_interval, "trainer.validation_interval", 1)
    if t.max_steps is None and t.max_epochs is None:
        problems.append("set trainer.max_steps or trainer.max_epochs (both are null)")
    if t.max_steps is not None:
        _int_at_least(problems, t.max_steps, "trainer.max_steps", 1)
    if t.max_epochs is not None:
        _int_at_least(problems, t.max_epochs, "trainer.max_epochs", 1)
    if t.ema_decay is not None and not (isinstance(t.ema_decay, (int, float)) and 0.0 < t.ema_decay < 1.0):
        problems.append(f"trainer.ema_decay must be null or a number in (0, 1), got {t.ema_decay!r}")
    try:
        resolve_best_metric(str(t.best_metric))
    except RVCLoraError as exc:
        problems.append(str(exc))
    if cfg.optim.lr is None or float(cfg.optim.lr) <= 0:
        problems.append(f"optim.lr must be > 0, got {cfg.optim.lr!r}")

    if cfg.base.g is None:
        problems.append("base.g is not set: give the pretrained generator, e.g. base.g=assets/pretrained_v2/"
                        "f0G40k.pth (get it with `rvc-lora assets download pretrained-v2-f0G40k`)")
    elif not Path(str(cfg.base.g)).is_file():
        problems.append(f"base.g: pretrained generator not found: {cfg.base.g}")
    if cfg.base.d is not None and not Path(str(cfg.base.d)).is_file():
        problems.append(f"base.d: pretrained discriminator not found: {cfg.base.d} (set base.d=null to "
                        "start from a fresh discriminator)")

    exp_dir = Path(str(cfg.data.experiment_dir))
    layout = info = None
    if not exp_dir.is_dir():
        problems.append(f"data.experiment_dir: experiment folder not found: {exp_dir} (run `rvc-lora prepare`)")
    else:
        try:
            info = read_info(exp_dir)
        except RVCLoraError as exc:
            problems.append(str(exc))
    if info is not None:
        if info.version not in FEATURE_DIMS:
            problems.append(f"{exp_dir}/experiment.json: unknown RVC version {info.version!r}")
        else:
            layout = ExperimentLayout(exp_dir, info.version)
            _check_experiment(problems, cfg, layout, info)
    _fail(problems)
    assert layout is not None and info is not None
    return layout, info


def _check_experiment(problems: list[str], cfg: DictConfig, layout: ExperimentLayout, info: ExperimentInfo) -> None:
    expected_dim = FEATURE_DIMS[info.version]
    if info.feature_dim != expected_dim:
        problems.append(f"{layout.info_path}: feature_dim {info.feature_dim} does not fit RVC {info.version} "
                        f"(needs {expected_dim}-d content features)")
    sample = next(iter(sorted(layout.feature_dir.glob("*.npy"))), None)
    if sample is None:
        problems.append(f"{layout.feature_dir}: no content features (prepared for another version? "
                        f"{info.version} expects {expected_dim}-d features in {layout.feature_dir.name})")
    else:
        shape = np.load(sample, mmap_mode="r").shape
        if len(shape) != 2 or shape[1] != expected_dim:
            problems.append(f"{sample}: content features of shape {tuple(shape)}, RVC {info.version} needs "
                            f"[frames, {expected_dim}]")
    matching = f"model={info.version}_{int(info.sample_rate) // 1000}k"
    if not info.f0:
        matching += " model.f0=false"
    ours_by_key = {"version": str(cfg.model.version), "sample_rate": cfg.model.sample_rate, "f0": cfg.model.f0}
    for key, theirs in (("version", info.version), ("sample_rate", info.sample_rate), ("f0", info.f0)):
        ours = ours_by_key[key]
        if ours != theirs and not (key == "f0" and bool(ours) == bool(theirs)):
            problems.append(f"model.{key}={ours!r} contradicts the experiment ({layout.info_path}: "
                            f"{key}={theirs!r}); choose the matching model ({matching}) or prepare again")
    _int_at_least(problems, cfg.data.speaker_id, "data.speaker_id", 0)


def check_base_against_experiment(base_path: str | Path, version: str, sample_rate: int | None, f0: bool | None,
                                  n_speakers: int | None, info: ExperimentInfo, speaker_id: int) -> None:
    """Refuse a base whose version / sample rate / pitch mode / speaker count contradict the experiment."""
    problems = []
    if version != info.version:
        problems.append(f"base.g {base_path} is RVC {version} but the experiment was prepared for {info.version}")
    if sample_rate is not None and int(sample_rate) != int(info.sample_rate):
        problems.append(f"base.g {base_path} is a {sample_rate} Hz model but the experiment is "
                        f"{info.sample_rate} Hz")
    if f0 is not None and bool(f0) != bool(info.f0):
        problems.append(f"base.g {base_path} is a {'pitch' if f0 else 'no-pitch'} model but the experiment was "
                        f"prepared {'with' if info.f0 else 'without'} pitch (f0)")
    if n_speakers is not None and speaker_id >= n_speakers:
        problems.append(f"data.speaker_id={speaker_id} but base.g {base_path} has only {n_speakers} speaker rows")
    _fail(problems)
