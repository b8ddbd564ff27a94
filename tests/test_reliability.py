"""Bad input and faults, run against the ``rvc-lora`` command as a user would (issue #10).

A corpus is generated on the fly: broken and odd audio, malicious pickles in every place a model file is
read, damaged adapters, adapters for another base, bad strengths and configs, folders that refuse writes,
a full disk (``RLIMIT_FSIZE`` in a child process) and ``kill -9`` during training. Each case checks the
exit code, a one-line message (never a traceback), that good inputs of a batch are still processed, that
no NaN output and no stray temporary file is left, and that the base model stays bit-identical.

Commands run in this process (``rvc_lora.cli.main``, output captured) where a child process adds
nothing; in a child process where the case needs one: file-size limits, another user, ``kill -9``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import harmonic_tone, noise, silence, write_garbage, write_nan_wav, write_truncated_wav
from safetensors import safe_open
from safetensors.torch import save_file
from train_helpers import make_adapter, make_base, make_experiment

from rvc_lora.cli import main as cli_main
from rvc_lora.demo.random_hubert import make_random_checkpoint
from rvc_lora.train.checkpointing import list_checkpoints, load_checkpoint, save_checkpoint
from rvc_lora.utils import RVCLoraError

ROOT = Path(__file__).resolve().parents[1]
THREADS = 1
REFUSED = "refused: this file would run code when loaded (it references posix.system); it was not executed"


# ---- running the command -------------------------------------------------------------------------------
@dataclass
class Run:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one error line; fails if there is a traceback or more than one error line."""
        assert "Traceback" not in self.err and "Traceback" not in self.out, self.err
        lines = [ln for ln in self.err.splitlines() if ln.startswith("rvc-lora: error:")]
        assert len(lines) == 1, self.err
        return lines[0]


@pytest.fixture
def cli(capsys):
    """Run ``rvc-lora ARGS`` in this process; returns a Run."""

    def run(*args: object) -> Run:
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def run_child(*args: object, file_limit: int | None = None, obey_permissions: bool = False,
              timeout: float = 300) -> Run:
    """Run ``python -m rvc_lora.cli ARGS`` in a child process, optionally with a file-size limit (a full
    disk, as the writer sees it) or bound by file permissions even when run as root."""
    proc = subprocess.run([sys.executable, "-m", "rvc_lora.cli", *map(str, args)], capture_output=True,
                          text=True, env=child_env(), preexec_fn=_limits(file_limit, obey_permissions),
                          timeout=timeout, cwd=tempfile.gettempdir())
    return Run(proc.returncode, proc.stdout, proc.stderr)


