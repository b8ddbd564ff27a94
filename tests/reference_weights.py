"""Weights defined by a formula: the HuBERT-base and RMVPE weights of the ``rvc_convert`` reference data.

The reference data (``tests/fixtures/rvc_convert``, README "Large weights: the formula") was computed by
the original RVC code with weights that are too large to store (95M and 90M values). Each tensor is
instead defined by its key name, a seed and a uniform range, through the SplitMix64 generator:

    state0 = seed * 2**32 + crc32(name)
    z_j = state0 + j * 0x9E3779B97F4A7C15                     (j = 1..n, uint64 arithmetic mod 2**64)
    z_j = (z_j ^ (z_j >> 30)) * 0xBF58476D1CE4E5B9
    z_j = (z_j ^ (z_j >> 27)) * 0x94D049BB133111EB
    z_j =  z_j ^ (z_j >> 31)
    u_j = (z_j >> 11) * 2**-53;  v_j = center + halfwidth * (2 u_j - 1)   (float64)

element j - 1 (C order) is v_j rounded to float32 (then to float16 for "float16" entries); int64 entries
are 0. Integer arithmetic only, so every machine produces the same bytes; the layout files carry SHA-256
digests to prove it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 21  # values per vectorised block (bounds the uint64 temporaries to ~16 MB each)


def state0(name: str, seed: int) -> int:
    """The generator's starting state for the tensor called ``name``: seed * 2**32 + CRC-32(name)."""
    return (seed << 32) + zlib.crc32(name.encode("utf-8"))


def splitmix64(start: int, first: int, count: int) -> np.ndarray:
    """Outputs ``first .. first + count - 1`` of SplitMix64 started at ``start``: uint64 [count]."""
    z = np.arange(first, first + count, dtype=np.uint64)
    z *= _GOLDEN
    z += np.uint64(start)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def entry_tensor(entry: dict, seed: int) -> np.ndarray:
    """One layout entry (name, shape, dtype, center, halfwidth) -> its array (float32 / float16 / int64)."""
    shape = tuple(entry["shape"])
    n = int(np.prod(shape, dtype=np.int64))
    if entry["dtype"] == "int64":
        return np.zeros(shape, dtype=np.int64)
    start = state0(entry["name"], seed)
    center, halfwidth = float(entry["center"]), float(entry["halfwidth"])
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        count = min(_CHUNK, n - lo)
        u = (splitmix64(start, lo + 1, count) >> np.uint64(11)).astype(np.float64)
        u *= 2.0 ** -53
        u *= 2.0
        u -= 1.0  # 2u - 1 is exact for a 53-bit u
        u *= halfwidth  # rounded product ...
        u += center  # ... then rounded sum, as the formula says
        out[lo:lo + count] = u  # float64 -> float32, round to nearest even
    out = out.reshape(shape)
    if entry["dtype"] == "float16":
        return out.astype(np.float16)
    if entry["dtype"] != "float32":
        raise ValueError(f"{entry['name']}: unknown dtype {entry['dtype']!r}")
    return out


class FormulaWeights:
    """All tensors of a layout file, in entry order, with their SHA-256 digests checked on the way.

    ``tensors``: name -> numpy array; ``sha256_all``: digest of the concatenated raw bytes;
    ``mismatches``: names whose ``sha256_16`` differs from the layout (empty when the generator is right).
    """

    def __init__(self, layout_path: str | Path):
        self.layout = json.loads(Path(layout_path).read_text(encoding="utf-8"))
        seed = int(self.layout["recipe_seed"])
        digest = hashlib.sha256()
        self.tensors: dict[str, np.ndarray] = {}
        self.mismatches: list[str] = []
        for entry in self.layout["entries"]:
            array = entry_tensor(entry, seed)  # C-contiguous (and 0-d where the layout says so)
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            digest.update(raw)
            if hashlib.sha256(raw).hexdigest()[:16] != entry["sha256_16"]:
                self.mismatches.append(entry["name"])
            self.tensors[entry["name"]] = array
        self.sha256_all = digest.hexdigest()

    def entries(self) -> Iterator[tuple[dict, np.ndarray]]:
        """(layout entry, array) pairs in layout order."""
        for entry in self.layout["entries"]:
            yield entry, self.tensors[entry["name"]]


# --------------------------------------------------------------------------------------------------
# the formula weights in the files RVC and Hugging Face users have

# fairseq's configuration of HuBERT-base, as pickled in RVC's hubert_base.pt (the parts the loader reads)
HUBERT_BASE_FAIRSEQ_CFG = {
    "_name": None,
    "model": {
        "_name": "hubert",
        "extractor_mode": "default",
        "encoder_layers": 12,
        "encoder_embed_dim": 768,
        "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12,
        "activation_fn": "gelu",
        "layer_norm_first": False,
        "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        "conv_bias": False,
        "conv_pos": 128,
        "conv_pos_groups": 16,
        "final_dim": 256,
    },
    "task": {"_name": "hubert_pretraining", "normalize": False, "sample_rate": 16000},
}


def write_hubert_fairseq(weights: FormulaWeights, path: Path) -> Path:
    """Save HuBERT formula weights like RVC's ``hubert_base.pt``: ``{"args", "cfg", "model"}``.

    ``model`` uses fairseq's key names and also holds ``mask_emb`` [768] and ``label_embs_concat``
    [504, 256] (pre-training only; zeros here, feature extraction never reads them).
    """
    import torch

    model = {entry["fairseq_name"]: torch.from_numpy(array) for entry, array in weights.entries()}
    model["mask_emb"] = torch.zeros(768)
    model["label_embs_concat"] = torch.zeros(504, 256)
    torch.save({"args": None, "cfg": HUBERT_BASE_FAIRSEQ_CFG, "model": model}, path)
    return path


def write_hubert_hf(weights: FormulaWeights, folder: Path) -> Path:
    """Save HuBERT formula weights as a Hugging Face folder: ``config.json`` (the layout's ``hf_config``)
    and ``model.safetensors`` under ``transformers.HubertModel``'s key names plus ``final_proj.*``."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {entry["name"]: torch.from_numpy(array) for entry, array in weights.entries()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(weights.layout["hf_config"], indent=2), encoding="utf-8")
    return folder


def write_rmvpe(weights: FormulaWeights, path: Path) -> Path:
    """Save RMVPE formula weights like RVC's ``rmvpe.pt``: a plain state dict (fp16 floats, int64 counters)."""
    import torch

    torch.save({entry["name"]: torch.from_numpy(array) for entry, array in weights.entries()}, path)
    return path
