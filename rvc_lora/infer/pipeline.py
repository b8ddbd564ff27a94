"""RVC's conversion pipeline (reference section 6): 16 kHz audio in, converted audio at a chosen rate out.

Steps, in RVC's order: peak guard (scale to 0.95 if louder), zero-phase 48 Hz high-pass, cut points at
quiet places for long inputs, reflect padding by ``t_pad``, f0 once on the padded audio (key shift in
semitones, optional f0 curve), then per window: content features, retrieval blend, protect, x2
upsampling to 100 fps, ``p_len`` alignment, synthesis, dropping ``t_pad_tgt`` samples at both ends.
Finally the windows are concatenated, RMS-mixed with the input, resampled and peak-limited.

Every step up to and including the RMS mix follows RVC exactly (proven against reference data computed
by RVC, ``tests/test_rvc_convert_parity.py``). RVC's concatenated output is 1-2 frames shorter than the
input (each window's synthesizer gets ``min(window // 160, 2 x content frames)`` frames); the mix runs on
that array, as in RVC, and only then is the result zero-padded (or trimmed) to exactly
``len(input) * sr / 16000`` samples, so the output lasts as long as the input.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rvc_lora.features.pitch import coarse_pitch, shift_pitch
from rvc_lora.features.pitch_extractor import FRAMES_PER_SECOND, SAMPLE_RATE
from rvc_lora.features.pitch_extractor import HOP as WINDOW
from rvc_lora.utils import RVCLoraError

INPUT_PEAK = 0.95
OUTPUT_PEAK = 0.99
HIGHPASS_HZ = 48.0
HIGHPASS_ORDER = 5
SILENCE_PEAK = 1e-4  # about -80 dBFS: treated as an all-silent input
MIN_SECONDS = 0.05


@dataclass(frozen=True)
class PipelineConstants:
    """RVC's window constants in seconds: padding, cut search radius, window spacing, no-cut limit.

    ``t_pad = 16000 * x_pad`` samples of reflect padding on each side of every window; long inputs
    (longer than ``x_max``) are cut every ``x_center`` seconds at the quietest point within
    ``+- x_query`` seconds. ``x_pad`` must be a whole number of 10 ms frames.
    """

    x_pad: float
    x_query: float
    x_center: float
    x_max: float

    def __post_init__(self) -> None:
        if self.x_pad <= 0 or abs(self.x_pad * FRAMES_PER_SECOND - round(self.x_pad * FRAMES_PER_SECOND)) > 1e-9:
            raise RVCLoraError(f"x_pad must be a positive multiple of 0.01 s, got {self.x_pad}")
        if not 0 < self.x_query <= self.x_center:
            raise RVCLoraError(f"need 0 < x_query <= x_center, got {self.x_query} and {self.x_center}")
        if self.x_max <= 0:
            raise RVCLoraError(f"x_max must be positive, got {self.x_max}")

    @property
    def t_pad(self) -> int:
        return int(round(self.x_pad * FRAMES_PER_SECOND)) * WINDOW

    @property
    def pad_frames(self) -> int:
        """Frames of padding at 100 fps (``x_pad * 100``): where an f0 curve file starts."""
        return self.t_pad // WINDOW

    @property
    def t_query(self) -> int:
        return int(round(self.x_query * SAMPLE_RATE))

    @property
    def t_center(self) -> int:
        return int(round(self.x_center * SAMPLE_RATE))

    @property
    def t_max(self) -> int:
        return int(round(self.x_max * SAMPLE_RATE))


FP32_CONSTANTS = PipelineConstants(x_pad=1, x_query=6, x_center=38, x_max=41)
FP16_CONSTANTS = PipelineConstants(x_pad=3, x_query=10, x_center=60, x_max=65)


def default_constants(half: bool) -> PipelineConstants:
    """RVC's constant set for fp16 (GPU) or fp32 inference."""
    return FP16_CONSTANTS if half else FP32_CONSTANTS


