"""Tables, CSV and plots from the benchmark's records (one record per method x target x seed x step)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("similarity", "source_similarity", "recon_mel_l1", "f0_cents", "voicing_error", "dnsmos")
# A gain fraction is only defined where its reference moved: targets on which the reference method beats
# the floor by at least this much at every seed (a reference at its floor has no gain to be a fraction of).
MIN_REFERENCE_GAIN = 0.02
DISCRIMINATOR_ROWS = ("lora_r8", "lora_r8_every2", "lora_r8_every4", "lora_r8_frozen", "lora_r8_mel_only")


def _ms(values: list[float], digits: int = 3) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def gains(records: list[dict], floors: dict[str, float], reference: str = "full") -> dict[tuple, float]:
    """(method, seed, step) -> gain fraction pooled over targets:
    sum_t (sim - floor_t) / sum_t (sim of ``reference`` - floor_t), over the targets both have.

    Pooled, not averaged per target: a target where the reference barely moves off its floor would turn a
    per-target ratio into noise (a 0.01 denominator makes 0.02 read as 2x).
    """
    sims = {(r["method"], r["target"], r["seed"], r["step"]): r["similarity"] for r in records}
    out = {}
    for method, seed, step in sorted({(r["method"], r["seed"], r["step"]) for r in records}):
        shared = [t for t in floors if (method, t, seed, step) in sims and (reference, t, seed, step) in sims]
        num = sum(sims[(method, t, seed, step)] - floors[t] for t in shared)
        den = sum(sims[(reference, t, seed, step)] - floors[t] for t in shared)
        if shared and den > 1e-9:
            out[(method, seed, step)] = num / den
    return out


def moving_targets(records: list[dict], floors: dict[str, float], reference: str) -> list[str]:
    """Targets where ``reference`` beats the floor by ``MIN_REFERENCE_GAIN`` in every record (seed, step)."""
    out = []
    for t in floors:
        gains_t = [r["similarity"] - floors[t] for r in records if r["method"] == reference and r["target"] == t]
        if gains_t and min(gains_t) >= MIN_REFERENCE_GAIN:
            out.append(t)
    return out


def final_records(records: list[dict]) -> list[dict]:
    last = max(r["step"] for r in records)
    return [r for r in records if r["step"] == last]


def summary(records: list[dict], refs: dict[str, dict], floors_eval: dict[str, dict], methods: list) -> dict:
    """Per method at the last step: lists of values over (target, seed), gain fractions and cost ratios."""
    floors = {t: floors_eval[t]["similarity"] for t in floors_eval}
    final = final_records(records)
    moving = {ref: moving_targets(final, floors, ref) for ref in ("full", "lora_r8")}
    g_full = gains(final, {t: floors[t] for t in moving["full"]}, "full")
    g_r8 = gains(final, {t: floors[t] for t in moving["lora_r8"]}, "lora_r8")
    per = defaultdict(lambda: defaultdict(list))
    for r in final:
        m = per[r["method"]]
        for k in (*METRICS, "sec_per_step", "peak_gb", "adapter_mb"):
            m[k].append(r[k])
    for (method, _seed, _step), value in g_full.items():  # one pooled value per seed
        per[method]["gain"].append(value)
    for (method, _seed, _step), value in g_r8.items():
        per[method]["gain_vs_r8"].append(value)
    full_t = np.mean(per["full"]["sec_per_step"]) if per["full"]["sec_per_step"] else float("nan")
    full_m = np.mean(per["full"]["peak_gb"]) if per["full"]["peak_gb"] else float("nan")
    for m in per.values():
        m["time_ratio"] = [float(np.mean(m["sec_per_step"]) / full_t)]
        m["mem_ratio"] = [float(np.mean(m["peak_gb"]) / full_m)]
    order = [m.name for m in methods if m.name in per]
    target_sims = defaultdict(list)
    for r in final:
        target_sims[(r["method"], r["target"])].append(r["similarity"])
    return {"per": per, "order": order, "labels": {m.name: m.label for m in methods}, "floors": floors_eval,
            "refs": refs, "steps": max(r["step"] for r in records),
            "pairs": len({(r["target"], r["seed"]) for r in final}), "gain_targets": moving,
            "target_sims": target_sims}


def _worst_loss(s: dict, method: str, reference: str) -> float:
    """The largest drop of ``method``'s mean similarity below ``reference``'s on any target (last step):
    a mode that keeps the gain where the reference learns can still lose where it does not."""
    sims = s["target_sims"]
    drops = [np.mean(sims[(reference, t)]) - np.mean(sims[(method, t)]) for t in s["floors"]
             if sims.get((method, t)) and sims.get((reference, t))]
    return float(max(drops)) if drops else 0.0


def decisions(s: dict) -> dict:
    """The numbers the defaults are chosen from."""
    per = s["per"]
    out = {}
    if per.get("lora_r8", {}).get("gain"):
        out["r8_gain"] = float(np.mean(per["lora_r8"]["gain"]))
    keep = []
    for name in DISCRIMINATOR_ROWS[1:]:
        if per.get(name, {}).get("gain_vs_r8") and _worst_loss(s, name, "lora_r8") <= MIN_REFERENCE_GAIN / 2:
            keep.append((per[name]["time_ratio"][0], name, float(np.mean(per[name]["gain_vs_r8"]))))
    ok = sorted(k for k in keep if k[2] >= 0.95)
    if ok:
        t, name, g = ok[0]
        out["cheapest_d_mode"] = {"method": name, "gain_vs_trained_d": g, "time_ratio": t,
                                  "mem_ratio": per[name]["mem_ratio"][0]}
    elif per.get("lora_r8"):
        out["cheapest_d_mode"] = {"method": "lora_r8", "gain_vs_trained_d": 1.0,
                                  "time_ratio": per["lora_r8"]["time_ratio"][0],
                                  "mem_ratio": per["lora_r8"]["mem_ratio"][0]}
    floors = [f["similarity"] for f in s["floors"].values()]
    ceilings = [r["ceiling"] for r in s["refs"].values()]
    out["floor"], out["ceiling"] = float(np.mean(floors)), float(np.mean(ceilings))
    out["gain_targets"] = s["gain_targets"]
    if per.get("full", {}).get("similarity"):
        out["full_similarity_sd"] = float(np.std(per["full"]["similarity"]))
    return out


def markdown_table(s: dict) -> str:
    head = ("| method | speaker sim. | gain fraction | sim. to source | recon mel-L1 | F0 err (cents) | voicing err "
            "| DNSMOS OVRL | s/step | time ratio | peak mem (GB) | mem ratio | adapter (MB) |")
    lines = [head, "|" + "---|" * 13]
    for name in s["order"]:
        m = s["per"][name]
        lines.append(f"| {s['labels'][name]} | {_ms(m['similarity'])} | {_ms(m['gain'], 2)} | "
                     f"{_ms(m['source_similarity'])} | {_ms(m['recon_mel_l1'])} | {_ms(m['f0_cents'], 1)} | "
                     f"{_ms(m['voicing_error'])} | {_ms(m['dnsmos'], 2)} | {_ms(m['sec_per_step'], 3)} | "
                     f"{m['time_ratio'][0]:.2f}x | {_ms(m['peak_gb'], 2)} | {m['mem_ratio'][0]:.2f}x | "
                     f"{_ms(m['adapter_mb'], 3)} |")
    floors = list(s["floors"].values())
    lines.append(f"| floor: base, unadapted | {_ms([f['similarity'] for f in floors])} | 0 | "
                 f"{_ms([f['source_similarity'] for f in floors])} | {_ms([f['recon_mel_l1'] for f in floors])} | "
                 f"{_ms([f['f0_cents'] for f in floors], 1)} | {_ms([f['voicing_error'] for f in floors])} | "
                 f"{_ms([f['dnsmos'] for f in floors], 2)} | - | - | - | - | - |")
    refs = list(s["refs"].values())
    lines.append(f"| ceiling: target's own held-out speech | {_ms([r['ceiling'] for r in refs])} | - | - | - | - | - | "
                 f"{_ms([r['dnsmos_natural'] for r in refs], 2)} | - | - | - | - | - |")
    lines.append(f"| source speech, unconverted | {_ms([r['source_unconverted'] for r in refs])} | - | - | - | - | "
                 "- | - | - | - | - | - | - |")
    lines.append("")
    lines.append(f"Gain fraction: pooled over the targets where RVC's full fine-tune beats the floor by at least "
                 f"{MIN_REFERENCE_GAIN} at every seed ({', '.join(s['gain_targets']['full']) or 'none'}); "
                 "mean ± sd over seeds. Other columns: mean ± sd over targets x seeds.")
    return "\n".join(lines)


def target_table(s: dict) -> str:
    """Similarity gain over each target's floor at the last step (mean ± sd over seeds): where the signal is."""
    targets = list(s["floors"])
    lines = ["| method | " + " | ".join(f"{t}: sim. - floor" for t in targets) + " |",
             "|" + "---|" * (len(targets) + 1)]
    for name in s["order"]:
        cells = [_ms([v - s["floors"][t]["similarity"] for v in s["target_sims"].get((name, t), [])])
                 for t in targets]
        lines.append(f"| {s['labels'][name]} | " + " | ".join(cells) + " |")
    lines.append("| floor: base, unadapted (similarity) | "
                 + " | ".join(f"{s['floors'][t]['similarity']:.3f}" for t in targets) + " |")
    lines.append("| ceiling - floor | "
                 + " | ".join(f"{s['refs'][t]['ceiling'] - s['floors'][t]['similarity']:.3f}" for t in targets) + " |")
    return "\n".join(lines)


