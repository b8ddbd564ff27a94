"""The experiment folder written by ``rvc-lora prepare`` and read by training.

Layout (RVC-compatible names, so RVC's own tools can use the folder too)::

    <experiment_dir>/
      0_gt_wavs/<i>_<j>.wav          float32 WAV at the model rate (and mute.wav: RVC's silence piece)
      1_16k_wavs/<i>_<j>.wav         float32 WAV at 16 kHz
      2a_f0/<i>_<j>.wav.npy          coarse pitch, int64 1..255, 100 frames/s
      2b-f0nsf/<i>_<j>.wav.npy       f0 in Hz, float64, 100 frames/s
      3_feature256|768/<i>_<j>.npy   content features, float32 [frames @ 50 fps, dim]
      manifest.csv                   one row per piece (and per rejected file)
      filelist.txt                   RVC-style training list
      experiment.json                version, rate, f0, feature dim, pitch method, content model
      added_IVF*_Flat_nprobe_1_<name>_<version>.index   retrieval index
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rvc_lora.utils import RVCLoraError, atomic_write

FEATURE_DIMS = {"v1": 256, "v2": 768}

# RVC's silence piece (its ``logs/mute``): 3 s of digital silence with its content features, coarse pitch 1
# and f0 0 Hz, listed twice in the filelist so the model learns to keep silence silent. rvc-lora keeps it in
# the experiment as the piece ``mute``, marked in the manifest by its status.
MUTE_NAME = "mute"
MUTE_STATUS = "mute"
MUTE_SECONDS = 3.0
MUTE_COPIES = 2


@dataclass
class ExperimentInfo:
    """What an experiment folder was prepared for."""

    name: str
    version: str
    sample_rate: int
    f0: bool
    feature_dim: int
    pitch_method: str = ""
    content_model: str = ""
    speaker_id: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class ManifestRow:
    """One piece of training audio (status ``ok``), one rejected input (status ``skipped``/``error``), or
    RVC's silence piece (status ``mute``, name ``mute``; see ``MUTE_NAME``).

    ``start_s`` / ``end_s`` are offsets in the source file; ``split`` is ``train`` or ``val``.
    """

    name: str
    source: str
    start_s: float = 0.0
    end_s: float = 0.0
    duration_s: float = 0.0
    speaker_id: int = 0
    f0_median_hz: float = 0.0
    f0_min_hz: float = 0.0
    f0_max_hz: float = 0.0
    voiced_ratio: float = 0.0
    status: str = "ok"
    split: str = "train"
    problem: str = ""


MANIFEST_FIELDS = [f.name for f in fields(ManifestRow)]


class ExperimentLayout:
    """Paths inside one experiment folder."""

    def __init__(self, root: str | Path, version: str = "v2"):
        if version not in FEATURE_DIMS:
            raise RVCLoraError(f"unknown RVC version {version!r} (expected 'v1' or 'v2')")
        self.root = Path(root)
        self.version = version

    @property
    def gt_dir(self) -> Path:
        return self.root / "0_gt_wavs"

    @property
    def wav16k_dir(self) -> Path:
        return self.root / "1_16k_wavs"

    @property
    def f0_coarse_dir(self) -> Path:
        return self.root / "2a_f0"

    @property
    def f0_hz_dir(self) -> Path:
        return self.root / "2b-f0nsf"

    @property
    def feature_dir(self) -> Path:
        return self.root / f"3_feature{FEATURE_DIMS[self.version]}"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def filelist_path(self) -> Path:
        return self.root / "filelist.txt"

    @property
    def info_path(self) -> Path:
        return self.root / "experiment.json"

    def gt_wav(self, name: str) -> Path:
        return self.gt_dir / f"{name}.wav"

    def wav16k(self, name: str) -> Path:
        return self.wav16k_dir / f"{name}.wav"

    def f0_coarse(self, name: str) -> Path:
        return self.f0_coarse_dir / f"{name}.wav.npy"

    def f0_hz(self, name: str) -> Path:
        return self.f0_hz_dir / f"{name}.wav.npy"

    def feature(self, name: str) -> Path:
        return self.feature_dir / f"{name}.npy"

    def index_files(self) -> list[Path]:
        return sorted(self.root.glob("added_*.index"))

    def make_dirs(self) -> None:
        for d in (self.gt_dir, self.wav16k_dir, self.f0_coarse_dir, self.f0_hz_dir, self.feature_dir):
            d.mkdir(parents=True, exist_ok=True)


def write_info(layout: ExperimentLayout, info: ExperimentInfo) -> None:
    with atomic_write(layout.info_path) as tmp:
        tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")


def read_info(root: str | Path) -> ExperimentInfo:
    """Read ``experiment.json``; a missing or malformed file raises naming the folder."""
    path = Path(root) / "experiment.json"
    if not path.is_file():
        raise RVCLoraError(f"{root}: not a prepared experiment (no experiment.json); run `rvc-lora prepare` first")
    try:
        data = json.loads(path.read_text())
        return ExperimentInfo(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RVCLoraError(f"{path}: malformed experiment description: {exc}") from None


def open_experiment(root: str | Path) -> tuple[ExperimentLayout, ExperimentInfo]:
    """The layout and description of a prepared experiment folder."""
    info = read_info(root)
    return ExperimentLayout(root, info.version), info


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Rows of ``manifest.csv`` with their numeric columns typed."""
    path = Path(path)
    if not path.is_file():
        raise RVCLoraError(f"{path}: manifest not found; run `rvc-lora prepare` first")
    types = {f.name: f.type for f in fields(ManifestRow)}
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            values = {}
            for key, value in raw.items():
                if key not in types:
                    continue
                kind = types[key]
                values[key] = float(value) if kind == "float" else int(value) if kind == "int" else value
            rows.append(ManifestRow(**values))
    return rows


def write_filelist(layout: ExperimentLayout, names: list[str], f0: bool, speaker_id: int) -> None:
    """RVC's filelist: ``gt|feature|coarse|f0nsf|spk`` (f0) or ``gt|feature|spk`` lines, absolute paths."""
    lines = []
    for name in names:
        parts = [layout.gt_wav(name), layout.feature(name)]
        if f0:
            parts += [layout.f0_coarse(name), layout.f0_hz(name)]
        lines.append("|".join(str(p.resolve()) for p in parts) + f"|{speaker_id}")
    with atomic_write(layout.filelist_path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
