"""Decode audio files to mono float32, probe their headers and write WAV files atomically."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_lora.utils import RVCLoraError, atomic_write

# Declared data sizes that recorders write while streaming (length unknown); not a truncation.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 1}
_DATA_SIZE_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(RVCLoraError):
    """An audio file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file (no samples decoded)."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / float(self.sample_rate) if self.sample_rate else 0.0


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")


def _open_info(path: Path):
    import soundfile as sf

    try:
        return sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{path}: unreadable or unsupported audio format ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


def _check_truncated(path: Path, extra_info: str) -> None:
    """Raise if a WAV-like header declares more audio data than the file holds."""
    match = _DATA_SIZE_RE.search(extra_info or "")
    if match is None:
        return
    declared, actual = int(match.group(1)), int(match.group(2))
    if declared > actual and declared not in _PLACEHOLDER_SIZES:
        raise AudioError(
            f"{path}: file is truncated (header declares {declared} data bytes, only {actual} present)"
        )


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Read only the header of ``path``: sample rate, channel count, frame count, format.

    Raises ``AudioError`` for a missing, empty, truncated or undecodable file.
    """
    p = Path(path)
    _check_exists(p)
    info = _open_info(p)
    _check_truncated(p, getattr(info, "extra_info", ""))
    return AudioInfo(
        path=p,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to a mono float32 signal [T] and its sample rate.

    Any channel count is mixed down by averaging. With ``sample_rate`` set, the signal is resampled
    (soxr HQ) and that rate is returned. Formats are those of the installed libsndfile (WAV, FLAC,
    OGG/Vorbis/Opus, MP3 with libsndfile >= 1.1, AIFF, ...).

    Raises ``AudioError`` naming the file for: missing file, empty file, unreadable / corrupt /
    truncated / unsupported data, zero decoded samples, NaN or infinite samples.
    """
    import soundfile as sf

    from rvc_lora.audio.resample import resample

    info = probe_audio(path)
    p = info.path
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, MemoryError) as exc:
        raise AudioError(f"{p}: cannot decode audio ({_short(exc)})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no audio samples (zero length)")
    audio = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    n_bad = int(audio.size - np.count_nonzero(np.isfinite(audio)))
    if n_bad:
        raise AudioError(f"{p}: contains {n_bad} non-finite samples (NaN or infinity)")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate is not None and int(sample_rate) != int(sr):
        audio = resample(audio, int(sr), int(sample_rate))
        sr = int(sample_rate)
    return audio, int(sr)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    """Write ``audio`` ([T] mono or [T, C]) as a WAV file at ``sr`` Hz, atomically; returns the path.

    ``subtype`` is a libsndfile subtype ("FLOAT" = 32-bit float as RVC writes, "PCM_16", ...).
    """
    import soundfile as sf

    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise ValueError(f"write_wav expects [T] or [T, C] audio, got shape {audio.shape}")
    target = Path(path)
    with atomic_write(target) as tmp:
        # The temporary file ends in ".tmp", so the container format must be given explicitly.
        sf.write(str(tmp), audio, int(sr), subtype=subtype, format="WAV")
    return target
