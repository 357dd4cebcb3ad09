"""The run config: defaults, YAML files, overrides, validation that collects every problem."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import RunConfig, from_dict, load_config, read_saved_config, save_config, validate
from pipeline.errors import ConfigError

# run configs (study grids in configs/studies/ are checked by tests/test_study.py, recipes in configs/recipes/ by
# tests/test_recipe.py)
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if not {"studies", "recipes"} & set(p.parts))


def test_defaults_are_valid():
    cfg = validate(RunConfig())
    assert cfg.model.preset == "minilm-l6" and cfg.cv.n_folds == 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_loads_and_validates(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, RunConfig)


def test_overrides_parse_types():
    cfg = load_config(None, ["train.lr=3e-5", "cv.n_folds=7", "train.length_grouped=false",
                             "data.max_rows=null", "model.preset=tfidf-lr"])
    assert cfg.train.lr == pytest.approx(3e-5) and cfg.cv.n_folds == 7
    assert cfg.train.length_grouped is False and cfg.data.max_rows is None
    assert cfg.model.preset == "tfidf-lr"


def test_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rate'.*valid keys: lr"):
        load_config(None, ["train.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian'; did you mean 'train'"):
        load_config(None, ["trian.lr=1e-4"])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.warmup_ratio=1.5", "cv.n_folds=1", "train.epochs=abc",
                           "model.preset=debreta-v3-base"])
    message = str(info.value)
    assert "train.epochs must be an integer, got 'abc'" in message
    # type errors stop before range checks; range problems are collected together
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.warmup_ratio=1.5", "cv.n_folds=1", "model.preset=debreta-v3-base",
                           "train.pos_weight=half"])
    message = str(info.value)
    assert "train.warmup_ratio must be in [0, 1), got 1.5" in message
    assert "cv.n_folds must be in [2, 20], got 1" in message
    assert "unknown model preset 'debreta-v3-base'; did you mean 'deberta-v3-base'" in message
    assert "train.pos_weight must be one of full, sqrt, none, got 'half'" in message


def test_bad_set_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(bad))


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  epochs: 2\n")
    cfg = load_config(str(path), ["train.epochs=5"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.epochs == 5


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=2e-5", "cv.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = read_saved_config(tmp_path / "config.yaml")
    assert again == cfg and again.short_hash() == cfg.short_hash()


def test_run_name_ignores_data_dir_but_not_results():
    a = from_dict({"data": {"data_dir": "x"}})
    b = from_dict({"data": {"data_dir": "y"}})
    c = from_dict({"train": {"lr": 1e-3}})
    assert a.run_name() == b.run_name() != c.run_name()
    assert a.run_name().startswith("minilm-l6-f5-s42-")


def test_run_hash_depends_only_on_settings_that_differ_from_defaults():
    base = load_config(None, ["model.preset=tfidf-lr"])
    assert base.short_hash() == load_config(None, ["model.preset=tfidf-lr", "train.epochs=3"]).short_hash()
    assert base.short_hash() != load_config(None, ["model.preset=tfidf-lr", "train.epochs=4"]).short_hash()
    # where files live and checkpoint cadence do not change results, so not the hash either
    assert base.short_hash() == load_config(None, ["model.preset=tfidf-lr", "data.data_dir=/elsewhere",
                                                   "train.checkpoint_every=50"]).short_hash()


def test_lora_layers_parse_and_checks():
    from pipeline.presets import settings

    cfg = load_config(None, ["model.preset=smollm2-135m", "model.lora_layers=15-29"])
    assert settings(cfg.model).lora_layers == tuple(range(15, 30))
    assert settings(load_config(None, ["model.preset=smollm2-135m", "model.lora_layers=29"]).model).lora_layers == (29,)
    assert settings(load_config(None, ["model.preset=smollm2-135m", "model.lora_layers=0-2,5, 1"]).model).lora_layers \
        == (0, 1, 2, 5)
    assert settings(load_config(None, ["model.preset=smollm2-135m"]).model).lora_layers == ()  # every block
    for value, message in [("30", r"preset 'smollm2-135m' has 30 blocks, numbered 0-29"),
                           ("a-b", r"must list block numbers like '15-29'"),
                           ("9-3", r"range running backwards \('9-3'\)")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["model.preset=smollm2-135m", f"model.lora_layers={value}"])
    with pytest.raises(ConfigError, match=r"model.lora_layers needs model.finetune=lora or generate.*got full"):
        load_config(None, ["model.preset=minilm-l6", "model.lora_layers=3-5"])
