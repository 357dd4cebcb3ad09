"""The submission ledger: a row per submission written, never a lost row under concurrent appends, the
Kaggle join by file name and message, and a self-contained ledger.html."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_kaggle import FakeKaggle, build_tiny_run, camel, snake

import pipeline.kaggle
from pipeline.cli import make_submission_main
from pipeline.kaggle import normalise_submission
from pipeline.ledger import (COLUMNS, append_row, gap_trend, join_submissions, ledger_page, read_ledger,
                             sha256_of)

ROOT = Path(__file__).resolve().parents[1]
SLUG = "emotion-detection-fall-2024"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("tiny"))


def _row(file, message="", cv=0.6, std=0.01, public=None, competition=SLUG):
    return {"time": "2024-11-01T10:00:00", "competition": competition, "file": file, "sha256": "0" * 64,
            "runs": "r", "weights": "1", "metric": "macro_f1", "oof_tuned": cv + 0.02, "oof_cv": cv,
            "fold_std": std, "message": message, "public_score": public}


def test_make_submission_appends_a_row(tiny_run):
    assert make_submission_main(["--runs", str(tiny_run)]) == 0
    assert make_submission_main(["--runs", str(tiny_run), "--out", "submissions/again.csv"]) == 0
    ledger = read_ledger(Path("submissions/ledger.csv"))
    assert list(ledger.columns) == COLUMNS and ledger["file"].tolist() == ["tiny.csv", "again.csv"]
    row = ledger.iloc[0]
    summary = json.loads(Path("submissions/tiny.json").read_text())
    report = json.loads((tiny_run / "report.json").read_text())
    assert row["sha256"] == sha256_of(Path("submissions/tiny.csv"))
    assert (row["competition"], row["runs"], row["metric"], row["message"]) == (SLUG, "tiny", "macro_f1", "")
    assert float(row["oof_cv"]) == pytest.approx(summary["ensemble"]["macro_f1_cv"], abs=1e-6)
    assert float(row["oof_tuned"]) == pytest.approx(summary["ensemble"]["macro_f1_tuned"], abs=1e-6)
    # one run: the ensemble's fold spread is the run's own
    assert float(row["fold_std"]) == pytest.approx(report["per_fold"]["std_tuned"], abs=1e-6)


def test_join_by_file_name_and_message_in_both_field_styles():
    frame = pd.DataFrame([{c: "" for c in COLUMNS}] * 4)
    frame["competition"] = SLUG
    frame["file"] = ["a.csv", "a.csv", "b.csv", "c.csv"]
    frame["message"] = ["first", "second", "third", ""]
    subs = [normalise_submission(s) for s in [
        camel("a.csv", "second", "0.612", "", date="2024-11-02T09:00:00"),
        snake("a.csv", "first", 0.598, 0.601, date="2024-11-01T09:00:00"),
        snake("b.csv", "third", "", None, status="pending"),
        camel("a.csv", "never written here", "0.7", ""),
    ]]
    joined, unmatched = join_submissions(frame, SLUG, subs)
    assert joined["public_score"].tolist() == ["0.598000", "0.612000", "", ""]
    assert joined["private_score"].tolist() == ["0.601000", "", "", ""]
    assert joined["kaggle_status"].tolist() == ["complete", "complete", "pending", ""]
    assert joined["kaggle_date"].tolist()[:2] == ["2024-11-01T09:00:00", "2024-11-02T09:00:00"]
    assert [s["description"] for s in unmatched] == ["never written here"]  # reported, not added
    assert len(joined) == 4
    other, unmatched = join_submissions(frame, "goemotions", subs)
    assert (other["public_score"] == "").all() and len(unmatched) == 4


def test_submit_then_leaderboard_with_the_fake(tmp_path, tiny_run, monkeypatch, capsys):
    fake = FakeKaggle(tmp_path)
    monkeypatch.setattr(pipeline.kaggle, "get_client", lambda: fake)
    assert make_submission_main(["--runs", str(tiny_run), "--submit", "base"]) == 0
    message = read_ledger(Path("submissions/ledger.csv"))["message"].iloc[0]
    fake.canned = [camel("tiny.csv", message, "0.5811", ""), snake("other.csv", "by hand", "0.4", None)]
    capsys.readouterr()
    assert make_submission_main(["--leaderboard"]) == 0
    out = capsys.readouterr().out
    assert fake.calls[-1] == ("submissions", SLUG)
    assert f"{SLUG}: 2 Kaggle submissions, 1 joined" in out
    assert "not in the ledger (left out): other.csv 'by hand'" in out and "0.5811" in out
    ledger = read_ledger(Path("submissions/ledger.csv"))
    assert ledger["public_score"].tolist() == ["0.581100"] and ledger["private_score"].tolist() == [""]


def test_concurrent_appends_lose_no_row(tmp_path):
    n = 25
    path = tmp_path / "submissions" / "ledger.csv"
    go = tmp_path / "go"
    code = ("import sys, time, os\n"
            "from pipeline.ledger import append_row\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.005)\n"
            f"for i in range({n}): append_row(sys.argv[1], {{'file': f'{{sys.argv[3]}}-{{i}}.csv', 'message': 'm'}})\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(go), who], env=env) for who in "ab"]
    time.sleep(1.0)  # both interpreters up and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = read_ledger(path)["file"].tolist()
    assert sorted(files) == sorted(f"{who}-{i}.csv" for who in "ab" for i in range(n))
    for who in "ab":  # each writer's rows in its own order
        assert [f for f in files if f.startswith(who)] == [f"{who}-{i}.csv" for i in range(n)]


def test_gap_trend_rule():
    assert gap_trend(np.array([0.6, 0.6, 0.6]), np.array([0.6, 0.6, 0.6])) is None
    steady = gap_trend(np.full(6, 0.6), np.array([0.59, 0.59, 0.59, 0.59, 0.59, 0.585]))
    assert not steady["widening"] and steady["n_recent"] == 3
    wide = gap_trend(np.full(6, 0.6), np.array([0.59, 0.59, 0.59, 0.56, 0.55, 0.55]))
    assert wide["widening"] and wide["recent_gap"] == pytest.approx(0.0467, abs=1e-3)


def test_ledger_command_prints_and_writes_a_self_contained_page(capsys):
    path = Path("submissions/ledger.csv")
    for i, (cv, public) in enumerate([(0.60, 0.59), (0.61, 0.60), (0.62, 0.61), (0.63, 0.60), (0.64, 0.59)]):
        append_row(path, _row(f"s{i}.csv", f"try {i}", cv=cv, public=public))
    append_row(path, _row("pending.csv", "waiting", cv=0.65))
    assert make_submission_main(["--ledger"]) == 0
    out = capsys.readouterr().out
    assert "submissions/ledger.csv (6 submissions" in out and "pending.csv" in out
    assert "wrote submissions/ledger.html" in out
    html = Path("submissions/ledger.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html
    assert html.count('src="data:image/png;base64,') == 1
    assert "Pearson correlation of CV and public score over 5 submissions" in html
    assert "class=flag" in html and "widening" in html and "Rule: flagged when" in html


def test_ledger_page_without_scores_and_missing_ledger(capsys):
    frame = pd.DataFrame([{c: "" for c in COLUMNS}])
    frame["metric"], frame["oof_cv"], frame["file"] = "macro_f1", "0.600000", "x.csv"
    html = ledger_page(frame)
    assert "No submission has a public score yet" in html and "needs at least 3" in html and "<img" not in html
    assert make_submission_main(["--ledger"]) == 2
    assert "no ledger at submissions/ledger.csv" in capsys.readouterr().err


def test_leaderboard_skips_competitions_not_on_kaggle(tmp_path, capsys):
    from pipeline.errors import KaggleError
    from pipeline.ledger import fetch_leaderboard

    path = Path("submissions/ledger.csv")
    append_row(path, _row("d.csv", "dair", competition="dair-emotion"))
    fake = FakeKaggle(tmp_path)
    with pytest.raises(KaggleError, match=r"no submission to a Kaggle competition \(found: dair-emotion\)"):
        fetch_leaderboard(path, fake)
    with pytest.raises(KaggleError, match="'dair-emotion' is not a Kaggle competition"):
        fetch_leaderboard(path, fake, "dair-emotion")
    append_row(path, _row("e.csv", "emo"))
    fake.canned = [snake("e.csv", "emo", "0.55", "")]
    assert fetch_leaderboard(path, fake) == f"{SLUG}: 1 Kaggle submissions, 1 joined to {path}"
    assert fake.calls == [("submissions", SLUG)]
    assert read_ledger(path)["public_score"].tolist() == ["", "0.550000"]
