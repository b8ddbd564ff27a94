"""Helpers for tests against tests/fixtures/rvc_train_step (RVC's own training step; see its README)."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from rvc_lora.models import MultiPeriodDiscriminator, build_discriminator

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "rvc_train_step"


def formula_discriminator() -> MultiPeriodDiscriminator:
    """The full-size v2 discriminator with the reference's formula weights (see the fixture README)."""
    disc = build_discriminator("v2")
    state = {}
    for key, tensor in disc.state_dict().items():
        c = (zlib.crc32(key.encode()) % 1000) / 100
        i = torch.arange(tensor.numel(), dtype=torch.float64)
        values = 0.05 * torch.sin(0.1 * i + c)
        if key.endswith("weight_g"):
            values = 0.5 + values.abs()
        state[key] = values.to(torch.float32).reshape(tensor.shape)
    disc.load_state_dict(state)
    return disc


@contextlib.contextmanager
def rvc_noise_convention() -> Iterator[None]:
    """While active, randn / randn_like give zeros and rand / rand_like give 0.5 (the fixture's convention)."""

    def shape(size: tuple) -> tuple:
        return tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)

    def plain(kw: dict) -> dict:
        return {k: v for k, v in kw.items() if k != "generator"}

    saved = {name: getattr(torch, name) for name in ("randn", "randn_like", "rand", "rand_like")}
    torch.randn = lambda *size, **kw: torch.zeros(shape(size), **plain(kw))
    torch.randn_like = lambda x, **kw: torch.zeros_like(x, **kw)
    torch.rand = lambda *size, **kw: torch.full(shape(size), 0.5, **plain(kw))
    torch.rand_like = lambda x, **kw: torch.full_like(x, 0.5, **kw)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64."""
    got, want = got.detach().double(), want.detach().double()
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
