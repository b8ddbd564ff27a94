"""Streaming conversion (RVC's realtime scheme): audio in blocks, converted blocks out.

The window holds the newest audio (frames of 10 ms, newest on the right)::

    |<------------ context X ------------>|<---- output region R = B + C + S ---->|
                              |<- M ->|
                              ^ decoding starts here (skip_head = X - M, return_length = M + R)

Per block of B new frames the window shifts by B. HuBERT runs on the last ``content_context + M + R``
frames and its features replace those frames of the content cache (older frames keep the features
computed when they were new); the pitch extractor runs on the last ``pitch_context + M + R`` frames and
replaces those frames of the pitch cache. The text encoder attends over the whole window; the flow and the
decoder run only on the last M + R frames (the synthesizer's ``skip_head`` / ``return_length``), and the
first M decoded frames (decoder warm-up) are dropped. The NSF sine starts each block at the phase the
previous block reached (RVC restarts it at 0), so consecutive blocks join without a phase jump. SOLA then
picks the offset (up to S frames) where the new block best matches the previous block's tail, crossfades
C frames (sin^2 fades) and emits B frames; the next C frames become the next tail.

Algorithmic latency: B + C + S frames (the block being filled, plus the crossfade and search look-ahead),
plus the resamplers' delay when the input or output rate is not 16 kHz / the model's rate.

Differences from the offline pipeline: no whole-file peak guard or peak limiter (each block is clipped to
[-1, 1]), the 48 Hz high-pass runs over the window, the loudness mix uses short (40 ms) envelopes within
the block as RVC's realtime GUI does, and f0 curve files are not supported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rvc_lora.features.pitch import coarse_pitch, shift_pitch
from rvc_lora.features.pitch_extractor import FRAMES_PER_SECOND
from rvc_lora.infer.converter import Converter
from rvc_lora.infer.pipeline import SAMPLE_RATE, WINDOW, ConvertOptions, StageTimes, highpass16k
from rvc_lora.infer.stream_layout import StreamSettings
from rvc_lora.utils import RVCLoraError

RMS_FRAMES = 4  # loudness-mix envelope frame, in 10 ms frames (hop: one frame)


@dataclass
class StreamStats:
    """Per-block compute seconds and SOLA offsets (output samples), plus accumulated stage times."""

    block_seconds: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    stages: StageTimes = field(default_factory=StageTimes)


def _sola(block: np.ndarray, tail: np.ndarray, search: int) -> int:
    """Offset in ``[0, search]`` where ``block`` best matches ``tail`` (normalised cross-correlation)."""
    n = tail.shape[0]
    if n == 0 or search == 0:
        return 0
    seg = block[:n + search].astype(np.float64)
    nom = np.correlate(seg, tail.astype(np.float64), mode="valid")
    energy = np.concatenate(([0.0], np.cumsum(seg * seg)))
    den = np.sqrt(energy[n:] - energy[:-n] + 1e-8)
    return int(np.argmax(nom / den))


def _envelope(audio: np.ndarray, hop: int, size: int) -> np.ndarray:
    """RMS over ``RMS_FRAMES * hop`` samples every ``hop`` samples (centred), linearly stretched to ``size``."""
    import librosa

    rms = librosa.feature.rms(y=audio, frame_length=RMS_FRAMES * hop, hop_length=hop)[0]
    if rms.shape[0] == 1:
        return np.full(size, rms[0], dtype=np.float64)
    return np.interp(np.linspace(0.0, rms.shape[0] - 1, size), np.arange(rms.shape[0]), rms)


def block_rms_mix(source16k: np.ndarray, output: np.ndarray, hop: int, rate: float) -> np.ndarray:
    """Loudness mix within a block: ``output * (rms_in / max(rms_out, 1e-3)) ** (1 - rate)``, 40 ms frames.

    ``source16k`` [n * 160] and ``output`` [n * hop] cover the same ``n`` frames. Returns float32.
    """
    env_in = _envelope(np.asarray(source16k, dtype=np.float32), WINDOW, output.shape[0])
    env_out = np.maximum(_envelope(np.asarray(output, dtype=np.float32), hop, output.shape[0]), 1e-3)
    return (output * np.power(env_in / env_out, 1.0 - rate)).astype(np.float32)


class _Resampler:
    """A streaming soxr resampler (HQ), or a pass-through when the rates are equal."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.stream = None
        if rate_in != rate_out:
            import soxr

            self.stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.stream is None:
            return x
        return np.asarray(self.stream.resample_chunk(x, last=last), dtype=np.float32)


