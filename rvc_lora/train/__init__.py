"""Training: LoRA speaker adapters (or RVC's full fine-tune) with RVC's GAN losses, TensorBoard, DDP.

``run_training(cfg)`` is the whole job (validate -> train or resume -> export); ``Trainer`` exposes the
steps for tools and tests. See ``conf/trainer/default.yaml`` for every knob.
"""

from __future__ import annotations

from omegaconf import DictConfig

from .checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint
from .loop import NonFiniteLossError, Trainer, TrainResult
from .tensorboard_writer import launch_tensorboard
from .validate import DISCRIMINATOR_MODES, check_config

__all__ = [
    "DISCRIMINATOR_MODES",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "check_config",
    "latest_checkpoint",
    "launch_tensorboard",
    "list_checkpoints",
    "load_checkpoint",
    "run_training",
]


def run_training(cfg: DictConfig) -> TrainResult:
    """Train as ``cfg`` says, resuming from ``<run_dir>/checkpoints`` if a checkpoint is there.

    Returns a ``TrainResult``; raises ``RVCLoraError`` for invalid configs (before training) and
    ``NonFiniteLossError`` when ``trainer.nan_patience`` consecutive steps had a NaN/inf loss. After
    SIGINT/SIGTERM a checkpoint is saved and the result has ``interrupted=True`` (no final files).
    """
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
        return trainer.export(result)
    finally:
        trainer.close()