def child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    threads = str(THREADS)  # the same arithmetic as this process, for exact comparisons
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "RVC_LORA_DEBUG": ""}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tiny models spend more time synchronising threads than computing (badly so on a busy
    machine): one thread here and in every child."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_permission_override() -> None:
    """In a child about to exec: give up root's power to ignore file permissions (Linux capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limits(file_limit: int | None, obey_permissions: bool):
    def apply() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        if obey_permissions and os.geteuid() == 0:
            _drop_permission_override()

    return apply if (file_limit is not None or obey_permissions) else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))


# ---- the corpus ----------------------------------------------------------------------------------------
class _RunsShell:
    """A pickle payload: loading it would run ``touch MARKER`` (pickled as posix.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class World:
    root: Path
    base: Path  # tiny v2 40k f0 generator, pretrained layout
    base_hash: str
    other_base: Path
    hubert: Path
    adapter: Path
    foreign_adapter: Path  # made for other_base
    nan_adapter: Path
    exp: Path
    inputs: Path
    good_inputs: list[str]
    bad_inputs: dict[str, str]  # name -> expected problem
    marker: Path

    def evil(self, name: str, payload: dict | None = None, raw: bool = False) -> Path:
        """A file that would run ``touch marker`` when unpickled: a torch zip file, or a plain pickle."""
        path = self.root / "evil" / name
        path.parent.mkdir(exist_ok=True)
        obj = {**(payload or {"weight": {}}), "payload": _RunsShell(self.marker)}
        if raw:
            path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        else:
            torch.save(obj, path)
        return path

    def train_args(self, run_dir: Path, steps: int, *extra: object) -> list[object]:
        return ["train", "model=tiny", f"data.experiment_dir={self.exp}", "data.name=tiny", f"run_dir={run_dir}",
                f"base.g={self.base}", "trainer.batch_size=2", f"trainer.max_steps={steps}",
                "trainer.log_interval=1", "trainer.validation_interval=1000", "trainer.checkpoint_interval=2",
                "trainer.discriminator=mel_only", "logging.audio_clips=0", "logging.mel_images=false",
                "lora.rank=2", "lora.alpha=2", "trainer.segment_frames=8", "trainer.num_workers=0", *extra]

    def convert_args(self, *inputs: object, out: Path, extra: tuple = ()) -> list[object]:
        return ["convert", *inputs, "--model", self.base, "--hubert", self.hubert, "--f0-method", "pm",
                "--out", out, "--seed", "0", *extra]


def _with_nan(adapter: Path, out: Path) -> Path:
    with safe_open(str(adapter), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sorted(tensors) if k.endswith("lora_up.weight"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(out), metadata=meta)
    return out


def _write_inputs(folder: Path) -> tuple[list[str], dict[str, str]]:
    folder.mkdir(parents=True)
    sr = 16000
    sf.write(folder / "good.wav", harmonic_tone(180.0, 1.0, sr), sr)
    sf.write(folder / "noise.wav", noise(1.0, sr, amplitude=0.3), sr)
    sf.write(folder / "eight_channels.wav", np.stack([harmonic_tone(200.0, 1.0, sr)] * 8, axis=1), sr)
    sf.write(folder / "rate_192k.wav", harmonic_tone(220.0, 1.0, 192000), 192000)
    sf.write(folder / "rate_8k.flac", harmonic_tone(150.0, 1.0, 8000), 8000)
    good = ["good.wav", "noise.wav", "eight_channels.wav", "rate_192k.wav", "rate_8k.flac"]
    sf.write(folder / "silent.wav", silence(1.0, sr), sr)
    write_garbage(folder / "corrupt.wav")
    write_truncated_wav(folder / "truncated.wav")
    write_nan_wav(folder / "nan.wav")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "random.flac").write_bytes(np.random.default_rng(0).bytes(4096))
    bad = {"silent.wav": "silent", "corrupt.wav": "unreadable", "truncated.wav": "truncated",
           "nan.wav": "non-finite", "empty.wav": "empty", "random.flac": "unreadable"}
    return good, bad


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("reliability")
    base = make_base(root / "G.pth", seed=0)
    other = make_base(root / "other_G.pth", seed=1)
    hubert = make_random_checkpoint(root / "hubert.pt", size="tiny", embed_dim=768)
    adapter = make_adapter(base, root / "adapter.safetensors", seed=1)
    foreign = make_adapter(other, root / "foreign.safetensors", seed=2)
    nan_adapter = _with_nan(adapter, root / "nan.safetensors")
    make_experiment(root / "exp")
    good, bad = _write_inputs(root / "inputs")
    return World(root, base, sha256(base), other, hubert, adapter, foreign, nan_adapter, root / "exp",
                 root / "inputs", good, bad, root / "pwned")


@pytest.fixture(autouse=True)
def _base_untouched_and_nothing_executed(world):
    yield
    assert sha256(world.base) == world.base_hash, "the base model file changed"
    assert not world.marker.exists(), "a malicious pickle was executed"


# ---- audio batches -------------------------------------------------------------------------------------
def test_convert_batch_reports_each_bad_file_and_converts_the_good_ones(world, cli, tmp_path):
    out = tmp_path / "out"
    run = cli(*world.convert_args(world.inputs, out=out))
    assert run.code == 1 and "Traceback" not in run.err
    for name, problem in world.bad_inputs.items():
        line = next(ln for ln in run.err.splitlines() if ln.startswith(f"rvc-lora: failed: {world.inputs / name}"))
        assert problem in line, line
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(n).with_suffix(".wav").name for n in world.good_inputs)
    for path in out.iterdir():
        audio, sr = sf.read(path)
        assert sr == 40000 and audio.size > 0 and np.isfinite(audio).all()
    assert f"converted {len(world.good_inputs)} file(s)" in run.out
    assert temp_files(tmp_path) == []


