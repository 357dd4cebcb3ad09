"""Recipe files: what a `configs/recipes/*.yaml` declares (pretrainings, K-fold runs, one ensemble), parsed
and checked as a whole. Every problem (unknown key, bad value, undeclared reference, a member on another
competition) is collected and raised once as a ConfigError naming the file and each key; running a recipe is
pipeline/recipe.py's job. A file may `extends:` another (relative path): it adds steps to that recipe's, and a
step named as one of the base's changes that step in place.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.errors import ConfigError

# what every step of a recipe shares: the recipe's folds, seed and competition keys and --data-dir set them
SHARED_KEYS = ("cv.n_folds", "cv.seed", "data.competition", "data.data_dir")
REF_PREFIXES = ("pretrained:", "run:")  # a `set` value naming another step's output folder


@dataclass(frozen=True)
class PretrainStep:
    name: str  # folder name under <recipe_dir>/models/
    model: str  # encoder or decoder preset (pipeline/presets.py)
    epochs: int = 3  # passes over the competition's train + test texts
    set: tuple = ()  # `section.key=value` overrides of this pretraining


@dataclass(frozen=True)
class RunStep:
    name: str  # folder name under <recipe_dir>/runs/
    model: Optional[str] = None  # preset; None = the config file's (or minilm-l6)
    config: Optional[str] = None  # run-config YAML, relative to the current directory; None = defaults
    set: tuple = ()  # `section.key=value` overrides; a value `pretrained:<name>` or `run:<name>` is that folder
    # another competition (e.g. goemotions): an intermediate fine-tuning for a later run's model.init_from, never an
    # ensemble member; its own K and data folder (default: the recipe's --data-dir's sibling named for it)
    competition: Optional[str] = None
    folds: Optional[int] = None
    data_dir: Optional[str] = None
    # train only this fold of such a run (run_cv.py --fold): the one fold model a later run starts from
    fold: Optional[int] = None


@dataclass(frozen=True)
class EnsembleStep:
    runs: tuple  # names of the runs averaged (matched by id)
    weights: str = "equal"  # 'equal', 'auto' (searched on OOF by ensemble selection) or 'stack' (pipeline/stacking.py)


@dataclass
class Recipe:
    name: str  # default recipe directory runs/recipes/<name>
    source: str  # the recipe file (named in every error)
    competition: str = "emotion-detection-fall-2024"  # competition definition of every step
    folds: int = 5  # K of every run (same folds for all: same data, K and seed)
    seed: int = 42  # seed of every pretraining and run
    set: tuple = ()  # `section.key=value` overrides for every run, before each run's own
    pretrain: list = field(default_factory=list)  # PretrainStep entries, run first, in order
    runs: list = field(default_factory=list)  # RunStep entries, in order
    ensemble: Optional[EnsembleStep] = None  # averaged into the submission
    bases: tuple = ()  # names of the recipes this one `extends` (their recipe directories may be reused)


def _close(name: str, options) -> str:
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def _plain_name(value) -> bool:
    return isinstance(value, str) and bool(value) and "/" not in value and not value.startswith(".")


def _unknown(key: str, entry: dict, known: list, problems: list) -> None:
    for k in entry:
        if k not in known:
            problems.append(f"{key}: unknown key '{k}'{_close(k, known)}; valid keys: {', '.join(known)}")


def _overrides(key: str, value, problems: list) -> tuple:
    """`set` as a mapping {section.key: value} or a list of 'section.key=value' strings -> the strings."""
    if value is None:
        return ()
    if isinstance(value, dict):
        # non-strings as JSON, which the run config reads back as YAML (true, null, 3e-05, [q, v])
        return tuple(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    problems.append(f"{key} must be a mapping of section.key: value (or a list of 'section.key=value'), got {value!r}")
    return ()


def _int(key: str, value, low: int, problems: list) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def _shared(key: str, overrides: tuple, forbidden: tuple, problems: list) -> None:
    for item in overrides:
        name = item.split("=", 1)[0].strip()
        if name in forbidden:
            problems.append(f"{key}: {name} is the same for every step of a recipe: set it with the recipe's "
                            f"folds, seed and competition keys or --data-dir"
                            + (" (data.max_rows in the top-level set)" if name == "data.max_rows" else ""))


def ref_values(value: str) -> list:
    """The values of one override that may name a step: the value, or each string of a JSON list
    (`data.pseudo_label_from: [run:a, run:b]` arrives as '["run:a", "run:b"]')."""
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return [v for v in items if isinstance(v, str)] if isinstance(items, list) else [value]
    return [value]


def _references(key: str, overrides: tuple, pretrains: list, runs: list, problems: list) -> None:
    """Each `pretrained:<name>` / `run:<name>` value must name a pretraining or an earlier run."""
    for value in [v for item in overrides for v in ref_values(item.split("=", 1)[1])]:
        if value.startswith("pretrained:") and value[len("pretrained:"):] not in pretrains:
            name = value[len("pretrained:"):]
            problems.append(f"{key}: '{value}' names no pretrain step{_close(name, pretrains)}; declared: "
                            f"{', '.join(pretrains) or 'none'}")
        if value.startswith("run:") and value[len("run:"):] not in runs:
            name = value[len("run:"):]
            problems.append(f"{key}: '{value}' names no run declared before this one{_close(name, runs)}; "
                            f"declared before: {', '.join(runs) or 'none'}")


def _entries(raw: dict, section: str, problems: list) -> list:
    value = raw.get(section, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        problems.append(f"{section} must be a list of mappings, got {value!r}")
        return []
    return value


def parse_recipe(raw, source: str = "recipe") -> Recipe:
    """A Recipe from a YAML mapping; every problem (unknown key, bad value, undeclared reference, missing
    config file) is collected and raised once as a ConfigError naming `source` and each key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of recipe keys, got {type(raw).__name__}")
    known = ["name", "extends", "competition", "folds", "seed", "set", "pretrain", "runs", "ensemble"]
    problems: list = []
    _unknown("recipe", raw, known, problems)
    if "extends" in raw:  # load_recipe folds a file's base in before parsing; a bare mapping has no folder
        problems.append("extends: only a recipe file may extend another (its path is relative to that file)")
    recipe = Recipe(name=raw.get("name", Path(source).stem), source=source)
    if not _plain_name(recipe.name):
        problems.append(f"name must be a plain folder name, got {recipe.name!r}")
    recipe.competition = raw.get("competition", recipe.competition)
    if not isinstance(recipe.competition, str):
        problems.append(f"competition must be a competition name, got {recipe.competition!r}")
    recipe.folds = _int("folds", raw.get("folds", recipe.folds), 2, problems)
    recipe.seed = _int("seed", raw.get("seed", recipe.seed), 0, problems)
    recipe.set = _overrides("set", raw.get("set"), problems)
    _shared("set", recipe.set, SHARED_KEYS, problems)
    problems += [f"set: '{s}' names no pretrain or run here (use it in a run's own set)" for s in recipe.set
                 if any(v.startswith(REF_PREFIXES) for v in ref_values(s.split("=", 1)[1]))]
    for i, entry in enumerate(_entries(raw, "pretrain", problems)):
        key = f"pretrain[{i}]"
        _unknown(key, entry, ["name", "model", "epochs", "set"], problems)
        problems += [f"{key}.{k} is required" for k in ("name", "model") if k not in entry]
        step = PretrainStep(entry.get("name", ""), entry.get("model", ""),
                            _int(f"{key}.epochs", entry.get("epochs", 3), 1, problems),
                            _overrides(f"{key}.set", entry.get("set"), problems))
        _shared(f"{key}.set", step.set, SHARED_KEYS, problems)
        _references(f"{key}.set", step.set, [p.name for p in recipe.pretrain], [], problems)
        recipe.pretrain.append(step)
    pretrains = [p.name for p in recipe.pretrain]
    runs = _entries(raw, "runs", problems)
    if not runs:
        problems.append("runs must list at least one run")
    for i, entry in enumerate(runs):
        key = f"runs[{i}]"
        _unknown(key, entry, ["name", "model", "config", "set", "competition", "folds", "data_dir", "fold"],
                 problems)
        if "name" not in entry:
            problems.append(f"{key}.name is required")
        step = RunStep(entry.get("name", ""), entry.get("model"), entry.get("config"),
                       _overrides(f"{key}.set", entry.get("set"), problems), *_elsewhere(key, entry, recipe, problems))
        if step.config is not None and not Path(str(step.config)).is_file():
            problems.append(f"{key}.config: file {step.config} does not exist (paths are relative to the current "
                            f"directory)")
        _shared(f"{key}.set", step.set, SHARED_KEYS + ("data.max_rows",), problems)
        _references(f"{key}.set", step.set, pretrains, [r.name for r in recipe.runs], problems)
        recipe.runs.append(step)
    names = [r.name for r in recipe.runs]
    for what, listed in (("pretrain", pretrains), ("run", names)):
        problems += [f"{what} name {n!r} must be a plain folder name" for n in listed if n and not _plain_name(n)]
        problems += [f"{what} name '{n}' appears twice" for n in sorted(set(listed)) if listed.count(n) > 1]
    ensemble = raw.get("ensemble", {}) or {}
    if not isinstance(ensemble, dict):
        problems.append(f"ensemble must be a mapping with 'runs' and 'weights', got {ensemble!r}")
        ensemble = {}
    _unknown("ensemble", ensemble, ["runs", "weights"], problems)
    outside = {r.name: r.competition for r in recipe.runs if r.competition}
    members = ensemble.get("runs", [n for n in names if n not in outside])
    if not isinstance(members, list) or not members:
        problems.append(f"ensemble.runs must be a non-empty list of run names, got {members!r}")
        members = []
    problems += [f"ensemble.runs: '{m}' names no run{_close(m, names)}; declared: {', '.join(names)}"
                 for m in members if m not in names]
    problems += [f"ensemble.runs: '{m}' runs on {outside[m]}, not {recipe.competition}: a run on another "
                 f"competition is only a starting point (model.init_from: run:{m}), never a member"
                 for m in members if m in outside]
    weights = ensemble.get("weights", "equal")
    if weights not in ("equal", "auto", "stack"):
        problems.append(f"ensemble.weights must be equal, auto or stack, got {weights!r}")
    recipe.ensemble = EnsembleStep(tuple(members), weights)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return recipe


