"""`run_recipe.py --jobs N` on a CPU (pipeline/recipe_jobs.py): every run's folds in one pool of worker processes,
each run started once the runs it names are finished, assembled as a one-process recipe assembles it; a failing
task stops the recipe with one line and a rerun resumes."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import make_multiclass_frames, run_and_kill_a_worker, write_multiclass
from pipeline.recipe import RECORD, recipe_main, recipe_table
from pipeline.recipe_jobs import _next_task, _plan, _Run, pool_applies

ROOT = Path(__file__).resolve().parents[1]

# a one-fold stage on another competition, a run starting from it, TF-IDF, and a student taught by both: 2 folds
RECIPE = {
    "name": "pooled", "folds": 2, "seed": 0,
    "set": {"train.epochs": 1, "train.max_steps": 3, "thresholds.n_trials": 5},
    "runs": [{"name": "dair", "model": "tiny-encoder", "competition": "dair-emotion", "folds": 3, "fold": 0},
             {"name": "enc", "model": "tiny-encoder", "set": {"model.init_from": "run:dair"}},
             {"name": "tfidf", "model": "tfidf-lr"},
             {"name": "student", "model": "tiny-encoder",
              "set": {"data.pseudo_label_from": ["run:enc", "run:tfidf"]}}],
    "ensemble": {"runs": ["enc", "tfidf", "student"], "weights": "equal"},
}


def _recipe(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run(recipe: Path, comp: Path, rd: Path, *extra: str) -> int:
    return recipe_main([str(recipe), "--data-dir", str(comp), "--recipe-dir", str(rd), *extra])


def _oof(rd: Path, name: str) -> np.ndarray:
    return pd.read_csv(rd / "runs" / name / "oof.csv").select_dtypes("number").to_numpy()


def test_a_pooled_recipe_respects_its_runs_order_and_matches_a_one_process_recipe(tmp_path, comp_dir, caplog):
    write_multiclass(comp_dir.parent / "dair-emotion", *make_multiclass_frames(n_train=60, n_val=12, n_test=20))
    recipe = _recipe(tmp_path, RECIPE)
    caplog.set_level(logging.INFO, logger="pipeline")
    assert _run(recipe, comp_dir, tmp_path / "pool", "--jobs", "2") == 0
    log = caplog.text
    assert "4 runs of the recipe in one pool: 8 tasks on 2 processes of 1 torch thread" in log
    assert "student: assembly done" in log and "cross-validated" in log
    record = json.loads((tmp_path / "pool" / RECORD).read_text())
    assert record["finished"] and [s["status"] for s in record["steps"]] == ["ran"] * 5
    assert all(s["wall_seconds"] > 0 for s in record["steps"])
    # the runs' times do not overlap: each from the end of the run finished before it, so they add up
    assert [bool(s.get("pooled")) for s in record["steps"]] == [True] * 4 + [False]
    assert record["total_wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in record["steps"]), abs=0.02)
    # what each run's tasks took in the workers, whatever order the runs finished in: at most 2 at once
    worker = {s["name"]: s["worker_seconds"] for s in record["steps"] if s.get("pooled")}
    assert sorted(worker) == ["dair", "enc", "student", "tfidf"] and all(v > 0 for v in worker.values())
    assert sum(worker.values()) <= 2 * sum(s["wall_seconds"] for s in record["steps"][:4]) + 0.1
    # each task's resident peak in its worker (reset per task): at least a torch import, below this machine's memory
    peaks = {s["name"]: s["worker_peak_gb"] for s in record["steps"] if s.get("pooled")}
    assert sorted(peaks) == sorted(worker) and all(0.1 < v < 24 for v in peaks.values())
    assert re.search(r"enc: fold 1/2 done in [\d.]+ s \(worker process, resident peak [\d.]+ GB, [\d.]+ GB at its "
                     r"start\)", log)
    table = recipe_table(record)
    assert "| step | status | wall s | worker s | peak GB | OOF " in table
    assert (f"| run tfidf | ran | {record['steps'][2]['wall_seconds']:.1f}* | {worker['tfidf']:.1f} | "
            f"{peaks['tfidf']:.1f} |") in table
    assert "| ensemble ensemble | ran |" in table and "| - |" in table
    runs = tmp_path / "pool" / "runs"
    # a run starts once the runs it names are finished: its directory is made after their last output
    assert (runs / "enc" / "config.yaml").stat().st_mtime >= \
        (runs / "dair" / "folds" / "fold_0" / "result.json").stat().st_mtime
    assert (runs / "student" / "config.yaml").stat().st_mtime >= max(
        (runs / n / "report.json").stat().st_mtime for n in ("enc", "tfidf"))
    assert sorted(p.name for p in (runs / "enc").glob("status_fold_*.json")) == [  # progress, as --fold K shards
        "status_fold_0.json", "status_fold_1.json"]

    caplog.clear()
    assert _run(recipe, comp_dir, tmp_path / "seq") == 0  # the same recipe, one process
    assert "in one pool" not in caplog.text
    for name in ("enc", "tfidf", "student"):  # one thread against two: float sums in another order only
        np.testing.assert_allclose(_oof(tmp_path / "pool", name), _oof(tmp_path / "seq", name), atol=1e-4)
    pooled, one = (json.loads((tmp_path / d / "submission.json").read_text())["ensemble"] for d in ("pool", "seq"))
    assert pooled["macro_f1_cv"] == pytest.approx(one["macro_f1_cv"], abs=0.02)

    caplog.clear()
    assert _run(recipe, comp_dir, tmp_path / "pool", "--jobs", "2") == 0  # finished: nothing trains again
    assert "in one pool" not in caplog.text
    again = json.loads((tmp_path / "pool" / RECORD).read_text())["steps"]
    assert [s["status"] for s in again] == ["done earlier"] * 5
    assert {s["name"]: s["worker_seconds"] for s in again if s.get("pooled")} == worker
    assert {s["name"]: s["worker_peak_gb"] for s in again if s.get("pooled")} == peaks


def test_a_failing_task_stops_the_recipe_in_one_line_and_a_rerun_resumes(tmp_path, comp_dir, frames, capsys):
    # the stage's training texts are the competition's own: the run starting from it is refused when it starts
    train, validation, test = make_multiclass_frames(n_train=60, n_val=12, n_test=20)
    train["text"] = frames[0]["Tweet"].iloc[:60].to_numpy()
    write_multiclass(comp_dir.parent / "dair-emotion", train, validation, test)
    raw = {**RECIPE, "name": "failing", "runs": RECIPE["runs"][:3], "ensemble": {"runs": ["enc", "tfidf"]}}
    recipe, rd = _recipe(tmp_path, raw), tmp_path / "rd"
    assert _run(recipe, comp_dir, rd, "--jobs", "2", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"error: recipe failing stopped: runs\[1\] \(enc\) fold [12]/2: model.init_from=.* 60 training "
                    r"texts of .* are train or test texts of this run", err[-1])
    assert "fix it and rerun the same command to resume" in err[-1]
    record = json.loads((rd / RECORD).read_text())
    assert not record["finished"]
    assert ("run", "enc", "failed") in [(s["kind"], s["name"], s["status"]) for s in record["steps"]]
    assert (rd / "runs" / "dair" / "folds" / "fold_0" / "result.json").is_file()  # finished work is kept

    raw["runs"][1]["set"]["model.init_max_overlap"] = 60  # allowed now: the rerun trains what is missing only
    assert _run(_recipe(tmp_path, raw), comp_dir, rd, "--jobs", "2", "--quiet") == 0
    steps = json.loads((rd / RECORD).read_text())["steps"]
    assert steps[0]["name"] == "dair" and steps[0]["status"] == "done earlier"
    assert steps[1]["status"] == "ran" and (rd / "runs" / "enc" / "report.json").is_file()


class _Step:
    def __init__(self, name, fold=None, after=(), output="/nowhere"):
        self.name, self.key, self.fold, self.after, self.output = name, f"runs[{name}]", fold, after, output


def test_tasks_of_equal_cost_start_in_the_recipe_order_once_ready_assemblies_first(tmp_path, comp_dir):
    from test_cv import tiny_cfg

    cfg = tiny_cfg(comp_dir)
    (tmp_path / "half" / "folds" / "fold_0").mkdir(parents=True)
    (tmp_path / "half" / "folds" / "fold_0" / "result.json").write_text("{}")
    half = _plan(_Step("half", output=str(tmp_path / "half")), cfg)
    assert (half.folds, half.assemble) == ([1], True)  # a finished fold is not a task again
    stage = _plan(_Step("stage", fold=0), cfg)
    assert (stage.folds, stage.assemble) == ([0], False)
    runs = [_Run(_Step("a"), cfg, [0, 1], True), _Run(_Step("b", after=("a",)), cfg, [0, 1], True),
            _Run(_Step("c"), cfg, [0], True)]
    waiting = {"a": [], "b": ["a"], "c": []}
    picked = []
    for _ in range(3):
        run, fold, _ = _next_task(runs, waiting)
        run.running += 1  # as the pool does when it starts a task
        picked.append((run.name, fold))
    assert picked == [("a", 0), ("a", 1), ("c", 0)]  # b waits for a; a's assembly for its running folds
    assert _next_task(runs, waiting) is None
    runs[0].running = 0  # a's folds done: its assembly comes before anything else
    waiting["b"] = []
    assert [(r.name, k, assembly) for r, k, assembly in [_next_task(runs, waiting)]] == [("a", None, True)]
    assert _next_task(runs, waiting)[:2] == (runs[1], 0)


def test_the_longest_chain_of_estimated_compute_starts_first(comp_dir):
    from test_cv import tiny_cfg

    cfg = tiny_cfg(comp_dir)
    # a short run that a long one waits on, a middling one, a free one (TF-IDF): FLOPs per fold task
    runs = [_Run(_Step("free"), cfg, [None], False, task_cost=0.0),
            _Run(_Step("short"), cfg, [0, 1], True, task_cost=1.0),
            _Run(_Step("middle"), cfg, [0, 1, 2], True, task_cost=5.0),
            _Run(_Step("long", after=("short",)), cfg, [0, 1], True, task_cost=10.0)]
    waiting = {"free": [], "short": [], "middle": [], "long": ["short"]}
    picked = []
    while (task := _next_task(runs, waiting)) is not None:
        task[0].running += 1  # as the pool does: no assembly while a run's folds are running
        picked.append(task[0].name)
    # short's 2 + 20 waiting on it lead middle's 15 until one fold of short is left (1 + 20 > 15), then middle's
    # folds, the free run last; long waits for short
    assert picked == ["short", "short", "middle", "middle", "middle", "free"]
    for run in runs:
        run.assemble, run.running = False, 0
    waiting["long"] = []
    runs[3].folds, runs[2].folds = [0, 1], [0]
    assert [_next_task(runs, waiting)[0].name for _ in range(3)] == ["long", "long", "middle"]


def test_the_pool_is_for_cpus_only(monkeypatch):
    import torch

    assert pool_applies(1) == "--jobs is 1"
    assert pool_applies(2) == ""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "several accelerate processes" in pool_applies(2)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "a GPU is present" in pool_applies(2)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers through /proc")
def test_a_worker_killed_by_the_system_stops_the_recipe_in_one_line(tmp_path, comp_dir):
    raw = {"name": "killed", "folds": 2, "seed": 0, "set": {"train.epochs": 1},
           "runs": [{"name": "a", "model": "tiny-encoder"}]}
    code, err = run_and_kill_a_worker([str(ROOT / "run_recipe.py"), str(_recipe(tmp_path, raw)), "--data-dir",
                                       str(comp_dir), "--recipe-dir", str(tmp_path / "rd"), "--jobs", "2", "--quiet"],
                                      ROOT)
    assert code == 2 and "Traceback" not in err
    assert re.match(r"error: recipe killed stopped: runs\[0\] \(a\) fold [12]/2: its worker process died \(killed "
                    r"by the system", err.strip().splitlines()[-1])
