"""Silence slicing, fixed-length piece cutting and per-piece loudness normalisation (RVC preprocessing).

Everything returns sample ranges ``(start, end)`` (end exclusive) so a manifest can record where each
piece came from; apply them with ``x[start:end]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def frame_rms(x: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of ``x`` [T] in centred frames; returns float64 [1 + T // hop_length] (zero-padded edges).

    Frame ``i`` covers samples ``[i*hop - frame_length//2, i*hop - frame_length//2 + frame_length)``
    with zeros outside the signal (librosa's ``rms(center=True, pad_mode="constant")`` framing).
    """
    half = frame_length // 2
    padded = np.concatenate([np.zeros(half), np.asarray(x, dtype=np.float64) ** 2, np.zeros(half)])
    n_frames = 1 + (padded.shape[0] - frame_length) // hop_length
    if n_frames <= 0:
        return np.zeros(0)
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    starts = np.arange(n_frames) * hop_length
    energy = (csum[starts + frame_length] - csum[starts]) / frame_length
    return np.sqrt(np.maximum(energy, 0.0))


@dataclass(frozen=True)
class Slicer:
    """Split audio at long silences, with RVC's preprocessing defaults.

    Times are in milliseconds; ``threshold`` in dBFS (RMS). A silent stretch splits the audio when it
    lasts at least ``min_interval`` and the current clip is already ``min_length`` long; up to
    ``max_sil_kept`` of silence is kept on each side of a cut, the cut placed at the quietest frame.
    """

    sample_rate: int
    threshold: float = -42.0
    min_length: int = 1500
    min_interval: int = 400
    hop_size: int = 15
    max_sil_kept: int = 500

    def __post_init__(self) -> None:
        if not self.min_length >= self.min_interval >= self.hop_size:
            raise ValueError("slicer needs min_length >= min_interval >= hop_size")
        if not self.max_sil_kept >= self.hop_size:
            raise ValueError("slicer needs max_sil_kept >= hop_size")

    # Derived frame quantities (same rounding as RVC's slicer).
    @property
    def hop(self) -> int:
        return round(self.sample_rate * self.hop_size / 1000)

    @property
    def win(self) -> int:
        return min(round(self.sample_rate * self.min_interval / 1000), 4 * self.hop)

    def _frames(self, ms: float) -> int:
        return round(self.sample_rate * ms / 1000 / self.hop)

    def ranges(self, x: np.ndarray) -> list[tuple[int, int]]:
        """Sample ranges [(start, end), ...] of the non-silent clips of mono ``x`` [T] (or [C, T])."""
        x = np.asarray(x)
        mono = x.mean(axis=0) if x.ndim > 1 else x
        total = mono.shape[0]
        min_len = self._frames(self.min_length)
        min_gap = self._frames(self.min_interval)
        keep = self._frames(self.max_sil_kept)
        # RVC compares the SAMPLE count with min_length in FRAMES here; kept for identical output.
        if total <= min_len:
            return [(0, total)] if total > 0 else []
        rms = frame_rms(mono, self.win, self.hop)
        quiet = rms < 10 ** (self.threshold / 20.0)
        cuts = self._find_cuts(rms, quiet, min_len, min_gap, keep)
        n = rms.shape[0]
        if not cuts:
            return [(0, total)]
        frame_ranges = []
        if cuts[0][0] > 0:
            frame_ranges.append((0, cuts[0][0]))
        frame_ranges += [(a[1], b[0]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        if cuts[-1][1] < n:
            frame_ranges.append((cuts[-1][1], n))
        out = []
        for a, b in frame_ranges:
            start, end = a * self.hop, min(total, b * self.hop)
            if end > start:
                out.append((start, end))
        return out

    @staticmethod
    def _quietest(rms: np.ndarray, lo: int, hi: int) -> int:
        """Index of the minimum of rms[lo:hi] (first one on ties)."""
        return lo + int(np.argmin(rms[lo:hi]))

    def _find_cuts(
        self, rms: np.ndarray, quiet: np.ndarray, min_len: int, min_gap: int, keep: int
    ) -> list[tuple[int, int]]:
        """Frame spans (left, right) to remove; audio between consecutive spans is kept."""
        cuts: list[tuple[int, int]] = []
        run_start: int | None = None
        clip_start = 0
        for i, is_quiet in enumerate(quiet):
            if is_quiet:
                if run_start is None:
                    run_start = i
                continue
            if run_start is None:
                continue
            s = run_start
            run_start = None
            leading = s == 0 and i > keep
            splits = i - s >= min_gap and i - clip_start >= min_len
            if not (leading or splits):
                continue
            if i - s <= keep:
                p = self._quietest(rms, s, i + 1)
                cuts.append((0, p) if s == 0 else (p, p))
                clip_start = p
                continue
            left = self._quietest(rms, s, s + keep + 1)
            right = self._quietest(rms, i - keep, i + 1)
            if i - s <= 2 * keep:
                mid = self._quietest(rms, i - keep, s + keep + 1)
                if s == 0:
                    cuts.append((0, right))
                    clip_start = right
                else:
                    cuts.append((min(left, mid), max(right, mid)))
                    clip_start = max(right, mid)
            else:
                cuts.append((0, right) if s == 0 else (left, right))
                clip_start = right
        n = rms.shape[0]
        if run_start is not None and n - run_start >= min_gap:
            end = min(n, run_start + keep)
            cuts.append((self._quietest(rms, run_start, end + 1), n + 1))
        return cuts


def slice_ranges(x: np.ndarray, sr: int, **options: float) -> list[tuple[int, int]]:
    """Shortcut for ``Slicer(sr, **options).ranges(x)`` with RVC's preprocessing defaults."""
    return Slicer(sr, **options).ranges(x)


def cut_pieces(length: int, sr: int, piece_s: float = 3.7, overlap_s: float = 0.3) -> list[tuple[int, int]]:
    """Cut a clip of ``length`` samples into overlapping pieces, as RVC's preprocessing does.

    Piece ``k`` starts at ``int(sr * (piece_s - overlap_s) * k)`` and lasts ``int(piece_s * sr)``
    samples while the audio left from that start is longer than ``(piece_s + overlap_s) * sr``; the
    remainder (between ``overlap_s`` and ``piece_s + overlap_s`` seconds long) is the last piece.
    Returns [(start, end), ...]; a clip of at most ``piece_s + overlap_s`` seconds is one piece.
    """
    if length <= 0:
        return []
    if piece_s <= overlap_s:
        raise ValueError(f"piece length {piece_s} s must exceed the overlap {overlap_s} s")
    tail = (piece_s + overlap_s) * sr
    pieces = []
    k = 0
    while True:
        start = int(sr * (piece_s - overlap_s) * k)
        k += 1
        if length - start > tail:
            pieces.append((start, start + int(piece_s * sr)))
        else:
            pieces.append((start, length))
            return pieces


def normalize_piece(
    x: np.ndarray, max_peak: float = 2.5, alpha: float = 0.75, target_peak: float = 0.9
) -> np.ndarray | None:
    """RVC's per-piece loudness normalisation of ``x`` [T]; returns float32 [T] or None to skip.

    ``y = x / peak * (target_peak * alpha) + (1 - alpha) * x``. Pieces whose peak exceeds ``max_peak``
    are skipped (RVC treats them as broken); so are all-zero pieces (RVC would divide by zero).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return None
    peak = float(np.max(np.abs(x)))
    if peak > max_peak or peak == 0.0 or not np.isfinite(peak):
        return None
    y = x / peak * (target_peak * alpha) + (1.0 - alpha) * x
    return y.astype(np.float32)
