"""Stacking (`--weights stack`): per-label member weights learned on OOF, scored without the held-out fold,
saved in the submission's summary and applied again by predict.py; the multiclass counterpart."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS
from pipeline import stacking
from pipeline.cli import make_submission_main
from pipeline.ensemble import cross_validated_macro_f1
from pipeline.metrics import macro_f1
from pipeline.thresholds import ThresholdTuner
from test_predict import predict, preds_of, probs_of, tiny_run


def members(seed=0, n=600):
    """Two members, each informative on two of three labels and pure noise on the third (a different one)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < 0.3).astype(np.int8)
    a = labels * 0.3 + rng.random((n, 3)) * 0.7
    b = labels * 0.3 + rng.random((n, 3)) * 0.7
    a[:, 2], b[:, 0] = rng.random(n), rng.random(n)
    return labels, [a, b], np.arange(n) % 5


def exact():
    return ThresholdTuner("exact")


def test_the_stacker_learns_which_member_to_trust_per_label_and_beats_a_fixed_average():
    labels, oofs, folds = members()
    stacker = stacking.LabelwiseStacker().fit(oofs, labels)
    assert stacker.coef_[0, 0] > 1 and abs(stacker.coef_[0, 1]) < 0.3  # label 0: only member a carries signal
    assert stacker.coef_[2, 1] > 1 and abs(stacker.coef_[2, 0]) < 0.3  # label 2: only member b
    stacked = macro_f1(labels, stacking.cross_validated_preds(stacking.LabelwiseStacker, oofs, labels, folds, exact))
    averaged = cross_validated_macro_f1(oofs, labels, folds, exact, weights=np.array([0.5, 0.5]))
    assert stacked > averaged + 0.03


def test_the_cross_validated_stack_never_sees_the_held_out_folds_labels():
    labels, oofs, folds = members(1)
    before = stacking.cross_validated_preds(stacking.LabelwiseStacker, oofs, labels, folds, exact)
    scrambled = labels.copy()
    scrambled[folds == 2] = np.random.default_rng(9).permutation(labels[folds == 2])[:, ::-1]
    after = stacking.cross_validated_preds(stacking.LabelwiseStacker, oofs, scrambled, folds, exact)
    assert np.array_equal(before[folds == 2], after[folds == 2])
    assert not np.array_equal(before[folds != 2], after[folds != 2])  # the other folds' rules did use fold 2
    fitted = stacking.cross_fit(stacking.LabelwiseStacker, oofs, labels, folds)
    refit = stacking.cross_fit(stacking.LabelwiseStacker, oofs, scrambled, folds)
    np.testing.assert_array_equal(fitted[folds == 2], refit[folds == 2])


def test_a_label_constant_in_the_fit_rows_gets_its_rate_not_an_error():
    labels, oofs, _ = members(2, n=50)
    labels[:, 1] = 0
    stacker = stacking.LabelwiseStacker().fit(oofs, labels)
    assert stacker.predict(oofs)[:, 1].max() < 1e-5 and np.all(stacker.coef_[1] == 0)


def test_multinomial_stacker_two_and_absent_classes_and_json_round_trip():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)  # class 2 never occurs
    onehot = np.eye(3)[y]
    good = np.clip(onehot * 0.6 + rng.random((400, 3)), 1e-3, None)
    good /= good.sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(3), 400)
    stacker = stacking.MultinomialStacker().fit([good, noise], onehot)
    probs = stacker.predict([good, noise])
    np.testing.assert_allclose(probs.sum(1), 1)
    assert probs[:, 2].max() < 1e-6  # absent from the fit rows: never predicted
    assert (probs.argmax(1) == y).mean() > 0.8
    weights = stacker.member_weights()
    assert weights[0] > abs(weights[1])
    saved = json.loads(json.dumps(stacker.to_json(["x", "y", "z"], ["good", "noise"])))
    again = stacking.stacker_from_json(saved, ["x", "y", "z"], ["good", "noise"])
    np.testing.assert_allclose(again.predict([good, noise]), probs)
    with pytest.raises(Exception, match="combines"):
        stacking.stacker_from_json(saved, ["x", "y", "z"], ["noise", "good"])


