"""The configuration's types: one dataclass per group of ``conf/``, registered with Hydra's ConfigStore.

The YAML files in ``conf/`` hold every value (and its comment); these classes hold only names and types, so
a default lives in one place. ``conf/config.yaml`` lists ``rvc_lora_schema`` first in its defaults, so every
file Hydra merges (groups, the recipe, command-line overrides) is checked against these types as it is
composed: an unknown key, a value of the wrong type or a choice outside its enum fails at composition.
Code receives typed values: ``cfg.trainer.max_steps`` is an int, ``cfg.trainer.discriminator`` a
:class:`DiscriminatorMode` (a ``str`` subclass, so ``mode == "mel_only"`` still reads naturally).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore

from rvc_lora.features.content_kinds import CONTENT_KINDS
from rvc_lora.features.pitch import METHODS as PITCH_METHODS

SCHEMA_NAME = "rvc_lora_schema"


class Choice(str, Enum):
    """An enum whose members are their own string values (``str(member) == member.value``)."""

    def __str__(self) -> str:
        return self.value


def _choices(name: str, values: tuple[str, ...], aliases: dict[str, str] | None = None) -> type[Choice]:
    """A Choice enum named by its values (which may hold '-', e.g. crepe-tiny); ``aliases`` maps further
    accepted spellings to a value."""
    return Choice(name, [(value, value) for value in values] + list((aliases or {}).items()))


AdapterMode = _choices("AdapterMode", ("lora", "none"))
DiscriminatorMode = _choices("DiscriminatorMode", ("train", "frozen", "every_k", "mel_only"))
Precision = _choices("Precision", ("auto", "fp32", "fp16", "bf16"))
BestMetric = _choices("BestMetric", ("auto", "mel_l1", "speaker_similarity"))
PitchMethod = _choices("PitchMethod", ("auto", *PITCH_METHODS), {"crepe-full": "crepe", "crepe_tiny": "crepe-tiny"})
ContentKind = _choices("ContentKind", CONTENT_KINDS)
RVCVersion = _choices("RVCVersion", ("v1", "v2"))


@dataclass
class BaseFiles:
    g: str | None
    d: str | None


@dataclass
class ModelConfig:
    version: RVCVersion
    sample_rate: int
    f0: bool
    discriminator_divisor: int


@dataclass
class LoraConfig:
    rank: int
    alpha: float
    dropout: float
    rs_lora: bool
    targets: list[str]
    flow: bool
    enc_p: bool
    train_speaker_embedding: bool
    # The adapter algorithm (checked by LoRAConfig: lora, loha, lokr, dora, full) and LoKr's factors.
    algorithm: str
    factor: int
    decompose_both: bool


@dataclass
class SlicerConfig:
    threshold_db: float
    min_length_ms: int
    min_interval_ms: int
    hop_ms: int
    max_sil_kept_ms: int


@dataclass
class DataConfig:
    name: str
    input_dir: str | None
    extensions: list[str]
    experiment_dir: str
    speaker_id: int
    piece_seconds: float
    overlap_seconds: float
    min_piece_seconds: float
    highpass_hz: float
    slicer: SlicerConfig
    max_peak: float
    normalize_alpha: float
    long_file_minutes: float
    chunk_seconds: float
    min_total_seconds: float
    validation_pieces: int
    num_workers: int
    build_index: bool
    progress: bool
    shard_timeout_s: float


@dataclass
class PitchConfig:
    method: PitchMethod
    rmvpe_path: str | None
    device: str


@dataclass
class ContentConfig:
    path: str | None
    kind: ContentKind
    half: Any  # auto, true or false
    device: str
    batch_size: int


@dataclass
class OptimConfig:
    lr: float
    betas: list[float]
    eps: float
    weight_decay: float
    lr_decay: float


@dataclass
class TrainerConfig:
    device: str
    precision: Precision
    batch_size: int
    max_steps: int | None
    max_epochs: int | None
    grad_accum: int
    seed: int
    resume: bool
    log_interval: int
    validation_interval: int
    best_metric: BestMetric
    checkpoint_interval: int
    keep_checkpoints: int
    discriminator: DiscriminatorMode
    d_every: int
    c_mel: float
    c_kl: float
    grad_clip: float | None
    gradient_checkpointing: bool
    nan_patience: int
    ema_decay: float | None
    segment_frames: int | None
    max_frames: int
    bucket_width: int
    num_workers: int


@dataclass
class LoggingConfig:
    tensorboard: bool
    audio_clips: int
    mel_images: bool
    progress: bool


@dataclass
class RVCLoraConfig:
    adapter: AdapterMode
    base: BaseFiles
    run_dir: str
    model: ModelConfig
    lora: LoraConfig
    data: DataConfig
    pitch: PitchConfig
    content: ContentConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logging: LoggingConfig


def register_schema() -> None:
    """Store :class:`RVCLoraConfig` in Hydra's ConfigStore as ``rvc_lora_schema`` (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RVCLoraConfig)


def schema_keys(dotted: str) -> list[str] | None:
    """The keys the schema allows under ``dotted`` ("" = the top level, "data.slicer"), or None where it
    names no group."""
    node: Any = RVCLoraConfig
    for part in [p for p in dotted.split(".") if p]:
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        node = hints.get(part)
    if not dataclasses.is_dataclass(node):
        return None
    return [f.name for f in dataclasses.fields(node)]