def test_prepare_batch_reports_bad_files_and_keeps_the_good_ones(world, cli, tmp_path):
    exp = tmp_path / "exp"
    run = cli("prepare", "model=tiny", f"data.input_dir={world.inputs}", f"data.experiment_dir={exp}",
              "data.name=batch", "pitch.method=dio", f"content.path={world.hubert}", "data.min_total_seconds=1",
              "data.num_workers=0", "data.validation_pieces=1", "data.progress=false", "data.build_index=false")
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    for name, problem in world.bad_inputs.items():
        assert any(name in ln and problem in ln for ln in run.out.splitlines()), (name, run.out)
    from rvc_lora.data.experiment import read_manifest

    rows = read_manifest(exp / "manifest.csv")
    used = {Path(r.source).name for r in rows if r.status == "ok"}
    assert {"good.wav", "eight_channels.wav", "rate_192k.wav", "rate_8k.flac"} <= used
    assert not used & set(world.bad_inputs)
    for wav in (exp / "0_gt_wavs").iterdir():
        assert np.isfinite(sf.read(wav)[0]).all()
    assert temp_files(exp) == []


# ---- malicious pickles: every place a model file is read ------------------------------------------------
def _evil_cases(world: World, tmp: Path) -> dict[str, list[object]]:
    evil = world.evil("model.pth")
    evil_raw = world.evil("plain_pickle.pth", raw=True)
    state = world.evil("state.pt", {"model": {}})
    run_dir = tmp / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(world.evil("ckpt.pt", {"format": 1}), run_dir / "checkpoints" / "step_00000002.pt")
    wav = world.inputs / "good.wav"
    return {
        "convert --model": ["convert", wav, "--model", evil, "--hubert", world.hubert, "--out", tmp / "o.wav"],
        "convert --model (plain pickle)": ["convert", wav, "--model", evil_raw, "--hubert", world.hubert,
                                           "--out", tmp / "o.wav"],
        "convert --hubert": ["convert", wav, "--model", world.base, "--hubert", world.evil("hubert.pt", {}),
                             "--out", tmp / "o.wav"],
        "convert --rmvpe": ["convert", wav, "--model", world.base, "--hubert", world.hubert, "--f0-method",
                            "rmvpe", "--rmvpe", world.evil("rmvpe.pt", {}), "--out", tmp / "o.wav"],
        "merge --base": ["merge", "--base", evil, "--adapter", world.adapter, "--out", tmp / "m.pth"],
        "extract --base": ["extract", "--base", evil, "--tuned", world.base, "--rank", 2, "--out", tmp / "a.st"],
        "extract --tuned": ["extract", "--base", world.base, "--tuned", evil, "--rank", 2, "--out", tmp / "a.st"],
        "inspect": ["inspect", evil],
        "train base.g": world.train_args(tmp / "r1", 2, f"base.g={state}"),
        "train base.d": world.train_args(tmp / "r2", 2, f"base.d={state}", "trainer.discriminator=frozen"),
        "train resume checkpoint": world.train_args(run_dir, 4),
        "prepare content.path": ["prepare", "model=tiny", f"data.input_dir={world.inputs}",
                                 f"data.experiment_dir={tmp / 'exp'}", "pitch.method=dio",
                                 f"content.path={world.evil('content.pt', {})}", "data.min_total_seconds=1",
                                 "data.num_workers=0", "data.progress=false"],
    }


