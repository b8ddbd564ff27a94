"""Numerical parity of rvc_lora.models with the original RVC classes (reference vectors).

The fixture (tests/fixtures/rvc_tiny_v2_f0, a copy of the project's shared/fixtures) holds a tiny
RVC v2 f0 small model and outputs produced by RVC's own code; a user relies on our synthesizer
computing the same audio from the same weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rvc_lora.models import Synthesizer
from tests.conftest import FIXTURE_DIR as FIXTURE

# Tolerances: the fixture was produced with torch 2.13 on another CPU; float32 kernel differences
# give ~3e-6 absolute on the encoder statistics (values up to ~2; a float64 run of the same math is
# itself 1.5e-6 away from the fixture), far less on flow and decoder.
ENC = {"atol": 1e-5, "rtol": 1e-5}
FLOW = {"atol": 2e-6, "rtol": 1e-6}
WAVE = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def ckpt() -> dict:
    return torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE / "expected.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(ckpt: dict) -> Synthesizer:
    net = Synthesizer(ckpt["config"], ckpt["version"], bool(ckpt["f0"]))
    del net.enc_q  # small models carry no posterior encoder
    net.load_state_dict(ckpt["weight"], strict=True)
    return net.float().eval()


def _close(got: torch.Tensor, want: torch.Tensor, tol: dict) -> None:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, **tol)


def test_state_dict_keys_and_order_match_rvc_small_model(ckpt: dict) -> None:
    net = Synthesizer(ckpt["config"], ckpt["version"], bool(ckpt["f0"]))
    keys = [k for k in net.state_dict() if "enc_q" not in k]
    assert keys == list(ckpt["weight"])
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if "enc_q" not in k}
    assert shapes == {k: tuple(v.shape) for k, v in ckpt["weight"].items()}


def test_full_model_rejects_small_model_strictly_only_for_enc_q(ckpt: dict) -> None:
    net = Synthesizer(ckpt["config"], ckpt["version"], bool(ckpt["f0"]))
    result = net.load_state_dict(ckpt["weight"], strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("enc_q.") for k in result.missing_keys)


def test_attributes_from_config(model: Synthesizer) -> None:
    assert (model.version, model.f0, model.sample_rate, model.hop_length) == ("v2", True, 40000, 400)
    assert model.segment_frames == 32


def test_text_encoder(model: Synthesizer, expected: dict) -> None:
    with torch.no_grad():
        m, logs, mask = model.enc_p(expected["phone"], expected["pitch"], expected["phone_lengths"])
    _close(mask, expected["enc_p_mask"], {"atol": 0, "rtol": 0})
    _close(m, expected["enc_p_m"], ENC)
    _close(logs, expected["enc_p_logs"], ENC)
    z_in = (m + torch.exp(logs) * expected["eps_flow"] * 0.66666) * mask
    _close(z_in, expected["flow_reverse_in"], ENC)


def test_speaker_embedding(model: Synthesizer, expected: dict) -> None:
    _close(model.emb_g(expected["sid"]).unsqueeze(-1), expected["g"], {"atol": 0, "rtol": 0})


def test_flow_forward_and_reverse(model: Synthesizer, expected: dict) -> None:
    mask, g = expected["enc_p_mask"], expected["g"]
    with torch.no_grad():
        rev = model.flow(expected["flow_reverse_in"], mask, g=g, reverse=True)
        fwd = model.flow(expected["z"], mask, g=g)
        back = model.flow(fwd, mask, g=g, reverse=True)
    _close(rev, expected["flow_reverse_out"], FLOW)
    _close(fwd, expected["flow_forward_out"], FLOW)
    _close(back, expected["z"] * mask, FLOW)  # the flow is invertible


def test_harmonic_source_without_noise(model: Synthesizer, expected: dict) -> None:
    zeros = torch.zeros(1, 50 * 400, 1)
    with torch.no_grad():
        source = model.dec.m_source(expected["nsff0"], model.hop_length, noise=zeros)
    _close(source, expected["source_nonoise"], WAVE)


def test_decoder_stages_without_noise(model: Synthesizer, expected: dict) -> None:
    captured: dict[str, torch.Tensor] = {}
    dec = model.dec
    hooks = [dec.conv_pre.register_forward_hook(lambda m, i, o: captured.__setitem__("dec_conv_pre_out", o))]
    for i in range(len(dec.ups)):
        hooks.append(dec.ups[i].register_forward_hook(
            lambda m, inp, o, i=i: captured.__setitem__(f"dec_ups_{i}_out", o)))
        hooks.append(dec.noise_convs[i].register_forward_hook(
            lambda m, inp, o, i=i: captured.__setitem__(f"dec_noise_convs_{i}_out", o)))
    try:
        with torch.no_grad():
            out = dec(expected["z"], expected["nsff0"], g=expected["g"], noise=torch.zeros(1, 20000, 1))
    finally:
        for h in hooks:
            h.remove()
    _close(out, expected["dec_out_nonoise"], WAVE)
    stage_keys = [k for k in expected if k.startswith(("dec_conv_pre", "dec_ups_", "dec_noise_convs_"))]
    assert len(stage_keys) == 9
    for key in stage_keys:
        _close(captured[key], expected[key], WAVE)


def test_decoder_with_injected_seeded_noise(model: Synthesizer, expected: dict) -> None:
    with torch.no_grad():
        out = model.dec(expected["z"], expected["nsff0"], g=expected["g"], noise=expected["dec_noise_seeded_1234"])
    _close(out, expected["dec_out_seeded_1234"], WAVE)


def test_decoder_rng_order_matches_rvc(model: Synthesizer, expected: dict) -> None:
    """With the same seed our decoder draws the same noise as RVC (rand for the phase, then randn)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(1234)
        with torch.no_grad():
            out = model.dec(expected["z"], expected["nsff0"], g=expected["g"])
    finally:
        torch.random.set_rng_state(state)
    _close(out, expected["dec_out_seeded_1234"], WAVE)


def test_infer_equals_manual_pipeline(model: Synthesizer, expected: dict) -> None:
    """infer() = randn for z_p, flow reverse, decoder; checked against the fixture stages."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(7)
        eps = torch.randn(1, 16, 50)
        dec_seed_state = torch.random.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            audio, mask, (z, z_p, m_p, logs_p) = model.infer(
                expected["phone"], expected["phone_lengths"], expected["pitch"], expected["nsff0"], expected["sid"]
            )
        torch.random.set_rng_state(dec_seed_state)
        with torch.no_grad():
            z_ref = model.flow((m_p + torch.exp(logs_p) * eps * 0.66666) * mask, mask, g=expected["g"], reverse=True)
            audio_ref = model.dec(z_ref * mask, expected["nsff0"], g=expected["g"])
    finally:
        torch.random.set_rng_state(state)
    assert audio.shape == (1, 1, 20000)
    _close(m_p, expected["enc_p_m"], ENC)
    _close(z, z_ref, FLOW)
    _close(audio, audio_ref, WAVE)


def test_half_precision_weights_round_trip(ckpt: dict) -> None:
    """Saving our state dict in fp16 gives back RVC's stored tensors bit-exactly."""
    net = Synthesizer(ckpt["config"], ckpt["version"], bool(ckpt["f0"]))
    del net.enc_q
    net.load_state_dict(copy.deepcopy(ckpt["weight"]))
    ours = {k: v.half() for k, v in net.state_dict().items()}
    for key, value in ckpt["weight"].items():
        assert torch.equal(ours[key], value), key
