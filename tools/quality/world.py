"""Build (or reuse) the benchmark's world under the work folder: corpus, content encoder, experiments, base.

Every stage leaves a ``done`` marker keyed by its settings, so an interrupted build continues and a re-run
only redoes what changed. Heavy work runs in child processes through the ``rvc-lora`` command or the
package's public API, never through private functions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 32000


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale (``full`` or ``quick``)."""

    name: str
    corpus: object
    encoder_steps: int
    base_steps: int  # GAN steps (RVC's losses, discriminator trained) after the warm-up
    base_batch: int
    adapt_steps: tuple[int, ...]
    adapt_batch: int
    seeds: tuple[int, ...]
    # RVC v1 32 kHz structure, narrow: [spec, seg, inter, hidden, filter, heads, layers, kernel, p_dropout,
    # resblock, kernels, dilations, upsample rates, uic, upsample kernels, speakers, gin, sr]
    model_config: list = field(default_factory=list)
    discriminator_divisor: int = 4
    adapt_lr: float | None = None  # None: the recipe's (RVC's 1e-4); rows may set their own (methods.py)
    # Mel-only steps before the GAN steps (a generator from scratch learns far more per CPU second without
    # the discriminator: a mel-only step costs about 0.6x a GAN step here).
    base_warmup_steps: int = 0
    base_lr: float | None = None  # None: RVC's 1e-4
    n_base: int = 13
    n_targets: int = 3
    dnsmos: bool = True
    dnsmos_clips: int | None = None  # DNSMOS on at most this many clips per evaluation (None: all)


def rvc_config(inter: int, hidden: int, filt: int, layers: int, uic: int, gin: int) -> list:
    return [513, 32, inter, hidden, filt, 2, layers, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 4, 2, 2, 2],
            uic, [16, 16, 4, 4, 4], 4, gin, SAMPLE_RATE]


THREADS = {"n": 1}  # torch / OpenMP threads per child process (set by bench_quality.py --threads)


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of child processes: this checkout importable, OpenMP limited to ``threads`` (default
    THREADS).

    On a shared machine, OpenMP threads that outnumber free cores spin at barriers: one thread per process
    was 5-20x faster than two here while other jobs ran.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads or THREADS["n"])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tools"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


_CHILDREN: set[subprocess.Popen] = set()  # children running now (run_child is called from several threads)
_CHILDREN_LOCK = threading.Lock()


def run_child(args: list[str], log: Path, threads: int | None = None) -> None:
    """Run ``python args...`` (OpenMP: ``threads``, default THREADS) with output appended to ``log``. Raises on
    failure; if this thread is interrupted while waiting, the child is stopped first.

    (No peak memory here: the ``ru_maxrss`` a parent gets from ``wait4`` also counts the parent's own memory,
    so processes that report memory record their own VmHWM, as ``train_worker.py`` does.)
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(args)}\n")
        handle.flush()
        child = subprocess.Popen([sys.executable, *args], stdout=handle, stderr=subprocess.STDOUT,
                                 env=child_env(threads), cwd=str(REPO))
        with _CHILDREN_LOCK:
            _CHILDREN.add(child)
        try:
            code = child.wait()
        except BaseException:
            _stop([child])
            raise
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"command failed ({code}): {' '.join(args)}\n--- {log} ---\n{tail}")


def _stop(children: list[subprocess.Popen], timeout: float = 120.0) -> None:
    """SIGTERM (a trainer saves a checkpoint and returns), wait, then kill what is still running.

    Not SIGINT: a shell without job control starts background commands with SIGINT ignored, and children
    inherit that (python then never raises KeyboardInterrupt)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextmanager
def child_pool(jobs: int) -> Iterator[ThreadPoolExecutor]:
    """Threads that each run one child at a time. Leaving the block by an error, Ctrl-C or SIGTERM stops the
    children still running (a benchmark that stops must not leave trainers writing its cache) and drops the
    tasks not started."""
    pool = ThreadPoolExecutor(jobs)
    try:
        yield pool
    finally:
        with _CHILDREN_LOCK:
            running = list(_CHILDREN)
        _stop(running)
        pool.shutdown(cancel_futures=True)


def marker(path: Path, token: dict) -> dict | None:
    """The record saved at ``path`` if its token equals ``token``."""
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("token") == token:
            return data
    return None


def start_over_unless_same(folder: Path, token: dict) -> None:
    """Empty ``folder`` unless its work was started with ``token`` (kept steps and checkpoints of other
    settings must not be resumed), then record ``token`` as the settings it is started with."""
    if marker(folder / "started.json", token) is None:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_marker(folder / "started.json", token)


def save_marker(path: Path, token: dict, **values) -> dict:
    data = {"token": token, **values}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return data


def common_overrides(scale: Scale) -> list[str]:
    return ["model=tiny_v1", f"model.sample_rate={SAMPLE_RATE}", "pitch.method=pm", "content.kind=torchscript",
            f"model.discriminator_divisor={scale.discriminator_divisor}"]


