"""data.extra_train (pipeline/extra_train.py): extra rows join every fold's training part only; OOF,
thresholds and reports hold exactly the real rows; rows that leak a fold's validation part are left out
of that fold; changed extra rows are not mixed with folds trained on the old ones; bad files are refused."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS
from pipeline import linear
from pipeline.cli import run_cv_main
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.errors import RunDirError


def extra_frame(train: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = {"ID": [f"syn-{i:04d}" for i in range(n)], "Tweet": [f"so very trusting and loyal {i}" for i in range(n)]}
    for col in LABELS:
        rows[col] = (rng.random(n) < 0.5).astype(int)
    rows["gen_examples"] = [""] * n
    return pd.DataFrame(rows)


def cfg_for(comp_dir, extra_paths, *more):
    return load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tfidf-lr", "cv.n_folds=2",
                              f"data.extra_train={','.join(map(str, extra_paths))}", *more])


@pytest.fixture
def seen_folds(monkeypatch):
    """What each fold's fit received: the rows it trained on (positions) and the texts."""
    seen = {}
    real_fit = linear.fit_tfidf_fold

    def spy(cfg, fold, folds, labels, train_texts, test_texts, fit_mask=None, save_dir=None):
        train_idx = np.flatnonzero((folds != fold) & (True if fit_mask is None else fit_mask))
        seen[fold] = {"train_texts": [train_texts[i] for i in train_idx], "n_rows": len(train_texts),
                      "val_idx": np.flatnonzero(folds == fold)}
        return real_fit(cfg, fold, folds, labels, train_texts, test_texts, fit_mask, save_dir)

    monkeypatch.setattr(linear, "fit_tfidf_fold", spy)
    return seen


def test_extra_rows_train_every_fold_and_never_appear_in_oof_or_reports(tmp_path, comp_dir, frames, seen_folds):
    train, _, _ = frames
    extra = extra_frame(train)
    path = tmp_path / "extra.csv"
    extra.to_csv(path, index=False)
    run_dir = run_cv(cfg_for(comp_dir, [path]), tmp_path / "run", quiet=True)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == train["ID"].tolist()  # exactly the real rows, once each
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_rows"] == len(train)
    assert report["extra_train"]["rows"] == len(extra) and report["extra_train"]["left_out_per_fold"] == [0, 0]
    for fold, seen in seen_folds.items():
        assert seen["n_rows"] == len(train) + len(extra)
        assert set(extra["Tweet"]) <= set(seen["train_texts"])  # every extra row trains this fold
        assert seen["val_idx"].max() < len(train)  # and none is validated
        result = json.loads((run_dir / "folds" / f"fold_{fold}" / "result.json").read_text())
        assert result["n_val"] == (oof["fold"] == fold).sum()
    assert "extra" in (run_dir / "report.html").read_text().lower()


def test_a_row_copying_a_validation_text_or_showing_a_validation_example_skips_that_fold(tmp_path, comp_dir, frames,
                                                                                          seen_folds):
    train, _, _ = frames
    cfg = cfg_for(comp_dir, [tmp_path / "extra.csv"])
    folds_probe = run_cv(load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tfidf-lr", "cv.n_folds=2"]),
                         tmp_path / "probe", quiet=True)
    folds = pd.read_csv(folds_probe / "folds.csv", dtype={"id": str})["fold"].to_numpy()
    in_fold0, in_fold1 = np.flatnonzero(folds == 0)[0], np.flatnonzero(folds == 1)[0]
    extra = extra_frame(train, 4)
    # a copy of a fold-0 validation text, differing only in case and spacing: normalised, it is the same text
    extra.loc[0, "Tweet"] = "  " + train["Tweet"][in_fold0].upper() + " "
    extra.loc[1, "gen_examples"] = f"{train['ID'][in_fold1]};2017-99999"  # its prompt showed a fold-1 example
    extra.to_csv(tmp_path / "extra.csv", index=False)
    seen_folds.clear()
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    assert extra.loc[0, "Tweet"] not in seen_folds[0]["train_texts"]
    assert extra.loc[0, "Tweet"] in seen_folds[1]["train_texts"]
    assert extra.loc[1, "Tweet"] in seen_folds[0]["train_texts"]
    assert extra.loc[1, "Tweet"] not in seen_folds[1]["train_texts"]
    for row in (2, 3):
        assert all(extra.loc[row, "Tweet"] in seen_folds[k]["train_texts"] for k in (0, 1))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["extra_train"]["left_out_per_fold"] == [1, 1]


def test_changed_extra_rows_are_not_mixed_with_folds_trained_on_the_old_ones(tmp_path, comp_dir, frames):
    train, _, _ = frames
    path = tmp_path / "extra.csv"
    extra_frame(train).to_csv(path, index=False)
    run_cv(cfg_for(comp_dir, [path]), tmp_path / "run", quiet=True)
    extra_frame(train, 5).to_csv(path, index=False)
    with pytest.raises(RunDirError, match="data.extra_train content"):
        run_cv(cfg_for(comp_dir, [path]), tmp_path / "run", quiet=True)


@pytest.mark.parametrize("change, message", [
    (lambda f, t: f.assign(ID=[t["ID"][0]] + f["ID"].tolist()[1:]), "ids of train.csv"),
    (lambda f, t: f.rename(columns={"trust": "hope"}), "columns"),
    (lambda f, t: f.iloc[:0], "no data rows"),
])
def test_bad_extra_files_are_one_line_errors(tmp_path, comp_dir, frames, capsys, change, message):
    train, _, _ = frames
    path = tmp_path / "extra.csv"
    change(extra_frame(train), train).to_csv(path, index=False)
    code = run_cv_main(["--data-dir", str(comp_dir), "--model", "tfidf-lr", "--folds", "2", "--quiet",
                        "--run-dir", str(tmp_path / "run"), "--set", f"data.extra_train={path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "extra.csv" in err
    assert not (tmp_path / "run" / "report.json").exists()


def test_a_neural_fold_trains_on_its_real_rows_plus_the_extra_ones(tmp_path, comp_dir, frames):
    train, _, _ = frames
    path = tmp_path / "extra.csv"
    extra_frame(train).to_csv(path, index=False)
    cfg = load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder", "cv.n_folds=2",
                             "train.epochs=1", "thresholds.n_trials=10", f"data.extra_train={path}"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == train["ID"].tolist()
    for fold in (0, 1):
        result = json.loads((run_dir / "folds" / f"fold_{fold}" / "result.json").read_text())
        assert result["train_examples"] == int((oof["fold"] != fold).sum()) + 12
