"""Content features for RVC: HuBERT (or ContentVec) hidden states at 50 frames/s from 16 kHz audio.

RVC's recipe (reference §5): v1 models take the output of transformer layer 9 passed through
``final_proj`` (768 -> 256); v2 models take the output of layer 12 as is (768). Layer N means the
hidden state after the N-th transformer block (fairseq's ``output_layer=N``, Transformers'
``hidden_states[N]``); no final layer norm is applied. The waveform is layer-normalised first only when
the checkpoint says so (fairseq ``task.normalize`` / Transformers ``do_normalize``).

The network is torchaudio's ``Wav2Vec2Model``; fairseq and Hugging Face checkpoints are renamed onto it
(see :mod:`rvc_lora.features.content_layouts`) and loaded without executing pickled code
(:func:`rvc_lora.safe_load.load_fairseq_file`). :func:`load_content_model` is what ``prepare`` and
``convert`` call: it also accepts any TorchScript content encoder
(:mod:`rvc_lora.features.content_torchscript`), chosen by ``kind`` or detected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvc_lora.features.content_kinds import CONTENT_KINDS
from rvc_lora.features.content_layouts import (
    Hints,
    HubertSpec,
    build_torchaudio_model,
    detect_layout,
    fairseq_hints,
    hf_hints,
    infer_spec,
    to_torchaudio_keys,
)
from rvc_lora.features.content_torchscript import (
    TorchScriptContentEncoder,
    is_torchscript_archive,
    load_torchscript_encoder,
)
from rvc_lora.safe_load import load_fairseq_file
from rvc_lora.utils import RVCLoraError, resolve_device

OUTPUT_LAYER = {"v1": 9, "v2": 12}
SAMPLE_RATE = 16000
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ContentModelMissing(RVCLoraError):
    """No content encoder checkpoint is configured, or the configured file does not exist."""


def conv_output_frames(num_samples: int, conv_layers: list[tuple[int, int, int]]) -> int:
    """Frames produced by the conv front end for ``num_samples`` samples (HuBERT: ~num_samples / 320)."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = max(0, (length - kernel) // stride + 1)
    return length