def test_make_submission_stack_then_predict_applies_the_same_stacker(tmp_path, comp_dir, capsys):
    a = tiny_run(tmp_path, comp_dir, "a", "model.preset=tfidf-lr", "cv.n_folds=3")
    b = tiny_run(tmp_path, comp_dir, "b", "model.preset=tfidf-lr", "cv.n_folds=3", "train.seed=7",
                 "model.max_length=16")
    sub = tmp_path / "stack.csv"
    assert make_submission_main(["--runs", str(a), str(b), "--weights", "stack", "--out", str(sub)]) == 0
    printed = capsys.readouterr().out
    assert "stacked: a logistic regression per label" in printed and "cross-validated" in printed
    summary = json.loads(sub.with_suffix(".json").read_text())
    assert summary["combine"] == "stack" and summary["stacker"]["members"] == ["a", "b"]
    assert set(summary["stacker"]["labels"]) == set(LABELS)
    # the test probabilities are the stacker's, applied to each run's test_probs.csv
    tests = [pd.read_csv(r / "test_probs.csv", dtype={"id": str}).set_index("id")[LABELS] for r in (a, b)]
    out = predict(tmp_path, "--submission", str(sub.with_suffix(".json")), "--input", str(comp_dir / "test.csv"))
    coef = np.array([[summary["stacker"]["labels"][c]["coef"][m] for m in ("a", "b")] for c in LABELS])
    bias = np.array([summary["stacker"]["labels"][c]["intercept"] for c in LABELS])
    logit = [np.log(np.clip(t.loc[out["ID"]].to_numpy(), 1e-6, 1 - 1e-6) /
                    (1 - np.clip(t.loc[out["ID"]].to_numpy(), 1e-6, 1 - 1e-6))) for t in tests]
    expected = 1 / (1 + np.exp(-(bias + coef[:, 0] * logit[0] + coef[:, 1] * logit[1])))
    np.testing.assert_allclose(probs_of(out, LABELS), expected, rtol=0, atol=1e-6)
    submitted = pd.read_csv(sub, dtype={"ID": str}).set_index("ID").loc[out["ID"], LABELS].to_numpy()
    assert np.array_equal(preds_of(out, LABELS), submitted)
    assert "mean coefficient" in sub.with_suffix(".html").read_text()


def test_multiclass_submission_can_stack(tmp_path, dair_dir):
    from pipeline.submit import make_submission

    common = ["data.competition=dair-emotion", "model.preset=tfidf-lr", "cv.n_folds=3"]
    a = tiny_run(tmp_path, dair_dir, "a", *common)
    b = tiny_run(tmp_path, dair_dir, "b", *common, "train.seed=5", "model.max_length=16")
    sub = tmp_path / "dair.csv"
    printed = make_submission([a, b], sub, weights="stack")
    assert "multinomial logistic regression" in printed
    summary = json.loads(sub.with_suffix(".json").read_text())
    assert summary["stacker"]["kind"] == "multinomial-logistic"
    out = predict(tmp_path, "--submission", str(sub.with_suffix(".json")), "--input", str(dair_dir / "test.csv"))
    classes = summary["stacker"]["classes"]
    np.testing.assert_allclose(probs_of(out, classes).sum(1), 1, atol=1e-6)
    submitted = pd.read_csv(sub, dtype={"id": str}).set_index("id").loc[out["id"], "label"]
    assert np.asarray(classes)[preds_of(out, classes).argmax(1)].tolist() == submitted.tolist()


def test_bad_weights_word_one_run_and_too_few_folds_are_one_line(tmp_path, comp_dir, capsys):
    a = tiny_run(tmp_path, comp_dir, "a", "model.preset=tfidf-lr")  # 2 folds
    for runs, word, message in (([a, a], "stacked", "'auto' or 'stack'"), ([a], "stack", "combines several runs"),
                                ([a, a], "stack", "at least 3 folds")):
        out = tmp_path / f"{word}.csv"
        assert make_submission_main(["--runs", *map(str, runs), "--weights", word, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not out.exists()
