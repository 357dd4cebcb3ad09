"""data.pseudo_label_from (pipeline/pseudo_labels.py): each fold also trains on the test texts with its own
soft targets, made only by the teachers' models of that fold (stacked on the other folds' OOF rows); the
rows are never validated or scored; teachers with other folds, a model that cannot take probabilities and
folders that are not finished runs are refused; changed teachers are not mixed with old folds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import make_frames, write_competition
from pipeline import train as train_module
from pipeline.cli import run_cv_main
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.data import load_competition_data
from pipeline.errors import ConfigError, DataError, RunDirError
from pipeline.folds import load_folds
from pipeline.pseudo_labels import load_pseudo_rows
from pipeline.stacking import LabelwiseStacker

TINY = ["model.preset=tiny-encoder", "cv.n_folds=2", "train.epochs=1", "train.max_steps=3", "thresholds.n_trials=5"]


def cfg_for(comp, *more):
    return load_config(None, [f"data.data_dir={comp}", *TINY, *more])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny competition and two finished teacher runs on its folds: a tiny encoder and TF-IDF."""
    root = tmp_path_factory.mktemp("teachers")
    comp = write_competition(root / "comp", *make_frames())
    enc = run_cv(cfg_for(comp), root / "enc", quiet=True)
    tfidf = run_cv(cfg_for(comp, "model.preset=tfidf-lr"), root / "tfidf", quiet=True)
    return {"comp": comp, "enc": enc, "tfidf": tfidf}


def fold_test_probs(run_dir, fold: int, test_ids) -> np.ndarray:
    frame = pd.read_csv(run_dir / "folds" / f"fold_{fold}" / "test_probs.csv", dtype={"id": str}).set_index("id")
    return frame.loc[list(test_ids)].to_numpy(dtype=np.float32)