def prepare(work: Path, scale: Scale, name: str, input_dir: Path, encoder: Path, log: Path) -> Path:
    """``rvc-lora prepare`` of ``input_dir`` into ``work/exp/<name>``; returns the experiment folder."""
    exp = work / "exp" / name
    token = {"input": str(input_dir), "encoder": encoder.stat().st_mtime_ns, "scale": scale.name}
    if marker(exp / "bench_done.json", token):
        return exp
    run_child(["-m", "rvc_lora.cli", "prepare", *common_overrides(scale), f"data.input_dir={input_dir}",
               f"data.experiment_dir={exp}", f"data.name={name}", f"content.path={encoder}",
               "data.min_total_seconds=5", "data.num_workers=1", "data.build_index=false", "data.progress=false"],
              log)
    save_marker(exp / "bench_done.json", token)
    return exp


def base_input(work: Path, corpus: Path, voices: list[str]) -> Path:
    """A folder of hard links to the base voices' training clips (one prepare input for the pooled base)."""
    folder = work / "base_input"
    for voice in voices:
        (folder / voice).mkdir(parents=True, exist_ok=True)
        for clip in sorted((corpus / voice / "train").glob("*.wav")):
            link = folder / voice / clip.name
            if not link.exists():
                os.link(clip, link)
    return folder


def _train_phase(scale: Scale, exp: Path, log: Path, run: Path, init: Path, steps: int,
                 discriminator: str, threads: int) -> None:
    """One full-training phase (``adapter=none``) into ``run``."""
    run_child(["-m", "rvc_lora.cli", "train", *common_overrides(scale), "adapter=none",
                      f"data.experiment_dir={exp}", "data.name=base", f"run_dir={run}", f"base.g={init}",
                      "base.d=null", f"trainer.discriminator={discriminator}", f"trainer.max_steps={steps}",
                      f"trainer.batch_size={scale.base_batch}", "trainer.best_metric=mel_l1",
                      "trainer.validation_interval=1000000", "trainer.checkpoint_interval=200",
                      "trainer.log_interval=100", "logging.progress=false",
                      *([f"optim.lr={scale.base_lr}"] if scale.base_lr else [])], log, threads)


# The harmonic source's gain at the start of base training (RVC's ``m_source.l_linear``: sine -> tanh). From its
# random start (-0.24 with seed 0) the sine barely reached the output and training drove the gain to ~0; started
# at 2.0 (bias 0), a change of F0 moves the output by ~100% of its RMS after 200 mel-only steps (3% from the
# random start) and the gain keeps growing (tools/results/quality/source_gain). Necessary, not sufficient: the
# trained base's conversions still come out at the 100 Hz frame rate (README: adaptation quality).
SOURCE_GAIN = 2.0


def initial_synthesizer(path: Path, config: list) -> None:
    """A fresh RVC v1 F0 synthesizer (seed 0) with the harmonic source's gain at ``SOURCE_GAIN``, saved to ``path``."""
    import torch

    from rvc_lora.checkpoint import save_pretrained
    from rvc_lora.models import build_synthesizer

    torch.manual_seed(0)
    model = build_synthesizer(config=config, version="v1", f0=True)
    with torch.no_grad():
        model.dec.m_source.l_linear.weight.fill_(SOURCE_GAIN)
        model.dec.m_source.l_linear.bias.zero_()
    save_pretrained(model, path, config=config, version="v1", f0=1, sr=f"{SAMPLE_RATE // 1000}k")


def train_base(work: Path, scale: Scale, exp: Path, log: Path, train: bool = True,
               threads: int | None = None) -> dict | None:
    """Full training (``adapter=none``) of a fresh synthesizer on the pooled base voices (speaker row 0):
    ``base_warmup_steps`` mel-only steps, then ``base_steps`` with RVC's GAN losses (fresh discriminator).

    Returns ``{"g": G_full.pth, "d": D_full.pth, "model": merged.pth, "seconds": ...}`` (with
    ``train=False``: only a finished base, else None). ``seconds`` sums every (resumed) training call.
    """
    run = work / "base" / "run"
    token = {"config": scale.model_config, "steps": scale.base_steps, "batch": scale.base_batch,
             "divisor": scale.discriminator_divisor, "warmup": scale.base_warmup_steps, "lr": scale.base_lr,
             "source_gain": SOURCE_GAIN}
    done = marker(work / "base" / "done.json", token)
    if done or not train:
        return done
    start_over_unless_same(work / "base", token)
    init = work / "base" / "G_init.pth"
    if not init.is_file():
        initial_synthesizer(init, scale.model_config)
    spent_path = work / "base" / "seconds.json"  # training time of earlier (interrupted) calls
    spent = json.loads(spent_path.read_text()) if spent_path.is_file() else {}
    phases = [("warmup", scale.base_warmup_steps, "mel_only"), ("run", scale.base_steps, "train")]
    start = init
    for name, steps, discriminator in phases:
        if steps <= 0:
            continue
        folder = work / "base" / name
        if not (folder / "G_full.pth").is_file():
            began = time.perf_counter()
            try:
                _train_phase(scale, exp, log, folder, start, steps, discriminator, threads)
            finally:  # an interrupted call's time counts too (the phase resumes from its checkpoint)
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - began
                spent_path.write_text(json.dumps(spent))
        start = folder / "G_full.pth"
    return save_marker(work / "base" / "done.json", token, g=str(run / "G_full.pth"), d=str(run / "D_full.pth"),
                       model=str(run / "merged.pth"), seconds=sum(spent.values()), phase_seconds=spent)


def scale_summary(scale: Scale) -> dict:
    out = asdict(scale)
    out["corpus"] = asdict(scale.corpus)
    return out
