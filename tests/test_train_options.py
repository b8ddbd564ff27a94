"""The optional adapter places: lora.flow, lora.enc_p, lora.train_speaker_embedding train, merge, reload, convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_setup, tiny_config

from rvc_lora.checkpoint import load_rvc
from rvc_lora.demo.random_hubert import make_random_checkpoint
from rvc_lora.infer import Converter, PipelineConstants
from rvc_lora.lora import read_adapter
from rvc_lora.train import run_training

FAST = PipelineConstants(x_pad=0.2, x_query=0.3, x_center=1.0, x_max=10.0)
SR = 16000

# option -> (adapter keys that must be present, state-dict prefix that the merge must change)
OPTIONS = {
    "lora.flow": (("flow.flows.0.enc.in_layers.0.lora_down.weight", "flow.flows.6.post.lora_up.weight"), "flow."),
    "lora.enc_p": (("enc_p.encoder.attn_layers.0.conv_q.lora_down.weight",
                    "enc_p.encoder.attn_layers.1.conv_o.lora_up.weight",
                    "enc_p.encoder.ffn_layers.1.conv_2.lora_up.weight"), "enc_p.encoder."),
    "lora.train_speaker_embedding": (("emb_g.diff",), "emb_g."),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> Path:
    return make_setup(tmp_path_factory.mktemp("options"), n_pieces=3)


@pytest.fixture(scope="module")
def hubert(tmp_path_factory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert.pt", size="tiny", embed_dim=768)


def _tone(seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.1 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_optional_adapter_trains_merges_reloads_and_converts(option, setup_dir, hubert, tmp_path):
    keys, changed_prefix = OPTIONS[option]
    cfg = tiny_config(setup_dir, **{option: True, "trainer.max_steps": 2, "trainer.batch_size": 1,
                                    "trainer.validation_interval": 100, "trainer.discriminator": "train",
                                    "lora.rank": 2, "lora.alpha": 4, "optim.lr": 0.02})  # visible in 2 steps
    cfg.run_dir = str(tmp_path / "run")
    result = run_training(cfg)
    assert result.steps == 2 and result.skipped_steps == 0

    adapter = read_adapter(result.adapter_path)
    assert set(keys) <= set(adapter.tensors)
    trained = [k for k in adapter.tensors if k.startswith(changed_prefix) and not k.endswith(".alpha")]
    assert trained and all(torch.isfinite(adapter.tensors[k]).all() for k in trained)

    # The merged file is a standard RVC small model: exactly the base's keys, the option's part changed.
    base = load_rvc(setup_dir / "G.pth").model
    merged = load_rvc(result.merged_path)
    assert merged.format == "small"
    base_state = {k: v for k, v in base.state_dict().items() if not k.startswith("enc_q.")}
    merged_state = merged.model.state_dict()
    assert list(merged_state) == list(base_state)
    moved = {k for k, v in merged_state.items() if not torch.allclose(v.float(), base_state[k].float(), atol=1e-3)}
    assert any(k.startswith(changed_prefix) for k in moved)

    # It converts, and like the base with the adapter applied live.
    audio = _tone()
    from_merged, sr = Converter(result.merged_path, hubert, device="cpu", f0_method="pm",
                                constants=FAST).convert(audio, SR, seed=0)
    on_base = Converter(setup_dir / "G.pth", hubert, device="cpu", f0_method="pm", constants=FAST)
    plain, _ = on_base.convert(audio, SR, seed=0)
    on_base.set_adapters([result.adapter_path])
    live, _ = on_base.convert(audio, SR, seed=0)
    assert sr == 40000 and np.isfinite(from_merged).all() and from_merged.shape == live.shape
    peak = float(np.abs(live).max())
    assert peak > 0
    np.testing.assert_allclose(from_merged, live, atol=2e-2 * peak)  # fp16 rounding of the merged weights
    assert np.abs(live - plain).max() > np.abs(from_merged - live).max()  # the adapter changes the output
