"""The command lines: help, one-line errors with exit status 2, the default run, make_submission."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import make_submission_main, run_cv_main

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_each_flag():
    out = subprocess.run([sys.executable, str(ROOT / "run_cv.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--model", "--folds", "--seed", "--data-dir", "--run-dir", "--config", "--set", "--max-rows",
                 "--quiet"):
        assert flag in out.stdout
    out = subprocess.run([sys.executable, str(ROOT / "make_submission.py"), "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--runs" in out.stdout and "--out" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "robreta-base"], "unknown model preset 'robreta-base'; did you mean 'roberta-base'"),
    (["--folds", "1"], "cv.n_folds must be in [2, 20], got 1"),
    (["--set", "train.lr2=1"], "unknown config key 'train.lr2'"),
    (["--data-dir", "/nonexistent/folder"], "data folder /nonexistent/folder does not exist"),
])
def test_errors_are_one_line_with_status_2(args, message, capsys):
    assert run_cv_main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_run_cv_then_make_submission_default_latest(tmp_path, comp_dir, capsys):
    code = run_cv_main(["--model", "tfidf-lr", "--folds", "2", "--data-dir", str(comp_dir), "--quiet",
                        "--set", "thresholds.n_trials=10"])
    assert code == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tfidf-lr-f2-s42-")
    assert make_submission_main([]) == 0
    out = capsys.readouterr().out
    sub = tmp_path / "submissions" / f"{runs[0].name}.csv"
    assert f"wrote {Path('submissions') / sub.name}" in out and "train rate" in out
    assert pd.read_csv(sub).shape == pd.read_csv(comp_dir / "sample_submission.csv").shape


def test_make_submission_without_runs_says_what_to_do(capsys):
    assert make_submission_main([]) == 2
    assert "no completed run under runs/" in capsys.readouterr().err


def test_list_models(capsys):
    assert run_cv_main(["--list-models"]) == 0
    assert "minilm-l6" in capsys.readouterr().out


def test_the_log_follows_sys_stderr_so_a_closed_capture_is_never_written_to():
    import contextlib
    import io
    import logging

    from pipeline.cli import _setup_logging

    log = logging.getLogger("pipeline")
    level, handlers = log.level, list(log.handlers)
    try:
        first, second = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(first):
            _setup_logging(quiet=False)  # made while stderr is `first`, as a command called under a capture
            log.info("to the first")
        first.close()
        with contextlib.redirect_stderr(second):
            log.info("to the second")
        assert second.getvalue().rstrip().endswith("to the second") and len(second.getvalue().splitlines()) == 1
    finally:
        log.handlers[:] = handlers
        log.setLevel(level)
