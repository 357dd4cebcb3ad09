"""Assigns each training row a fold once (MultilabelStratifiedKFold, seeded) and saves it.

Later stages read `folds.csv` from the run directory and never split again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

from pipeline.errors import RunDirError
from pipeline.io import atomic_write_csv

log = logging.getLogger(__name__)


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """labels: (n_samples, n_labels) 0/1. Returns (n_samples,) int fold in [0, n_folds)."""
    folds = np.full(labels.shape[0], -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(labels.shape[0]), labels)):
        folds[val] = fold
    assert (folds >= 0).all()
    return folds


def sparse_label_warnings(labels: np.ndarray, label_cols: list, n_folds: int) -> list:
    """One message per label with fewer positives than folds (some folds will have none)."""
    counts = labels.sum(0)
    return [f"label '{c}' has {int(n)} positive rows, fewer than {n_folds} folds: some validation "
            f"folds hold none of it, so its per-fold F1 is undefined there"
            for c, n in zip(label_cols, counts) if n < n_folds]


def stratified_subset(labels: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
    """Sorted row positions of a label-stratified subset of n_rows rows (all rows if fewer)."""
    if n_rows >= labels.shape[0]:
        return np.arange(labels.shape[0])
    split = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=n_rows,
                                             test_size=labels.shape[0] - n_rows, random_state=seed)
    keep, _ = next(split.split(np.zeros(labels.shape[0]), labels))
    return np.sort(keep)


def save_folds(path: Path, ids: np.ndarray, folds: np.ndarray) -> None:
    atomic_write_csv(path, pd.DataFrame({"id": ids, "fold": folds}))


def load_folds(path: Path, ids: np.ndarray, n_folds: int) -> np.ndarray:
    """Read folds.csv and align it to `ids`; refuse a file made for other rows or fold count."""
    saved = pd.read_csv(path, dtype={"id": str})
    if set(saved["id"]) != set(ids) or len(saved) != len(ids):
        raise RunDirError(f"{path} was made for other training rows ({len(saved)} ids, {len(ids)} now); "
                          f"use a new run directory")
    if saved["fold"].nunique() != n_folds or saved["fold"].max() != n_folds - 1:
        raise RunDirError(f"{path} holds {saved['fold'].nunique()} folds but the config asks for {n_folds}")
    return saved.set_index("id").loc[list(ids), "fold"].to_numpy(dtype=np.int64)
