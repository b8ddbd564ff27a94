"""The method registry: each row is a name, a label and the configuration overrides that make it.

Rows are plain ``rvc-lora train`` overrides, so a new adapter algorithm becomes a row by configuration
only, e.g. ``--method loha_r8=lora.algorithm=loha,lora.rank=8`` on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    overrides: tuple[str, ...]


# Adapter rows train at 4x the full fine-tune's learning rate (the full scale's 5e-4): on the first base,
# LoRA r8 moved further in 40 steps at 2e-3 than at 5e-4 on every target, while full fine-tuning did worse at
# 2e-3 (tools/results/quality/lr_probe). Each family runs at the better of the two; the row "LoRA r8, lr 5e-4"
# keeps the equal-rate comparison.
ADAPTER_LR = "optim.lr=2e-3"


def _lora(rank: int, *extra: str) -> tuple[str, ...]:
    return ("adapter=lora", f"lora.rank={rank}", f"lora.alpha={rank}", ADAPTER_LR, *extra)


# Most informative first: an interrupted run has the headline rows (full vs r8, discriminator modes).
METHODS: list[Method] = [
    Method("full", "RVC full fine-tune", ("adapter=none",)),
    Method("lora_r8", "LoRA r8, D trained", _lora(8, "trainer.discriminator=train")),
    Method("lora_r8_lr5e-4", "LoRA r8, lr 5e-4 (full's)", _lora(8, "optim.lr=5e-4")),
    Method("lora_r8_frozen", "LoRA r8, D frozen", _lora(8, "trainer.discriminator=frozen")),
    Method("lora_r8_mel_only", "LoRA r8, mel only", _lora(8, "trainer.discriminator=mel_only")),
    Method("lora_r8_every2", "LoRA r8, D every 2", _lora(8, "trainer.discriminator=every_k", "trainer.d_every=2")),
    Method("lora_r8_every4", "LoRA r8, D every 4", _lora(8, "trainer.discriminator=every_k", "trainer.d_every=4")),
    Method("lora_r4", "LoRA r4", _lora(4)),
    Method("lora_r16", "LoRA r16", _lora(16)),
    Method("lora_r8_flow", "LoRA r8 + flow", _lora(8, "lora.flow=true")),
    Method("lora_r8_speaker", "LoRA r8 + speaker row", _lora(8, "lora.train_speaker_embedding=true")),
    # The other adapter algorithms at their presets (conf/lora): LoHa r4 and DoRA r8 at LoRA r8's size,
    # LoKr at about a sixth of it (README: adapter algorithms).
    Method("loha_r4", "LoHa r4 (LoRA r8 size)", ("adapter=lora", "lora=loha", ADAPTER_LR)),
    Method("lokr", "LoKr (1/6 of LoRA r8 size)", ("adapter=lora", "lora=lokr", ADAPTER_LR)),
    Method("dora_r8", "DoRA r8", ("adapter=lora", "lora=dora", ADAPTER_LR)),
]
QUICK_METHODS = ("full", "lora_r8", "lora_r8_frozen")


def parse_method(text: str) -> Method:
    """``NAME=override,override,...`` -> a Method (label = name)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--method {text!r}: expected NAME=key=value[,key=value...]")
    return Method(name.strip(), name.strip(), tuple(o.strip() for o in rest.split(",") if o.strip()))


def select(names: list[str] | None, extra: list[Method]) -> list[Method]:
    """The registry rows named in ``names`` (all when None), then ``extra`` (replacing same-named rows)."""
    table = {m.name: m for m in METHODS}
    unknown = [n for n in names or [] if n not in table and n not in {e.name for e in extra}]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(table)}")
    chosen = [table[n] for n in names if n in table] if names else list(METHODS)
    for e in extra:
        chosen = [m for m in chosen if m.name != e.name] + [e]
    return chosen