class StreamingConverter:
    """Convert a stream block by block with a :class:`Converter`'s models and active adapters.

    Args:
        converter: the loaded models (reassign ``converter`` between calls to run on another Converter of
            the same base, e.g. a server worker's).
        options: conversion options (``f0_curve`` unsupported; ``sample_rate`` = output rate).
        settings: block layout (:class:`StreamSettings`).
        input_rate: sample rate of the audio passed to :meth:`process`.

    Attributes: ``output_rate``, ``layout`` (:class:`BlockLayout`), ``latency`` (algorithmic latency in
    seconds), ``lag`` (output samples by which the output stream trails the input), ``stats``.
    """

    def __init__(self, converter: Converter, options: ConvertOptions | None = None,
                 settings: StreamSettings | None = None, input_rate: int = SAMPLE_RATE) -> None:
        self.converter = converter
        self.options = options or ConvertOptions()
        self.options.validate()
        if self.options.f0_curve is not None:
            raise RVCLoraError("f0 curve files are not supported in streaming conversion")
        if not 0 <= int(self.options.speaker_id) < converter.n_speakers:
            raise RVCLoraError(f"speaker id {self.options.speaker_id} is out of range: this model has "
                               f"{converter.n_speakers} speaker(s)")
        if not 8000 <= int(input_rate) <= 384000:
            raise RVCLoraError(f"input sample rate must be within 8000..384000 Hz, got {input_rate}")
        self.settings = settings or StreamSettings()
        self.layout = self.settings.layout()
        self.input_rate = int(input_rate)
        self.model_rate = int(converter.sample_rate)
        self.hop = int(converter.synth.hop_length)
        self.output_rate = int(self.options.sample_rate or self.model_rate)
        lay = self.layout
        self.latency = (lay.block + lay.crossfade + lay.search) / FRAMES_PER_SECOND
        self.lag = int(round((lay.crossfade + lay.search) * self.hop * self.output_rate / self.model_rate))
        fade = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, lay.crossfade * self.hop, dtype=np.float64)) ** 2
        self._fade_in = fade.astype(np.float32)
        self._fade_out = (1.0 - fade).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: empty window, caches, tail and resampler state."""
        lay = self.layout
        dim = self.converter.content.feature_dim(self.converter.version)
        self._audio = np.zeros(lay.window * WINDOW, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._feats = np.zeros((lay.window, dim), dtype=np.float32)
        self._feats0 = np.zeros((lay.window, dim), dtype=np.float32)
        self._f0 = np.zeros(lay.window, dtype=np.float32)
        self._phase = 0.0
        self._tail = np.zeros(lay.crossfade * self.hop, dtype=np.float32)
        self._in = _Resampler(self.input_rate, SAMPLE_RATE)
        self._out = _Resampler(self.model_rate, self.output_rate)
        self.stats = StreamStats()

    @property
    def block_samples(self) -> int:
        """Input samples (at ``input_rate``) per block."""
        return int(round(self.layout.block * WINDOW * self.input_rate / SAMPLE_RATE))

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono input samples [N] (any length); returns the output completed so far [M] float32."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise RVCLoraError("audio block contains NaN or infinite samples")
        return self._feed(self._in(x))

    def flush(self) -> np.ndarray:
        """End the stream: pad with silence until every input sample has left, and return the rest."""
        lay = self.layout
        x = self._in(np.zeros(0, dtype=np.float32), last=True)
        step = lay.block * WINDOW
        pending = self._pending.shape[0] + x.shape[0]
        extra = (-pending) % step + math.ceil((lay.crossfade + lay.search) / lay.block) * step
        out = self._feed(np.concatenate([x, np.zeros(extra, dtype=np.float32)]))
        return np.concatenate([out, self._out(np.zeros(0, dtype=np.float32), last=True)])

    def _feed(self, x16k: np.ndarray) -> np.ndarray:
        self._pending = np.concatenate([self._pending, x16k])
        step = self.layout.block * WINDOW
        outputs = []
        while self._pending.shape[0] >= step:
            block, self._pending = self._pending[:step], self._pending[step:]
            start = time.perf_counter()
            outputs.append(self._out(self._block(block)))
            self.stats.block_seconds.append(time.perf_counter() - start)
        return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)

    def _shift(self, block16k: np.ndarray) -> None:
        lay = self.layout
        n = lay.block
        self._audio[:-n * WINDOW] = self._audio[n * WINDOW:]
        self._audio[-n * WINDOW:] = block16k
        for cache in (self._feats, self._feats0, self._f0):
            cache[:-n] = cache[n:]

    @torch.inference_mode()
    def _block(self, block16k: np.ndarray) -> np.ndarray:
        """One step: block16k [B * 160] at 16 kHz -> B * hop output samples at the model rate."""
        lay, conv, opts = self.layout, self.converter, self.options
        models = conv.pipeline_models()
        synth = models.synth
        times = self.stats.stages
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            if models.device.type == "cuda":
                torch.cuda.synchronize(models.device)
            now = time.perf_counter()
            times.add(stage, now - clock)
            clock = now

        self._shift(block16k)
        audio = highpass16k(self._audio).astype(np.float32)
        decoded = lay.decoded
        lap("other")

        wave = torch.from_numpy(np.ascontiguousarray(audio[-lay.content * WINDOW:])).unsqueeze(0)
        feats = models.content.encode(wave, synth.version)[0].float().cpu().numpy()  # [~content / 2, dim]
        half = lay.content // 2
        if feats.shape[0] < half:  # HuBERT's last 20 ms frame needs audio not yet received: repeat the last
            feats = np.concatenate([feats, np.repeat(feats[-1:], half - feats.shape[0], axis=0)])
        feats = feats[:half]
        lap("content")
        new_half = min(half, (decoded + 1) // 2)
        feats0 = feats[-new_half:]
        blended = feats0
        if models.index is not None and opts.index_rate != 0.0:
            blended = np.asarray(models.index.blend(feats0, opts.index_rate), dtype=np.float32)
            lap("index")
        self._feats[-decoded:] = np.repeat(blended, 2, axis=0)[-decoded:]
        self._feats0[-decoded:] = np.repeat(feats0, 2, axis=0)[-decoded:]

        pitch = pitchf = start = None
        if synth.f0:
            if models.pitch is None:
                raise RVCLoraError("this is a pitch (f0) model but no pitch extractor is set")
            f0 = np.asarray(models.pitch(audio[-lay.pitch * WINDOW:], lay.pitch), dtype=np.float32)
            self._f0[-decoded:] = shift_pitch(f0[-decoded:], opts.pitch)
            pitch = torch.from_numpy(coarse_pitch(self._f0)).to(models.device).unsqueeze(0)
            pitchf = torch.from_numpy(self._f0.copy()).to(models.device).unsqueeze(0)
            start = torch.tensor([self._phase], dtype=torch.float32, device=models.device)
            lap("pitch")

        phone = self._feats
        if pitchf is not None and opts.protect < 0.5:
            weight = np.where(self._f0 < 1, np.float32(opts.protect), np.float32(1.0))[:, None]
            phone = phone * weight + self._feats0 * (1 - weight)
        phone_t = torch.from_numpy(np.ascontiguousarray(phone, dtype=np.float32)).to(models.device, models.dtype)
        sid = torch.tensor([int(opts.speaker_id)], device=models.device, dtype=torch.long)
        lengths = torch.tensor([lay.window], device=models.device, dtype=torch.long)
        if opts.seed is not None:
            torch.manual_seed(int(opts.seed))
        head = lay.context - lay.margin
        out = synth.infer(phone_t.unsqueeze(0), lengths, pitch, pitchf, sid, skip_head=head,
                          return_length=decoded, start_phase=start)[0][0, 0]
        out = out.float().cpu().numpy()[lay.margin * self.hop:]  # the output region, R * hop samples
        if pitchf is not None:
            advance = synth.dec.phase_advance(pitchf[:, head:head + lay.block])
            self._phase = float((self._phase + float(advance[0])) % 1.0)
        lap("synthesis")

        if opts.rms_mix != 1.0:
            out = block_rms_mix(audio[lay.context * WINDOW:], out, self.hop, opts.rms_mix)
        offset = _sola(out, self._tail, lay.search * self.hop)
        self.stats.offsets.append(offset)
        out = out[offset:]
        fade = self._tail.shape[0]
        out[:fade] = out[:fade] * self._fade_in + self._tail * self._fade_out
        emit_len = lay.block * self.hop
        self._tail = out[emit_len:emit_len + fade].copy()
        result = np.clip(out[:emit_len], -1.0, 1.0)
        lap("other")
        times.calls += 1
        return result


def stream_convert(converter: Converter, audio: np.ndarray, sr: int, options: ConvertOptions | None = None,
                   settings: StreamSettings | None = None, progress: Callable[[int], object] | None = None
                   ) -> tuple[np.ndarray, int, StreamingConverter]:
    """Convert mono audio [N] at ``sr`` block by block, as a live stream would, and undo the stream's lag.

    ``progress(n)`` is called with the input samples consumed after each block.
    Returns (audio [round(N * out_rate / sr)] float32, output rate, the StreamingConverter with its stats).
    """
    stream = StreamingConverter(converter, options, settings, input_rate=sr)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    step = stream.block_samples
    pieces = []
    for i in range(0, audio.shape[0], step):
        pieces.append(stream.process(audio[i:i + step]))
        if progress is not None:
            progress(min(step, audio.shape[0] - i))
    pieces.append(stream.flush())
    out = np.concatenate(pieces)[stream.lag:]
    n_out = int(round(audio.shape[0] * stream.output_rate / sr))
    out = out[:n_out] if out.shape[0] >= n_out else np.pad(out, (0, n_out - out.shape[0]))
    return out, stream.output_rate, stream