CASES = ["convert --model", "convert --model (plain pickle)", "convert --hubert", "convert --rmvpe", "merge --base",
         "extract --base", "extract --tuned", "inspect", "train base.g", "train base.d", "train resume checkpoint",
         "prepare content.path"]


@pytest.mark.parametrize("case", CASES)
def test_malicious_pickle_is_refused_with_one_line_and_never_run(world, cli, tmp_path, case):
    args = _evil_cases(world, tmp_path)[case]
    run = cli(*args)
    line = run.error_line()
    assert run.code == 2, run.err
    assert REFUSED in line, line
    assert not world.marker.exists()
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "m.pth").exists()


@pytest.mark.parametrize("layout", ["protocol 0", "protocol 2", "protocol 4", "protocol 5", "torch legacy",
                                    "torch zip"])
def test_every_pickle_layout_is_classified_without_running_it(world, tmp_path, layout):
    from rvc_lora.safe_load import load_torch_file, pickled_globals

    payload = {"model": {"w": torch.zeros(2)}, "x": _RunsShell(world.marker)}
    path = tmp_path / "evil.pth"
    if layout.startswith("protocol"):
        path.write_bytes(pickle.dumps(payload, protocol=int(layout.split()[1])))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "torch zip")
    assert "posix.system" in pickled_globals(path)
    with pytest.raises(RVCLoraError) as err:
        load_torch_file(path)
    assert REFUSED in str(err.value)


# ---- adapters and strengths -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["merge", "convert"])
@pytest.mark.parametrize(("which", "expected"), [
    ("nan_adapter", "holds NaN or infinite values"),
    ("foreign_adapter", "fingerprint"),
])
def test_unusable_adapter_is_refused_and_nothing_is_written(world, cli, tmp_path, command, which, expected):
    adapter = getattr(world, which)
    if command == "merge":
        out = tmp_path / "merged.pth"
        run = cli("merge", "--base", world.base, "--adapter", adapter, "--out", out)
    else:
        out = tmp_path / "out.wav"
        run = cli(*world.convert_args(world.inputs / "good.wav", out=out, extra=("--adapter", adapter)))
    line = run.error_line()
    assert run.code == 2 and expected in line and str(adapter) in line, line
    assert not out.exists() and temp_files(tmp_path) == []


@pytest.mark.parametrize("strength", ["1e9", "nan", "inf", "-inf", "-11"])
def test_strength_out_of_range_or_not_finite_is_refused(world, cli, tmp_path, strength):
    run = cli("merge", "--base", world.base, "--adapter", f"{world.adapter}:{strength}", "--out", tmp_path / "m.pth")
    line = run.error_line()
    assert run.code == 2 and "strength" in line and str(world.adapter) in line, line
    assert not (tmp_path / "m.pth").exists()
    if strength in ("nan", "inf", "-inf"):  # never, not even with --force
        forced = cli("merge", "--base", world.base, "--adapter", f"{world.adapter}:{strength}", "--out",
                     tmp_path / "m.pth", "--force")
        assert forced.code == 2 and "not a finite number" in forced.error_line()


