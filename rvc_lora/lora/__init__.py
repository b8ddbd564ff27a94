"""Generic adapters for Conv1d / ConvTranspose1d / Linear (and full deltas of Embeddings): algorithms
(LoRA, LoHa, LoKr, DoRA, full delta), wrapper layers, injection, adapter files, extraction.

Knows nothing about RVC; imports only torch, safetensors and ``rvc_lora.utils``.
"""

from rvc_lora.models.weight_norm import fold_all_weight_norm, fold_weight_norm, split_weight_norm, weight_norm_effective

from .adapter_file import AdapterFile, check_fingerprint, fingerprint_tensors, read_adapter, save_adapter
from .algorithms import ALGORITHMS, AdapterModule
from .config import LoRAConfig
from .extract import ExtractedLayer, extract_lowrank, extracted_tensors
from .inject import (
    LoRATargetError,
    find_targets,
    freeze_non_lora,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    parameter_summary,
    set_adapter_strength,
    set_adapters_enabled,
    set_forward_mode,
    unmerge_lora,
)
from .layers import LoRAConv1d, LoRAConvTranspose1d, LoRAEmbedding, LoRALayer, LoRALinear

__all__ = [
    "ALGORITHMS", "AdapterFile", "AdapterModule", "ExtractedLayer", "LoRAConfig", "LoRAConv1d",
    "LoRAConvTranspose1d", "LoRAEmbedding", "LoRALayer", "LoRALinear", "LoRATargetError", "check_fingerprint",
    "extract_lowrank", "extracted_tensors", "find_targets", "fingerprint_tensors", "fold_all_weight_norm",
    "fold_weight_norm", "freeze_non_lora", "inject_lora", "load_lora_state_dict", "lora_layers",
    "lora_parameters", "lora_state_dict", "merge_and_unload", "merge_lora", "parameter_summary", "read_adapter",
    "save_adapter", "set_adapter_strength", "set_adapters_enabled", "set_forward_mode", "split_weight_norm",
    "unmerge_lora", "weight_norm_effective",
]
