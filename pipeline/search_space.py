"""Hyperparameter search spaces as data: preset -> {dotted config key: distribution spec}.

A spec mirrors Optuna's suggest calls: `{type: float, low: 1e-5, high: 3e-4, log: true}`,
`{type: int, low: 2, high: 5}` (`step` optional for both) or `{type: categorical, choices: [full, sqrt]}`.
A `--space FILE.yaml` holds the same mapping; its keys replace or extend the preset's, and `KEY: null`
drops one. Every key is checked by building configs at its bounds through the normal config path.
"""
from __future__ import annotations

import json
from typing import Optional

from pipeline.config import RunConfig, apply_overrides, from_dict, read_yaml, validate
from pipeline.errors import ConfigError
from pipeline.presets import get_preset


def _neural(lr_low: float, lr_high: float, batch_sizes: list, epochs: tuple = (2, 5)) -> dict:
    return {
        "train.lr": {"type": "float", "low": lr_low, "high": lr_high, "log": True},
        "train.epochs": {"type": "int", "low": epochs[0], "high": epochs[1]},
        "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.pos_weight": {"type": "categorical", "choices": ["full", "sqrt", "none"]},
        "train.batch_size": {"type": "categorical", "choices": list(batch_sizes)},
    }


# Presets with a space of their own; every other neural preset gets `_neural` around its default lr
# (a third to three times it) and batch size (half to double it), see `space_for`.
SPACES = {
    # the default lr 1e-4 sits in the middle of the log range
    "minilm-l6": _neural(3e-5, 3e-4, [16, 32, 64]),
    # for tests: a random 2-layer model trains in seconds
    "tiny-encoder": _neural(1e-4, 1e-2, [8, 16], epochs=(1, 3)),
    # no network: of the keys above only the positive-weight mode changes a TF-IDF run
    "tfidf-lr": {"train.pos_weight": {"type": "categorical", "choices": ["full", "sqrt", "none"]}},
}

TYPES = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
         "categorical": {"choices"}}
FIXED_SECTIONS = ("data", "cv")  # they change the rows or folds trials are compared on