class ContentEncoder(nn.Module):
    """HuBERT-style content encoder with RVC's v1/v2 read-outs.

    Attributes: ``model`` (torchaudio Wav2Vec2Model), ``final_proj`` (Linear embed->256, or None),
    ``spec`` (:class:`HubertSpec`), ``normalize`` (layer-normalise the waveform), ``source`` (file name).
    """

    def __init__(self, spec: HubertSpec, source: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.source = source
        self.normalize = spec.normalize
        self.model = build_torchaudio_model(spec)
        self.final_proj = (
            nn.Linear(spec.embed_dim, spec.final_proj_dim) if spec.final_proj_dim is not None else None
        )
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def feature_dim(self, version: str) -> int:
        """Width of :meth:`encode`'s output for ``version`` (256 / 768 for HuBERT-base)."""
        self._check_version(version)
        if version == "v1":
            if self.final_proj is None:
                raise RVCLoraError(f"{self.source or 'content model'}: has no final_proj, so no v1 features")
            return self.final_proj.out_features
        return self.spec.embed_dim

    def num_frames(self, num_samples: int) -> int:
        """Number of feature frames :meth:`encode` returns for ``num_samples`` input samples."""
        return conv_output_frames(num_samples, self.spec.conv_layers)

    def _check_version(self, version: str) -> None:
        if version not in OUTPUT_LAYER:
            raise RVCLoraError(f"unknown RVC version {version!r} (expected 'v1' or 'v2')")
        if self.spec.num_layers < OUTPUT_LAYER[version]:
            raise RVCLoraError(
                f"{self.source or 'content model'}: has {self.spec.num_layers} transformer layers; "
                f"{version} features need layer {OUTPUT_LAYER[version]}"
            )

    def load_torchaudio_state(self, state: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load a torchaudio-named state dict (+ ``final_proj.*``), strictly."""
        model_state = {k: v for k, v in state.items() if not k.startswith("final_proj.")}
        missing, unexpected = self.model.load_state_dict(model_state, strict=False)
        if missing or unexpected:
            raise RVCLoraError(f"{source}: HuBERT weights do not fit (missing {missing[:4]}, "
                               f"unexpected {unexpected[:4]})")
        if self.final_proj is not None:
            self.final_proj.load_state_dict(
                {"weight": state["final_proj.weight"], "bias": state["final_proj.bias"]}
            )

    @torch.inference_mode()
    def hidden_state(self, audio16k: Tensor, layer: int) -> Tensor:
        """Output of transformer layer ``layer`` (1-based): [B, T] float audio -> [B, frames, embed]."""
        if audio16k.ndim != 2:
            raise RVCLoraError(f"content encoder expects audio of shape [batch, samples], got "
                               f"{list(audio16k.shape)}")
        if self.num_frames(audio16k.shape[-1]) < 1:
            raise RVCLoraError(f"audio too short for the content encoder ({audio16k.shape[-1]} samples at "
                               "16 kHz; need at least 400)")
        x = audio16k.to(device=self.device, dtype=torch.float32)
        if self.normalize:
            x = F.layer_norm(x, x.shape[-1:])
        x = x.to(self.dtype)
        outputs, _ = self.model.extract_features(x, num_layers=layer)
        return outputs[-1]

    @torch.inference_mode()
    def encode(self, audio16k: Tensor, version: str) -> Tensor:
        """RVC content features: [B, T] 16 kHz audio -> [B, frames, feature_dim(version)] float32.

        ``frames`` = :meth:`num_frames` (T // 320 - 1 or so for HuBERT). Output stays on the model's device.
        """
        self._check_version(version)
        hidden = self.hidden_state(audio16k, OUTPUT_LAYER[version])
        if version == "v1":
            if self.final_proj is None:
                raise RVCLoraError(f"{self.source or 'content model'}: has no final_proj, so no v1 features")
            hidden = self.final_proj(hidden)
        return hidden.float()

    def forward(self, audio16k: Tensor, version: str = "v2") -> Tensor:
        return self.encode(audio16k, version)


# --------------------------------------------------------------------------------------------------
# loading


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RVCLoraError(f"{path}: unreadable JSON ({err})") from err
    return data if isinstance(data, dict) else None


def _load_tensor_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise RVCLoraError(f"{path}: unreadable safetensors file ({err})") from err
    return load_fairseq_file(path)


def _hf_weight_file(folder: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ContentModelMissing(
        f"{folder}: no {' or '.join(HF_WEIGHT_FILES)} in this folder. Download a content model with "
        "`rvc-lora assets download hubert`, or set content.path=... to a hubert_base.pt file."
    )


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], Hints, str]:
    """Return (torchaudio-named state, hints, layout) for a fairseq file, HF file or HF folder."""
    folder = path if path.is_dir() else path.parent
    weight_file = _hf_weight_file(path) if path.is_dir() else path
    loaded = _load_tensor_file(weight_file)
    if not isinstance(loaded, dict):
        raise RVCLoraError(f"{weight_file}: expected a dict checkpoint, got {type(loaded).__name__}")
    container = loaded
    state = loaded.get("model") if isinstance(loaded.get("model"), dict) else loaded
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    try:
        layout = detect_layout(state)
    except RVCLoraError as err:
        raise RVCLoraError(f"{weight_file}: {err}") from None
    if layout == "fairseq":
        hints = fairseq_hints(container)
    else:
        hints = hf_hints(_read_json(folder / "config.json"), _read_json(folder / "preprocessor_config.json"))
    return to_torchaudio_keys(state, layout, str(weight_file)), hints, layout


def load_content_encoder(
    path: str | os.PathLike | None, device: str = "auto", half: bool | str | None = None
) -> ContentEncoder:
    """Load a HuBERT / ContentVec checkpoint as a :class:`ContentEncoder` in eval mode.

    ``path``: a fairseq checkpoint (RVC's ``hubert_base.pt``), a Hugging Face ``HubertModel`` folder
    (config.json + model.safetensors / pytorch_model.bin, optional preprocessor_config.json) or such a
    weight file. ``half``: fp16 weights; None or "auto" = fp16 on CUDA only.
    Raises ContentModelMissing if ``path`` is empty or does not exist, RVCLoraError for bad files.
    """
    if path is None or str(path) == "":
        raise ContentModelMissing(
            "no content encoder (HuBERT) is configured. Download one with `rvc-lora assets download hubert` "
            "or set content.path=/path/to/hubert_base.pt"
        )
    path = Path(path).expanduser()
    if not path.exists():
        raise ContentModelMissing(
            f"content encoder not found: {path}. Download one with `rvc-lora assets download hubert` "
            "or set content.path=... to an existing hubert_base.pt / Hugging Face HuBERT folder"
        )
    state, hints, _ = _read_checkpoint(path)
    spec = infer_spec(state, hints, str(path))
    encoder = ContentEncoder(spec, source=str(path))
    encoder.load_torchaudio_state(state, str(path))
    dev = resolve_device(device)
    encoder.to(device=dev, dtype=torch.float16 if _use_half(half, dev) else torch.float32)
    return encoder.eval()


def _use_half(half: bool | str | None, device: torch.device) -> bool:
    if half is None or half == "auto":
        return device.type == "cuda"
    if not isinstance(half, bool):
        raise RVCLoraError(f"content half must be true, false or 'auto', got {half!r}")
    return half


def load_content_model(
    path: str | os.PathLike | None, kind: str = "auto", device: str = "auto", half: bool | str | None = None
) -> ContentEncoder | TorchScriptContentEncoder:
    """The content model at ``path``, by ``kind``: ``hubert`` (:func:`load_content_encoder`), ``torchscript``
    (:func:`~rvc_lora.features.content_torchscript.load_torchscript_encoder`) or ``auto`` (a TorchScript
    archive is detected by its ``code/`` folder; anything else is read as HuBERT).

    Both results offer ``encode(audio [B, N], version) -> [B, frames, dim]``, ``num_frames`` and
    ``feature_dim(version)``. Raises ContentModelMissing / RVCLoraError as the loaders do.
    """
    if kind not in CONTENT_KINDS:
        raise RVCLoraError(f"content.kind {kind!r} is unknown; choose one of {', '.join(CONTENT_KINDS)}")
    exists = path is not None and str(path) != "" and Path(path).expanduser().exists()
    if exists and (kind == "torchscript" or (kind == "auto" and is_torchscript_archive(Path(path).expanduser()))):
        dev = resolve_device(device)
        return load_torchscript_encoder(Path(path).expanduser(), dev, _use_half(half, dev))
    return load_content_encoder(path, device=device, half=half)
