"""Malformed inputs through the command line: each gets a clear one-line error (exit status 2) and
leaves no output behind, or is handled in the documented way."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS, make_frames, write_competition
from pipeline.cli import run_cv_main
from pipeline.config import DataConfig
from pipeline.data import load_competition_data


def mutate_frames(case):
    train, test, sample = make_frames()
    if case == "header_typo":
        train = train.rename(columns={"Tweet": "Twet"})
    elif case == "label_header_typo":
        train = train.rename(columns={"trust": "turst"})
    elif case == "label_two":
        train.loc[3, "joy"] = 2
    elif case == "label_missing":
        train["fear"] = train["fear"].astype(object)
        train.loc[7, "fear"] = None
    elif case == "label_half":
        train["anger"] = train["anger"].astype(float)
        train.loc[1, "anger"] = 0.5
    elif case == "label_negative":
        train.loc[2, "joy"] = -1
    elif case == "label_word":
        train["trust"] = train["trust"].astype(object)
        train.loc[0, "trust"] = "true"
    elif case == "label_no_positives":
        train["joy"] = 0
    elif case == "train_duplicate_ids":
        train.loc[5, "ID"] = train.loc[4, "ID"]
    elif case == "test_duplicate_ids":
        test.loc[3, "ID"] = test.loc[2, "ID"]
        sample = pd.DataFrame({"ID": test["ID"].unique()}).assign(**{c: 0 for c in LABELS})
    elif case == "sample_duplicate_ids":
        sample.loc[1, "ID"] = sample.loc[0, "ID"]
    elif case == "empty_text":
        train.loc[6, "Tweet"] = ""
    elif case == "blank_test_text":
        test.loc[0, "Tweet"] = " \t "
    elif case == "empty_id":
        train.loc[8, "ID"] = ""
    elif case == "test_id_missing_from_sample":
        sample = sample.iloc[1:]
    elif case == "test_id_not_in_test":
        test = test.iloc[1:]
    elif case == "extra_train_column":
        train["notes"] = "x"
    elif case == "extra_test_column":
        test["anger"] = 0
    elif case == "sample_missing_id":
        sample = sample.rename(columns={"ID": "id"})
    elif case == "train_test_overlap":
        train.loc[0, "ID"] = test.loc[0, "ID"]
    return train, test, sample


def rewrite_file(folder, case):
    path = folder / "train.csv"
    raw = path.read_bytes()
    if case == "latin1":
        path.write_bytes(raw.replace(b"happy", "h\u00e4ppy".encode("latin-1"), 1))
    elif case == "semicolons":
        path.write_bytes(raw.replace(b",", b";"))
    elif case == "tabs":
        path.write_bytes(raw.replace(b",", b"\t"))
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "whitespace_file":
        path.write_bytes(b"\n\n  \n")
    elif case == "header_only":
        path.write_bytes(raw.split(b"\n")[0] + b"\n")
    elif case == "duplicated_column":
        header, rest = raw.split(b"\n", 1)
        path.write_bytes(header.replace(b",trust", b",joy") + b"\n" + rest)
    elif case == "ragged_row":
        path.write_bytes(raw + b"2017-99999,one,too,many,fields,0,0,0\n")
    elif case == "missing_train_file":
        path.unlink()


ERRORS = [
    ("latin1", "train.csv is not UTF-8 text: byte 0xe4"),
    ("semicolons", "train.csv has a single column"),
    ("tabs", "is it comma-separated"),
    ("empty_file", "train.csv is empty"),
    ("whitespace_file", "train.csv is empty"),
    ("header_only", "train.csv has a header but no data rows"),
    ("duplicated_column", "train.csv has duplicated column names: 'joy'"),
    ("ragged_row", "train.csv is not a well-formed CSV"),
    ("missing_train_file", "has no train.csv"),
    ("header_typo", "train.csv is missing columns ['Tweet'] (did you mean 'Twet'?)"),
    ("label_header_typo", "train.csv is missing columns ['trust'] (did you mean 'turst'?)"),
    ("label_two", "train.csv: column 'joy' must contain only 0/1; found {2}"),
    ("label_missing", "column 'fear' must contain only 0/1; found {nan} in 1 rows"),
    ("label_half", "column 'anger' must contain only 0/1; found {0.5}"),
    ("label_negative", "column 'joy' must contain only 0/1; found {-1}"),
    ("label_word", "column 'trust' must contain only 0/1; found {true}"),
    ("label_no_positives", "label columns ['joy'] have no positive rows"),
    ("train_duplicate_ids", "train.csv has 1 duplicate ids in column 'ID' (first: '2017-00004')"),
    ("test_duplicate_ids", "test.csv has 1 duplicate ids in column 'ID' (first: '2018-00002')"),
    ("sample_duplicate_ids", "sample_submission.csv has 1 duplicate ids"),
    ("empty_text", "train.csv: column 'Tweet' is empty in 1 rows (first ids: '2017-00006')"),
    ("blank_test_text", "test.csv: column 'Tweet' is empty in 1 rows (first ids: '2018-00000')"),
    ("empty_id", "train.csv: column 'ID' is empty in 1 rows"),
    ("test_id_missing_from_sample", "1 only in test.csv ('2018-00000')"),
    ("test_id_not_in_test", "1 only in sample_submission.csv ('2018-00000')"),
    ("extra_train_column", "train.csv has unexpected columns ['notes']"),
    ("extra_test_column", "test.csv has unexpected columns ['anger']"),
    ("sample_missing_id", "sample_submission.csv has no id column 'ID'"),
    ("train_test_overlap", "1 ids appear in both train.csv and test.csv"),
]


def run(folder, tmp_path, *extra):
    return run_cv_main(["--model", "tfidf-lr", "--folds", "2", "--data-dir", str(folder), "--run-dir",
                        str(tmp_path / "run"), "--quiet", "--set", "thresholds.n_trials=5", *extra])


@pytest.mark.parametrize("case, message", ERRORS, ids=[c for c, _ in ERRORS])
def test_bad_file_gives_one_line_and_no_outputs(tmp_path, capsys, case, message):
    folder = write_competition(tmp_path / "data", *mutate_frames(case))
    rewrite_file(folder, case)
    assert run(folder, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "run").exists()


CONFIG_ERRORS = [
    (["--set", "train.lrr=1e-4"], "unknown config key 'train.lrr'; did you mean 'lr'?"),
    (["--set", "train.epochs=two"], "train.epochs must be an integer, got 'two'"),
    (["--set", "train.length_grouped=maybe"], "train.length_grouped must be true or false"),
    (["--set", "cv.n_folds=21"], "cv.n_folds must be in [2, 20], got 21"),
    (["--model", "tfidf_lr"], "did you mean 'tfidf-lr'"),
    (["--max-rows", "-5"], "data.max_rows must be at least 2 * cv.n_folds"),
    (["--set", "thresholds.method=grid"], "thresholds.method must be one of optuna, exact, fixed"),
    (["--fold", "2"], "--fold must be in [0, 1] for 2 folds, got 2"),
]


@pytest.mark.parametrize("args, message", CONFIG_ERRORS, ids=[a[-1] for a, _ in CONFIG_ERRORS])
def test_bad_config_gives_one_line_and_no_outputs(tmp_path, capsys, args, message):
    folder = write_competition(tmp_path / "data", *make_frames())
    assert run(folder, tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_bad_yaml_config(tmp_path, capsys):
    folder = write_competition(tmp_path / "data", *make_frames())
    (tmp_path / "c.yaml").write_text("train:\n  lr: [1\n")
    assert run(folder, tmp_path, "--config", str(tmp_path / "c.yaml")) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("train:\n  epoch: 3\n")
    assert run(folder, tmp_path, "--config", str(tmp_path / "c.yaml")) == 2
    assert "unknown config key 'train.epoch'; did you mean 'epochs'?" in capsys.readouterr().err


def test_run_dir_from_another_config_is_refused_untouched(tmp_path, capsys):
    folder = write_competition(tmp_path / "data", *make_frames())
    assert run(folder, tmp_path) == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    assert run(folder, tmp_path, "--seed", "3") == 2
    assert "holds a run with a different config (cv.seed: 42 -> 3)" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before


# Inputs that are valid and handled in a documented way (README: text kept exactly as given).

def test_bom_crlf_and_quoted_newlines_are_read_exactly(tmp_path):
    train, test, sample = make_frames()
    train.loc[0, "Tweet"] = 'line one\nline "two", with comma'
    folder = write_competition(tmp_path / "data", train, test, sample)
    raw = (folder / "train.csv").read_bytes()
    (folder / "train.csv").write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    data = load_competition_data(DataConfig(data_dir=str(folder)))
    assert data.train.columns[0] == "ID"
    # pandas keeps the newline inside the quoted field as written (\r\n after the CRLF rewrite)
    assert data.train_texts[0].replace("\r\n", "\n") == train.loc[0, "Tweet"]
    assert data.train_texts[1] == train.loc[1, "Tweet"]


def test_control_zero_width_and_very_long_texts_are_kept_and_truncated_only_for_the_model(tmp_path):
    train, test, sample = make_frames()
    train.loc[0, "Tweet"] = "tab\there zero\u200bwidth bell\x07 bidi\u202e end"
    train.loc[1, "Tweet"] = "happy " * 5000
    folder = write_competition(tmp_path / "data", train, test, sample)
    data = load_competition_data(DataConfig(data_dir=str(folder)))
    assert data.train_texts[0] == train.loc[0, "Tweet"]
    assert data.train_texts[1] == train.loc[1, "Tweet"]
    assert run_cv_main(["--model", "tiny-encoder", "--folds", "2", "--data-dir", str(folder), "--run-dir",
                        str(tmp_path / "run"), "--quiet", "--set", "train.max_steps=2",
                        "--set", "thresholds.n_trials=5"]) == 0


def test_sample_columns_in_another_order_fix_the_output_order(tmp_path):
    train, test, sample = make_frames()
    sample = sample[["ID"] + LABELS[::-1]]
    train = train[["ID", "Tweet"] + LABELS[::-1][1:] + LABELS[-1:]]  # train in yet another order
    folder = write_competition(tmp_path / "data", train, test, sample)
    assert run(folder, tmp_path) == 0
    from pipeline.cli import make_submission_main

    assert make_submission_main(["--runs", str(tmp_path / "run"), "--out", str(tmp_path / "sub.csv")]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["ID"] + LABELS[::-1]
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert list(oof.columns) == ["id", "fold"] + LABELS[::-1]


def test_more_folds_than_positives_warns_by_name(tmp_path, caplog):
    train, test, sample = make_frames()
    train["trust"] = 0
    train.loc[[0, 1], "trust"] = 1
    folder = write_competition(tmp_path / "data", train, test, sample)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert run_cv_main(["--model", "tfidf-lr", "--folds", "3", "--data-dir", str(folder), "--run-dir",
                            str(tmp_path / "run"), "--quiet", "--set", "thresholds.n_trials=5"]) == 0
    assert "label 'trust' has 2 positive rows, fewer than 3 folds" in caplog.text
    assert np.isfinite(pd.read_csv(tmp_path / "run" / "oof.csv")["trust"]).all()
