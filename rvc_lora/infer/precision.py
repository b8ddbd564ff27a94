"""How a conversion runs on its device: numeric precision and the generator's memory layout.

Precisions (``--precision``):

- ``fp32``: float32 everywhere, the reference numbers (default on CPU);
- ``fp16``: the synthesizer and content model in float16 (CUDA only; the default there, as in RVC);
- ``bf16``: every upsampling stage of the generator under bfloat16 autocast (CPU or CUDA);
- ``mixed``: the same for every stage but the last, full-rate one, which stays float32 with the
  generator's ends and harmonic source, keeping most of the accuracy (bf16 on CPU, fp16 on CUDA).

bf16 is fast only where the hardware computes it (AVX-512 BF16 or AMX on x86, BF16 on Arm, CUDA);
elsewhere oneDNN emulates it several times slower than float32, and the plan carries a note saying so.
On CPU the generator runs its convolutions channels-last (:mod:`rvc_lora.models.layout`), which is
the same float32 computation, faster.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvc_lora.utils import RVCLoraError

if TYPE_CHECKING:  # torch is imported where a plan is made: the command line's choices need no torch
    import torch

PRECISIONS = ("auto", "fp32", "mixed", "bf16", "fp16")
LAYOUTS = ("auto", "channels_last", "default")


@dataclass(frozen=True)
class ExecutionPlan:
    """A resolved precision and layout for one device.

    ``precision``: fp32 / mixed / bf16 / fp16; ``dtype``: the weights' dtype (float16 for fp16, else
    float32); ``reduced_dtype``: the autocast dtype of reduced stages (None for fp32 / fp16);
    ``reduced_stages``: how many leading generator stages run in it; ``channels_last``: generator layout;
    ``note``: something the user should know (emulated bf16), or None.
    """

    precision: str
    dtype: torch.dtype
    reduced_dtype: torch.dtype | None
    reduced_stages: int
    channels_last: bool
    note: str | None = None

    def apply(self, generator: torch.nn.Module) -> None:
        """Set the generator's execution (``set_execution``) to this plan."""
        import torch

        generator.set_execution(channels_last=self.channels_last, reduced_stages=self.reduced_stages,
                                reduced_dtype=self.reduced_dtype or torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (x86 AVX-512 BF16 / AMX, Arm BF16); Linux flags, else False."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple M2 and later have BF16
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def plan_execution(precision: str, device: torch.device, num_stages: int, layout: str = "auto",
                   native_bf16: bool | None = None) -> ExecutionPlan:
    """Resolve ``precision`` (one of :data:`PRECISIONS`) and ``layout`` for ``device`` and a generator of
    ``num_stages`` upsampling stages. Raises RVCLoraError for a precision the device cannot run.

    ``native_bf16`` overrides the CPU detection (:func:`cpu_has_native_bf16`).
    """
    import torch

    if precision not in PRECISIONS:
        raise RVCLoraError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if layout not in LAYOUTS:
        raise RVCLoraError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "fp16" if cuda else "fp32"
    channels_last = device.type == "cpu" if layout == "auto" else layout == "channels_last"
    if precision == "fp32":
        return ExecutionPlan("fp32", torch.float32, None, 0, channels_last)
    if precision == "fp16":
        if not cuda:
            raise RVCLoraError(f"precision fp16 needs a CUDA device (this is {device}); use fp32 (exact), "
                               "or bf16 / mixed where the processor has bf16")
        return ExecutionPlan("fp16", torch.float16, None, 0, channels_last)
    stages = num_stages if precision == "bf16" else num_stages - 1
    reduced = torch.float16 if (cuda and precision == "mixed") else torch.bfloat16
    note = None
    if cuda and reduced == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RVCLoraError(f"precision bf16: {device} has no bf16 support; use fp16 or mixed")
    if device.type == "cpu":
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        if not native:
            note = (f"precision {precision}: this CPU has no native bf16 (AVX-512 BF16 / AMX), so bf16 is "
                    "emulated and several times slower than fp32; fp32 is faster and exact here")
    return ExecutionPlan(precision, torch.float32, reduced, stages, channels_last, note)
