"""Scores agree with scikit-learn's definitions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from pipeline.metrics import macro_f1, samples_jaccard


def test_samples_jaccard_matches_sklearn_and_counts_empty_rows_as_one():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < 0.3).astype(int)
    preds = (rng.random((300, 5)) < 0.3).astype(int)
    labels[0] = preds[0] = 0
    expected = jaccard_score(labels, preds, average="samples", zero_division=1)
    assert samples_jaccard(labels, preds) == pytest.approx(expected)


def test_macro_f1_of_perfect_and_empty():
    labels = np.array([[1, 0], [0, 1]])
    assert macro_f1(labels, labels) == 1.0
    assert macro_f1(labels, np.zeros_like(labels)) == 0.0


def test_multiclass_metrics_equal_scikit_learn_on_class_indices():
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    from pipeline import metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    labels, preds = np.eye(3, dtype=int)[y], np.eye(3, dtype=int)[pred]
    assert metrics.accuracy(labels, preds) == accuracy_score(y, pred)
    assert metrics.class_f1(labels, preds) == f1_score(y, pred, average="macro")
    assert metrics.macro_f1(labels, preds) == f1_score(y, pred, average="macro")
    assert metrics.weighted_f1(labels, preds) == f1_score(y, pred, average="weighted")
    scores = metrics.multiclass_probability_scores(labels, probs)
    assert scores["roc_auc_weighted_ovr"] == roc_auc_score(y, probs, multi_class="ovr", average="weighted")
    assert scores["log_loss"] == log_loss(y, probs)
    counts, normalised = metrics.confusion(labels, preds)
    assert counts.sum() == 300 and np.allclose(normalised.sum(1), 1)
    absent = metrics.multiclass_probability_scores(np.eye(3, dtype=int)[np.zeros(300, int)], probs)
    assert absent["roc_auc_macro_ovr"] is None