@dataclass
class ConvertOptions:
    """Per-call conversion settings (RVC's UI names in brackets).

    ``pitch``: key shift in semitones [f0_up_key]; ``f0_curve``: [N, 2] array of (seconds, Hz) rows
    or a path to a "time,f0Hz" text file [f0_file]; ``index_rate``: retrieval share (used only when the
    converter has an index); ``protect``: unvoiced-consonant protection, >= 0.5 disables;
    ``rms_mix``: 1 keeps the output loudness, 0 copies the input's envelope [rms_mix_rate];
    ``speaker_id``: row of the speaker embedding; ``sample_rate``: output rate (None = model rate);
    ``seed``: ``torch.manual_seed(seed)`` before every synthesis call (None = not seeded).
    """

    pitch: float = 0.0
    f0_curve: np.ndarray | str | os.PathLike | None = None
    index_rate: float = 0.75
    protect: float = 0.33
    rms_mix: float = 0.25
    speaker_id: int = 0
    sample_rate: int | None = None
    seed: int | None = None

    def validate(self) -> None:
        if not 0.0 <= self.index_rate <= 1.0:
            raise RVCLoraError(f"index rate must be within [0, 1], got {self.index_rate}")
        if not 0.0 <= self.protect <= 1.0:
            raise RVCLoraError(f"protect must be within [0, 1] (>= 0.5 disables it), got {self.protect}")
        if not 0.0 <= self.rms_mix <= 1.0:
            raise RVCLoraError(f"rms mix must be within [0, 1], got {self.rms_mix}")
        if self.sample_rate is not None and not 8000 <= int(self.sample_rate) <= 384000:
            raise RVCLoraError(f"output sample rate must be within 8000..384000 Hz, got {self.sample_rate}")
        if not math.isfinite(self.pitch) or abs(self.pitch) > 48:
            raise RVCLoraError(f"pitch shift must be within +-48 semitones, got {self.pitch}")


@dataclass
class StageTimes:
    """Seconds spent per stage (accumulated over calls): pitch, content, index, synthesis, other."""

    pitch: float = 0.0
    content: float = 0.0
    index: float = 0.0
    synthesis: float = 0.0
    other: float = 0.0
    calls: int = field(default=0)

    def add(self, stage: str, seconds: float) -> None:
        setattr(self, stage, getattr(self, stage) + seconds)

    @property
    def total(self) -> float:
        return self.pitch + self.content + self.index + self.synthesis + self.other


# ------------------------------------------------------------------------------------------------
# small pure steps


def peak_guard(audio16k: np.ndarray) -> np.ndarray:
    """Scale to peak 0.95 if the peak exceeds 0.95 (RVC's input guard); [N] -> [N] float32."""
    audio = np.asarray(audio16k, dtype=np.float32)
    peak = float(np.abs(audio).max()) / INPUT_PEAK if audio.size else 0.0
    return audio / peak if peak > 1.0 else audio


def highpass16k(audio16k: np.ndarray) -> np.ndarray:
    """RVC's zero-phase Butterworth high-pass (order 5, 48 Hz) at 16 kHz, in float64: [N] -> [N]."""
    from scipy import signal

    b, a = _butter()
    x = np.asarray(audio16k, dtype=np.float64)
    if x.shape[0] <= 3 * max(len(a), len(b)):
        return signal.lfilter(b, a, x)
    return signal.filtfilt(b, a, x)


_BUTTER: tuple[np.ndarray, np.ndarray] | None = None


def _butter() -> tuple[np.ndarray, np.ndarray]:
    global _BUTTER
    if _BUTTER is None:
        from scipy import signal

        _BUTTER = signal.butter(N=HIGHPASS_ORDER, Wn=HIGHPASS_HZ, btype="high", fs=SAMPLE_RATE)
    return _BUTTER