def test_strength_beyond_range_needs_force_and_then_merges_finite_weights(world, cli, tmp_path):
    out = tmp_path / "m.pth"
    run = cli("merge", "--base", world.base, "--adapter", f"{world.adapter}:12", "--out", out, "--force")
    assert run.code == 0, run.err
    weights = torch.load(out, weights_only=True)["weight"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_converter_refuses_bad_strengths_the_same_way(world):
    from rvc_lora.infer import Converter

    conv = Converter(world.base, world.hubert, [(world.adapter, 0.5)], device="cpu", f0_method="pm")
    for bad in (float("nan"), float("inf"), 1e9):
        with pytest.raises(RVCLoraError, match="strength"):
            conv.set_strength(0, bad)
        with pytest.raises(RVCLoraError, match="strength"):
            conv.set_adapters([(world.adapter, bad)])
    assert conv.adapters == [(world.adapter, 0.5)]  # unchanged after the refusals
    conv.set_strength(0, 11.0, force=True)


def test_conversion_that_would_write_nan_reports_the_file_and_writes_nothing(world, cli, tmp_path):
    out = tmp_path / "out"
    # A forced absurd strength overflows the merged weights: the output would be NaN / inf.
    run = cli(*world.convert_args(world.inputs / "good.wav", out=out / "good.wav",
                                  extra=("--adapter", f"{world.adapter}:1e38", "--force")))
    assert run.code == 1 and "Traceback" not in run.err
    failed = [ln for ln in run.err.splitlines() if ln.startswith("rvc-lora: failed:")]
    assert len(failed) == 1 and "good.wav" in failed[0] and "NaN or infinite samples" in failed[0], run.err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["truncated.pth", "random.pth", "adapter_random.safetensors", "empty.pth"])
def test_damaged_model_and_adapter_files_give_one_line(world, cli, tmp_path, name):
    path = tmp_path / name
    if name == "truncated.pth":
        path.write_bytes(world.base.read_bytes()[:5000])
    elif name == "empty.pth":
        path.write_bytes(b"")
    else:
        path.write_bytes(np.random.default_rng(1).bytes(3000))
    if name.endswith(".safetensors"):
        run = cli("merge", "--base", world.base, "--adapter", path, "--out", tmp_path / "m.pth")
    else:
        run = cli("merge", "--base", path, "--adapter", world.adapter, "--out", tmp_path / "m.pth")
    line = run.error_line()
    assert run.code == 2 and str(path) in line, line


# ---- configs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("trainer.no_such_key=1", "no_such_key"),
    ("trainer.discriminator=sometimes", "sometimes"),
    ("base.g=/nonexistent/G.pth", "/nonexistent/G.pth"),
    ("recipe=no_such_recipe", "no_such_recipe"),
    ("trainer.batch_size=banana", "banana"),
])
def test_bad_config_gives_one_line_before_any_work(world, cli, tmp_path, override, expected):
    run = cli(*world.train_args(tmp_path / "run", 2, override))
    line = run.error_line()
    assert run.code == 2 and expected in line, line
    assert list_checkpoints(tmp_path / "run") == []


