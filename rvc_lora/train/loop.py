"""The training loop around RVC's step: data, epochs, checkpoints, validation, logging, signals.

Each step is :func:`rvc_lora.train.step.train_step` (RVC's order and losses); the loop chooses when the
discriminator steps (``trainer.discriminator``), counts skipped non-finite steps, keeps the EMA, and steps
the exponential learning-rate decay once per epoch.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rvc_lora import distributed as dist_utils
from rvc_lora.models import mel_settings
from rvc_lora.utils import RVCLoraError, atomic_write, resolve_device

from .checkpointing import capture_rng_state, latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from .dataset import BucketBatchSampler, PieceDataset, collate_pieces, split_pieces
from .evaluation import validate
from .outputs import TrainResult, export_run, save_adapter_file
from .setup import adamw_settings, build_models, resolve_precision
from .speaker_similarity import SpeakerSimilarity, resolve_best_metric
from .step import StepModels, StepSettings, train_step
from .tensorboard_writer import RunWriter, mel_image
from .trainable import ParameterEMA
from .validate import check_config

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer"]

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RVCLoraError):
    """Too many consecutive steps with a NaN / inf loss."""


def _groups(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter): the micro-batches of one step."""
    group: list = []
    for item in batches:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Trainer:
    """One training run described by a composed config (see ``conf/``).

    ``Trainer(cfg)`` validates the config, loads the models and resumes from the newest checkpoint in
    ``cfg.run_dir`` (unless ``trainer.resume=false``); ``fit()`` trains; ``export()`` writes the adapter,
    ``merged.pth`` and the index copy. ``run_training`` does all three.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        t = cfg.trainer
        self.layout, self.info = check_config(cfg)
        self.device = resolve_device(str(t.device))
        self.dist = dist_utils.init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(str(t.precision), self.device)
        self.run_dir = Path(str(cfg.run_dir))
        self.mode = str(t.discriminator)

        torch.manual_seed(int(t.seed))  # identical adapter initialisation on every rank
        self.models = build_models(cfg, self.info, self.device)
        self.synth = self.models.synth
        self.disc = self.models.discriminator
        self.settings = mel_settings(self.info.version, self.info.sample_rate)
        self.d_trained = self.disc is not None and self.mode != "frozen"

        self.g_model: torch.nn.Module = self.synth
        self.d_model: torch.nn.Module | None = self.disc
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_model = DDP(self.synth, device_ids=ids)
            if self.d_trained:
                self.d_model = DDP(self.disc, device_ids=ids)

        o = cfg.optim
        adamw = adamw_settings(o)
        self.optim_g = torch.optim.AdamW(self.models.trainable_g, **adamw)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.optim_g, gamma=float(o.lr_decay))
        self.optim_d = self.sched_d = None
        if self.d_trained:
            self.optim_d = torch.optim.AdamW(self.disc.parameters(), **adamw)
            self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.optim_d, gamma=float(o.lr_decay))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.ema = ParameterEMA(self.models.trainable_g, float(t.ema_decay)) if t.ema_decay else None
        self.step_models = StepModels(self.g_model, self.models.trainable_g, self.disc, self.d_model)
        self.step_settings = StepSettings(self.settings, self.synth.segment_frames, t.c_mel, t.c_kl,
                                          self.precision.dtype, t.grad_clip or None, self.device, self.dist)

        train_names, val_names = split_pieces(self.layout, int(cfg.data.validation_pieces))
        speaker = int(cfg.data.speaker_id)
        max_frames = t.max_frames
        self.dataset = PieceDataset(self.layout, train_names, self.settings, self.info.f0, speaker, max_frames)
        self.val_dataset = PieceDataset(self.layout, val_names, self.settings, self.info.f0, speaker, max_frames)
        self.sampler = BucketBatchSampler(self.dataset.lengths, int(t.batch_size), int(t.seed),
                                          t.bucket_width, self.dist.rank, self.dist.world_size)
        self.batches_per_epoch = len(self.sampler)
        self.grad_accum = t.grad_accum  # batches per optimiser step

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.best_metric = resolve_best_metric(str(t.best_metric))
        self.similarity = (SpeakerSimilarity() if self.best_metric == "speaker_similarity" and self.dist.is_main
                           else None)  # validation runs on rank 0 only
        self.skipped = 0
        self.consecutive_bad = 0
        self.last_losses: dict[str, float] = {}
        self._stop_requested = False
        self._last_mels: tuple[torch.Tensor, torch.Tensor] | None = None  # (real, generated) of the last step
        self.resumed_from: Path | None = None
        torch.manual_seed(int(t.seed) + self.dist.rank)
        if t.resume:
            latest = latest_checkpoint(self.run_dir)
            if latest is not None:
                self._load_state(load_checkpoint(latest))
                self.resumed_from = latest

        self.writer = RunWriter(self.run_dir, enabled=self.dist.is_main and bool(cfg.logging.tensorboard),
                                purge_step=self.step + 1 if self.resumed_from else None)
        if self.dist.is_main:
            with atomic_write(self.run_dir / "config.yaml") as tmp:
                tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            if self.resumed_from is None:
                self.writer.hparams(self._hparams(), ("val/mel_l1", "loss/g/total"))

    # ---- state -------------------------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The trained weights: adapter tensors (LoRA) or the full synthesizer state (adapter=none)."""
        if self.models.adapters is not None:
            return {k: v.detach().cpu().clone() for k, v in self.models.adapters.adapter_state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in self.synth.state_dict().items()}

    def _state(self) -> dict[str, Any]:
        m = self.models
        rngs = dist_utils.gather_objects(capture_rng_state(), self.dist)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "adapter": self.adapter_tensors(),
            "speaker_delta": None if m.speaker_delta is None else m.speaker_delta.delta.detach().cpu(),
            "discriminator": self.disc.state_dict() if self.d_trained else None,
            "optim_g": self.optim_g.state_dict(), "sched_g": self.sched_g.state_dict(),
            "optim_d": None if self.optim_d is None else self.optim_d.state_dict(),
            "sched_d": None if self.sched_d is None else self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": rngs,
            "best": {"step": self.best_step, "value": self.best_value, "metric": self.best_metric},
            "nan": {"skipped": self.skipped, "consecutive": self.consecutive_bad},
            "last_losses": dict(self.last_losses),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RVCLoraError(f"{self.run_dir}: checkpoint format {state.get('format')!r} is not supported")
        m = self.models
        try:
            if m.adapters is not None:
                m.adapters.load_adapter_state_dict(state["adapter"])
            else:
                self.synth.load_state_dict(state["adapter"])
            if m.speaker_delta is not None:
                if state.get("speaker_delta") is None:
                    raise RVCLoraError("the checkpoint has no speaker-embedding delta")
                with torch.no_grad():
                    m.speaker_delta.delta.copy_(state["speaker_delta"])
            if self.d_trained and state.get("discriminator") is not None:
                self.disc.load_state_dict(state["discriminator"])
            self.optim_g.load_state_dict(state["optim_g"])
            self.sched_g.load_state_dict(state["sched_g"])
            if self.optim_d is not None and state.get("optim_d") is not None:
                self.optim_d.load_state_dict(state["optim_d"])
                self.sched_d.load_state_dict(state["sched_d"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RVCLoraError(f"{self.run_dir}: the checkpoint does not fit this configuration ({exc}); use a "
                               "new run_dir or trainer.resume=false") from None
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best = state["best"]
        if best.get("metric", "mel_l1") == self.best_metric:  # a changed best_metric starts a new search
            self.best_step, self.best_value = best["step"], best.get("value", best.get("loss"))
        self.skipped, self.consecutive_bad = state["nan"]["skipped"], state["nan"]["consecutive"]
        self.last_losses = dict(state.get("last_losses", {}))
        rngs = state["rng"]
        if state.get("world_size") == self.dist.world_size and len(rngs) > self.dist.rank:
            restore_rng_state(rngs[self.dist.rank])
        else:
            torch.manual_seed(int(self.cfg.trainer.seed) + 7919 * self.step + self.dist.rank)

    def save_checkpoint(self) -> Path | None:
        state = self._state()  # collective under DDP: every rank takes part
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, state, int(self.cfg.trainer.keep_checkpoints))
        dist_utils.barrier(self.dist)
        return path

    # ---- one step ----------------------------------------------------------------------------------------
    def _skip(self) -> None:
        self.skipped += 1
        self.consecutive_bad += 1
        if self.consecutive_bad >= int(self.cfg.trainer.nan_patience):
            raise NonFiniteLossError(
                f"training stopped: {self.consecutive_bad} consecutive steps had a NaN/inf loss (step "
                f"{self.step}). Try a lower learning rate (optim.lr), full precision (trainer.precision=fp32), "
                f"and check the data (rvc-lora prepare's manifest: silent, clipped or corrupt pieces).")

    def train_step(self, batches: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]) -> dict[str, float] | None:
        """One optimisation step on one batch, or on several accumulated (``trainer.grad_accum``).

        Batches come from ``collate_pieces``; the step itself is :func:`rvc_lora.train.step.train_step`
        (RVC's order and losses). Returns the scalars, or None if a loss was non-finite (the whole step is
        skipped and counted).
        """
        group = batches if isinstance(batches, list) else [batches]
        update_d = self.d_trained and (self.mode != "every_k" or self.step % int(self.cfg.trainer.d_every) == 0)
        out = train_step(self.step_models, group, self.optim_g, self.optim_d, self.scaler, self.step_settings,
                         update_d)
        if out is None:
            self._skip()
            return None
        if self.ema is not None:
            self.ema.update()
        self.consecutive_bad = 0
        self._last_mels = (out.tensors.mel_real[0], out.tensors.mel_fake[0])
        return out.scalars

    # ---- loop --------------------------------------------------------------------------------------------
    def _step_schedulers(self) -> None:
        """RVC's per-epoch learning-rate decay, for G and D alike.

        D may not have stepped in this process yet (resumed at an epoch end, or ``every_k`` / NaN-skipped
        steps); PyTorch warns about that order, but the decay is meant to follow epochs, not D updates.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.sched_g.step()
            if self.sched_d is not None:
                self.sched_d.step()

    def _max_steps(self) -> int:
        t = self.cfg.trainer
        limits = []
        if t.max_steps is not None:
            limits.append(int(t.max_steps))
        if t.max_epochs is not None:
            limits.append(int(t.max_epochs) * math.ceil(self.batches_per_epoch / self.grad_accum))
        return min(limits)

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):  # noqa: ARG001 - signal signature
            self._stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and return after the current step (what SIGINT/SIGTERM do)."""
        self._stop_requested = True

    def fit(self) -> TrainResult:
        """Train until ``max_steps`` / ``max_epochs`` (or a stop request); returns the run's state."""
        t = self.cfg.trainer
        max_steps = self._max_steps()
        previous = self._install_signals()
        show = self.dist.is_main and self.cfg.logging.progress and sys.stderr.isatty()
        bar = tqdm(total=max_steps, initial=min(self.step, max_steps), disable=not show, desc="train",
                   unit="step", dynamic_ncols=True)
        result = TrainResult(self.run_dir, self.step, self.epoch, warnings=list(self.models.warnings))
        last_saved = self.step if self.resumed_from else -1
        tick, tick_step = time.perf_counter(), self.step
        try:
            while self.step < max_steps:
                batches = self.sampler.batches(self.epoch)[self.batch_in_epoch:]
                loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate_pieces,
                                    num_workers=int(t.num_workers), generator=torch.Generator(),
                                    pin_memory=self.device.type == "cuda")
                for group in _groups(loader, self.grad_accum):
                    scalars = self.train_step(group)
                    self.batch_in_epoch += len(group)
                    if self.batch_in_epoch >= self.batches_per_epoch:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                        self._step_schedulers()
                    self.step += 1
                    bar.update(1)
                    if scalars is not None:
                        self.last_losses = {k: v for k, v in scalars.items() if k.startswith("loss/")}
                        bar.set_postfix(g=f"{scalars['loss/g/total']:.3f}", mel=f"{scalars['loss/g/mel']:.3f}")
                    if self.step % int(t.log_interval) == 0 or self.step == max_steps:
                        now = time.perf_counter()
                        self._log_scalars(scalars, (self.step - tick_step) / max(now - tick, 1e-9))
                        tick, tick_step = now, self.step
                    if self.step % int(t.validation_interval) == 0 or self.step == max_steps:
                        self.run_validation()
                    stop = dist_utils.any_flag(self._stop_requested, self.dist, self.device)
                    if self.step % int(t.checkpoint_interval) == 0 or self.step == max_steps or stop:
                        self.save_checkpoint()
                        last_saved = self.step
                    if stop:
                        result.interrupted, result.stop_reason = True, "interrupted"
                        break
                    if self.step >= max_steps:
                        break
                if result.interrupted:
                    break
            if not result.interrupted:
                result.stop_reason = "max_steps"
                if last_saved != self.step:
                    self.save_checkpoint()
        finally:
            bar.close()
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.writer.flush()
        result.steps, result.epochs = self.step, self.epoch
        result.best_step, result.best_metric, result.best_value = self.best_step, self.best_metric, self.best_value
        result.final_losses, result.skipped_steps = dict(self.last_losses), self.skipped
        if self.dist.is_main and (self.run_dir / "best_adapter.safetensors").is_file():
            result.best_adapter_path = self.run_dir / "best_adapter.safetensors"
        return result

    # ---- logging and validation -------------------------------------------------------------------------
    def _log_scalars(self, scalars: dict[str, float] | None, steps_per_sec: float) -> None:
        values = dict(scalars or {})
        values["lr"] = self.optim_g.param_groups[0]["lr"]
        values["speed/steps_per_sec"] = steps_per_sec
        values["nan/skipped_steps"] = float(self.skipped)
        with torch.no_grad():
            norms = [torch.linalg.vector_norm(p.detach().float()) for p in self.models.trainable_g]
            values["adapter/weight_norm"] = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if self.device.type == "cuda":
            values["memory/gpu_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.writer.scalars(values, self.step)

    def run_validation(self) -> float | None:
        """Validation loss, mel images and audio (rank 0); keeps ``best_adapter.safetensors``, the step best
        by ``trainer.best_metric`` (lowest validation mel L1, or highest speaker similarity)."""
        if not self.dist.is_main or len(self.val_dataset) == 0:
            dist_utils.barrier(self.dist)
            return None
        if self.ema is not None:
            self.ema.swap()
        try:
            items = [self.val_dataset[i] for i in range(len(self.val_dataset))]
            n_clips = int(self.cfg.logging.audio_clips)
            res = validate(self.synth, items, self.settings, self.device, n_clips, seed=int(self.cfg.trainer.seed),
                           similarity=self.similarity)
            values = {"val/mel_l1": res.mel_l1}
            if res.speaker_similarity is not None:
                values["val/speaker_similarity"] = res.speaker_similarity
            self.writer.scalars(values, self.step)
            sr = self.settings.sample_rate
            for i, clip in enumerate(res.clips):
                self.writer.audio(f"audio/val_{i}/real", clip.real, self.step, sr)
                self.writer.audio(f"audio/val_{i}/reconstruction", clip.reconstruction, self.step, sr)
                self.writer.audio(f"audio/val_{i}/conversion", clip.conversion, self.step, sr)
                if self.cfg.logging.mel_images:
                    self.writer.image(f"mel/val_{i}", mel_image(clip.mel_real, clip.mel_reconstruction), self.step)
            if self.cfg.logging.mel_images and self._last_mels is not None:
                self.writer.image("mel/train", mel_image(*self._last_mels), self.step)
            value = res.mel_l1 if self.best_metric == "mel_l1" else res.speaker_similarity
            higher_is_better = self.best_metric == "speaker_similarity"
            if self.best_value is None or (value > self.best_value if higher_is_better else value < self.best_value):
                self.best_value, self.best_step = value, self.step
                self._save_best()
            self.writer.flush()
        finally:
            if self.ema is not None:
                self.ema.swap()
            dist_utils.barrier(self.dist)
        return res.mel_l1

    def _save_best(self) -> None:
        meta = {"step": self.step, "best_metric": self.best_metric, "best_value": self.best_value}
        if self.models.adapters is not None:
            save_adapter_file(self.models, self.run_dir / "best_adapter.safetensors", meta)
        else:
            from rvc_lora.checkpoint import save_rvc

            save_rvc(self.synth, self.run_dir / "best.pth", info=f"rvc-lora full fine-tune, best at step {self.step}")

    def _hparams(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "adapter": str(c.adapter), "lora/algorithm": str(c.lora.algorithm), "lora/rank": c.lora.rank,
            "lora/alpha": c.lora.alpha, "lora/dropout": c.lora.dropout, "lora/flow": c.lora.flow,
            "lora/enc_p": c.lora.enc_p, "discriminator": str(c.trainer.discriminator),
            "d_every": c.trainer.d_every, "lr": c.optim.lr, "batch_size": c.trainer.batch_size,
            "precision": self.precision.name, "world_size": self.dist.world_size,
            "trainable_params": sum(p.numel() for p in self.models.trainable_g),
            "version": self.info.version, "sample_rate": self.info.sample_rate,
        }

    def _training_summary(self) -> dict[str, Any]:
        """The run's summary stored in the exported adapter's metadata."""
        return {
            "steps": self.step,
            "epochs": self.epoch,
            "final_losses": {k: round(v, 6) for k, v in self.last_losses.items()},
            "best_step": self.best_step,
            "best_metric": self.best_metric,
            "best_value": self.best_value,
            "skipped_steps": self.skipped,
            "speaker_id": int(self.cfg.data.speaker_id),
            "experiment": str(self.info.name),
            "discriminator": self.mode,
            "lr": float(self.cfg.optim.lr),
            "batch_size": int(self.cfg.trainer.batch_size),
            "world_size": self.dist.world_size,
        }

    def export(self, result: TrainResult) -> TrainResult:
        """Write adapter.safetensors, merged.pth and the index copy (rank 0; not after an interruption)."""
        if self.dist.is_main and not result.interrupted:
            if self.ema is not None:
                self.ema.swap()
            export_run(result, self.models, self._training_summary(), self.layout.index_files())
        dist_utils.barrier(self.dist)
        return result

    def close(self) -> None:
        self.writer.close()
        dist_utils.shutdown_distributed(self.dist)