def _elsewhere(key: str, entry: dict, recipe: Recipe, problems: list) -> tuple:
    """A run's (competition, folds, data_dir, fold): all None for a run on the recipe's competition (which must
    share the recipe's folds); set only for a run on another competition."""
    competition, folds, data_dir = entry.get("competition"), entry.get("folds"), entry.get("data_dir")
    fold = entry.get("fold")
    if competition is not None and (not isinstance(competition, str) or not competition):
        problems.append(f"{key}.competition must be a competition name, got {competition!r}")
    if competition == recipe.competition:
        competition = None  # the recipe's own: the same as leaving it out
    if competition is None:
        problems += [f"{key}.{k} is only for a run on another competition (a recipe's members share its folds and "
                     f"data); set {key}.competition too, or leave {k} out"
                     for k, v in (("folds", folds), ("data_dir", data_dir), ("fold", fold)) if v is not None]
        return None, None, None, None
    if folds is not None:
        _int(f"{key}.folds", folds, 2, problems)
    if data_dir is not None and not isinstance(data_dir, str):
        problems.append(f"{key}.data_dir must be a folder path, got {data_dir!r}")
    k = folds if isinstance(folds, int) else recipe.folds
    if fold is not None and (not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < k):
        problems.append(f"{key}.fold must be a fold of its {k} folds, 0 to {k - 1}, got {fold!r}")
    return competition, folds, data_dir, fold