# ---- the file system refuses ---------------------------------------------------------------------------
def test_output_path_through_a_file_gives_one_line_for_every_writer(world, cli, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder is expected")
    runs = {
        "merge": cli("merge", "--base", world.base, "--adapter", world.adapter, "--out", blocker / "m.pth"),
        "extract": cli("extract", "--base", world.base, "--tuned", world.other_base, "--rank", 2, "--out",
                       blocker / "a.safetensors"),
        "convert": cli(*world.convert_args(world.inputs / "good.wav", out=blocker / "o.wav")),
        "train": cli(*world.train_args(blocker / "run", 2)),
    }
    for name, run in runs.items():
        line = run.error_line()
        assert run.code == 1 and f"cannot write {blocker}" in line and "not a folder" in line, (name, line)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(("code", "writing", "expected"), [
    (errno.ENOSPC, True, "no space left while writing {p}; free space and re-run"),
    (errno.EDQUOT, True, "no space left while writing {p}; free space and re-run"),
    (errno.EFBIG, True, "no space left while writing {p} (the file-size limit was reached); free space or raise"),
    (errno.EACCES, True, "permission denied writing {p}; make its folder writable or choose another output"),
    (errno.EACCES, False, "permission denied reading {p}; check the file's permissions"),
    (errno.EROFS, True, "{p} is on a read-only file system; choose another output location"),
    (errno.ENOENT, False, "cannot read {p}: no such file or folder"),
    (errno.ENOTDIR, True, "cannot write {p}: a part of the path is a file, not a folder"),
    (errno.EISDIR, True, "cannot write {p}: it is a folder; give a file name"),
    (errno.EMFILE, False, "too many open files while reading {p}; raise the limit (ulimit -n)"),
    (errno.EIO, True, "cannot write {p}: Input/output error; check the disk and the path"),
])
def test_every_file_system_error_becomes_one_line_with_a_fix(tmp_path, code, writing, expected):
    from rvc_lora.utils import StorageError

    path = tmp_path / "x.pth"
    err = StorageError.from_os_error(OSError(code, os.strerror(code), str(path)), writing=writing)
    assert str(err).startswith(expected.format(p=path)) and "\n" not in str(err), str(err)
    assert err.exit_code == 1 and err.path == path


def test_debug_flag_and_environment_show_the_traceback(world, cli, tmp_path, monkeypatch):
    args = ["merge", "--base", tmp_path / "missing.pth", "--adapter", world.adapter, "--out", tmp_path / "m.pth"]
    quiet = cli(*args)
    assert quiet.code == 2 and "Traceback" not in quiet.err
    loud = cli(*args[:1], "--debug", *args[1:])
    assert loud.code == 2 and "Traceback" in loud.err and "missing.pth: file not found" in loud.err
    monkeypatch.setenv("RVC_LORA_DEBUG", "1")
    assert "Traceback" in cli(*args).err


@pytest.fixture
def locked_folder(tmp_path):
    """A folder nobody may write to. Root ignores permissions, so children that must obey them drop
    that power first (see ``run_child(obey_permissions=True)``)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    yield locked
    locked.chmod(0o755)


def test_read_only_output_folder_gives_one_line_and_exit_1(world, locked_folder):
    merge = run_child("merge", "--base", world.base, "--adapter", world.adapter, "--out", locked_folder / "m.pth",
                      obey_permissions=True)
    line = merge.error_line()
    assert merge.code == 1 and "permission denied" in line and str(locked_folder / "m.pth") in line, merge.err
    convert = run_child(*world.convert_args(world.inputs / "good.wav", out=locked_folder / "sub" / "o.wav"),
                        obey_permissions=True)
    line = convert.error_line()
    assert convert.code == 1 and "permission denied" in line and str(locked_folder / "sub") in line, convert.err
    assert list(locked_folder.iterdir()) == []


def test_full_disk_during_convert_says_so_and_leaves_no_partial_file(world, tmp_path):
    out = tmp_path / "out"
    run = run_child(*world.convert_args(world.inputs / "good.wav", world.inputs / "noise.wav", out=out),
                    file_limit=20_000)
    assert run.code == 1 and "Traceback" not in run.err, run.err
    failed = [ln for ln in run.err.splitlines() if ln.startswith("rvc-lora: failed:")]
    assert len(failed) == 1 and "no space left while writing" in failed[0] and "good.wav" in failed[0], run.err
    assert "LibsndfileError" not in run.err and "1 more input(s) not converted" in run.err
    assert list(out.iterdir()) == []  # no partial output, no temporary file


# ---- training: full disk, kill -9, resume --------------------------------------------------------------
def _adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run_dir / "adapter.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@dataclass
class Story:
    """One training run through the faults, in order (shared by the tests below)."""

    run_dir: Path
    killed_code: int | None = None
    killed_at: int = 0  # newest checkpoint step when the process was killed
    killed_checkpoint: Path | None = None
    planted: list[Path] | None = None
    foreign_temp: Path | None = None
    full_disk: Run | None = None
    full_disk_limit: int = 0
    checkpoint_bytes: bytes = b""
    temps_after_full_disk: list[Path] | None = None
    finished: Run | None = None
    temps_after_finish: list[Path] | None = None
    reference_dir: Path | None = None


@pytest.fixture(scope="module")
def story(world) -> Story:
    """kill -9 during training (after its first checkpoint) -> stale temporary files planted -> resumed with
    the disk full when the next checkpoint is written -> resumed again with space: finishes. Then an
    uninterrupted run of the same length, for comparison."""
    story = Story(world.root / "story")
    run_dir = story.run_dir
    proc = subprocess.Popen([sys.executable, "-m", "rvc_lora.cli", *map(str, world.train_args(run_dir, 1000))],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list_checkpoints(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    story.killed_code = proc.wait()
    story.killed_at, story.killed_checkpoint = list_checkpoints(run_dir)[-1]
    story.checkpoint_bytes = story.killed_checkpoint.read_bytes()
    # What kills in the middle of writes leave behind (from before this start), and a file not the trainer's.
    story.planted = [run_dir / ".adapter.safetensors.k1ll3d.tmp", run_dir / ".merged.pth.abc.tmp",
                     run_dir / "checkpoints" / f".step_{story.killed_at + 2:08d}.pt.x.tmp"]
    for path in story.planted:
        path.write_bytes(b"half a file")
        os.utime(path, (time.time() - 60, time.time() - 60))
    story.foreign_temp = run_dir / ".notes.txt.mine.tmp"
    story.foreign_temp.write_text("not the trainer's")
    total = story.killed_at + 2
    # Room for logs, configs and adapters, not for another checkpoint (the same size as the last one).
    story.full_disk_limit = len(story.checkpoint_bytes) - 4096
    story.full_disk = run_child(*world.train_args(run_dir, total), file_limit=story.full_disk_limit)
    story.temps_after_full_disk = temp_files(run_dir)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in world.train_args(run_dir, total)])
    story.finished = Run(code, out.getvalue(), err.getvalue())
    story.temps_after_finish = temp_files(run_dir)
    story.reference_dir = world.root / "uninterrupted"
    assert cli_main([str(a) for a in world.train_args(story.reference_dir, total)]) == 0
    return story


def test_kill_9_leaves_the_last_checkpoint_intact(story):
    assert story.killed_code == -signal.SIGKILL
    assert load_checkpoint(story.killed_checkpoint)["step"] == story.killed_at


def test_full_disk_while_writing_a_checkpoint_says_so_and_keeps_the_last_good_one(story):
    run, run_dir, good = story.full_disk, story.run_dir, story.killed_checkpoint
    line = run.error_line()
    assert run.code == 1, run.err
    failed = run_dir / "checkpoints" / f"step_{story.killed_at + 2:08d}.pt"
    assert line == (f"rvc-lora: error: no space left while writing {failed} (the file-size limit was reached); "
                    f"nothing was lost, the last good checkpoint is {good}; free space or raise the limit "
                    "(ulimit -f) and re-run"), line
    assert f"resuming from step {story.killed_at} (checkpoint {good})" in run.out
    assert good.read_bytes() == story.checkpoint_bytes
    assert story.temps_after_full_disk == [story.foreign_temp]  # the kill's leftovers went at the start


def test_resume_is_announced_finishes_and_cleans_up(story):
    run = story.finished
    assert run.code == 0, run.err
    assert f"resuming from step {story.killed_at} (checkpoint {story.killed_checkpoint})" in run.out
    assert story.temps_after_finish == [story.foreign_temp]  # only the trainer's own temporaries are removed
    assert load_checkpoint(story.run_dir / "checkpoints" / f"step_{story.killed_at + 2:08d}.pt")["step"] == \
        story.killed_at + 2


def test_resumed_run_equals_an_uninterrupted_one_exactly(story):
    reference = _adapter_tensors(story.reference_dir)
    got = _adapter_tensors(story.run_dir)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(got[key], value), key  # exact: resuming is the same computation


def test_non_finite_training_state_never_replaces_the_last_good_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, 2, {"adapter": {"w": torch.ones(3)}}, keep=2)
    with pytest.raises(RVCLoraError) as err:
        save_checkpoint(tmp_path, 4, {"adapter": {"w": torch.tensor([1.0, float("nan")])}}, keep=2)
    message = str(err.value)
    assert "adapter.w" in message and f"the last good checkpoint is {good}" in message
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2] and temp_files(tmp_path) == []
    assert torch.equal(load_checkpoint(good)["adapter"]["w"], torch.ones(3))
