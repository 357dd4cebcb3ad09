"""Folds: each row once, labels balanced across folds, same seed same folds, sparse-label warnings."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import RunDirError
from pipeline.folds import load_folds, make_folds, save_folds, sparse_label_warnings, stratified_subset


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return (rng.random((1000, 6)) < [0.4, 0.3, 0.1, 0.05, 0.2, 0.02]).astype(int)


def test_each_row_in_exactly_one_fold(labels):
    folds = make_folds(labels, 5, seed=1)
    assert folds.shape == (1000,) and set(folds) == set(range(5))
    assert np.bincount(folds).min() >= 190 and np.bincount(folds).max() <= 210


def test_label_balance_across_folds(labels):
    folds = make_folds(labels, 5, seed=1)
    overall = labels.mean(0)
    for k in range(5):
        share = labels[folds == k].mean(0)
        assert np.all(np.abs(share - overall) <= 0.02 + 0.1 * overall)


def test_same_seed_same_folds_other_seed_differs(labels):
    assert np.array_equal(make_folds(labels, 5, 3), make_folds(labels, 5, 3))
    assert not np.array_equal(make_folds(labels, 5, 3), make_folds(labels, 5, 4))


def test_warning_names_sparse_labels():
    labels = np.zeros((50, 3), dtype=int)
    labels[:30, 0] = 1
    labels[:3, 1] = 1
    labels[:10, 2] = 1
    messages = sparse_label_warnings(labels, ["a", "b", "c"], 5)
    assert len(messages) == 1 and "label 'b' has 3 positive rows, fewer than 5 folds" in messages[0]


def test_save_load_aligns_by_id(tmp_path, labels):
    ids = np.array([f"id{i}" for i in range(len(labels))], dtype=object)
    folds = make_folds(labels, 4, 0)
    save_folds(tmp_path / "folds.csv", ids, folds)
    shuffled = ids[::-1]
    assert np.array_equal(load_folds(tmp_path / "folds.csv", shuffled, 4), folds[::-1])
    with pytest.raises(RunDirError, match="holds 4 folds but the config asks for 5"):
        load_folds(tmp_path / "folds.csv", ids, 5)
    with pytest.raises(RunDirError, match="made for other training rows"):
        load_folds(tmp_path / "folds.csv", ids[:-1], 4)


def test_stratified_subset(labels):
    keep = stratified_subset(labels, 300, seed=0)
    assert len(keep) == 300 and len(set(keep)) == 300
    assert np.all(np.abs(labels[keep].mean(0) - labels.mean(0)) < 0.02)
    assert np.array_equal(keep, stratified_subset(labels, 300, seed=0))
