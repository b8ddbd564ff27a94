"""``Converter``: an RVC model (optionally plus LoRA adapters) ready to convert audio, with fast adapter swaps.

The synthesizer is loaded once; weight norm in the generator and the flow is folded into plain weights
at load (no weight-norm hooks on the hot path). Adapters (any algorithm) are merged with their strengths
into those weights by the adapter layers' own merge; ``set_adapters`` restores the kept copy of the folded
base and merges the new set, so a swap costs one pass over the adapted weights instead of a model reload.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rvc_lora.checkpoint import load_rvc
from rvc_lora.generator_lora import SynthesizerLoRA
from rvc_lora.infer.adapters import AdapterFileCache
from rvc_lora.infer.pipeline import (
    SAMPLE_RATE,
    ConvertOptions,
    PipelineConstants,
    PipelineModels,
    StageTimes,
    convert_audio,
    default_constants,
)
from rvc_lora.infer.precision import plan_execution
from rvc_lora.lora import fold_all_weight_norm
from rvc_lora.models.synthesizer import CONTENT_DIMS
from rvc_lora.utils import RVCLoraError, resolve_device

if TYPE_CHECKING:
    from rvc_lora.features.pitch import PitchExtractor

AdapterSpec = str | os.PathLike | tuple[str | os.PathLike, float]
OUTPUT_FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}


class _Host(SynthesizerLoRA):
    """SynthesizerLoRA whose base fingerprints are cached (the base never changes under a Converter)."""

    def __init__(self, synth: torch.nn.Module, base_desc: str):
        super().__init__(synth, base_desc=base_desc)
        self._fingerprints: dict[frozenset[str], str] = {}

    def fingerprint(self, module_paths: Iterable[str]) -> str:
        key = frozenset(module_paths)
        if key not in self._fingerprints:
            self._fingerprints[key] = super().fingerprint(key)
        return self._fingerprints[key]


def _adapter_list(adapters: Iterable[AdapterSpec] | None, force: bool) -> list[tuple[Path, float]]:
    from rvc_lora.merge import check_strength, parse_adapter_spec

    out = []
    for item in adapters or ():
        path, strength = item if isinstance(item, tuple) else parse_adapter_spec(str(item))
        out.append((Path(path), check_strength(strength, path, force)))
    return out


class Converter:
    """Voice conversion with an RVC small model (any RVC / Applio / rvc-lora file) and optional adapters.

    Args:
        model: RVC model file (small model, pretrained G or training G checkpoint).
        hubert: content model: RVC's ``hubert_base.pt``, a HF HuBERT folder, or a TorchScript content
            encoder (see :mod:`rvc_lora.features.content_torchscript`).
        adapters: adapter files, as paths, ``"file.safetensors:0.7"`` strings or ``(path, strength)``.
        index: faiss index file for retrieval (or None).
        device: "auto" (CUDA, MPS, CPU), or any torch device string.
        precision: "auto" (fp16 on CUDA, fp32 elsewhere), "fp32", "mixed", "bf16" or "fp16" (CUDA only); see
            :mod:`rvc_lora.infer.precision`. ``note`` says when the device only emulates it.
        half: shorthand for precision "fp16" (True) or "fp32" (False) when ``precision`` is "auto".
        layout: generator layout, "auto" (channels-last on CPU), "channels_last" or "default".
        f0_method: pitch method (default "rmvpe" if ``rmvpe`` is given, else "fcpe").
        rmvpe: RVC's ``rmvpe.pt`` (for f0_method "rmvpe").
        force: apply adapters whose base fingerprint does not match this model.
        constants: window constants (default: RVC's fp16 or fp32 set, by ``half``).
        content_kind: ``auto`` (detect), ``hubert`` or ``torchscript`` (as ``content.kind``).

    Attributes: ``sample_rate`` (model rate), ``version``, ``f0``, ``n_speakers``, ``device``, ``dtype``,
    ``execution`` (:class:`~rvc_lora.infer.precision.ExecutionPlan`), ``note`` (a precision warning or None),
    ``adapters`` (list of (path, strength)), ``times`` (:class:`StageTimes`, accumulated).
    """

    def __init__(self, model: str | os.PathLike, hubert: str | os.PathLike | None,
                 adapters: Iterable[AdapterSpec] | None = None, *, index: str | os.PathLike | None = None,
                 device: str = "auto", precision: str = "auto", half: bool | None = None,
                 layout: str = "auto", f0_method: str | None = None, rmvpe: str | os.PathLike | None = None,
                 force: bool = False, constants: PipelineConstants | None = None,
                 content_kind: str = "auto") -> None:
        from rvc_lora.features.content import load_content_model

        self.device = resolve_device(device)
        if half is not None and precision == "auto":
            precision = "fp16" if half else "fp32"
        self.model_path = Path(model)
        ckpt = load_rvc(model)
        if ckpt.kind != "generator":
            raise RVCLoraError(f"{model}: is a discriminator file; conversion needs a generator (RVC model)")
        synth = ckpt.model.eval()
        self.execution = plan_execution(precision, self.device, synth.dec.num_upsamples, layout)
        self.note = self.execution.note
        self.dtype = self.execution.dtype
        self.half = self.dtype == torch.float16
        self.constants = constants or default_constants(self.half)
        if hasattr(synth, "enc_q"):
            del synth.enc_q  # posterior encoder: training only
        self.version, self.f0, self.sample_rate = ckpt.version, bool(synth.f0), int(synth.sample_rate)
        self.n_speakers = int(synth.emb_g.weight.shape[0])
        # The host snapshots the base as stored (g/v) for adapter fingerprints; fold afterwards.
        host = _Host(synth, base_desc=str(model))
        fold_all_weight_norm(synth.dec)
        fold_all_weight_norm(synth.flow)
        for p in synth.parameters():
            p.requires_grad_(False)
        self.synth = synth.to(self.device, self.dtype)
        self.execution.apply(self.synth.dec)
        self.content = load_content_model(hubert, kind=content_kind, device=str(self.device), half=self.half)
        dim = self.content.feature_dim(self.version)
        if dim != CONTENT_DIMS[self.version]:
            raise RVCLoraError(
                f"{hubert}: gives {dim}-dim {self.version} features but {model} is an RVC {self.version} model "
                f"expecting {CONTENT_DIMS[self.version]}-dim features; use a HuBERT-base content model"
            )
        self.rmvpe = rmvpe
        self._pitch = None
        self._extractors: dict[str, PitchExtractor] = {}
        self.set_f0_method(f0_method or ("rmvpe" if rmvpe else "fcpe"))
        self.index = None
        if index is not None:
            self.load_index(index)
        self.times = StageTimes()
        self.adapters: list[tuple[Path, float]] = []
        self._host = host
        self._files = AdapterFileCache()
        self._names: list[str] = []  # the host's names of the active adapters, in order
        if adapters:
            self.set_adapters(adapters, force=force)

    # -- adapters -----------------------------------------------------------------------------------
    def set_adapters(self, adapters: Iterable[AdapterSpec] | None, force: bool = False) -> None:
        """Make ``adapters`` (paths / "path:strength" / (path, strength)) the active set, merged.

        The base is not reloaded: the adapted weights are rewritten from a kept copy of the folded base
        plus each adapter's delta times its strength (adapter files are read once and cached). An
        empty list returns to the plain base. On an error (bad file, wrong base) nothing changes.
        """
        specs = _adapter_list(adapters, force)
        files = [self._files.read(path) for path, _ in specs]
        self._names = self._host.replace_adapters(
            [(file, strength) for file, (_, strength) in zip(files, specs, strict=True)], force=force)
        self.adapters = specs

    def set_strength(self, position: int, strength: float, force: bool = False) -> None:
        """Change the strength of the ``position``-th active adapter (re-merged in place).

        The strength must be finite and within the documented range unless ``force`` (see
        :func:`rvc_lora.merge.check_strength`).
        """
        from rvc_lora.merge import check_strength

        if not 0 <= position < len(self.adapters):
            raise RVCLoraError(f"no active adapter at position {position} ({len(self.adapters)} active)")
        strength = check_strength(strength, self.adapters[position][0], force)
        self._host.set_strength(self._names[position], strength)
        self.adapters[position] = (self.adapters[position][0], strength)

    def check_adapter(self, path: str | os.PathLike, force: bool = False) -> None:
        """Check an adapter file as :meth:`set_adapters` would (readable, base fingerprint, shapes) without
        applying it; raises RVCLoraError naming the file."""
        name = self._host.load_adapter(self._files.read(path), 0.0, "__check__", force=force)
        self._host.remove_adapter(name)

    def base_fingerprint(self, module_paths: Iterable[str]) -> str:
        """This model's base fingerprint over ``module_paths`` (what an adapter file stores)."""
        return self._host.fingerprint(module_paths)

    def adapter_cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the adapter file cache since load: a miss reads and decodes a file."""
        return self._files.hits, self._files.misses

    # -- pitch method -------------------------------------------------------------------------------
    def set_f0_method(self, method: str) -> None:
        """Extract pitch with ``method`` from now on (each method's extractor is built once, then kept)."""
        key = method.lower()
        if self.f0 and key not in self._extractors:
            from rvc_lora.features.pitch import get_pitch_extractor

            opts = {"filter_radius": 3} if key == "harvest" else {}
            try:
                extractor = get_pitch_extractor(method, device=str(self.device), rmvpe_path=self.rmvpe, **opts)
            except ValueError as exc:
                raise RVCLoraError(str(exc)) from None
            extractor.load()  # a bad weights file fails here, not once per input
            self._extractors[key] = extractor
        self._pitch = self._extractors.get(key)
        self.f0_method = method

    # -- index -----------------------------------------------------------------------------------
    def load_index(self, path: str | os.PathLike | None) -> None:
        """Use the faiss index at ``path`` for retrieval (None removes it); checks its width."""
        if path is None:
            self.index = None
            return
        from rvc_lora.data.index import load_index

        index = load_index(path)
        if index.dim != CONTENT_DIMS[self.version]:
            raise RVCLoraError(
                f"{path}: index holds {index.dim}-dim features but this is an RVC {self.version} model "
                f"({CONTENT_DIMS[self.version]}-dim); use the index built for this model"
            )
        self.index = index

    # -- conversion -------------------------------------------------------------------------------

    def _models(self) -> PipelineModels:
        return PipelineModels(self.synth, self.content, self._pitch, self.index, self.device, self.dtype,
                              self.constants)

    def pipeline_models(self) -> PipelineModels:
        """What the pipeline runs on now: synthesizer (with the active adapters), content encoder, pitch
        extractor, index, device (used by :class:`rvc_lora.infer.streaming.StreamingConverter`)."""
        return self._models()

    def convert(self, audio: np.ndarray, sr: int, options: ConvertOptions | None = None,
                **overrides) -> tuple[np.ndarray, int]:
        """Convert mono audio [N] at ``sr`` Hz -> (audio [M] float32, output rate).

        ``options`` (or keyword overrides such as ``pitch=12``, ``seed=0``) as in :class:`ConvertOptions`.
        Raises RVCLoraError if the result holds NaN or infinite samples (they are never returned).
        """
        from rvc_lora.audio.resample import resample

        opts = options if options is not None else ConvertOptions()
        if overrides:
            opts = ConvertOptions(**{**opts.__dict__, **overrides})
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=1, dtype=np.float32)
        if audio.ndim != 1:
            raise RVCLoraError(f"expected mono audio [samples] or [samples, channels], got shape {audio.shape}")
        audio16k = resample(audio, int(sr), SAMPLE_RATE)
        with torch.inference_mode():
            out, out_sr = convert_audio(self._models(), audio16k, opts, self.times)
        n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        if n_bad:
            raise RVCLoraError(f"the conversion produced {n_bad} NaN or infinite samples, so nothing was written "
                               f"(is {self.model_path.name} or an adapter damaged? see `rvc-lora inspect`)")
        return out, out_sr

    def convert_file(self, source: str | os.PathLike, target: str | os.PathLike,
                     options: ConvertOptions | None = None, fmt: str | None = None, **overrides) -> Path:
        """Convert an audio file and write the result atomically (wav or flac, by ``fmt`` or suffix).

        Errors name the input file.
        """
        from rvc_lora.audio.io import load_audio

        target = Path(target)
        fmt = (fmt or target.suffix.lstrip(".") or "wav").lower()
        if fmt not in OUTPUT_FORMATS:
            raise RVCLoraError(f"{target}: unsupported output format {fmt!r} (use wav or flac)")
        audio, sr = load_audio(source)
        try:
            out, out_sr = self.convert(audio, sr, options, **overrides)
        except RVCLoraError as exc:
            raise RVCLoraError(f"{source}: {exc}") from None
        write_audio(target, out, out_sr, fmt)
        return target


def write_audio(path: str | os.PathLike, audio: np.ndarray, sr: int, fmt: str = "wav") -> Path:
    """Write mono float audio [M] as 32-bit float WAV or 24-bit FLAC, atomically."""
    import soundfile as sf

    from rvc_lora.utils import atomic_write

    container, subtype = OUTPUT_FORMATS[fmt]
    path = Path(path)
    with atomic_write(path) as tmp:
        sf.write(str(tmp), np.asarray(audio, dtype=np.float32), int(sr), subtype=subtype, format=container)
    return path
