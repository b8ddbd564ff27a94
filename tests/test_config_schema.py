"""The typed configuration: values come from conf/*.yaml only, code gets typed values, and a misspelt key,
a wrong type or an unknown choice fails at composition with one line naming the file and the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rvc_lora import config_schema as schema
from rvc_lora.cli import main
from rvc_lora.config import CONF_DIR, load_config
from rvc_lora.utils import RVCLoraError

# Declared for the adapter engine (#12), whose conf/lora/*.yaml bring their values; empty after its merge.


def _recipe(folder: Path, name: str, body: str) -> Path:
    (folder / "recipes").mkdir(exist_ok=True)
    path = folder / "recipes" / f"{name}.yaml"
    path.write_text("# @package _global_\n" + body)
    return path


def _dataclasses(root: type) -> list[type]:
    found, todo = [], [root]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += [t for t in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(t)]
    return found


def test_misspelt_key_in_a_recipe_fails_with_one_line_naming_key_file_and_allowed_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, "typo", "trainer:\n  max_stepz: 10\n")
    with pytest.raises(RVCLoraError) as caught:
        load_config(["recipe=typo"])
    message = str(caught.value)
    assert "\n" not in message
    assert str(recipe) in message and "'trainer.max_stepz'" in message
    assert "allowed in trainer: " in message and "max_steps" in message


def test_unknown_choice_and_wrong_type_name_the_key_and_what_is_allowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, "mode", "trainer:\n  discriminator: sometimes\n")
    with pytest.raises(RVCLoraError, match=r"mode\.yaml: trainer\.discriminator: Invalid value 'sometimes', "
                                           r"expected one of \[train, frozen, every_k, mel_only\]") as caught:
        load_config(["recipe=mode"])
    assert str(recipe) in str(caught.value)
    with pytest.raises(RVCLoraError, match=r"command line: trainer\.batch_size: Value 'banana' .* Integer"):
        load_config(["trainer.batch_size=banana"])
    with pytest.raises(RVCLoraError, match=r"command line: unknown key 'data\.slicer\.hop'; allowed in "
                                           r"data\.slicer: threshold_db, .*hop_ms"):
        load_config(["data.slicer.hop=10"])
    with pytest.raises(RVCLoraError, match=r"pitch\.method: Invalid value 'yin', expected one of \[auto, rmvpe"):
        load_config(["pitch.method=yin"])


def test_cli_reports_a_misspelt_recipe_key_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _recipe(tmp_path, "typo", "data:\n  nmae: alice\n")
    assert main(["config", "recipe=typo"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'data.nmae'" in err and "typo.yaml" in err, err


def test_composed_values_are_typed() -> None:
    cfg = load_config(["pitch.method=crepe_tiny", "trainer.grad_clip=1000"])
    assert type(cfg.trainer.max_steps) is int and type(cfg.optim.lr) is float
    assert cfg.trainer.grad_clip == 1000.0 and type(cfg.trainer.grad_clip) is float
    assert cfg.trainer.discriminator is schema.DiscriminatorMode["train"]
    assert cfg.trainer.discriminator == "train" and str(cfg.trainer.discriminator) == "train"
    assert cfg.pitch.method is schema.PitchMethod["crepe-tiny"]  # the spelling with '_' is an alias
    assert type(cfg.data.slicer.hop_ms) is int and type(cfg.data.highpass_hz) is float


def test_yaml_files_hold_every_value_and_the_schema_none() -> None:
    for cls in _dataclasses(schema.RVCLoraConfig):
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (cls, f.name)
    for group in ("model", "lora", "optim"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            cfg = load_config([f"{group}={option}"])
            assert not OmegaConf.missing_keys(cfg), (group, option)


def test_every_shipped_yaml_key_is_declared_in_the_schema() -> None:
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        declared = schema.schema_keys(path.parent.name)
        assert declared is not None, path
        assert sorted(set(OmegaConf.load(path)) - set(declared)) == [], path