def cut_points(audio: np.ndarray, constants: PipelineConstants) -> list[int]:
    """Where RVC cuts a long input: sample indices into ``audio`` [N] (empty if it needs no cutting).

    Inputs are cut only when ``N + 160 > t_max``. The signal is reflect-padded by half a frame on each
    side and its absolute values are summed over 160-sample windows (the sum of ``|x|``, not the
    absolute value of the sum); for t = t_center, 2 t_center, ... < N the cut is the first position of
    the smallest sum in ``[t - t_query, t + t_query)``.
    """
    audio = np.asarray(audio, dtype=np.float64)
    half = WINDOW // 2
    if audio.shape[0] + 2 * half <= constants.t_max:
        return []
    padded = np.abs(np.pad(audio, (half, half), mode="reflect"))
    n = audio.shape[0]
    moving = np.zeros(n, dtype=np.float64)
    for i in range(WINDOW):  # same summation order as RVC, so ties resolve identically
        moving += padded[i:i + n]
    # As RVC: the sum at index k covers samples k - 80 .. k + 79 of the input, and the cut is placed at k
    # itself, so a cut sits in the middle of the quietest 10 ms (later floored to a 160-sample frame).
    points = []
    for t in range(constants.t_center, n, constants.t_center):
        lo = max(0, t - constants.t_query)
        region = moving[lo:t + constants.t_query]
        points.append(lo + int(np.argmin(region)))
    return points


