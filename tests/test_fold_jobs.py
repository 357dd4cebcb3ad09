"""`run_cv.py --jobs N`: folds trained at once in worker processes, assembled as a one-process run is."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS, run_and_kill_a_worker
from pipeline.cv import run_cv
from pipeline.errors import ConfigError
from pipeline.fold_jobs import waves
from pipeline.recipe import recipe_steps
from pipeline.recipe_file import parse_recipe
from test_cv import check_run, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_waves_share_the_cores_and_the_last_one_gets_them_all():
    assert waves([0, 1, 2, 3, 4], 2, 2) == [([0, 1], 1), ([2, 3], 1), ([4], 2)]
    assert waves([3, 4], 2, 2) == [([3, 4], 1)]
    assert waves([0, 1, 2], 4, 8) == [([0, 1, 2], 2)]
    assert waves([0, 1], 3, 2) == [([0, 1], 1)]  # never below one thread


def test_a_worker_starts_with_its_threads_and_the_commands_quiet_logging():
    """A spawned worker inherits no logging set-up: it makes the calling command's, so libraries' import-time
    warnings (bitsandbytes' optional CPU kernel, on AVX-512 machines) and plain tqdm bars (transformers' GGUF
    conversion, once per SmolLM2 fold) stay out of the run's output."""
    code = ("import logging; from pipeline.fold_jobs import _start_worker; _start_worker(1); import torch; "
            "from tqdm.auto import tqdm; list(tqdm(range(3), desc='a GGUF-like bar')); "
            "print(torch.get_num_threads(), logging.getLogger('bitsandbytes').level, "
            "logging.getLogger('pipeline').level, len(logging.getLogger('pipeline').handlers))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", str(logging.ERROR), str(logging.WARNING), "1"]
    assert "GGUF-like" not in out.stderr


def test_folds_trained_at_once_match_a_one_process_run(tmp_path, comp_dir, frames, caplog):
    train, test, _ = frames
    cfg = tiny_cfg(comp_dir, "cv.n_folds=3")
    one = run_cv(cfg, tmp_path / "one", quiet=True)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run = run_cv(cfg, tmp_path / "jobs", quiet=False, jobs=2)
    report = check_run(run, train, test, n_folds=3)
    # folds 0 and 1 in two processes of one thread each, then fold 2 alone with the machine's threads
    assert "folds [0, 1] at once, 2 processes of 1 torch thread" in caplog.text
    assert "folds [2] at once, 1 process of" in caplog.text
    assert re.search(r"fold 3/3 done \(worker process, resident peak [\d.]+ GB\)", caplog.text)
    for k in range(3):  # each fold was a worker's `--fold K` shard
        assert json.loads((run / f"status_fold_{k}.json").read_text())["fold"] == k
    a, b = (pd.read_csv(d / "oof.csv")[LABELS].to_numpy() for d in (one, run))
    np.testing.assert_allclose(a, b, atol=1e-4)  # other thread counts sum floats in another order
    assert report["timing"]["wall_seconds"] > 0
    assert json.loads((run / "report.json").read_text())["oof_tuned"] == report["oof_tuned"]


def test_a_finished_run_with_jobs_trains_nothing_more(tmp_path, comp_dir, caplog):
    cfg = tiny_cfg(comp_dir)
    run = run_cv(cfg, tmp_path / "run", quiet=True, jobs=2)
    before = (run / "oof.csv").read_bytes()
    caplog.clear()  # the first run's lines too are captured when an earlier test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_cv(cfg, run, quiet=False, jobs=2)
    assert "at once" not in caplog.text and (run / "oof.csv").read_bytes() == before


def test_jobs_where_they_gain_nothing_train_in_this_process(tmp_path, comp_dir, frames, caplog):
    train, test, _ = frames
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run = run_cv(tiny_cfg(comp_dir, "model.preset=tfidf-lr"), tmp_path / "tfidf", quiet=False, jobs=2)
    check_run(run, train, test)
    assert "--jobs 2: the folds train one after the other in this process, as a TF-IDF model" in caplog.text
    assert not list(run.glob("status_fold_*.json"))


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers through /proc")
def test_a_worker_killed_by_the_system_is_a_one_line_error(tmp_path, comp_dir):
    """An out-of-memory kill of a worker must not hang the run nor end in a traceback."""
    code, err = run_and_kill_a_worker([str(ROOT / "run_cv.py"), "--model", "tiny-encoder", "--folds", "2",
                                       "--data-dir", str(comp_dir), "--run-dir", str(tmp_path / "r"), "--jobs", "2",
                                       "--quiet"], ROOT)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'r'}: a worker process training folds [0, 1] died (")
    assert "rerun to resume" in last and "Traceback" not in err


@pytest.mark.parametrize("extra", [["--fold", "0"], ["--merge"]])
def test_jobs_with_fold_or_merge_is_a_one_line_error(tmp_path, comp_dir, extra):
    out = subprocess.run([sys.executable, str(ROOT / "run_cv.py"), "--model", "tiny-encoder", "--folds", "2",
                          "--data-dir", str(comp_dir), "--run-dir", str(tmp_path / "r"), "--jobs", "2", *extra],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --jobs must be 1 or more, and 1 with --fold or --merge, got 2"
    with pytest.raises(ConfigError, match="--jobs must be 1 or more"):
        run_cv(tiny_cfg(comp_dir), tmp_path / "r2", quiet=True, jobs=0)


def test_a_recipe_passes_jobs_to_its_runs_of_all_folds():
    recipe = parse_recipe({"name": "r", "runs": [{"name": "stage", "model": "tiny-encoder", "competition":
                                                  "goemotions", "folds": 2, "fold": 0},
                                                 {"name": "a", "model": "tiny-encoder"}],
                           "ensemble": {"runs": ["a"]}}, "r.yaml")
    stage, a, _ = recipe_steps(recipe, ROOT / "runs" / "recipes" / "r", None, jobs=2)
    assert "--jobs" not in stage.argv and a.argv[a.argv.index("--jobs") + 1] == "2"
    assert all("--jobs" not in s.argv for s in recipe_steps(recipe, ROOT / "runs" / "recipes" / "r", None))


def test_each_task_runs_in_a_fresh_worker_process():
    # a worker is replaced after each task: nothing one task leaves resident is carried into the next
    from pipeline.fold_jobs import worker_pool

    with worker_pool(1, 1) as pool:
        pids = [pool.submit(os.getpid).result() for _ in range(3)]
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_fold_worker_keeps_no_dequantized_weights_for_folds_that_will_not_come(monkeypatch):
    from pipeline import cv, fold_jobs, models

    monkeypatch.setattr(models, "_keep_dequantized", True)
    monkeypatch.setattr(cv, "run_cv", lambda *args, **kwargs: None)
    fold_jobs._train_one((None, "run", None))  # a whole run in the worker: its folds may share the weights
    assert models._keep_dequantized
    fold_jobs._train_one((None, "run", 2))
    assert not models._keep_dequantized
