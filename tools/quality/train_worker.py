"""Train one (method, target, seed) in its own process, stopping at each evaluation step.

``python train_worker.py SPEC.json``: SPEC has ``overrides`` (rvc-lora train overrides), ``steps``
(increasing), ``out_dir``. For each step S the run continues (it resumes from its last checkpoint) to
S steps through the public API (``load_config`` + ``run_training``), then the exported model is kept as
``step_S.pth`` (plus the adapter as ``step_S.safetensors``) and ``step_S.json`` records the seconds spent.
Steps already kept are skipped, so a killed worker continues where it stopped. ``worker_peak.json`` records
the worker's own peak RSS (VmHWM) after its imports (``idle_bytes``) and at the end (``peak_bytes``): their
difference is what training took. (The ``ru_maxrss`` a parent gets from ``wait4`` would also count the
parent's memory: at exec, Linux folds the high-water mark of the address space the child was forked with in.)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from bench_common import peak_rss_bytes  # tools/ is on the path of the benchmark's children


def record_peak(out: Path, idle_bytes: int) -> None:
    tmp = out / "worker_peak.tmp"
    tmp.write_text(json.dumps({"peak_bytes": peak_rss_bytes(), "idle_bytes": idle_bytes}))
    tmp.replace(out / "worker_peak.json")


def main(spec_path: str) -> int:
    import torch

    from rvc_lora.config import load_config
    from rvc_lora.train import run_training
    from rvc_lora.utils import tune_allocator

    tune_allocator()  # as the rvc-lora command does
    idle_bytes = peak_rss_bytes()
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 2)))
    out = Path(spec["out_dir"])
    previous = 0
    for steps in spec["steps"]:
        record = out / f"step_{steps}.json"
        if record.is_file():
            previous = steps
            continue
        cfg = load_config([*spec["overrides"], f"trainer.max_steps={steps}"])
        start = time.perf_counter()
        result = run_training(cfg)
        seconds = time.perf_counter() - start
        if result.interrupted or result.merged_path is None:
            return 1
        shutil.copyfile(result.merged_path, out / f"step_{steps}.pth")
        size = (result.adapter_path or result.merged_path).stat().st_size
        if result.adapter_path is not None:
            shutil.copyfile(result.adapter_path, out / f"step_{steps}.safetensors")
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"steps": steps, "from": previous, "seconds": seconds, "adapter_bytes": size,
                                   "final_losses": result.final_losses}))
        tmp.replace(record)
        previous = steps
    record_peak(out, idle_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
