"""An installed wheel carries conf/ and recipes/; recipes are found by name in ./recipes, $RVC_LORA_HOME, shipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rvc_lora.config import RECIPES_DIR, find_recipe, load_config
from rvc_lora.utils import RVCLoraError

CHECKOUT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "rvc_lora", "conf", "recipes")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_ships_conf_and_recipes_and_composes_a_recipe_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy so the checkout gets no build/ or *.egg-info (offline: no isolation, no index).
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (CHECKOUT / name).is_dir():
            shutil.copytree(CHECKOUT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(CHECKOUT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
          str(source)])
    (wheel,) = (tmp_path / "dist").glob("rvc_lora-*.whl")
    target = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    shutil.rmtree(source)  # nothing may be read from the copy of the checkout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed wheel, ahead of any editable install
    env.pop("RVC_LORA_CONF", None)
    env.pop("RVC_LORA_HOME", None)
    where = _run([sys.executable, "-c", "import rvc_lora; print(rvc_lora.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(target)

    composed = _run([str(target / "bin" / "rvc-lora"), "config", "recipe=example", "lora=hq"], cwd=elsewhere,
                    env=env)
    assert "name: alice" in composed.stdout  # from the shipped recipes/example.yaml
    assert "rank: 16" in composed.stdout  # from the shipped conf/lora/hq.yaml
    assert "max_steps: 3000" in composed.stdout


def test_recipe_search_order_is_local_folder_then_rvc_lora_home_then_shipped(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "recipes").mkdir(parents=True)
    work = tmp_path / "work"
    (work / "recipes").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RVC_LORA_HOME", str(home))
    assert find_recipe("example") == (RECIPES_DIR / "example.yaml").resolve()

    home_recipe = home / "recipes" / "example.yaml"
    home_recipe.write_text("# @package _global_\ndata:\n  name: from_home\n")
    assert find_recipe("example") == home_recipe.resolve()
    assert load_config(["recipe=example"]).data.name == "from_home"

    local_recipe = work / "recipes" / "example.yaml"
    local_recipe.write_text("# @package _global_\ndata:\n  name: from_here\n")
    assert find_recipe("example") == local_recipe.resolve()

    with pytest.raises(RVCLoraError, match=r"recipe 'nope' not found .*available: example"):
        find_recipe("nope")
