"""Compose the Hydra configuration (``conf/config.yaml``) with a recipe and command-line overrides.

``conf/`` and ``recipes/`` are the top-level folders of a source checkout; an installed wheel carries them as
``rvc_lora/conf`` and ``rvc_lora/recipes`` (see setup.py). ``RVC_LORA_CONF`` points at another ``conf/``.

``recipe=NAME`` is looked up as a path, then ``./recipes/NAME.yaml``, then ``$RVC_LORA_HOME/recipes/NAME.yaml``,
then the shipped ``recipes/NAME.yaml``. A recipe starts with ``# @package _global_`` and may override any
group (``defaults: [{override /lora: hq}]``) or value.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rvc_lora.config_schema import register_schema, schema_keys
from rvc_lora.utils import RVCLoraError


def shipped_folder(name: str) -> Path:
    """``conf`` or ``recipes`` as installed: inside the package (a wheel), else the checkout's top level."""
    inside = importlib.resources.files("rvc_lora") / name
    if inside.is_dir():
        return Path(str(inside))
    return Path(__file__).resolve().parents[1] / name


CONF_DIR = Path(os.environ.get("RVC_LORA_CONF") or shipped_folder("conf"))
RECIPES_DIR = shipped_folder("recipes")
_HYDRA_LOCK = threading.Lock()  # Hydra's composition state is process-global


def recipe_folders() -> list[Path]:
    """Where recipes are found by name, first match wins: ./recipes, $RVC_LORA_HOME/recipes, the shipped ones."""
    folders = [Path("recipes")]
    if os.environ.get("RVC_LORA_HOME"):
        folders.append(Path(os.environ["RVC_LORA_HOME"]) / "recipes")
    return folders + [RECIPES_DIR]


def find_recipe(name: str) -> Path:
    """Resolve a recipe name or path to a YAML file, or raise listing what is available."""
    folders = recipe_folders()
    candidates = [Path(name), Path(f"{name}.yaml"), *(folder / f"{name}.yaml" for folder in folders)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    known = sorted({p.stem for d in folders if d.is_dir() for p in d.glob("*.yaml")})
    raise RVCLoraError(
        f"recipe {name!r} not found (looked for a file, then {name}.yaml in {', '.join(map(str, folders))}); "
        f"available: {', '.join(known) or 'none'}"
    )


ASSET_PREFIX = "asset:"
TRAIN_ASSETS = ("base.g", "base.d")


def prepare_assets(cfg: DictConfig) -> tuple[str, ...]:
    """The model files ``prepare`` needs: the content model, and RMVPE only when pitch can use it."""
    keys = ("content.path",)
    if str(cfg.pitch.method) in ("rmvpe", "auto"):
        keys += ("pitch.rmvpe_path",)
    return keys


def resolve_asset_references(cfg: DictConfig, keys: Sequence[str]) -> DictConfig:
    """Replace ``asset:NAME`` values of ``keys`` by the cached file, downloading it if needed."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.startswith(ASSET_PREFIX):
            from rvc_lora.assets import download_asset

            OmegaConf.update(cfg, key, str(download_asset(value[len(ASSET_PREFIX):])))
    return cfg


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` (Hydra syntax); errors become ``RVCLoraError``.

    ``asset:NAME`` values stay as they are; commands resolve the ones they use with
    ``resolve_asset_references``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_schema()

    if not (CONF_DIR / "config.yaml").is_file():
        raise RVCLoraError(f"configuration folder not found: {CONF_DIR} (no config.yaml); reinstall rvc-lora "
                           "or point RVC_LORA_CONF at a conf/ folder")
    overrides = list(overrides)
    sources: dict[str, Path] = {}  # Hydra's config path -> the file the user wrote
    with tempfile.TemporaryDirectory(prefix="rvc-lora-recipe-") as tmp:
        for i, item in enumerate(overrides):
            key, _, value = item.partition("=")
            if key.lstrip("+") == "recipe" and value and value != "null":
                source = find_recipe(value)
                sources[f"recipe/{source.stem}"] = source
                (Path(tmp) / "recipe").mkdir(exist_ok=True)
                shutil.copyfile(source, Path(tmp) / "recipe" / f"{source.stem}.yaml")
                overrides[i] = f"recipe={source.stem}"
                overrides.append(f"hydra.searchpath=[file://{tmp}]")
        try:
            with _HYDRA_LOCK, initialize_config_dir(str(CONF_DIR.resolve()), version_base="1.3"):
                cfg = compose("config", overrides=overrides)
            OmegaConf.resolve(cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            raise composition_error(exc, sources) from None
    return cfg


def composition_error(exc: Exception, sources: Mapping[str, Path]) -> RVCLoraError:
    """Hydra's or OmegaConf's composition error as one line: the file (or the command line), the key, and
    the allowed keys or values."""
    lines = str(exc).strip().splitlines()
    where = "command line"
    named = re.match(r"In '([^']+)'", lines[0])
    if named:
        where = str(sources.get(named.group(1)) or CONF_DIR / f"{named.group(1)}.yaml")
    if "Available options in" in str(exc):  # an unknown group option, e.g. lora=nope
        options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
        return RVCLoraError(f"invalid configuration: {lines[0]}; available: {', '.join(options)}")
    cause: BaseException | None = exc
    while cause is not None and getattr(cause, "full_key", None) is None:  # the OmegaConf error inside
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return RVCLoraError(f"invalid configuration: {where}: {lines[0]}")
    key = str(cause.full_key)
    problem = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
    if re.match(r"Key '[^']*' not in '", problem):
        parent = key.rpartition(".")[0]
        allowed = schema_keys(parent)
        problem = (f"unknown key {key!r}; allowed in {parent or 'the top level'}: {', '.join(allowed)}"
                   if allowed is not None else f"unknown key {key!r}")
    else:
        problem = f"{key}: {problem}"
    return RVCLoraError(f"invalid configuration: {where}: {problem}")
