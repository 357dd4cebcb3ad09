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
