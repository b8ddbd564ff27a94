"""A real kill: SIGINT / SIGTERM to `rvc-lora train` saves a checkpoint; the same command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rvc_lora.train import list_checkpoints
from tests.train_helpers import make_setup

REPO = Path(__file__).resolve().parents[1]


def _command(tmp: Path, max_steps: int) -> list[str]:
    return [
        sys.executable, "-m", "rvc_lora.cli", "train", "model=tiny", f"data.experiment_dir={tmp / 'exp'}",
        "data.name=tiny", f"run_dir={tmp / 'run'}", f"base.g={tmp / 'G.pth'}", "trainer.batch_size=2",
        f"trainer.max_steps={max_steps}", "trainer.log_interval=1", "trainer.validation_interval=100000",
        "trainer.checkpoint_interval=100000", "trainer.discriminator=mel_only", "lora.rank=2", "lora.alpha=2",
        "trainer.segment_frames=8", "logging.progress=false",
    ]


def _wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the event file has grown past its header (a few steps logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        events = list(run_dir.glob("events.out.tfevents.*"))
        if events and events[0].stat().st_size > 2000:
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail("training did not start in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_same_command_resumes(tmp_path: Path, sig: signal.Signals):
    make_setup(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_command(tmp_path, 100000), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_training(tmp_path / "run", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "re-run the same command to resume" in out
    checkpoints = list_checkpoints(tmp_path / "run")
    assert len(checkpoints) == 1, "the signal handler saves exactly one checkpoint"
    step = checkpoints[0][0]
    assert step >= 1
    assert not (tmp_path / "run" / "adapter.safetensors").exists()  # interrupted: no final files

    done = subprocess.run(_command(tmp_path, step + 2), cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"trained {step + 2} steps" in done.stdout
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    assert (tmp_path / "run" / "merged.pth").is_file()