def _read_extended(path: Path, seen: tuple = ()) -> tuple:
    """A recipe file's YAML with its `extends:` chain folded in: the base file (relative to this one) gives
    every key this file leaves out; `pretrain` and `runs` are the base's steps then this file's, except that a
    step named as one of the base's changes it in place (_merge_steps); `set` is the base's overrides then this
    file's (later ones win); `name` is never inherited. Returns (the mapping, the names of the recipes extended,
    nearest first)."""
    from pipeline.config import read_yaml

    raw = read_yaml(str(path), "recipe file")
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw, ()
    base_name = raw.pop("extends")
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: extends must be a recipe file's path, got {base_name!r}")
    base_path = (path.parent / base_name).resolve()
    if base_path in seen + (path.resolve(),):
        raise ConfigError(f"{path}: extends {base_name} leads back to {base_path.name} (a cycle)")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base_name}, but {base_path} does not exist (paths are relative to "
                          f"the recipe file)")
    base, bases = _read_extended(base_path, seen + (path.resolve(),))
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path} (extended by {path}) must be a mapping of recipe keys")
    merged = {k: v for k, v in base.items() if k != "name"}
    for key, value in raw.items():
        if key in ("pretrain", "runs") and isinstance(value, list) and isinstance(base.get(key), list):
            value = _merge_steps(path, key, base_path, base[key], value)
        elif key == "set" and base.get("set") is not None and value is not None:
            value = _merged_set(path, "set", base_path, base["set"], value)
        merged[key] = value
    return merged, (base.get("name", base_path.stem),) + bases


def _merged_set(path: Path, key: str, base_path: Path, base_set, own_set) -> list:
    """The base's `set` overrides then this file's, as 'section.key=value' strings (the later ones win)."""
    problems: list = []
    value = list(_overrides(f"{base_path}: {key}", base_set, problems)) + list(_overrides(key, own_set, problems))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return value


def _merge_steps(path: Path, section: str, base_path: Path, base_steps: list, own_steps: list) -> list:
    """The base's steps then this file's, except that this file's first step named as a base step changes it in
    place (where it stands, so later steps' `run:` references still follow it): the keys it gives replace the
    base step's, its `set` comes after the base step's. A second step of that name is added (parse_recipe calls
    it a name that appears twice)."""
    steps = [dict(s) if isinstance(s, dict) else s for s in base_steps]
    at = {s["name"]: i for i, s in enumerate(steps) if isinstance(s, dict) and isinstance(s.get("name"), str)}
    changed: set = set()
    for own in own_steps:
        name = own.get("name") if isinstance(own, dict) else None
        if not isinstance(name, str) or name not in at or name in changed:
            steps.append(own)
            continue
        changed.add(name)
        step, key = steps[at[name]], f"{section}[{name}].set"
        for k, v in own.items():
            step[k] = _merged_set(path, key, base_path, step["set"], v) if k == "set" and step.get("set") else v
    return steps


def load_recipe(path) -> Recipe:
    """The Recipe in a YAML file (with the files it `extends`); a missing file, bad YAML or bad recipe is a
    one-line ConfigError."""
    raw, bases = _read_extended(Path(path))
    recipe = parse_recipe(raw, str(path))
    recipe.bases = bases
    return recipe