def read_f0_file(path: str | os.PathLike) -> np.ndarray:
    """Read an f0 curve file: one "seconds,Hz" pair per line -> float32 [N, 2] (RVC's f0 file format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RVCLoraError(f"{path}: cannot read f0 file ({exc})") from None
    rows = []
    for number, line in enumerate(text.strip("\n").split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            raise RVCLoraError(f"{path}: line {number}: expected 'seconds,Hz', got {line.strip()!r}")
        rows.append(values)
    if not rows:
        raise RVCLoraError(f"{path}: f0 file has no 'seconds,Hz' lines")
    return np.asarray(rows, dtype=np.float32)


def apply_f0_curve(f0: np.ndarray, curve: np.ndarray, start_frame: int) -> np.ndarray:
    """Overwrite ``f0`` [T] from ``start_frame`` on with ``curve`` [N, 2] (seconds, Hz), as RVC does.

    The curve is sampled at 100 fps on frames 0 .. round((max t - min t) * 100) (linear interpolation,
    held constant outside its range) and written from ``start_frame`` (the padding length) on.
    """
    curve = np.asarray(curve, dtype=np.float32)
    if curve.ndim != 2 or curve.shape[1] != 2 or curve.shape[0] == 0:
        raise RVCLoraError(f"f0 curve must be an [N, 2] array of (seconds, Hz), got shape {curve.shape}")
    n = int(np.round((curve[:, 0].max() - curve[:, 0].min()) * FRAMES_PER_SECOND + 1))
    order = np.argsort(curve[:, 0], kind="stable")
    values = np.interp(np.arange(n), curve[order, 0] * FRAMES_PER_SECOND, curve[order, 1])
    out = np.array(f0, copy=True)
    stop = min(out.shape[0], start_frame + n)
    if stop > start_frame:
        out[start_frame:stop] = values[:stop - start_frame]
    return out


def change_rms(source16k: np.ndarray, output: np.ndarray, output_sr: int, rate: float) -> np.ndarray:
    """RVC's loudness mix: ``output * rms_in^(1-rate) * max(rms_out, 1e-6)^(rate-1)``.

    RMS envelopes use half-second frames and hops at each signal's rate (librosa ``feature.rms``),
    linearly interpolated to the output length. [N16] and [M] -> [M] float32. As in RVC the input
    envelope is computed in float64 (the high-passed input's precision) and the output's in float32.

    RVC stretches each envelope's frames evenly over the whole output (``F.interpolate``, align_corners
    false) instead of placing them at their times, so the result depends on the exact output length and
    on how many half-second frames each envelope has; followed as is, on RVC's own output length.
    """
    import librosa
    import torch.nn.functional as F

    rms_in = librosa.feature.rms(y=np.asarray(source16k, dtype=np.float64),
                                 frame_length=SAMPLE_RATE // 2 * 2, hop_length=SAMPLE_RATE // 2)
    rms_out = librosa.feature.rms(y=np.asarray(output, dtype=np.float32),
                                  frame_length=output_sr // 2 * 2, hop_length=output_sr // 2)
    size = output.shape[0]
    env_in = F.interpolate(torch.from_numpy(rms_in).unsqueeze(0), size=size, mode="linear").squeeze()
    env_out = F.interpolate(torch.from_numpy(rms_out).unsqueeze(0), size=size, mode="linear").squeeze()
    env_out = torch.clamp(env_out, min=1e-6)
    gain = torch.pow(env_in, 1.0 - rate) * torch.pow(env_out, rate - 1.0)
    return (output * gain.numpy()).astype(np.float32)


def limit_peak(audio: np.ndarray) -> np.ndarray:
    """Scale down so the peak is 0.99 if it is above (RVC's output limiter); [M] -> [M] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.abs(audio).max()) / OUTPUT_PEAK if audio.size else 0.0
    return audio / peak if peak > 1.0 else audio


# ------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class PipelineModels:
    """What a conversion runs on (built by :class:`rvc_lora.infer.Converter`).

    ``synth``: an RVC ``Synthesizer`` (eval, on ``device`` in ``dtype``); ``content``: a ContentEncoder;
    ``pitch``: a callable ``(audio16k [N] float32, p_len) -> f0 [p_len] Hz`` (None for no-f0 models);
    ``index``: a RetrievalIndex or None.
    """

    synth: torch.nn.Module
    content: torch.nn.Module
    pitch: Callable[[np.ndarray, int], np.ndarray] | None
    index: object | None
    device: torch.device
    dtype: torch.dtype
    constants: PipelineConstants


class _Clock:
    def __init__(self, times: StageTimes | None, device: torch.device):
        self.times = times
        self.device = device

    def __call__(self, stage: str, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.times is not None:
            self.times.add(stage, now - start)
        return now


def convert_audio(models: PipelineModels, audio16k: np.ndarray, options: ConvertOptions,
                  times: StageTimes | None = None) -> tuple[np.ndarray, int]:
    """Convert mono 16 kHz audio [N] -> (audio [M] float32, sample rate).

    ``M = round(N * sr / 16000)`` (resampled length if ``options.sample_rate`` differs from the model's).
    Raises RVCLoraError for silent, too short or non-finite input and a bad speaker id.
    """
    options.validate()
    synth = models.synth
    constants = models.constants
    clock = _Clock(times, models.device)
    start = time.perf_counter()

    audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
    if audio.shape[0] < MIN_SECONDS * SAMPLE_RATE:
        raise RVCLoraError(f"too short ({audio.shape[0] / SAMPLE_RATE:.3f} s; need at least {MIN_SECONDS} s)")
    if not np.all(np.isfinite(audio)):
        raise RVCLoraError("audio contains NaN or infinite samples")
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        raise RVCLoraError("all silent (peak below -80 dBFS): nothing to convert")
    n_speakers = int(synth.emb_g.weight.shape[0])
    if not 0 <= int(options.speaker_id) < n_speakers:
        raise RVCLoraError(
            f"speaker id {options.speaker_id} is out of range: this model has {n_speakers} speaker(s) "
            f"(valid ids 0..{n_speakers - 1})"
        )

    audio = highpass16k(peak_guard(audio))
    n_in = audio.shape[0]
    tgt_sr = int(synth.sample_rate)
    hop = int(synth.hop_length)  # output samples per 10 ms frame
    t_pad = constants.t_pad
    t_pad_tgt = constants.pad_frames * hop
    points = cut_points(audio, constants)
    audio_pad = np.pad(audio, (t_pad, t_pad), mode="reflect")
    p_len = audio_pad.shape[0] // WINDOW
    start = clock("other", start)

    pitch = pitchf = None
    if synth.f0:
        if models.pitch is None:
            raise RVCLoraError("this is a pitch (f0) model but no pitch extractor is set")
        f0 = np.asarray(models.pitch(audio_pad.astype(np.float32), p_len), dtype=np.float32)[:p_len]
        f0 = shift_pitch(f0, options.pitch)
        if options.f0_curve is not None:
            curve = options.f0_curve
            if not isinstance(curve, np.ndarray):
                curve = read_f0_file(curve)
            f0 = apply_f0_curve(f0, curve, constants.pad_frames)
        pitch = torch.from_numpy(coarse_pitch(f0)).to(models.device).unsqueeze(0)
        pitchf = torch.from_numpy(np.asarray(f0, dtype=np.float32)).to(models.device).unsqueeze(0)
        start = clock("pitch", start)

    sid = torch.tensor([int(options.speaker_id)], device=models.device, dtype=torch.long)
    pieces = []
    s = 0
    bounds = []
    for t in points:
        t = t // WINDOW * WINDOW
        # As RVC: a cut t (an index into the unpadded input) ends the window audio_pad[s : t + 2 t_pad + 160],
        # i.e. input samples s - t_pad .. t + t_pad + 159, while its f0 stops one frame earlier, at
        # (t + 2 t_pad) // 160; the synthesizer length min(window // 160, 2 x content frames) never
        # reaches that last frame, so the shorter f0 slice is what RVC feeds and what is fed here.
        bounds.append((s, t + 2 * t_pad + WINDOW, s // WINDOW, (t + 2 * t_pad) // WINDOW))
        s = t
    bounds.append((s, audio_pad.shape[0], s // WINDOW, None))
    for a0, a1, f0_lo, f0_hi in bounds:
        seg_pitch = None if pitch is None else pitch[:, f0_lo:f0_hi]
        seg_pitchf = None if pitchf is None else pitchf[:, f0_lo:f0_hi]
        out = _convert_window(models, audio_pad[a0:a1], seg_pitch, seg_pitchf, sid, options, clock)
        pieces.append(out[t_pad_tgt:out.shape[0] - t_pad_tgt])
    start = time.perf_counter()

    result = np.concatenate(pieces)
    if options.rms_mix != 1.0:
        # over RVC's own output length: both envelopes are stretched to it, so the length matters
        result = change_rms(audio, result, tgt_sr, options.rms_mix)
    n_out = int(round(n_in * tgt_sr / SAMPLE_RATE))
    if result.shape[0] >= n_out:
        result = result[:n_out]
    else:  # RVC's output ends 1-2 frames early; pad with silence so the output lasts as long as the input
        result = np.pad(result, (0, n_out - result.shape[0]))
    out_sr = tgt_sr
    if options.sample_rate is not None and int(options.sample_rate) != tgt_sr:
        from rvc_lora.audio.resample import resample

        out_sr = int(options.sample_rate)
        result = resample(result, tgt_sr, out_sr)
    result = limit_peak(result)
    clock("other", start)
    if times is not None:
        times.calls += 1
    return result, out_sr


def _convert_window(models: PipelineModels, audio: np.ndarray, pitch: torch.Tensor | None,
                    pitchf: torch.Tensor | None, sid: torch.Tensor, options: ConvertOptions,
                    clock: _Clock) -> np.ndarray:
    """One padded window [L] at 16 kHz -> synthesizer output [p_len * hop] float32 (RVC's ``vc``)."""
    start = time.perf_counter()
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
    version = models.synth.version
    feats = models.content.encode(wave, version).to(models.device, torch.float32)  # [1, frames, dim]
    use_protect = options.protect < 0.5 and pitch is not None
    feats0 = feats.clone() if use_protect else None
    start = clock("content", start)
    if models.index is not None and options.index_rate != 0.0:
        blended = models.index.blend(feats[0].cpu().numpy(), options.index_rate)
        feats = torch.from_numpy(np.asarray(blended, dtype=np.float32)).to(models.device).unsqueeze(0)
        start = clock("index", start)
    feats = feats.repeat_interleave(2, dim=1)  # 50 -> 100 fps (nearest)
    if feats0 is not None:
        feats0 = feats0.repeat_interleave(2, dim=1)
    p_len = min(audio.shape[0] // WINDOW, feats.shape[1])
    feats = feats[:, :p_len]
    if pitch is not None:
        pitch, pitchf = pitch[:, :p_len], pitchf[:, :p_len]
        if pitchf.shape[1] < p_len:
            raise RVCLoraError(f"internal: f0 has {pitchf.shape[1]} frames for {p_len} feature frames")
    if feats0 is not None:
        weight = torch.where(pitchf < 1, torch.full_like(pitchf, options.protect), torch.ones_like(pitchf))
        weight = weight.unsqueeze(-1)
        feats = feats * weight + feats0[:, :p_len] * (1 - weight)
    lengths = torch.tensor([p_len], device=models.device, dtype=torch.long)
    if options.seed is not None:
        torch.manual_seed(int(options.seed))
    audio_out = models.synth.infer(feats.to(models.dtype), lengths, pitch, pitchf, sid)[0][0, 0]
    result = audio_out.float().cpu().numpy()
    clock("synthesis", start)
    return result