@pytest.fixture
def seen(monkeypatch):
    """What each fold's training loop received: its label matrix and the rows it trained on."""
    out = {}
    real = train_module.train_fold

    def spy(cfg, fold, folds, labels, inputs, *args, **kwargs):
        fit_mask = args[5] if len(args) > 5 else kwargs.get("fit_mask")
        out[fold] = {"labels": labels.copy(), "folds": folds.copy(),
                     "train_idx": np.flatnonzero((folds != fold) & (True if fit_mask is None else fit_mask))}
        return real(cfg, fold, folds, labels, inputs, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_fold", spy)
    return out


def test_each_fold_trains_on_the_test_texts_with_its_own_fold_models_targets(tmp_path, teachers, seen):
    data = load_competition_data(cfg_for(teachers["comp"]).data)
    n_train, n_test = len(data.train_ids), len(data.test_ids)
    run_dir = run_cv(cfg_for(teachers["comp"], f"data.pseudo_label_from={teachers['enc']}"), tmp_path / "s", quiet=True)
    assert sorted(seen) == [0, 1]
    for fold, got in seen.items():
        assert got["labels"].shape == (n_train + n_test, len(data.label_cols))
        np.testing.assert_array_equal(got["labels"][:n_train], data.labels)  # the real rows keep their labels
        np.testing.assert_allclose(got["labels"][n_train:], fold_test_probs(teachers["enc"], fold, data.test_ids))
        assert (got["folds"][n_train:] == -1).all()  # validated by no fold
        assert set(range(n_train, n_train + n_test)) <= set(got["train_idx"])  # trained on by every fold
    assert not np.allclose(seen[0]["labels"][n_train:], seen[1]["labels"][n_train:])  # each fold its own
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == [str(i) for i in data.train_ids]  # OOF and scores: the real rows only
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_rows"] == n_train and report["pseudo_labels"]["rows"] == n_test
    assert report["pseudo_labels"]["from"] == [str(teachers["enc"])]
    for page in ("report.md", "report.html"):
        assert f"the {n_test} test texts with soft targets" in (run_dir / page).read_text()


def test_several_teachers_are_stacked_per_fold_without_that_folds_labels(teachers):
    cfg = cfg_for(teachers["comp"], f"data.pseudo_label_from={teachers['enc']},{teachers['tfidf']}")
    data = load_competition_data(cfg.data)
    folds = load_folds(teachers["enc"] / "folds.csv", data.train_ids, 2)
    pseudo = load_pseudo_rows(cfg, data, folds)
    ids = [str(i) for i in data.train_ids]
    oofs = [pd.read_csv(r / "oof.csv", dtype={"id": str}).set_index("id").loc[ids, data.label_cols].to_numpy()
            for r in (teachers["enc"], teachers["tfidf"])]
    for fold in (0, 1):
        rows = folds != fold
        stacker = LabelwiseStacker(seed=cfg.cv.seed).fit([o[rows] for o in oofs], data.labels[rows])
        expected = stacker.predict([fold_test_probs(r, fold, data.test_ids).astype(np.float64)
                                    for r in (teachers["enc"], teachers["tfidf"])])
        np.testing.assert_allclose(pseudo.targets[fold], expected, rtol=1e-5, atol=1e-6)
    # fold 0's validation labels flipped: fold 0's targets stay as they were, fold 1's (which fit on them) move
    flipped = data.labels.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    again = load_pseudo_rows(cfg, type(data)(data.competition, data.train, data.test, data.sample, data.label_cols,
                                             flipped, data.holdout_labels, data.holdout_note), folds)
    np.testing.assert_array_equal(again.targets[0], pseudo.targets[0])
    assert not np.allclose(again.targets[1], pseudo.targets[1])


def test_teachers_that_cannot_be_matched_and_students_that_cannot_learn_are_refused(tmp_path, teachers, capsys):
    comp = teachers["comp"]
    other_folds = run_cv(cfg_for(comp, "model.preset=tfidf-lr", "cv.seed=7"), tmp_path / "seed7", quiet=True)
    data = load_competition_data(cfg_for(comp).data)
    folds = load_folds(teachers["enc"] / "folds.csv", data.train_ids, 2)
    with pytest.raises(ConfigError, match="has other folds .* rows differ"):
        load_pseudo_rows(cfg_for(comp, f"data.pseudo_label_from={other_folds}"), data, folds)
    with pytest.raises(ConfigError, match="tfidf-lr's logistic regressions"):
        load_pseudo_rows(cfg_for(comp, "model.preset=tfidf-lr", f"data.pseudo_label_from={teachers['enc']}"),
                         data, folds)
    with pytest.raises(RunDirError, match="^data.pseudo_label_from: .* is not a completed run"):
        load_pseudo_rows(cfg_for(comp, f"data.pseudo_label_from={tmp_path}"), data, folds)
    # through the command line: one line, nothing trained
    argv = ["--data-dir", str(comp), "--run-dir", str(tmp_path / "s"), "--quiet", "--model", "tiny-encoder",
            "--folds", "2", "--set", f"data.pseudo_label_from={other_folds}"]
    assert run_cv_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.pseudo_label_from: ") and "other folds" in err[0]
    assert not (tmp_path / "s" / "folds").exists()


def test_folds_trained_on_other_targets_are_not_reused(tmp_path, teachers):
    teacher = tmp_path / "teacher"
    run_cv(cfg_for(teachers["comp"]), teacher, quiet=True)
    cfg = cfg_for(teachers["comp"], f"data.pseudo_label_from={teacher}")
    run_cv(cfg, tmp_path / "s", quiet=True)
    assert run_cv(cfg, tmp_path / "s", quiet=True)  # a rerun with the same teachers: resumed, nothing refused
    path = teacher / "folds" / "fold_0" / "test_probs.csv"
    probs = pd.read_csv(path, dtype={"id": str})
    probs.iloc[:, 1:] = probs.iloc[:, 1:] * 0.5  # the teacher's fold 0 changed since
    probs.to_csv(path, index=False)
    with pytest.raises(RunDirError, match="different data.pseudo_label_from targets"):
        run_cv(cfg, tmp_path / "s", quiet=True)


def test_a_run_started_from_a_pseudo_labelled_source_counts_the_sources_test_texts_as_trained_on(tmp_path, frames,
                                                                                                comp_dir):
    from pipeline.init_from import check_source

    train, _, _ = frames
    src_train, src_test, src_sample = make_frames(n_train=80, n_test=20, seed=5)
    src_train["Tweet"], src_test["Tweet"] = "source " + src_train["Tweet"], "source " + src_test["Tweet"]
    src_test.loc[3, "Tweet"] = train.loc[0, "Tweet"]  # one of the source's test texts is one of ours
    src = write_competition(tmp_path / "src-comp", src_train, src_test, src_sample)
    teacher = run_cv(cfg_for(src), tmp_path / "teacher", quiet=True)
    student = run_cv(cfg_for(src, f"data.pseudo_label_from={teacher}"), tmp_path / "student", quiet=True)
    data = load_competition_data(cfg_for(comp_dir).data)
    assert check_source(cfg_for(comp_dir, f"model.init_from={teacher}"), data)["overlap"] == 0  # never trained on it
    with pytest.raises(DataError, match="1 training texts of"):
        check_source(cfg_for(comp_dir, f"model.init_from={student}"), data)
