"""The ingest stage, one input file at a time (runs in worker processes).

Per file (RVC's ``preprocess.py`` recipe, reference §5): decode to mono float32 at the model rate,
48 Hz causal Butterworth high-pass, silence slicing, cutting into ~3.7 s pieces with 0.3 s overlap,
RVC's peak normalisation (pieces with peak > 2.5 are skipped), and for every piece a float32 WAV at
the model rate (``0_gt_wavs``) and at 16 kHz (``1_16k_wavs``).

Files longer than ``long_file_seconds`` are decoded, resampled and filtered in chunks of
``chunk_seconds`` so memory stays bounded; each chunk is sliced on its own.

Resume: after all pieces of a file are written, a small JSON marker (``.prepare/files/<i>.json``)
records the outcome together with the file's size, modification time and the ingest settings. A later
run whose marker matches and whose piece WAVs all exist does not decode the file again; a matching
marker with missing WAVs re-decodes and rewrites only the missing pieces; a marker that no longer
matches (file or settings changed) removes every output of that file index first.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rvc_lora.audio import AudioError, Slicer, cut_pieces, normalize_piece, probe_audio, resample, write_wav
from rvc_lora.audio.checks import FULL_SCALE, SILENCE_PEAK
from rvc_lora.utils import atomic_write

SAMPLE_RATE_16K = 16000
FEATURE_DIRS = ("3_feature256", "3_feature768")
OUTPUT_DIRS = ("0_gt_wavs", "1_16k_wavs", "2a_f0", "2b-f0nsf") + FEATURE_DIRS


@dataclass(frozen=True)
class IngestSettings:
    """Everything that determines the pieces cut from a file (part of the resume fingerprint)."""

    sample_rate: int = 40000
    highpass_hz: float = 48.0
    threshold_db: float = -42.0
    min_length_ms: int = 1500
    min_interval_ms: int = 400
    hop_ms: int = 15
    max_sil_kept_ms: int = 500
    piece_seconds: float = 3.7
    overlap_seconds: float = 0.3
    max_peak: float = 2.5
    normalize_alpha: float = 0.75
    min_piece_seconds: float = 0.3
    long_file_seconds: float = 1200.0
    chunk_seconds: float = 300.0

    def key(self) -> dict:
        return asdict(self)


@dataclass
class PieceInfo:
    """One piece cut from a file; offsets are seconds in the source file."""

    name: str
    start_s: float
    end_s: float
    duration_s: float
    status: str = "ok"  # ok | skipped
    problem: str = ""


@dataclass
class FileResult:
    """Outcome of ingesting one file. ``problems`` holds (problem, action) pairs for the report."""

    file_index: int
    source: str
    status: str = "ok"  # ok | skipped | error
    problems: list[list[str]] = field(default_factory=list)
    pieces: list[PieceInfo] = field(default_factory=list)
    usable_seconds: float = 0.0
    decoded: bool = False  # False when the result came from the resume marker
    written: int = 0  # piece WAV pairs written by this run

    @property
    def ok_pieces(self) -> list[PieceInfo]:
        return [p for p in self.pieces if p.status == "ok"]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FileResult:
        data = dict(data)
        data["pieces"] = [PieceInfo(**p) for p in data.get("pieces", [])]
        return cls(**data)


@dataclass(frozen=True)
class IngestTask:
    """Picklable description of one file for :func:`ingest_file`."""

    file_index: int
    path: str
    rel: str
    exp_root: str
    settings: IngestSettings


def marker_path(exp_root: str | Path, file_index: int) -> Path:
    return Path(exp_root) / ".prepare" / "files" / f"{file_index}.json"


def piece_wavs(exp_root: str | Path, name: str) -> tuple[Path, Path]:
    root = Path(exp_root)
    return root / "0_gt_wavs" / f"{name}.wav", root / "1_16k_wavs" / f"{name}.wav"


def remove_file_outputs(exp_root: str | Path, file_index: int) -> None:
    """Delete every output of file ``file_index`` (all stages) and its marker."""
    root = Path(exp_root)
    for d in OUTPUT_DIRS:
        folder = root / d
        if folder.is_dir():
            for p in folder.glob(f"{file_index}_*"):
                p.unlink(missing_ok=True)
    marker_path(root, file_index).unlink(missing_ok=True)


def _marker_key(task: IngestTask) -> dict:
    st = Path(task.path).stat()
    return {"rel": task.rel, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "settings": task.settings.key()}


def _read_marker(task: IngestTask) -> tuple[dict | None, FileResult | None]:
    path = marker_path(task.exp_root, task.file_index)
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
        return data["key"], FileResult.from_json(data["result"])
    except (ValueError, KeyError, TypeError):
        return None, None


def _write_marker(task: IngestTask, key: dict, result: FileResult) -> None:
    payload = {"key": key, "result": result.to_json()}
    with atomic_write(marker_path(task.exp_root, task.file_index)) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def cached_result(task: IngestTask) -> FileResult | None:
    """The recorded result of an earlier run if it still holds (same file, settings; WAVs present)."""
    old_key, old = _read_marker(task)
    if old is None or old_key != _marker_key(task):
        return None
    if not all(p.is_file() for piece in old.ok_pieces for p in piece_wavs(task.exp_root, piece.name)):
        return None
    old.decoded, old.written = False, 0
    return old


def ingest_file(task: IngestTask) -> FileResult:
    """Ingest one file (see the module docstring); never raises for bad audio, it reports it instead."""
    cached = cached_result(task)
    if cached is not None:
        return cached
    key = _marker_key(task)
    old_key, _ = _read_marker(task)
    if old_key is not None and old_key != key:
        remove_file_outputs(task.exp_root, task.file_index)
    result = FileResult(task.file_index, task.rel)
    try:
        _process(task, result)
    except AudioError as err:
        remove_file_outputs(task.exp_root, task.file_index)
        message = str(err)
        prefix = f"{task.path}: "
        result.status = "error"
        result.problems = [[message[len(prefix):] if message.startswith(prefix) else message, "file skipped"]]
        result.pieces, result.usable_seconds = [], 0.0
    result.decoded = True
    _write_marker(task, key, result)
    return result


class _StreamingHighpass:
    """Causal Butterworth high-pass (order 5) keeping filter state across chunks (= one lfilter call)."""

    def __init__(self, cutoff: float, sr: int, order: int = 5):
        from scipy import signal

        self.b, self.a = signal.butter(N=order, Wn=cutoff, btype="high", fs=sr)
        self.zi = np.zeros(max(len(self.a), len(self.b)) - 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from scipy import signal

        y, self.zi = signal.lfilter(self.b, self.a, np.asarray(x, dtype=np.float64), zi=self.zi)
        return y.astype(np.float32)


def _read_chunks(path: str, frames_per_chunk: int | None):
    """Yield raw float32 [frames, channels] blocks of ``path`` (the whole file when no chunk size)."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as handle:
            while True:
                block = handle.read(frames=frames_per_chunk or -1, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                yield block
                if not frames_per_chunk:
                    return
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, MemoryError) as exc:
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        raise AudioError(f"{path}: cannot decode audio ({text})") from exc