def step_gains(records: list[dict], s: dict) -> tuple[list[str], dict[tuple[str, int], list[float]]]:
    """(the targets where full fine-tuning moved, (method, step) -> similarity - floor over their target x
    seed pairs): the curves, over the targets that carry a signal."""
    targets = s["gain_targets"]["full"] or list(s["floors"])
    floors = {t: s["floors"][t]["similarity"] for t in targets}
    cells = defaultdict(list)
    for r in records:
        if r["target"] in floors:
            cells[(r["method"], r["step"])].append(r["similarity"] - floors[r["target"]])
    return targets, cells


def step_table(records: list[dict], s: dict) -> str:
    """Similarity gain over the floor at each scored step (the curves as numbers): mean ± sd over the pairs
    (target, seed) of the targets where full fine-tuning moved, "-" where a step was not scored."""
    targets, cells = step_gains(records, s)
    steps = sorted({r["step"] for r in records})
    lines = ["| method | " + " | ".join(f"step {step}: sim. - floor" for step in steps) + " |",
             "|" + "---|" * (len(steps) + 1)]
    for name in s["order"]:
        lines.append(f"| {s['labels'][name]} | " + " | ".join(_ms(cells[(name, step)]) for step in steps) + " |")
    lines.append("")
    lines.append(f"Over {', '.join(targets)}; mean ± sd over targets x seeds.")
    return "\n".join(lines)


