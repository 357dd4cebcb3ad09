"""The Kaggle client: the fake receives the right calls, downloads are unzipped and checked, submissions
are normalised from either field-name style, and missing credentials give one line with status 2."""
from __future__ import annotations

import enum
import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from fake_kaggle import FakeKaggle, build_tiny_run, camel, make_fake_folder, snake

import pipeline.kaggle
from pipeline.cli import kaggle_main, make_submission_main
from pipeline.kaggle import normalise_submission

ROOT = Path(__file__).resolve().parents[1]
SLUG = "emotion-detection-fall-2024"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("tiny"))


def _env_without_kaggle(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "KFOLD_KAGGLE_CLIENT"}
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(ROOT))
    return env


def test_normalise_both_field_styles_and_pending_scores():
    class Status(enum.Enum):
        COMPLETE = 1

    when = datetime(2024, 11, 2, 10, 0, 0)
    v1 = normalise_submission(camel("a.csv", " first ", "0.61234", "", status="SubmissionStatus.COMPLETE", date=when))
    assert v1 == {"file_name": "a.csv", "description": "first", "date": "2024-11-02T10:00:00", "status": "complete",
                  "public_score": 0.61234, "private_score": None}
    v2 = normalise_submission(snake("b.csv", "second", None, "", status="pending"))
    assert v2["file_name"] == "b.csv" and v2["status"] == "pending"
    assert v2["public_score"] is None and v2["private_score"] is None
    v2obj = normalise_submission(SimpleNamespace(file_name="c.csv", description="x", date="d", status=Status.COMPLETE,
                                                 public_score="0.5", private_score="0.4"))
    assert (v2obj["status"], v2obj["public_score"], v2obj["private_score"]) == ("complete", 0.5, 0.4)
    v1dict = normalise_submission({"fileName": "d.csv", "description": "y", "publicScore": "0.7",
                                   "privateScore": None, "status": "error"})
    assert (v1dict["file_name"], v1dict["public_score"], v1dict["status"]) == ("d.csv", 0.7, "error")


def test_download_unzips_and_checks_the_files(tmp_path, monkeypatch, capsys):
    fake = FakeKaggle(make_fake_folder(tmp_path / "fake"))
    monkeypatch.setattr(pipeline.kaggle, "get_client", lambda: fake)
    assert kaggle_main(["download"]) == 0
    dest = Path("data") / SLUG
    assert fake.calls == [("download", SLUG, dest)]
    assert sorted(p.name for p in dest.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    out = capsys.readouterr().out
    assert f"downloaded {SLUG} into {dest} (3 files unzipped)" in out and "160 training rows, 40 test rows" in out


def test_download_with_a_missing_file_gives_the_data_error(tmp_path, monkeypatch, capsys):
    fake = FakeKaggle(make_fake_folder(tmp_path / "fake", drop=("sample_submission.csv",)))
    monkeypatch.setattr(pipeline.kaggle, "get_client", lambda: fake)
    assert kaggle_main(["download", "--dest", "elsewhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data folder elsewhere has no sample_submission.csv") and "\n" not in err


def test_not_a_kaggle_competition(monkeypatch, capsys):
    monkeypatch.setattr(pipeline.kaggle, "get_client", lambda: pytest.fail("no client for a non-Kaggle competition"))
    assert kaggle_main(["download", "dair-emotion"]) == 2
    err = capsys.readouterr().err
    assert "'dair-emotion' is not a Kaggle competition" in err and SLUG in err


def test_submit_sends_the_file_and_message_and_records_it(tmp_path, tiny_run, monkeypatch, capsys):
    fake = FakeKaggle(tmp_path)
    monkeypatch.setattr(pipeline.kaggle, "get_client", lambda: fake)
    assert make_submission_main(["--runs", str(tiny_run), "--submit", "tfidf baseline"]) == 0
    sub = Path("submissions") / "tiny.csv"
    cv = json.loads(sub.with_suffix(".json").read_text())["ensemble"]["macro_f1_cv"]
    message = f"tfidf baseline | runs tiny | CV macro_f1 {cv:.4f}"
    assert fake.calls == [("submit", SLUG, sub, message)]
    ledger = pd.read_csv("submissions/ledger.csv", dtype=str, keep_default_na=False)
    assert ledger["message"].tolist() == [message] and ledger["kaggle_status"].tolist() == ["submitted"]
    assert f"submitted {sub} to {SLUG}" in capsys.readouterr().out


def test_fake_client_through_the_environment_in_a_subprocess(tmp_path):
    folder = make_fake_folder(tmp_path / "fake")
    env = dict(os.environ, KFOLD_KAGGLE_CLIENT="fake_kaggle:FakeKaggle", FAKE_KAGGLE_DIR=str(folder),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "pipeline.kaggle", "download", "--dest", "got"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]
    assert calls == [["download", SLUG, "got"]] and (tmp_path / "got" / "train.csv").is_file()


@pytest.mark.skipif(importlib.util.find_spec("kaggle") is None, reason="the kaggle package is not installed")
def test_real_client_without_credentials_says_one_line(tmp_path, tiny_run):
    env = _env_without_kaggle(tmp_path / "home")
    out = subprocess.run([sys.executable, str(ROOT / "make_submission.py"), "--runs", str(tiny_run),
                          "--submit", "first"], cwd=tmp_path, env=env, capture_output=True, text=True)
    err = [line for line in out.stderr.splitlines() if not line[:2].isdigit()]  # our log lines start hh:mm:ss
    assert out.returncode == 2, out.stderr
    assert len(err) == 1 and "Traceback" not in out.stderr and "Authentication required" not in out.stdout
    for needed in ("error: no Kaggle credentials", "KAGGLE_API_TOKEN", "~/.kaggle/kaggle.json", "KAGGLE_USERNAME",
                   "KAGGLE_KEY"):
        assert needed in err[0]
    assert (tmp_path / "submissions" / "tiny.csv").is_file()  # the submission stays written

    out = subprocess.run([sys.executable, "-m", "pipeline.kaggle", "download"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "KAGGLE_API_TOKEN" in out.stderr
    assert out.stdout == ""


def test_readme_kaggle_recipes_parse():
    """The README's Kaggle commands need credentials (a `bash` block, not run by CI): their flags must parse."""
    import shlex

    from pipeline.cli import kaggle_parser, submission_parser
    from pipeline.ledger import GAP_MARGIN, GAP_RECENT
    from test_readme import readme_blocks

    lines = [line for line in readme_blocks("bash") if "pipeline.kaggle" in line or "--submit" in line
             or "--leaderboard" in line]
    assert len(lines) == 3
    for line in lines:
        args = shlex.split(line.split("#")[0])
        if "pipeline.kaggle" in line:
            assert kaggle_parser().parse_args(args[3:]).command == "download"
        else:
            parsed = submission_parser().parse_args(args[2:])
            assert parsed.submit or parsed.leaderboard
    text = (ROOT / "README.md").read_text()
    assert f"latest {GAP_RECENT} scored submissions" in text and f"more than {GAP_MARGIN}" in text
