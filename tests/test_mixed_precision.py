"""Mixed precision on the CPU: the autocast and GradScaler path CUDA users take, exercised against fp32.

Two training steps of the tiny model (the rvc_train_step fixture's generator and first batch item, a
narrow v2 discriminator, noise off) under bf16 autocast, and under fp16 autocast with
``torch.amp.GradScaler("cpu")``, compared with the same steps in float32.

"Close" means, at each step: the generated audio within 2e-2 (bf16) / 4e-3 (fp16) relative of float32's
(measured 5.1e-3 / 1.4e-3), the discriminator loss within 3e-4 / 3e-5 (measured 1.0e-4 / 7.1e-6) and the
generator's total loss within 40% / 5% (measured 15.7% / 1.7%). The log-mel term is the loose one: this
random model's output has mel bins about 95 dB below its loudest, where the rounding noise of a bf16 (8-bit
mantissa) or fp16 (11-bit) waveform dominates their log.
"""

from __future__ import annotations

import pytest
import torch

from rvc_lora.checkpoint import load_rvc
from rvc_lora.models import build_discriminator, mel_settings
from rvc_lora.train.setup import resolve_precision
from rvc_lora.train.step import StepModels, StepSettings, train_step
from tests.rvc_step_reference import FIXTURE, rel, rvc_noise_convention

CLOSE = {  # precision -> (audio, discriminator loss, generator loss) relative tolerances (see above)
    "bf16": (2e-2, 3e-4, 0.4),
    "fp16": (4e-3, 3e-5, 0.05),
}
# GradScaler starts at 2**16; this random model's losses (~200) overflow fp16 gradients until the scale has
# halved down to 2**8 (eight skipped steps). The compared steps start there; one overflow is checked apart.
FP16_SCALE = 2.0**8


class Run:
    """The fixture's generator, a seeded narrow discriminator, AdamW, and a GradScaler, at one precision."""

    def __init__(self, precision: str, init_scale: float = FP16_SCALE):
        prec = resolve_precision(precision, torch.device("cpu"))
        self.synth = load_rvc(FIXTURE / "G_init.pth").model.train()
        torch.manual_seed(0)
        self.disc = build_discriminator("v2", divisor=16).train()
        inputs = torch.load(FIXTURE / "step.pt", weights_only=True)["inputs"]
        self.batch = {k: v[:1] for k, v in inputs.items()}
        adamw = {"lr": 1e-4, "betas": (0.8, 0.99), "eps": 1e-9}
        self.optim_g = torch.optim.AdamW(self.synth.parameters(), **adamw)
        self.optim_d = torch.optim.AdamW(self.disc.parameters(), **adamw)
        self.scaler = torch.amp.GradScaler("cpu", enabled=prec.scaler, init_scale=init_scale)
        self.settings = StepSettings(mel_settings("v2", 40000), segment_frames=32, autocast_dtype=prec.dtype)

    def step(self) -> dict:
        """One step: its scalars, the generated audio, and whether the generator's weights moved."""
        before = [p.detach().clone() for p in self.synth.parameters()]
        with rvc_noise_convention():
            out = train_step(StepModels(self.synth, list(self.synth.parameters()), self.disc), [self.batch],
                             self.optim_g, self.optim_d, self.scaler, self.settings, update_d=True)
        assert out is not None  # finite losses
        moved = any(not torch.equal(p, b) for p, b in zip(self.synth.parameters(), before, strict=True))
        assert all(torch.isfinite(p).all() for p in [*self.synth.parameters(), *self.disc.parameters()])
        return {"scalars": out.scalars, "wave": out.tensors.wave_hat, "moved": moved}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp32_steps(one_thread) -> list[dict]:
    run = Run("fp32")
    return [run.step(), run.step()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_stay_finite_and_close_to_fp32(precision, fp32_steps):
    run = Run(precision)
    assert run.settings.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert run.scaler.is_enabled() == (precision == "fp16")
    audio_tol, d_tol, g_tol = CLOSE[precision]
    for want in fp32_steps:
        got = run.step()
        assert got["moved"]
        assert all(torch.isfinite(torch.tensor(v)) for v in got["scalars"].values()), got["scalars"]
        assert rel(got["wave"], want["wave"]) < audio_tol
        s, w = got["scalars"], want["scalars"]
        assert abs(s["loss/d/total"] - w["loss/d/total"]) < d_tol * w["loss/d/total"]
        assert abs(s["loss/g/total"] - w["loss/g/total"]) < g_tol * w["loss/g/total"]


def test_fp16_overflow_is_skipped_by_the_grad_scaler():
    """At GradScaler's default initial scale the first fp16 step overflows: the scaler skips the optimiser
    step (the generator does not move) and halves the scale, while the losses stay finite."""
    run = Run("fp16", init_scale=2.0**16)
    got = run.step()
    assert not got["moved"] and run.scaler.get_scale() == 2.0**15
    assert not torch.isfinite(torch.tensor(got["scalars"]["grad_norm/adapter"]))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in got["scalars"].items() if k.startswith("loss/"))


def test_precision_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu).dtype is None and resolve_precision("auto", cuda).scaler
    assert resolve_precision("fp16", cpu).dtype == torch.float16 and resolve_precision("fp16", cpu).scaler
    assert resolve_precision("bf16", cuda).dtype == torch.bfloat16 and not resolve_precision("bf16", cuda).scaler
    assert resolve_precision("fp32", cuda).dtype is None