def space_for(preset_name: str) -> dict:
    """The preset's search space: {dotted key: spec} (a copy the caller may change)."""
    preset = get_preset(preset_name)
    if preset_name in SPACES:
        space = SPACES[preset_name]
    elif preset.kind == "tfidf":
        space = SPACES["tfidf-lr"]
    else:
        space = _neural(preset.lr / 3, preset.lr * 3,
                        sorted({max(1, preset.batch_size // 2), preset.batch_size, preset.batch_size * 2}),
                        epochs=(1, 3) if preset.kind == "decoder" else (2, 5))
    return json.loads(json.dumps(space))


def read_space_file(path: str) -> dict:
    """A YAML mapping {dotted key: spec or null} from `path`."""
    raw = read_yaml(path, "search space file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must map dotted config keys to specs (e.g. 'train.lr: {{type: float, low: "
                          f"1e-5, high: 1e-3, log: true}}'), got {type(raw).__name__}")
    return raw


def merge_space(space: dict, extra: dict) -> dict:
    """`space` with `extra`'s keys replacing or adding specs; a key whose value is null is dropped."""
    out = dict(space)
    for key, spec in extra.items():
        if spec is None:
            out.pop(key, None)
        else:
            out[key] = spec
    return out


def config_with(base: RunConfig, params: dict, source: str = "search trial") -> RunConfig:
    """`base` with each dotted key set to its value, through the same override and validation path as
    `--set KEY=VALUE`. params: {dotted key: value}."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    return validate(from_dict(apply_overrides(base.to_dict(), overrides), source))


def _spec_problems(key: str, spec) -> list:
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        return [f"{key} needs a spec like {{type: float, low: 1e-5, high: 1e-3}}, with type one of "
                f"{', '.join(TYPES)}; got {spec!r}"]
    kind = spec["type"]
    unknown = sorted(set(spec) - TYPES[kind] - {"type"})
    if unknown:
        return [f"{key}: unknown field(s) {', '.join(unknown)} for type {kind} "
                f"(allowed: {', '.join(sorted(TYPES[kind]))})"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or \
                not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            return [f"{key}: choices must be a non-empty list of plain values, got {choices!r}"]
        return []
    low, high = spec.get("low"), spec.get("high")
    number = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        return [f"{key}: low and high must both be {'integers' if kind == 'int' else 'numbers'}, got {low!r}, {high!r}"]
    problems = []
    if not low < high:
        problems.append(f"{key}: low must be below high, got {low}, {high}")
    if spec.get("log") and low <= 0:
        problems.append(f"{key}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        problems.append(f"{key}: step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    if step is not None and spec.get("log") and not (kind == "int" and step == 1):
        problems.append(f"{key}: log and step cannot be combined")
    return problems


def extremes(spec: dict) -> list:
    """The values a spec can reach at its edges: every choice, or low and high."""
    return list(spec["choices"]) if spec["type"] == "categorical" else [spec["low"], spec["high"]]


def _numbers(spec):
    """PyYAML reads `1e-5` (no dot) as a string: numbers written so in low, high and step become numbers."""
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    for field in ("low", "high", "step"):
        if isinstance(spec.get(field), str):
            try:
                value = float(spec[field])
            except ValueError:
                continue
            spec[field] = int(value) if spec.get("type") == "int" and value.is_integer() else value
    return spec


def check_space(space: dict, base: RunConfig, source: str) -> dict:
    """Check every key and spec, and that a config at each edge of each range is valid. Collects every
    problem and raises one ConfigError naming each key. Returns the space, numbers read as numbers."""
    problems = []
    space = {key: _numbers(spec) for key, spec in space.items()}
    if not space:
        problems.append("the search space is empty: give a --space file with at least one key")
    for key, spec in space.items():
        parts = str(key).split(".")
        if len(parts) != 2:
            problems.append(f"key '{key}' must look like section.key (e.g. train.lr)")
            continue
        if parts[0] in FIXED_SECTIONS:
            problems.append(f"{key} cannot be searched: the {parts[0]} section decides the rows and folds "
                            f"trials are compared on (set it with --set or --config)")
            continue
        spec_problems = _spec_problems(key, spec)
        if spec_problems:
            problems += spec_problems
            continue
        for value in extremes(spec):
            try:
                config_with(base, {key: value}, f"{key}={value!r}")
            except ConfigError as exc:
                problems.append(str(exc))
                break
    if problems:
        raise ConfigError(f"search space ({source}): " + "; ".join(problems))
    return space


def drop_fixed(space: dict, overrides: list) -> tuple:
    """Keys fixed on the command line (`--set KEY=...`) leave the space. Returns (space, dropped keys)."""
    fixed = {item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item}
    return {k: v for k, v in space.items() if k not in fixed}, sorted(fixed & set(space))


def suggest(trial, space: dict) -> dict:
    """One value per key from an Optuna trial (parameter names are the dotted keys). Returns {key: value}."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step") or 1,
                                            log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"),
                                              log=bool(spec.get("log")))
    return params


def contains(spec: dict, value) -> bool:
    """Whether `value` is one the spec can suggest (a choice, or within [low, high])."""
    if spec["type"] == "categorical":
        return value in spec["choices"]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return spec["low"] <= value <= spec["high"] and (spec["type"] == "float" or float(value).is_integer())


def resolved_value(cfg: RunConfig, key: str):
    """The value a dotted key takes in a run of `cfg`, with the preset's lr and batch size filled in."""
    from pipeline.presets import train_settings

    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    if value is None and key in ("train.lr", "train.batch_size"):
        value = train_settings(cfg)[0 if name == "lr" else 1]
    return value


def baseline_params(space: dict, cfg: RunConfig) -> Optional[dict]:
    """The base config's own values of the searched keys, when each lies in its range (else None):
    queued as the first trial, so the search starts from the settings it would otherwise run."""
    params = {key: resolved_value(cfg, key) for key in space}
    return params if all(contains(space[k], v) for k, v in params.items()) else None


def most_epochs(space: dict, cfg: RunConfig) -> int:
    """The most epochs any trial can train a fold for (train.epochs' upper edge, or the base config's)."""
    spec = space.get("train.epochs")
    return int(max(extremes(spec))) if spec else cfg.train.epochs
