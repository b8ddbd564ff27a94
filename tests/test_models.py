"""Structure, shapes and behaviour of rvc_lora.models (synthesizers, decoders, discriminators, mel)."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from rvc_lora.models import (
    SHIPPED_CONFIGS,
    GeneratorNSF,
    MelSettings,
    MultiPeriodDiscriminator,
    Synthesizer,
    build_discriminator,
    build_synthesizer,
    mel_settings,
    mel_spectrogram,
    shipped_config,
    spec_to_mel,
    spectrogram,
    training_config,
)
from rvc_lora.models.configs import tiny_config

# (version, sr, f0) -> (keys, params M, keys without enc_q, params M without enc_q), from RVC itself
EXPECTED_SIZES = {
    ("v1", 32000, True): (619, 36.29, 516, 27.47),
    ("v1", 32000, False): (606, 36.23, 503, 27.40),
    ("v1", 40000, True): (560, 36.36, 457, 27.44),
    ("v1", 40000, False): (549, 36.29, 446, 27.37),
    ("v1", 48000, True): (619, 36.40, 516, 27.48),
    ("v1", 48000, False): (606, 36.32, 503, 27.40),
    ("v2", 32000, True): (560, 36.88, 457, 28.06),
    ("v2", 32000, False): (549, 36.81, 446, 27.99),
    ("v2", 40000, True): (560, 36.46, 457, 27.54),
    ("v2", 40000, False): (549, 36.39, 446, 27.47),
    ("v2", 48000, True): (560, 37.64, 457, 28.72),
    ("v2", 48000, False): (549, 37.57, 446, 28.65),
}

TINY = tiny_config()  # the shape of the shared fixture: fast on CPU


def _meta_state(version: str, sr: int, f0: bool) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_synthesizer(version, sr, f0).state_dict()


def _millions(tensors) -> float:
    return round(sum(t.numel() for t in tensors) / 1e6, 2)


@pytest.mark.parametrize(("version", "sr", "f0"), list(EXPECTED_SIZES))
def test_full_size_variants_match_rvc_key_and_parameter_counts(version: str, sr: int, f0: bool) -> None:
    state = _meta_state(version, sr, f0)
    small = {k: v for k, v in state.items() if "enc_q" not in k}
    keys, params, small_keys, small_params = EXPECTED_SIZES[(version, sr, f0)]
    assert len(state) == keys
    assert _millions(state.values()) == pytest.approx(params, abs=0.006)
    assert len(small) == small_keys
    assert _millions(small.values()) == pytest.approx(small_params, abs=0.006)
    assert not any(k.endswith(".weight") and k.replace(".weight", ".weight_g") in state for k in state)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_key_order_puts_enc_p_first_for_v1_and_last_for_v2(version: str) -> None:
    keys = list(_meta_state(version, 40000, True))
    tops = list(dict.fromkeys(k.split(".")[0] for k in keys))
    v1_order = ["enc_p", "dec", "enc_q", "flow", "emb_g"]
    expected = v1_order if version == "v1" else v1_order[1:] + ["enc_p"]
    assert tops == expected
    assert keys[-1] == ("emb_g.weight" if version == "v1" else "enc_p.proj.bias")


def test_exact_shapes_of_key_tensors() -> None:
    v2 = _meta_state("v2", 48000, True)
    assert v2["dec.ups.0.weight_v"].shape == (512, 256, 24)
    assert v2["dec.ups.0.weight_g"].shape == (512, 1, 1)  # dim 0 of a transposed conv = in-channels
    assert v2["dec.noise_convs.0.weight"].shape == (256, 1, 80)
    assert v2["enc_p.emb_phone.weight"].shape == (192, 768)
    assert v2["enc_p.emb_pitch.weight"].shape == (256, 192)
    assert v2["enc_p.encoder.attn_layers.0.emb_rel_k"].shape == (1, 21, 96)
    assert v2["enc_p.encoder.norm_layers_1.0.gamma"].shape == (192,)
    assert v2["emb_g.weight"].shape == (109, 256)
    assert v2["dec.cond.weight"].shape == (512, 256, 1)
    assert "dec.conv_post.bias" not in v2 and v2["dec.conv_post.weight"].shape == (1, 32, 7)
    v1 = _meta_state("v1", 32000, True)
    assert v1["enc_p.emb_phone.weight"].shape == (192, 256)
    assert v1["dec.noise_convs.0.weight"].shape == (256, 1, 64)
    assert v1["dec.noise_convs.4.weight"].shape == (16, 1, 1)
    assert v1["dec.resblocks.14.convs1.2.weight_v"].shape == (16, 16, 11)
    nof0 = _meta_state("v1", 40000, False)
    assert "enc_p.emb_pitch.weight" not in nof0 and not any("m_source" in k or "noise_convs" in k for k in nof0)


def test_weight_norm_only_where_rvc_has_it() -> None:
    state = _meta_state("v2", 40000, True)
    g_keys = {k[: -len(".weight_g")] for k in state if k.endswith(".weight_g")}
    for plain in ("dec.conv_pre", "dec.cond", "dec.noise_convs.0", "enc_p.proj", "flow.flows.0.pre",
                  "flow.flows.0.post", "enc_q.pre", "enc_q.proj"):
        assert plain not in g_keys and f"{plain}.weight" in state
    for normed in ("dec.ups.3", "dec.resblocks.11.convs2.2", "flow.flows.6.enc.cond_layer",
                   "enc_q.enc.in_layers.15", "enc_q.enc.res_skip_layers.15"):
        assert normed in g_keys
    assert [k for k in state if k.startswith("dec.ups.0.")] == ["dec.ups.0.bias", "dec.ups.0.weight_g",
                                                                "dec.ups.0.weight_v"]


@pytest.mark.parametrize(("version", "keys", "params"), [("v1", 129, 54.97), ("v2", 165, 71.41)])
def test_discriminator_sizes(version: str, keys: int, params: float) -> None:
    with torch.device("meta"):
        state = build_discriminator(version).state_dict()
    assert len(state) == keys
    assert _millions(state.values()) == pytest.approx(params, abs=0.006)
    assert "discriminators.0.convs.1.weight_g" in state and "discriminators.1.conv_post.weight_v" in state


def test_discriminator_forward_outputs() -> None:
    torch.manual_seed(0)
    disc = MultiPeriodDiscriminator((2, 3))
    y, y_hat = torch.randn(2, 1, 1001), torch.randn(2, 1, 1001)  # 1001: reflect-padded per period
    real, fake, fmap_r, fmap_f = disc(y, y_hat)
    assert len(real) == len(fake) == len(fmap_r) == len(fmap_f) == 3
    assert [len(f) for f in fmap_r] == [7, 6, 6]  # scale: 6 convs + post; period: 5 convs + post
    assert all(o.dim() == 2 and o.shape[0] == 2 for o in real + fake)
    assert fmap_r[1][0].shape[-1] == 2 and fmap_r[2][0].shape[-1] == 3  # folded by the period
    assert not torch.equal(real[1], fake[1])


def test_shipped_configs_and_v2_40k_reuses_v1() -> None:
    assert len(SHIPPED_CONFIGS) == 6
    assert shipped_config("v2", 40000) == shipped_config("v1", "40k")
    cfg = shipped_config("v2", "48k")
    assert len(cfg) == 18 and cfg[1] == 32 and cfg[-1] == 48000 and cfg[12] == [12, 10, 2, 2]
    cfg[12].append(99)  # copies: editing one must not leak into the table
    assert shipped_config("v2", 48000)[12] == [12, 10, 2, 2]
    assert training_config("v1", 48000)[1] == 24 and training_config("v2", 48000)[1] == 36
    with pytest.raises(ValueError, match="v3"):
        shipped_config("v3", 40000)


@pytest.mark.parametrize(
    ("version", "sr", "n_fft", "hop", "n_mels", "segment"),
    [("v1", 32000, 1024, 320, 80, 12800), ("v2", 40000, 2048, 400, 125, 12800),
     ("v1", 48000, 2048, 480, 128, 11520), ("v2", 48000, 2048, 480, 128, 17280)],
)
def test_mel_settings_per_rate(version: str, sr: int, n_fft: int, hop: int, n_mels: int, segment: int) -> None:
    s = mel_settings(version, sr)
    assert (s.sample_rate, s.n_fft, s.hop, s.win, s.n_mels, s.segment_samples) == (sr, n_fft, hop, n_fft, n_mels,
                                                                                  segment)
    assert s.fmin == 0 and s.fmax is None
    assert shipped_config(version, sr)[0] == n_fft // 2 + 1
    assert math.prod(shipped_config(version, sr)[12]) == hop


def test_spectrogram_and_mel_match_librosa_math_on_a_sine() -> None:
    s = MelSettings(16000, 512, 128, 512, 40, 4096)
    t = np.arange(4000) / s.sample_rate
    wave = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    spec = spectrogram(torch.from_numpy(wave)[None], s.n_fft, s.hop, s.win)
    pad = (s.n_fft - s.hop) // 2
    frames = (len(wave) + 2 * pad - s.n_fft) // s.hop + 1
    assert spec.shape == (1, s.n_fft // 2 + 1, frames)
    # reference: numpy reflect pad + librosa STFT (center=False, periodic hann), same magnitude formula
    padded = np.pad(wave, (pad, pad), mode="reflect")
    stft = librosa.stft(padded, n_fft=s.n_fft, hop_length=s.hop, win_length=s.win, window="hann", center=False)
    ref_mag = np.sqrt(np.abs(stft) ** 2 + 1e-6)
    np.testing.assert_allclose(spec[0].numpy(), ref_mag, atol=2e-3, rtol=1e-3)
    assert int(spec[0, :, frames // 2].argmax()) == round(1000.0 * s.n_fft / s.sample_rate)
    mel = mel_spectrogram(torch.from_numpy(wave)[None], s)
    basis = librosa.filters.mel(sr=s.sample_rate, n_fft=s.n_fft, n_mels=s.n_mels)
    ref_mel = np.log(np.clip(basis @ ref_mag, 1e-5, None))
    np.testing.assert_allclose(mel[0].numpy(), ref_mel, atol=2e-3, rtol=1e-3)
    peak_hz = librosa.mel_frequencies(s.n_mels + 2, fmin=0, fmax=s.sample_rate / 2)[1:-1]
    assert abs(peak_hz[int(mel[0, :, frames // 2].argmax())] - 1000.0) < 150.0
    # silence floors at log(1e-5)-ish, never -inf
    silent = spec_to_mel(spectrogram(torch.zeros(1, 2000), s.n_fft, s.hop, s.win), s.sample_rate, s.n_fft, s.n_mels)
    assert torch.isfinite(silent).all() and float(silent.max()) < -5.0


def _tiny_batch(f0: bool, version: str = "v2"):
    lengths = torch.tensor([50, 41])
    dim = 768 if version == "v2" else 256
    phone = torch.randn(2, 50, dim)
    pitch = torch.randint(1, 256, (2, 50)) if f0 else None
    pitchf = (torch.rand(2, 50) * 200 + 100) if f0 else None
    spec = torch.rand(2, 1025, 50)
    sid = torch.tensor([0, 3])
    return phone, lengths, pitch, pitchf, spec, lengths, sid


@pytest.mark.parametrize("f0", [True, False])
def test_tiny_training_forward_backward_batch_of_two(f0: bool) -> None:
    torch.manual_seed(0)
    model = Synthesizer(TINY, "v2", f0).train()
    model.segment_frames = 12
    wave, ids, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = model(*_tiny_batch(f0))
    assert wave.shape == (2, 1, 12 * 400)
    assert ids.shape == (2,) and bool((ids >= 0).all()) and bool((ids <= torch.tensor([38, 29])).all())
    assert x_mask.shape == y_mask.shape == (2, 1, 50) and float(x_mask[1].sum()) == 41
    assert z.shape == z_p.shape == m_p.shape == logs_q.shape == (2, 16, 50)
    assert float(z[1, :, 41:].detach().abs().sum()) == 0.0  # padding frames stay zero
    loss = wave.abs().mean() + (z_p - m_p).pow(2).mean()
    loss.backward()
    for name in ("dec.ups.0.weight_v", "dec.resblocks.0.convs1.0.weight_g", "flow.flows.0.post.weight",
                 "enc_q.pre.weight", "enc_p.emb_phone.weight", "emb_g.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    dec = GeneratorNSF(16, "1", [3, 7], [[1, 3], [1, 3]], [4, 2], 16, [8, 4], 0, 16000).train()
    x, f0, noise = torch.randn(1, 16, 10), torch.full((1, 10), 150.0), torch.randn(1, 80, 1)
    grads = []
    for flag in (False, True):
        dec.zero_grad()
        dec.gradient_checkpointing = flag
        dec(x, f0, noise=noise).pow(2).sum().backward()
        grads.append(dec.ups[0].weight_v.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_no_f0_infer_shapes_and_rejects_missing_pitch() -> None:
    torch.manual_seed(0)
    model = Synthesizer(TINY, "v1", False).eval()
    phone = torch.randn(1, 20, 256)
    with torch.inference_mode():
        audio, x_mask, (z, z_p, m_p, logs_p) = model.infer(phone, torch.tensor([20]), None, None, torch.tensor([1]))
    assert audio.shape == (1, 1, 20 * 400) and x_mask.shape == (1, 1, 20) and z.shape == (1, 16, 20)
    assert float(audio.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="pitch"):
        Synthesizer(TINY, "v1", True).infer(phone, torch.tensor([20]), None, None, torch.tensor([0]))


def test_infer_is_reproducible_with_manual_seed() -> None:
    torch.manual_seed(0)
    model = Synthesizer(TINY, "v2", True).eval()
    phone, lengths, pitch, pitchf, _, _, sid = _tiny_batch(True)
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        with torch.no_grad():
            outs.append(model.infer(phone, lengths, pitch, pitchf, sid)[0])
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(99)
    with torch.no_grad():
        other = model.infer(phone, lengths, pitch, pitchf, sid)[0]
    assert not torch.equal(outs[0], other)


def test_config_validation_and_sample_rate_names() -> None:
    cfg = list(TINY)
    cfg[-1] = "32k"
    model = Synthesizer(cfg, "v1", True)
    assert model.sample_rate == 32000 and model.hop_length == 400 and model.segment_frames == 32
    with pytest.raises(ValueError, match="18 items"):
        Synthesizer(TINY[:-1], "v2", True)
    with pytest.raises(ValueError, match="version"):
        Synthesizer(TINY, "v3", True)