def write_csv(records: list[dict], path: Path) -> None:
    keys = ["method", "target", "seed", "step", *METRICS, "sec_per_step", "peak_gb", "adapter_mb"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(records, key=lambda r: (r["method"], r["target"], r["seed"], r["step"])):
            writer.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})


def _styles(n: int) -> list[dict]:
    """``n`` distinguishable line styles: ten colours, then the same colours dashed with other markers."""
    colours = [f"C{i}" for i in range(10)]
    return [{"color": colours[i % 10], "linestyle": ("-", "--", ":")[i // 10 % 3], "marker": "osD^v"[i // 10 % 5]}
            for i in range(n)]


def plots(records: list[dict], s: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = dict(zip(s["order"], _styles(len(s["order"])), strict=True))
    targets, cells = step_gains(records, s)
    gap = np.mean([s["refs"][t]["ceiling"] - s["floors"][t]["similarity"] for t in targets])
    fig, ax = plt.subplots(figsize=(10, 5))
    for name in s["order"]:
        steps = sorted(step for (method, step) in cells if method == name)
        ax.plot([0, *steps], [0.0, *(np.mean(cells[(name, st)]) for st in steps)], label=s["labels"][name],
                **styles[name])
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("speaker similarity - floor (resemblyzer cosine)")
    ax.set_title(f"Adaptation curves over {', '.join(targets)} (mean of target x seed pairs; "
                 f"ceiling - floor = {gap:.2f})", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    curve = out / "similarity_vs_step.png"
    fig.tight_layout()
    fig.savefig(curve, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    for name in s["order"]:
        m = s["per"][name]
        if not m["gain"]:
            continue
        style = styles[name]
        ax.errorbar(np.mean(m["sec_per_step"]), np.mean(m["gain"]), yerr=np.std(m["gain"]), fmt=style["marker"],
                    color=style["color"], capsize=3, label=s["labels"][name])
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.axhline(0.95, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("seconds per training step (this machine)")
    ax.set_ylabel("gain fraction vs full fine-tune (1 = as good)")
    ax.set_title(f"Time vs quality at step {s['steps']} (mean ± sd over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    tradeoff = out / "time_vs_quality.png"
    fig.tight_layout()
    fig.savefig(tradeoff, dpi=110)
    plt.close(fig)
    return [curve, tradeoff]
