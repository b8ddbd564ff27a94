"""Adaptation quality, measured offline: does an adapter make converted speech sound like the target voice?

Builds a synthetic multi-speaker world (espeak-ng voices, a phonetic content encoder trained on the base
voices, an RVC v1 base fully trained on them), then adapts the base to held-out target voices with every
method of the registry (``tools/quality/methods.py``) at equal steps and data, converts held-out sentences
of base voices to each target and scores them (speaker similarity with floor and ceiling, gain fraction,
similarity to the source, reconstruction mel-L1, F0 and voicing errors, DNSMOS, time, memory, size).

    python tools/bench_quality.py                 # full run (hours on 2 CPU cores; resumable)
    python tools/bench_quality.py --quick         # tiny sizes, 2 voices, same table (the test suite runs it)
    python tools/bench_quality.py --method loha_r8=lora.algorithm=loha,lora.rank=8   # add a row by config

Everything is cached under --work-dir (default ~/.cache/rvc-lora/bench_quality/<scale>): voices, encoder,
experiments, base, and each (method, target, seed) run with its evaluations. Re-running the same command
continues an interrupted run; adding methods or seeds computes only the new rows. Needs the ``bench``
extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import corpus as corpus_mod  # noqa: E402
from quality import methods as methods_mod  # noqa: E402
from quality import report  # noqa: E402
from quality import world as world_mod  # noqa: E402
from quality.world import (  # noqa: E402
    REPO,
    Scale,
    base_input,
    common_overrides,
    marker,
    prepare,
    run_child,
    rvc_config,
    save_marker,
    scale_summary,
    start_over_unless_same,
    train_base,
)

F0_METHOD = "pm"
SCALES = {
    # Sized for 2 CPU cores: a narrow generator and discriminator (a GAN step of batch 4: 1.6 s at 2 threads,
    # mel-only 0.75-1.2 s; upsampling width 96 and a 4x-narrowed discriminator cost 2.1x more), the base
    # warmed up without the discriminator, short adaptations at a raised learning rate.
    "full": Scale("full", corpus_mod.CorpusSizes(), encoder_steps=600, base_steps=500, base_batch=4,
                  adapt_steps=(10, 20, 40), adapt_batch=4, seeds=(0, 1), discriminator_divisor=16, adapt_lr=5e-4,
                  base_warmup_steps=600, base_lr=5e-4,
                  model_config=rvc_config(inter=48, hidden=64, filt=192, layers=2, uic=64, gin=48)),
    "quick": Scale("quick", corpus_mod.QUICK_SIZES, encoder_steps=10, base_steps=5, base_batch=4,
                   adapt_steps=(2, 4), adapt_batch=2, seeds=(0,), discriminator_divisor=16,
                   model_config=rvc_config(inter=16, hidden=32, filt=64, layers=2, uic=64, gin=16),
                   n_base=1, n_targets=1, dnsmos_clips=1),
}
BENCH_EXTRA = ("resemblyzer", "speechmos", "espeakng_loader", "matplotlib", "sklearn", "onnxruntime")


def missing_extra() -> list[str]:
    import importlib.util

    return [m for m in BENCH_EXTRA if importlib.util.find_spec(m) is None]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def seconds_per_step(run: Path, steps: tuple[int, ...]) -> float:
    """A run's training seconds over its steps (its ``step_S.json`` records), fixed costs of each resumed
    segment included (building the models, export). A line fitted through the segments separated the two on
    a quiet machine only: with jobs side by side its slope went negative for some runs."""
    segs = [json.loads((run / f"step_{step}.json").read_text()) for step in steps]
    return sum(s["seconds"] for s in segs) / sum(s["steps"] - s["from"] for s in segs)


def run_overrides(scale: Scale, method, target: str, seed: int, exp: Path, base: dict, run_dir: Path) -> list[str]:
    """The ``rvc-lora train`` overrides of one (method, target, seed) run."""
    # the scale's learning rate first, so a row that sets its own (``optim.lr=...``) overrides it
    return [*common_overrides(scale), *([f"optim.lr={scale.adapt_lr}"] if scale.adapt_lr else []),
            *method.overrides, f"data.experiment_dir={exp}", f"data.name={target}", "data.speaker_id=0",
            f"base.g={base['g']}", f"base.d={base['d']}", f"run_dir={run_dir}",
            f"trainer.batch_size={scale.adapt_batch}", f"trainer.seed={1234 + seed}",
            f"trainer.validation_interval={min(scale.adapt_steps)}",
            f"trainer.checkpoint_interval={min(scale.adapt_steps)}", "trainer.keep_checkpoints=1",
            "trainer.best_metric=mel_l1", "trainer.log_interval=1000", "logging.tensorboard=false",
            "logging.progress=false"]


def adapt(work: Path, scale: Scale, method, target: str, seed: int, exp: Path, base: dict,
          train: bool = True) -> dict | None:
    """Train one (method, target, seed) to every evaluation step (resumable); returns cost figures.

    With ``train=False`` only a finished run is returned (None otherwise)."""
    out = work / "runs" / method.name / target / f"seed{seed}"
    token = {"overrides": list(method.overrides), "steps": list(scale.adapt_steps), "base": base["token"],
             "lr": scale.adapt_lr}
    done = marker(out / "done.json", token)
    if done or not train:
        return done
    start_over_unless_same(out, token)
    overrides = run_overrides(scale, method, target, seed, exp, base, out / "run")
    spec = out / "spec.json"
    spec.write_text(json.dumps({"overrides": overrides, "steps": list(scale.adapt_steps), "out_dir": str(out),
                                "threads": world_mod.THREADS["n"]}))
    run_child([str(Path(__file__).resolve().parent / "quality" / "train_worker.py"), str(spec)], out / "train.log")
    peak = training_peak(out)
    last = json.loads((out / f"step_{max(scale.adapt_steps)}.json").read_text())
    return save_marker(out / "done.json", token, train_peak_bytes=peak,
                       adapter_bytes=last["adapter_bytes"])


def training_peak(out: Path) -> int:
    """What training took above the worker's imports: its peak RSS minus its RSS after the imports (VmHWM, both
    recorded by the worker itself in ``out``)."""
    record = json.loads((out / "worker_peak.json").read_text())
    return max(int(record["peak_bytes"]) - int(record["idle_bytes"]), 0)


def score_runs(world, work: Path, scale: Scale, encoder: Path, jobs: list, costs: list,
               final_eval_only: bool) -> list[dict]:
    """Score every finished (seed, target, method) job at each evaluation step, in job order, as its training
    (a future in ``costs``: the run's cost figures, None when not trained) completes. Returns the records."""
    from quality.evaluate import cached_evaluation, evaluate
    from tqdm import tqdm

    records = []
    for i, (seed, target, method) in enumerate(tqdm(jobs, desc="runs", unit="run", disable=None, file=sys.stderr)):
        t0 = time.perf_counter()
        cost = costs[i].result()
        if cost is None:
            continue
        run_dir = work / "runs" / method.name / target / f"seed{seed}"
        run_cost = {"sec_per_step": seconds_per_step(run_dir, scale.adapt_steps),
                    "peak_gb": cost["train_peak_bytes"] / 1e9, "adapter_mb": cost["adapter_bytes"] / 1e6}
        for step in scale.adapt_steps:
            final = step == max(scale.adapt_steps)
            model = run_dir / f"step_{step}.pth"
            if not final and final_eval_only:
                metrics = cached_evaluation(model, target)
                if metrics is None:
                    continue
            else:
                metrics = evaluate(world, model, target, encoder, F0_METHOD, scale.dnsmos and final)
            records.append({"method": method.name, "target": target, "seed": seed, "step": step, **metrics,
                            **run_cost})
        log(f"run {i + 1}/{len(jobs)} {method.name} {target} seed {seed}: similarity "
            f"{records[-1]['similarity']:.3f} at step {max(scale.adapt_steps)} (waited and scored in "
            f"{time.perf_counter() - t0:.0f} s)")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 voices, tiny sizes, the same table (run by the tests)")
    parser.add_argument("--work-dir", type=Path, help="cache folder (default ~/.cache/rvc-lora/bench_quality/<scale>)")
    parser.add_argument("--out", type=Path, help="results folder (default tools/results/quality, or "
                                                 "<work-dir>/results with --quick)")
    parser.add_argument("--methods", help="comma-separated registry rows to run (default: all; quick: a few)")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="add or replace a row: NAME=key=value[,key=value...]; repeatable")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the scale's)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing more: report the finished runs (the world must be built)")
    parser.add_argument("--final-eval-only", action="store_true",
                        help="score new runs at their last step only (earlier steps stay on disk; a later run "
                             "without this flag scores them for the curves)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1: fastest on a busy machine; 2 on a quiet one)")
    parser.add_argument("--jobs", type=int,
                        help="child processes side by side (prepares, adaptation runs); default: cores / threads")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
        parser.error("--threads and --jobs must be at least 1")
    args.jobs = args.jobs or max(1, len(os.sched_getaffinity(0)) // args.threads)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: children included (below)

    missing = missing_extra()
    if missing:
        print(f"bench_quality: missing the bench extra ({', '.join(missing)}): pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    world_mod.THREADS["n"] = args.threads
    scale = SCALES["quick" if args.quick else "full"]
    home = Path(os.environ.get("RVC_LORA_HOME", Path.home() / ".cache" / "rvc-lora"))
    work = (args.work_dir or home / "bench_quality" / scale.name).expanduser().resolve()
    out = (args.out or (work / "results" if args.quick else REPO / "tools" / "results" / "quality")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        methods = methods_mod.select(args.methods.split(",") if args.methods else
                                     (list(methods_mod.QUICK_METHODS) if args.quick else None),
                                     [methods_mod.parse_method(m) for m in args.method])
    except ValueError as exc:
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else scale.seeds
    started = time.perf_counter()
    logs = work / "logs"

    # 1. voices ----------------------------------------------------------------------------------------
    base_voices = corpus_mod.BASE_VOICES[:scale.n_base] if args.quick else corpus_mod.BASE_VOICES
    targets = corpus_mod.TARGET_VOICES[:scale.n_targets]
    sources = tuple(v.key for v in base_voices if v.key in corpus_mod.SOURCE_VOICES) or (base_voices[0].key,)
    log(f"voices: {len(base_voices)} base + {len(targets)} targets -> {work / 'corpus'}")
    manifest = corpus_mod.build_corpus(work / "corpus", scale.corpus, base_voices, targets, sources)
    corpus = work / "corpus"

    # 2. content encoder -------------------------------------------------------------------------------
    from quality import phonetic

    encoder = work / "encoder" / "phonetic.pt"
    enc_token = {"steps": scale.encoder_steps, "corpus": manifest["token"]}
    enc_info = marker(work / "encoder" / "done.json", enc_token)
    if enc_info is None:
        log(f"content encoder: training {scale.encoder_steps} steps on the base voices")
        info = phonetic.train_encoder(corpus, manifest["base"], encoder, scale.encoder_steps, log=log)
        voices = manifest["base"] + manifest["targets"]
        info["leakage"] = phonetic.speaker_leakage(corpus, voices, encoder,
                                                   clips_per_voice=4 if args.quick else 12)
        enc_info = save_marker(work / "encoder" / "done.json", enc_token, **info)
    leak = enc_info["leakage"]
    log(f"content encoder: {enc_info['phonemes']} phonemes, frame accuracy {enc_info['frame_accuracy']:.3f}; "
        f"speaker-ID probe {leak['encoder']:.3f} on its features vs {leak['log_mel']:.3f} on log-mel "
        f"(chance {leak['chance']:.3f})")

    # 3. experiments and base --------------------------------------------------------------------------
    log("prepare: base voices (pooled) and targets")
    inputs = {"base": base_input(work, corpus, manifest["base"]),
              **{t: corpus / t / "train" for t in manifest["targets"]}}
    with world_mod.child_pool(args.jobs) as pool:  # each prepare is a child process
        futures = {name: pool.submit(prepare, work, scale, name, folder, encoder, logs / f"prepare_{name}.log")
                   for name, folder in inputs.items()}
        exps = {name: future.result() for name, future in futures.items()}
    base_exp, target_exps = exps.pop("base"), exps
    log(f"base: full training (adapter=none), {scale.base_warmup_steps} mel-only steps, then "
        f"{scale.base_steps} with the discriminator")
    base = train_base(work, scale, base_exp, logs / "base.log", train=not args.report_only,
                      threads=args.threads * args.jobs)  # one process: every core the jobs would use
    if base is None:
        log("the base is not trained yet: run without --report-only")
        return 1
    log(f"base: ready ({base['seconds'] / 60:.1f} min to train)")

    # 4. methods: adaptation workers train side by side (--jobs) while this process builds the references and
    # the floor, then scores each run in job order as it finishes ---------------------------------------
    from quality.evaluate import World, evaluate
    from quality.metrics import Scorer

    jobs = [(seed, t, m) for m in methods for seed in seeds for t in manifest["targets"]]  # headline rows first
    with world_mod.child_pool(args.jobs) as pool:  # stopping the benchmark stops its children (re-run continues)
        costs = [pool.submit(adapt, work, scale, method, target, seed, target_exps[target], base,
                             train=not args.report_only) for seed, target, method in jobs]
        world = World(corpus, manifest, Scorer(F0_METHOD, dnsmos=scale.dnsmos, dnsmos_clips=scale.dnsmos_clips))
        refs_path = work / "references.json"
        refs = marker(refs_path, manifest["token"])
        refs = refs["refs"] if refs else save_marker(refs_path, manifest["token"], refs=world.references())["refs"]
        floors = {t: evaluate(world, Path(base["model"]), t, encoder, F0_METHOD, scale.dnsmos)
                  for t in world.targets}
        log("floor (unadapted base): " + ", ".join(f"{t} {f['similarity']:.3f}" for t, f in floors.items())
            + "; ceiling: " + ", ".join(f"{t} {r['ceiling']:.3f}" for t, r in refs.items()))
        records = score_runs(world, work, scale, encoder, jobs, costs, args.final_eval_only)

    # 5. report ----------------------------------------------------------------------------------------
    if not records:
        log("no finished runs to report yet")
        return 1
    s = report.summary(records, refs, floors, methods)
    table = "\n\n".join((report.markdown_table(s), report.target_table(s), report.step_table(records, s)))
    decided = report.decisions(s)
    report.write_csv(records, out / "results.csv")
    pngs = report.plots(records, s, out)
    results = {"scale": scale_summary(scale), "encoder": enc_info, "base_minutes": base["seconds"] / 60,
               "decisions": decided, "seconds": time.perf_counter() - started,
               "steps": s["steps"], "pairs": s["pairs"]}
    (out / "summary.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(decided, indent=1))
    print(f"results: {out} ({', '.join(p.name for p in pngs)}, results.csv, table.md, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
