"""RMVPE and HuBERT content features compute what RVC computes (``rvc_convert`` reference data), and a
Hugging Face HuBERT folder written by ``transformers`` itself gives transformers' hidden states.

HuBERT-base and RMVPE weights come from the reference's formula (tests/reference_weights.py, checked by
SHA-256 in test_reference_weights.py) and are loaded through the project's own loaders from files in
the layouts users have: RVC's fairseq ``hubert_base.pt``, a Hugging Face folder, RVC's fp16 ``rmvpe.pt``.

Measured on this machine (2-core AMD EPYC, torch 2.14.1): content features max |diff| / max |ref|
1.27e-6 (v1) and 1.30e-6 (v2), identical for both layouts; RMVPE salience max |diff| 1.8e-7 over all 263
frames, f0 max 0.0014 cent with identical voicing; transformers' HubertModel vs the project's loader on
its save_pretrained folder: 0.0 (v1 and v2; the same float32 operations in the same order here, another
attention kernel elsewhere may round differently, hence the shared 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rvc_lora.features.content import load_content_encoder
from rvc_lora.features.rmvpe import load_rmvpe
from tests.conftest import RVC_CONVERT_DIR

CONTENT_SLICE = slice(20000, 60013)  # the reference's 40013-sample slice of input_main16k -> 124 frames
CONTENT_REL_TOL = 1e-5  # measured 1.3e-6
SALIENCE_TOL = 1e-3  # measured 1.8e-7 (another padding rule than RVC's: up to 0.108)
F0_CENTS_TOL = 1.0  # measured 0.0014 cent


def max_rel(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the reference README's relative error)."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def content_input() -> torch.Tensor:
    return torch.from_numpy(np.load(RVC_CONVERT_DIR / "input_main16k.npy")[CONTENT_SLICE])[None]


@pytest.mark.parametrize("layout", ["fairseq", "hf"])
def test_content_features_match_rvc(formula_hubert_base, content_input, layout):
    encoder = load_content_encoder(formula_hubert_base.paths[layout], device="cpu")
    for version, dim in (("v1", 256), ("v2", 768)):
        want = np.load(RVC_CONVERT_DIR / f"content_{version}.npy")
        got = encoder.encode(content_input, version)[0].numpy()
        assert got.shape == want.shape == (124, dim)
        assert max_rel(got, want) <= CONTENT_REL_TOL, version


def test_rmvpe_salience_and_f0_match_rvc(formula_rmvpe):
    audio = np.load(RVC_CONVERT_DIR / "rmvpe_input16k.npy")
    want_salience = np.load(RVC_CONVERT_DIR / "rmvpe_salience.npy")
    want_f0 = np.load(RVC_CONVERT_DIR / "rmvpe_f0.npy")
    rmvpe = load_rmvpe(formula_rmvpe.paths["rmvpe"], device="cpu")
    salience = rmvpe.salience(audio)
    assert salience.shape == want_salience.shape == (263, 360)
    # every frame, including the last ones next to RVC's zero padding to 288 frames
    assert np.abs(salience - want_salience).max(axis=1).max() <= SALIENCE_TOL
    f0 = rmvpe(audio)
    assert f0.shape == want_f0.shape
    np.testing.assert_array_equal(f0 > 0, want_f0 > 0)
    voiced = (f0 > 0) & (want_f0 > 0)
    assert voiced.sum() > 200
    assert np.abs(1200 * np.log2(f0[voiced] / want_f0[voiced])).max() <= F0_CENTS_TOL


def test_transformers_hubert_folder_gives_transformers_hidden_states(tmp_path):
    """A HubertModel (+ final_proj, the layout of the Hugging Face ContentVec/HuBERT ports RVC users have)
    saved by transformers' save_pretrained: v2 = hidden_states[12], v1 = final_proj(hidden_states[9])."""
    from transformers import HubertConfig, HubertModel

    class HubertModelWithFinalProj(HubertModel):
        def __init__(self, config):
            super().__init__(config)
            self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

    config = HubertConfig(
        hidden_size=64, num_hidden_layers=12, num_attention_heads=2, intermediate_size=96,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        classifier_proj_size=256, do_stable_layer_norm=False, feat_extract_norm="group",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    torch.manual_seed(0)
    model = HubertModelWithFinalProj(config).eval()
    with torch.no_grad():  # move every parameter off its init value (norm gains of 1, zero biases)
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path / "hubert_hf"
    model.save_pretrained(folder)

    audio = torch.from_numpy(np.load(RVC_CONVERT_DIR / "input_main16k.npy")[CONTENT_SLICE])[None]
    with torch.no_grad():
        hidden = model(audio, output_hidden_states=True).hidden_states
        want = {"v2": hidden[12][0].numpy(), "v1": model.final_proj(hidden[9])[0].numpy()}
    encoder = load_content_encoder(folder, device="cpu")
    for version, dim in (("v1", 256), ("v2", 64)):
        got = encoder.encode(audio, version)[0].numpy()
        assert got.shape == want[version].shape == (124, dim)
        assert max_rel(got, want[version]) <= CONTENT_REL_TOL, version