def _process(task: IngestTask, result: FileResult) -> None:
    s = task.settings
    sr = s.sample_rate
    info = probe_audio(task.path)  # raises AudioError: missing, empty, truncated, unreadable
    if info.channels > 2:
        result.problems.append([f"{info.channels} audio channels", "mixed down to mono"])
    long = info.duration > s.long_file_seconds
    chunk_frames = int(s.chunk_seconds * info.sample_rate) if long else None
    if long:
        result.problems.append([f"very long ({info.duration / 60:.1f} min)",
                                f"used (processed in {s.chunk_seconds:g} s chunks)"])
    slicer = Slicer(sr, threshold=s.threshold_db, min_length=s.min_length_ms, min_interval=s.min_interval_ms,
                    hop_size=s.hop_ms, max_sil_kept=s.max_sil_kept_ms)
    hp = _StreamingHighpass(s.highpass_hz, sr)
    stream = None
    if long and info.sample_rate != sr:
        import soxr

        stream = soxr.ResampleStream(info.sample_rate, sr, 1, dtype="float32", quality="HQ")
    total_frames = n_clip = 0
    peak = dc_sum = 0.0
    offset = 0  # samples at the model rate already consumed
    piece_index = 0
    kept: list[tuple[int, int]] = []
    for block in _read_chunks(task.path, chunk_frames):
        n_bad = int(block.size - np.count_nonzero(np.isfinite(block)))
        if n_bad:
            raise AudioError(f"{task.path}: contains {n_bad} non-finite samples (NaN or infinity)")
        total_frames += block.shape[0]
        amp = np.abs(block).max(axis=1)
        peak = max(peak, float(amp.max()))
        n_clip += int(np.count_nonzero(amp >= FULL_SCALE))
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        dc_sum += float(mono.sum(dtype=np.float64))
        if stream is not None:
            x = stream.resample_chunk(mono, last=False)
        else:
            x = resample(np.ascontiguousarray(mono), info.sample_rate, sr)
        x = hp(x)
        if float(np.max(np.abs(mono))) >= SILENCE_PEAK:
            piece_index = _cut_and_write(task, result, x, offset, piece_index, slicer, kept)
        offset += x.shape[0]
    if stream is not None:  # the resampler's delayed tail
        x = hp(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        if x.shape[0] and float(np.max(np.abs(x))) >= SILENCE_PEAK:
            piece_index = _cut_and_write(task, result, x, offset, piece_index, slicer, kept)
    if total_frames == 0:
        raise AudioError(f"{task.path}: contains no audio samples (zero length)")
    duration = total_frames / float(info.sample_rate)
    if peak < SILENCE_PEAK:
        result.status = "skipped"
        result.problems.append(["all silent", "file skipped"])
        return
    if n_clip:
        result.problems.append([f"clipped ({n_clip} samples at full scale)", "used"])
    dc = dc_sum / total_frames
    if abs(dc) > 0.1:
        result.problems.append([f"large DC offset ({dc:+.3f})", "used (removed by the high-pass)"])
    if duration < 1.0:
        result.problems.append([f"very short ({duration:.2f} s)", "used"])
    loud = [p for p in result.pieces if p.status == "skipped" and p.problem.startswith("peak")]
    if loud:
        result.problems.append([f"{len(loud)} piece(s) with peak > {s.max_peak:g}", "pieces skipped"])
    short = [p for p in result.pieces if p.status == "skipped" and p.problem.startswith("too short")]
    if short:
        result.problems.append([f"{len(short)} piece(s) shorter than {s.min_piece_seconds:g} s", "pieces skipped"])
    result.usable_seconds = _union_seconds(kept, sr)
    if not result.ok_pieces:
        result.status = "skipped"
        result.problems.append(["no usable pieces", "file skipped"])


def _cut_and_write(task: IngestTask, result: FileResult, x: np.ndarray, offset: int, piece_index: int,
                   slicer: Slicer, kept: list[tuple[int, int]]) -> int:
    """Slice and cut the model-rate chunk ``x`` [T]; write its pieces; return the next piece index."""
    s = task.settings
    sr = s.sample_rate
    for a, b in slicer.ranges(x):
        for start, end in cut_pieces(b - a, sr, s.piece_seconds, s.overlap_seconds):
            g0, g1 = offset + a + start, offset + a + end
            name = f"{task.file_index}_{piece_index}"
            piece_index += 1
            info = PieceInfo(name, round(g0 / sr, 4), round(g1 / sr, 4), round((g1 - g0) / sr, 4))
            result.pieces.append(info)
            if (g1 - g0) < s.min_piece_seconds * sr:
                info.status, info.problem = "skipped", f"too short ({info.duration_s:.2f} s)"
                continue
            chunk = x[a + start:a + end]
            y = normalize_piece(chunk, max_peak=s.max_peak, alpha=s.normalize_alpha)
            if y is None:
                info.status = "skipped"
                info.problem = f"peak {float(np.max(np.abs(chunk))):.2f} > {s.max_peak:g}"
                continue
            kept.append((g0, g1))
            gt, w16 = piece_wavs(task.exp_root, name)
            if gt.is_file() and w16.is_file():
                continue
            write_wav(gt, y, sr)
            write_wav(w16, resample(y, sr, SAMPLE_RATE_16K), SAMPLE_RATE_16K)
            result.written += 1
    return piece_index


def _union_seconds(ranges: list[tuple[int, int]], sr: int) -> float:
    """Length of the union of sample ranges, in seconds (overlapping pieces counted once)."""
    total = 0
    cur_start = cur_end = -1
    for a, b in sorted(ranges):
        if a > cur_end:
            total += max(0, cur_end - cur_start)
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    total += max(0, cur_end - cur_start)
    return total / float(sr)


def count_seconds(results: list[FileResult]) -> float:
    """Usable audio over all files, in seconds."""
    return float(math.fsum(r.usable_seconds for r in results if r.status == "ok"))
