"""Task shapes (pipeline/tasks): multiclass through the whole path, folds stratified by class, class
weights from the training fold only, the link and loss, hold-out scoring that never feeds back, and
multiclass bad input."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import competition as competition_module
from competition import Competition
from conftest import DAIR_CLASSES, make_multiclass_frames, write_multiclass
from pipeline.cli import make_submission_main, run_cv_main
from pipeline.config import DataConfig, load_config
from pipeline.cv import run_cv
from pipeline.data import load_competition_data
from pipeline.errors import DataError
from pipeline.submit import make_submission
from pipeline.tasks import get_task

MULTICLASS_OUTPUTS = ["config.yaml", "folds.csv", "oof.csv", "test_probs.csv", "biases.json", "report.md",
                      "report.json"]


def dair_cfg(folder, preset="tiny-encoder", *extra):
    return load_config(None, [f"data.data_dir={folder}", "data.competition=dair-emotion", f"model.preset={preset}",
                              "cv.n_folds=2", "train.epochs=2", "train.max_steps=6", "thresholds.n_trials=20", *extra])


@pytest.fixture
def extra_competition(monkeypatch):
    """Registers a competition definition for one test (as a module in competition/ would)."""
    def add(**fields):
        comp = Competition(**fields)
        monkeypatch.setitem(competition_module.COMPETITIONS, comp.name, comp)
        return comp
    return add


@pytest.mark.parametrize("preset", ["tiny-encoder", "tfidf-lr"])
def test_multiclass_whole_path_writes_every_output_and_a_valid_submission(tmp_path, dair_dir, preset):
    train, validation, test = make_multiclass_frames()
    run_dir = run_cv(dair_cfg(dair_dir, preset), tmp_path / "run", quiet=True)
    for name in MULTICLASS_OUTPUTS:
        assert (run_dir / name).is_file(), name
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "fold"] + DAIR_CLASSES
    # train.csv then validation.csv: every training row exactly once, in file order
    assert oof["id"].tolist() == train["id"].tolist() + validation["id"].tolist()
    np.testing.assert_allclose(oof[DAIR_CLASSES].sum(1), 1.0, atol=1e-6)  # softmax, not sigmoid
    assert list(json.loads((run_dir / "biases.json").read_text())) == DAIR_CLASSES
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("oof_argmax", "oof_tuned", "oof_tuned_cv", "per_class", "confusion_matrix", "per_fold", "headline",
                "holdout_test", "timing"):
        assert key in report, key
    assert {"accuracy", "macro_f1", "weighted_f1", "roc_auc_weighted_ovr", "roc_auc_macro_ovr",
            "log_loss"} <= set(report["oof_argmax"])
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.shape == (6, 6) and counts.sum() == len(oof)
    np.testing.assert_allclose(np.array(report["confusion_matrix"]["row_normalised"]).sum(1), 1.0, atol=1e-3)
    assert report["holdout_test"]["n_rows"] == len(test)
    text = (run_dir / "report.md").read_text()
    assert "Confusion matrix" in text and "Hold-out test" in text and "| surprise |" in text
    if preset == "tfidf-lr":  # the cue words make the classes easy
        assert report["oof_argmax"]["accuracy"] > 0.8 and report["holdout_test"]["untuned"]["accuracy"] > 0.8

    out = tmp_path / "sub.csv"
    summary = make_submission([run_dir], out)
    sub = pd.read_csv(out, dtype=str)
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == test["id"].tolist()
    assert set(sub["label"]) <= set(DAIR_CLASSES)
    info = json.loads(out.with_suffix(".json").read_text())
    assert {"macro_f1_argmax", "macro_f1_tuned", "macro_f1_cv"} <= set(info["per_run"][run_dir.name])
    assert info["holdout_test"]["tuned"]["macro_f1"] == pytest.approx(report["holdout_test"]["tuned"]["macro_f1"])
    assert "hold-out test (60 rows" in summary
    # the tuned biases are applied only where their cross-validated score beats plain argmax
    ens = info["ensemble"]
    assert info["rule"] == ("tuned" if ens["macro_f1_cv"] > ens["macro_f1_argmax"] else "argmax")
    probs = pd.read_csv(run_dir / "test_probs.csv", dtype={"id": str}).set_index("id").loc[sub["id"], DAIR_CLASSES]
    biases = np.array([info["biases"][c] for c in DAIR_CLASSES])
    assert info["rule"] == "tuned" or not biases.any()
    expected = np.array(DAIR_CLASSES)[(np.log(np.clip(probs.to_numpy(), 1e-12, 1)) + biases).argmax(1)]
    assert sub["label"].tolist() == expected.tolist()
    assert info["holdout_test"]["submitted"] == info["holdout_test"]["tuned" if info["rule"] == "tuned" else "untuned"]


def test_multiclass_from_one_hot_columns_with_a_sample_submission(tmp_path, extra_competition):
    extra_competition(name="onehot-test", id_col="id", text_col="text", task="multiclass")
    train, validation, test = make_multiclass_frames()
    train = pd.concat([train, validation], ignore_index=True)
    for c in DAIR_CLASSES:
        train[c] = (train["label"] == c).astype(int)
    folder = tmp_path / "onehot"
    folder.mkdir()
    train.drop(columns="label").to_csv(folder / "train.csv", index=False)
    test[["id", "text"]].to_csv(folder / "test.csv", index=False)
    sample = test[["id"]].iloc[::-1].assign(**{c: 0 for c in DAIR_CLASSES})  # another id order than test.csv
    sample.to_csv(folder / "sample_submission.csv", index=False)
    cfg = load_config(None, [f"data.data_dir={folder}", "data.competition=onehot-test", "model.preset=tfidf-lr",
                             "cv.n_folds=2", "thresholds.n_trials=10"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    out = tmp_path / "sub.csv"
    make_submission([run_dir], out)
    sub = pd.read_csv(out)
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    assert (sub[DAIR_CLASSES].sum(1) == 1).all() and (sub.dtypes[DAIR_CLASSES] == np.int64).all()


def test_folds_are_stratified_by_class():
    y = np.repeat(np.arange(4), [500, 250, 50, 12])
    labels = np.eye(4, dtype=np.int8)[y]
    task = get_task("multiclass")
    folds = task.make_folds(labels, 5, seed=0)
    for k in range(5):
        counts = np.bincount(y[folds == k], minlength=4)
        assert np.all(np.abs(counts - np.array([500, 250, 50, 12]) / 5) <= 1), counts
    assert np.array_equal(folds, task.make_folds(labels, 5, seed=0))


def test_class_weights_are_balanced_and_counted_on_the_training_fold_only(tmp_path, dair_dir, monkeypatch):
    from sklearn.utils.class_weight import compute_class_weight

    import pipeline.losses as losses

    y = np.repeat(np.arange(3), [60, 30, 10])
    labels = np.eye(3, dtype=np.int8)[y]
    np.testing.assert_allclose(losses.class_weights(labels, "full"),
                               compute_class_weight("balanced", classes=np.arange(3), y=y), rtol=1e-6)
    np.testing.assert_allclose(losses.class_weights(labels, "sqrt") ** 2, losses.class_weights(labels, "full"), rtol=1e-5)
    np.testing.assert_array_equal(losses.class_weights(labels, "none"), 1)

    seen = []
    real = losses.cross_entropy_loss
    monkeypatch.setattr(losses, "cross_entropy_loss", lambda lab, mode: seen.append(lab.copy()) or real(lab, mode))
    run_dir = run_cv(dair_cfg(dair_dir, "tiny-encoder", "train.epochs=1"), tmp_path / "run", quiet=True)
    data = load_competition_data(DataConfig(competition="dair-emotion", data_dir=str(dair_dir)))
    folds = pd.read_csv(run_dir / "folds.csv")["fold"].to_numpy()
    assert len(seen) == 2
    for k, fold_labels in enumerate(seen):
        np.testing.assert_array_equal(fold_labels, data.labels[folds != k])


def test_cross_entropy_loss_equals_torch_with_class_weights():
    from pipeline.losses import cross_entropy_loss

    labels = np.eye(3, dtype=np.int8)[[0, 0, 0, 1, 2, 2]]
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.tensor(6 / (3 * np.array([3.0, 1.0, 2.0])), dtype=torch.float32)
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, torch.tensor([0, 0, 0, 1, 2, 2]))
    got = cross_entropy_loss(labels, "full")(logits, torch.from_numpy(labels.astype(np.float32)))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_links_and_untuned_rules():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    mc, ml = get_task("multiclass"), get_task("multilabel")
    np.testing.assert_allclose(mc.probs(logits).sum(1), 1.0)
    np.testing.assert_array_equal(mc.untuned_preds(mc.probs(logits)), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(ml.probs(logits), 1 / (1 + np.exp(-logits)))
    np.testing.assert_array_equal(ml.untuned_preds(ml.probs(logits)), [[1, 1, 0], [1, 1, 1]])
    y = np.eye(3)[[0, 1]]
    assert mc.val_loss(logits, y) == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor([0, 1]))))
    assert ml.val_loss(logits, y) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(y))))


def _holdout_competition(extra_competition):
    return extra_competition(name="holdout-test", id_col="id", text_col="text", task="multiclass",
                             label_col="label", sample_submission_file="", solution_file="solution.csv")


@pytest.mark.parametrize("preset", ["tiny-encoder", "tfidf-lr"])
def test_holdout_scoring_never_changes_oof_outputs(tmp_path, extra_competition, preset):
    _holdout_competition(extra_competition)
    train, validation, test = make_multiclass_frames()
    train = pd.concat([train, validation], ignore_index=True)
    runs = {}
    for name in ("with", "without"):
        folder = tmp_path / f"data-{name}"
        folder.mkdir()
        train.to_csv(folder / "train.csv", index=False)
        test[["id", "text"]].to_csv(folder / "test.csv", index=False)
        if name == "with":
            test[["id", "label"]].iloc[::-1].assign(Usage="Public").to_csv(folder / "solution.csv", index=False)
        cfg = load_config(None, [f"data.data_dir={folder}", "data.competition=holdout-test", f"model.preset={preset}",
                                 "cv.n_folds=2", "train.max_steps=4", "thresholds.n_trials=10"])
        runs[name] = run_cv(cfg, tmp_path / f"run-{name}", quiet=True)
        make_submission([runs[name]], tmp_path / f"sub-{name}.csv")
    for name in ("folds.csv", "oof.csv", "test_probs.csv", "biases.json", "folds/fold_0/oof.csv"):
        assert (runs["with"] / name).read_bytes() == (runs["without"] / name).read_bytes(), name
    assert (tmp_path / "sub-with.csv").read_bytes() == (tmp_path / "sub-without.csv").read_bytes()
    with_report = json.loads((runs["with"] / "report.json").read_text())
    without = json.loads((runs["without"] / "report.json").read_text())
    assert "holdout_test" in with_report and "holdout_test" not in without
    assert "solution.csv is not there" in without["holdout_test_note"]
    for key in ("oof_argmax", "oof_tuned", "oof_tuned_cv", "headline", "biases", "per_class", "per_fold"):
        assert with_report[key] == without[key], key


def test_score_flag_scores_a_submission_against_a_solution(tmp_path, extra_competition, capsys):
    _holdout_competition(extra_competition)
    train, validation, test = make_multiclass_frames()
    folder = tmp_path / "data"
    folder.mkdir()
    pd.concat([train, validation]).to_csv(folder / "train.csv", index=False)
    test[["id", "text"]].to_csv(folder / "test.csv", index=False)
    solution = tmp_path / "published-solution.csv"
    test[["id", "label"]].assign(Usage=["Public", "Private"] * 30).to_csv(solution, index=False)
    assert run_cv_main(["--competition", "holdout-test", "--model", "tfidf-lr", "--folds", "2", "--data-dir",
                        str(folder), "--set", "thresholds.n_trials=10", "--quiet"]) == 0
    capsys.readouterr()
    assert make_submission_main(["--out", str(tmp_path / "sub.csv"), "--score", str(solution)]) == 0
    out = capsys.readouterr().out
    assert "against" in out and "Public:" in out and "Private:" in out
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    expected = float(np.mean(sub.set_index("id").loc[test["id"], "label"].to_numpy() == test["label"].to_numpy()))
    assert f"accuracy {expected:.4f}" in out.split("Private")[0]
    # an existing file alone, no runs involved
    assert make_submission_main(["--submission", str(tmp_path / "sub.csv"), "--score", str(solution),
                                 "--competition", "holdout-test"]) == 0
    assert f"accuracy {expected:.4f}" in capsys.readouterr().out
    bad = test[["id", "label"]].iloc[1:]
    bad.to_csv(tmp_path / "short-solution.csv", index=False)
    assert make_submission_main(["--submission", str(tmp_path / "sub.csv"), "--score",
                                 str(tmp_path / "short-solution.csv"), "--competition", "holdout-test"]) == 2
    assert "list different ids" in capsys.readouterr().err


def test_goemotions_definition_multilabel_without_sample_with_holdout(tmp_path):
    from competition.goemotions import LABELS

    rng = np.random.default_rng(0)

    def frame(prefix, n):
        labels = (rng.random((n, len(LABELS))) < 0.1).astype(int)
        labels[labels.sum(1) == 0, -1] = 1  # every row has a label (neutral at least), as in GoEmotions
        texts = [" ".join(f"w{j}" for j in np.flatnonzero(row)) + " filler words" for row in labels]
        out = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "text": texts})
        return pd.concat([out, pd.DataFrame(labels, columns=list(LABELS))], axis=1)

    folder = tmp_path / "goemotions"
    folder.mkdir()
    frame("tr", 300).to_csv(folder / "train.csv", index=False)
    frame("va", 60).to_csv(folder / "validation.csv", index=False)
    frame("te", 80).to_csv(folder / "test.csv", index=False)
    cfg = load_config(None, [f"data.data_dir={folder}", "data.competition=goemotions", "model.preset=tfidf-lr",
                             "cv.n_folds=2", "thresholds.n_trials=5"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_rows"] == 360 and report["holdout_test"]["n_rows"] == 80
    assert {"macro_f1", "micro_f1", "samples_jaccard"} <= set(report["holdout_test"]["tuned"])
    make_submission([run_dir], tmp_path / "sub.csv")
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["id"] + list(LABELS) and len(sub) == 80


def _error(folder, capsys, *extra):
    assert run_cv_main(["--competition", "dair-emotion", "--data-dir", str(folder), "--model", "tfidf-lr",
                        "--folds", "2", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_class_is_named_with_the_closest_classes(tmp_path, capsys):
    train, validation, test = make_multiclass_frames()
    train.loc[3, "label"] = "suprise"
    train.loc[4, "label"] = "anger!"
    err = _error(write_multiclass(tmp_path / "d", train, validation, test), capsys)
    assert "train.csv: column 'label' has values that are not among the classes" in err
    assert "'suprise' in 1 rows (closest: 'surprise')" in err and "train_00003" in err
    assert not (tmp_path / "runs").exists()


def test_one_hot_rows_without_exactly_one_class_are_named(tmp_path, extra_competition):
    extra_competition(name="onehot-bad", id_col="id", text_col="text", task="multiclass",
                      classes=("a", "b", "c"), sample_submission_file="")
    folder = tmp_path / "d"
    folder.mkdir()
    pd.DataFrame({"id": ["r1", "r2", "r3", "r4"], "text": ["x"] * 4, "a": [1, 0, 1, 0], "b": [0, 0, 1, 1],
                  "c": [0, 0, 0, 0]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"id": ["t1"], "text": ["y"]}).to_csv(folder / "test.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv: each row must have exactly one 1 across a, b, c \(one class per "
                                        r"row\); 1 rows have none \(first ids: 'r2'\), 1 rows have two or more "
                                        r"\(first ids: 'r3'\)"):
        load_competition_data(DataConfig(competition="onehot-bad", data_dir=str(folder)))


def test_class_with_fewer_rows_than_folds_is_a_warning(tmp_path, caplog):
    train, validation, test = make_multiclass_frames()
    train = train[train["label"] != "surprise"]
    validation = validation[validation["label"] != "surprise"]
    train.loc[train.index[0], "label"] = "surprise"
    folder = write_multiclass(tmp_path / "d", train, validation, test[test["label"] != "surprise"])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert run_cv_main(["--competition", "dair-emotion", "--data-dir", str(folder), "--model", "tfidf-lr",
                            "--folds", "3", "--quiet", "--set", "thresholds.n_trials=5"]) == 0
    assert "class 'surprise' has 1 rows, fewer than 3 folds" in caplog.text


def test_solution_with_other_ids_than_the_test_file_is_refused(tmp_path, extra_competition, capsys):
    _holdout_competition(extra_competition)
    train, validation, test = make_multiclass_frames()
    folder = tmp_path / "d"
    folder.mkdir()
    train.to_csv(folder / "train.csv", index=False)
    test[["id", "text"]].to_csv(folder / "test.csv", index=False)
    solution = test[["id", "label"]].copy()
    solution.loc[0, "id"] = "test_99999"
    solution.to_csv(folder / "solution.csv", index=False)
    with pytest.raises(DataError, match=r"solution.csv and test.csv list different ids: 1 only in solution.csv "
                                        r"\('test_99999'\), 1 only in test.csv \('test_00000'\)"):
        load_competition_data(DataConfig(competition="holdout-test", data_dir=str(folder)))
