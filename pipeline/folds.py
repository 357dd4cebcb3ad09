"""Assigns each training row a fold once (stratified by the task's splitter, seeded) and saves it.

Multilabel runs use MultilabelStratifiedKFold, multiclass runs StratifiedKFold (pipeline/tasks/).
Later stages read `folds.csv` from the run directory and never split again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import RunDirError
from pipeline.io import atomic_write_csv

log = logging.getLogger(__name__)


def _task(task):
    from pipeline.tasks import get_task

    return task or get_task("multilabel")


def assign_folds(splitter, labels_or_classes: np.ndarray) -> np.ndarray:
    """(n_samples,) fold of each row from a scikit-learn-style K-fold splitter's validation parts."""
    folds = np.full(labels_or_classes.shape[0], -1, dtype=np.int64)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(labels_or_classes.shape[0]), labels_or_classes)):
        folds[val] = fold
    return folds


def make_folds(labels: np.ndarray, n_folds: int, seed: int, task=None) -> np.ndarray:
    """labels: (n_samples, n_labels) 0/1 (one-hot for multiclass). Returns (n_samples,) int fold in
    [0, n_folds). task: a pipeline.tasks task (default multilabel)."""
    folds = _task(task).make_folds(labels, n_folds, seed)
    assert (folds >= 0).all()
    return folds


def sparse_label_warnings(labels: np.ndarray, label_cols: list, n_folds: int, task=None) -> list:
    """One message per label (or class) with fewer positive rows than folds (some folds hold none)."""
    return _task(task).sparse_warnings(labels, label_cols, n_folds)


def stratified_subset(labels: np.ndarray, n_rows: int, seed: int, task=None) -> np.ndarray:
    """Sorted row positions of a label-stratified subset of n_rows rows (all rows if fewer)."""
    if n_rows >= labels.shape[0]:
        return np.arange(labels.shape[0])
    return np.sort(_task(task).subset(labels, n_rows, seed))


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
