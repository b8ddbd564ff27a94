"""What a finished run leaves in its folder: adapter.safetensors, merged.pth, and the index copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rvc_lora.checkpoint import save_pretrained, save_rvc

if TYPE_CHECKING:
    from .loop import Trainer, TrainResult
    from .setup import Models

__all__ = ["export_run", "link_or_copy", "save_adapter_file"]


def save_adapter_file(models: Models, path: str | Path, training: dict[str, Any]) -> Path:
    """Write the run's adapter (LoRA factors, plus ``emb_g.diff`` when a speaker row is trained).

    Metadata: the adapter host's (rank, alpha, targets, RVC version, rate, f0, base fingerprint) with
    ``training`` under the ``training`` key.
    """
    delta = models.speaker_delta
    row = None if delta is None else (delta.row, delta.diff())
    return models.adapters.save_adapter(path, metadata=training, speaker_row=row)


def link_or_copy(source: Path, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (same file system), else copy it."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def export_run(trainer: Trainer, result: TrainResult) -> None:
    """Fill ``result`` with the final files written into ``trainer.run_dir``."""
    run_dir = trainer.run_dir
    models = trainer.models
    training = {
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "final_losses": {k: round(v, 6) for k, v in trainer.last_losses.items()},
        "best_step": trainer.best_step,
        "best_metric": trainer.best_metric,
        "best_value": trainer.best_value,
        "skipped_steps": trainer.skipped,
        "speaker_id": int(trainer.cfg.data.speaker_id),
        "experiment": str(trainer.info.name),
        "discriminator": trainer.mode,
        "lr": float(trainer.cfg.optim.lr),
        "batch_size": int(trainer.cfg.trainer.batch_size),
        "world_size": trainer.dist.world_size,
    }
    info = f"rvc-lora: {trainer.info.name}, {trainer.step} steps"
    synth = trainer.synth
    if models.adapters is not None:
        result.adapter_path = save_adapter_file(models, run_dir / "adapter.safetensors", training)
        with torch.no_grad():
            merged = models.adapters.merge_and_unload()
            if models.speaker_delta is not None:
                merged.emb_g = models.speaker_delta.fold()
        result.merged_path = save_rvc(merged, run_dir / "merged.pth", info=info)
    else:
        result.merged_path = save_rvc(synth, run_dir / "merged.pth", info=info + " (full fine-tune)")
        # The whole model in RVC's pretrained layout, usable as a base for adapters (or further training).
        meta = {"config": list(synth.config), "version": synth.version, "f0": int(synth.f0),
                "sr": f"{int(synth.sample_rate) // 1000}k"}
        result.base_paths = [save_pretrained(synth, run_dir / "G_full.pth", dtype=torch.float32, **meta)]
        if trainer.disc is not None:
            result.base_paths.append(save_pretrained(trainer.disc, run_dir / "D_full.pth", dtype=torch.float32))
    result.index_paths = [link_or_copy(p, run_dir / p.name) for p in trainer.layout.index_files()]
