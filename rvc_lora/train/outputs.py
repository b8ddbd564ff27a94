"""What a finished run leaves in its folder: adapter.safetensors, merged.pth, and the index copy."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rvc_lora.checkpoint import save_pretrained, save_rvc

from .setup import Models

__all__ = ["TrainResult", "export_run", "link_or_copy", "save_adapter_file"]


@dataclass
class TrainResult:
    """What a run produced. Paths are None when not written (e.g. interrupted, or non-zero rank)."""

    run_dir: Path
    steps: int
    epochs: int
    adapter_path: Path | None = None
    merged_path: Path | None = None
    best_adapter_path: Path | None = None
    base_paths: list[Path] = field(default_factory=list)  # G_full.pth / D_full.pth of a full fine-tune
    index_paths: list[Path] = field(default_factory=list)
    best_step: int | None = None
    best_metric: str = "mel_l1"                # trainer.best_metric as resolved: mel_l1 or speaker_similarity
    best_value: float | None = None            # its value at best_step
    final_losses: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    interrupted: bool = False
    stop_reason: str = ""
    warnings: list[str] = field(default_factory=list)


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


def export_run(result: TrainResult, models: Models, training: dict[str, Any], index_files: Iterable[Path]) -> None:
    """Write the final files into ``result.run_dir`` and fill ``result`` with their paths.

    ``training`` (steps, losses, experiment name, ...) goes into the adapter's metadata; ``index_files``
    (the experiment's faiss indexes) are linked or copied next to the model.
    """
    run_dir = result.run_dir
    synth = models.synth
    info = f"rvc-lora: {training['experiment']}, {training['steps']} steps"
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
        if models.discriminator is not None:
            result.base_paths.append(save_pretrained(models.discriminator, run_dir / "D_full.pth",
                                                     dtype=torch.float32))
    result.index_paths = [link_or_copy(p, run_dir / p.name) for p in index_files]
