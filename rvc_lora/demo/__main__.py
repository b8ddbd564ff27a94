"""The offline demo (``make demo``): the whole rvc-lora job on synthetic voices, in a few minutes on a CPU.

1. synthesise a small multi-voice corpus and a target voice (source-filter vowels, see ``voices.py``);
2. write a tiny random HuBERT (no downloads) and prepare both folders (slices, pitch, features, index);
3. build a tiny base: a short full training of a tiny RVC v1 synthesizer on the corpus (the stand-in
   for RVC's pretrained f0G40k / f0D40k);
4. train a rank-8 LoRA adapter for the target voice on that frozen base, logging to TensorBoard;
5. merge it into a standard RVC model and convert a corpus clip to the target voice.

Every stage is resumable: re-running skips finished preparation and resumes training from checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from rvc_lora.config import load_config
from rvc_lora.demo.voices import SPEAKERS, write_speaker
from rvc_lora.utils import tune_allocator

CORPUS_SPEAKERS = SPEAKERS[:4]
TARGET_SPEAKER = SPEAKERS[4]


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)


def _median_f0(path: Path) -> float:
    from rvc_lora.audio import load_audio
    from rvc_lora.features import get_pitch_extractor

    audio, _ = load_audio(path, 16000)
    f0 = get_pitch_extractor("dio")(audio)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--base-steps", type=int, default=120, help="steps of the tiny base's full training")
    parser.add_argument("--adapter-steps", type=int, default=120, help="steps of adapter training")
    args = parser.parse_args(argv)
    tune_allocator()  # as the rvc-lora command does
    out = Path(args.out).resolve()
    started = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    t = _stage("1/5 synthesising voices")
    corpus_dir, target_dir = out / "audio" / "corpus", out / "audio" / "target"
    for i, speaker in enumerate(CORPUS_SPEAKERS):
        write_speaker(corpus_dir, speaker, count=5, seed=i + 1)
    write_speaker(target_dir, TARGET_SPEAKER, count=14, seed=99)
    print(f"   corpus: {len(CORPUS_SPEAKERS)} voices in {corpus_dir}; target voice '{TARGET_SPEAKER.name}' in "
          f"{target_dir}")
    _done(t)

    t = _stage("2/5 preparing datasets (tiny random HuBERT, dio pitch)")
    from rvc_lora.demo.random_hubert import make_random_checkpoint
    from rvc_lora.prepare import run_prepare

    hubert = out / "assets" / "hubert_tiny.pt"
    if not hubert.exists():
        make_random_checkpoint(hubert, layout="fairseq", size="tiny", seed=0)
    common = ["model=tiny_v1", "pitch.method=dio", f"content.path={hubert}", "data.num_workers=2",
              "data.min_total_seconds=30", "data.progress=false", "logging.progress=false"]
    for name, folder in (("corpus", corpus_dir), ("target", target_dir)):
        cfg = load_config([*common, f"data.name={name}", f"data.input_dir={folder}",
                           f"data.experiment_dir={out / 'experiments' / name}"])
        report = run_prepare(cfg)
        print(f"   {name}: {len([r for r in report.rows if r.status == 'ok'])} pieces, "
              f"{report.total_seconds:.0f} s of audio")
    _done(t)

    t = _stage(f"3/5 building a tiny base model: full training for {args.base_steps} steps")
    from rvc_lora.checkpoint import save_pretrained
    from rvc_lora.models import build_synthesizer
    from rvc_lora.models.configs import tiny_config
    from rvc_lora.train import run_training

    init = out / "assets" / "tiny_init_G.pth"
    if not init.exists():
        import torch

        torch.manual_seed(0)
        cfg = load_config(["model=tiny_v1"])
        synth = build_synthesizer(config=tiny_config(), version=str(cfg.model.version), f0=cfg.model.f0)
        save_pretrained(synth, init, dtype=torch.float32, config=tiny_config(), version="v1", f0=1)
    train_common = [*common, "trainer.batch_size=4", "trainer.validation_interval=40",
                    "trainer.checkpoint_interval=40", "trainer.log_interval=5", "data.validation_pieces=2"]
    base_run = out / "runs" / "tiny_base"
    logging.getLogger("rvc_lora.train").setLevel(logging.ERROR)  # no pretrained D exists for a new base
    base = run_training(load_config([*train_common, "adapter=none", "data.name=corpus",
                                     f"data.experiment_dir={out / 'experiments' / 'corpus'}",
                                     f"base.g={init}", f"run_dir={base_run}",
                                     f"trainer.max_steps={args.base_steps}", "optim.lr=2e-4"]))
    logging.getLogger("rvc_lora.train").setLevel(logging.NOTSET)
    base_g, base_d = base.base_paths
    print(f"   base: {base_g.name} + {base_d.name} in {base_run}")
    _done(t)

    t = _stage(f"4/5 training a rank-8 LoRA adapter for '{TARGET_SPEAKER.name}' ({args.adapter_steps} steps)")
    run_dir = out / "runs" / "target_adapter"
    result = run_training(load_config([*train_common, "lora=default", "data.name=target",
                                       f"data.experiment_dir={out / 'experiments' / 'target'}",
                                       f"base.g={base_g}", f"base.d={base_d}", f"run_dir={run_dir}",
                                       f"trainer.max_steps={args.adapter_steps}", "optim.lr=1e-3"]))
    print(f"   adapter: {result.adapter_path} ({result.adapter_path.stat().st_size / 1e3:.0f} kB); "
          f"best validation {result.best_metric} {result.best_value:.3f} at step {result.best_step}")
    _done(t)

    t = _stage("5/5 converting a corpus clip to the target voice with the merged model")
    from rvc_lora.infer import Converter

    source = corpus_dir / f"{CORPUS_SPEAKERS[1].name}_00.wav"
    converted = out / "converted" / f"{source.stem}_as_{TARGET_SPEAKER.name}.wav"
    converter = Converter(result.merged_path, hubert, index=result.index_paths[0] if result.index_paths else None,
                          f0_method="dio")
    pitch = 12 * np.log2(TARGET_SPEAKER.f0_hz / CORPUS_SPEAKERS[1].f0_hz)
    converter.convert_file(source, converted, pitch=round(float(pitch)), seed=0)
    print(f"   {source.name} (median f0 {_median_f0(source):.0f} Hz) -> {converted.name} "
          f"(median f0 {_median_f0(converted):.0f} Hz, key shift {round(float(pitch)):+d})")
    _done(t)

    print(f"\nFinished in {time.perf_counter() - started:.0f} s. Results:")
    print(f"  TensorBoard logs:  {run_dir}  (rvc-lora tensorboard {run_dir})")
    print(f"  adapter:           {result.adapter_path}")
    print(f"  merged RVC model:  {result.merged_path}")
    print(f"  converted audio:   {converted}")
    print(f"  tiny base (G/D):   {base_g}, {base_d}")
    print("This shows the pipeline end to end on synthetic data with tiny random-feature models; it does not "
          "produce a usable voice. See README.md, 'Training a real voice'.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
