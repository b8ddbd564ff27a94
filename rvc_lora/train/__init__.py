"""Training: LoRA speaker adapters (or RVC's full fine-tune) with RVC's GAN losses, TensorBoard, DDP.

``run_training(cfg)`` is the whole job (validate -> train or resume -> export); ``Trainer`` exposes the
steps for tools and tests. See ``conf/trainer/default.yaml`` for every knob.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from rvc_lora.utils import StorageError, check_writable_folder

from .checkpointing import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_run_temp_files,
    with_last_good_checkpoint,
)
from .loop import NonFiniteLossError, Trainer, TrainResult
from .tensorboard_writer import launch_tensorboard
from .validate import check_config

__all__ = [
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


def run_training(cfg: DictConfig, on_resume: Callable[[int, Path], None] | None = None) -> TrainResult:
    """Train as ``cfg`` says, resuming from ``<run_dir>/checkpoints`` if a checkpoint is there.

    ``on_resume(step, checkpoint)`` is called (main process only) when the run resumes. Temporary files
    a killed earlier run left in the run folder are removed at the start and at the end.

    Returns a ``TrainResult``; raises ``RVCLoraError`` for invalid configs (before training) and
    ``NonFiniteLossError`` when ``trainer.nan_patience`` consecutive steps had a NaN/inf loss;
    ``StorageError`` (full disk, permissions) names the newest checkpoint, which is intact. After
    SIGINT/SIGTERM a checkpoint is saved and the result has ``interrupted=True`` (no final files).
    """
    started = time.time()
    check_writable_folder(str(cfg.run_dir), create=False)  # before the models are loaded
    trainer = Trainer(cfg)
    try:
        if trainer.dist.is_main:
            remove_run_temp_files(trainer.run_dir, older_than=started)
            if trainer.resumed_from is not None and on_resume is not None:
                on_resume(trainer.step, trainer.resumed_from)
        try:
            result = trainer.export(trainer.fit())
        except (StorageError, OSError) as exc:  # e.g. a full disk: say what is kept and how to go on
            storage = exc if isinstance(exc, StorageError) else StorageError.from_os_error(exc)
            raise with_last_good_checkpoint(storage, trainer.run_dir) from exc
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            trainer.close()
        raise
    trainer.close()
    if trainer.dist.is_main:
        remove_run_temp_files(trainer.run_dir, older_than=started)
    return result
