"""Turns test probabilities and a fitted decision rule into a CSV that matches the sample submission
(or, for competitions without one, the format their definition declares) exactly."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.io import atomic_write_csv


def build_submission(sample: pd.DataFrame, id_col: str, test_probs: pd.DataFrame,
                     rule: Union[np.ndarray, Callable], write: Optional[Callable] = None) -> pd.DataFrame:
    """sample: the sample submission (or template) as read; test_probs: indexed by id, one probability
    column per label or class. rule: per-label thresholds (n_labels,), or a function probs -> 0/1 preds
    (a fitted tuner's `predict`). write: preds (n, n_labels) -> {column: values} for the submission's
    prediction columns (the task's `write_predictions`); by default one int64 0/1 column per label.

    Returns a frame with the sample's columns, column order and id order.
    """
    label_cols = list(test_probs.columns)
    if write is None:
        sample_cols = [c for c in sample.columns if c != id_col]
        if label_cols != sample_cols:
            raise DataError(f"predictions have label columns {label_cols} but the sample submission has {sample_cols}")
    ids = sample[id_col]
    missing = sorted(set(ids) - set(test_probs.index))
    extra = sorted(set(test_probs.index) - set(ids))
    if missing or extra:
        raise DataError(f"predictions cover {len(test_probs)} ids but the sample submission has {len(ids)}; "
                        f"missing: {missing[:5]}, not in the sample: {extra[:5]}")
    probs = test_probs.loc[ids.tolist(), label_cols].to_numpy()
    preds = rule(probs) if callable(rule) else (probs >= np.asarray(rule)[None, :]).astype(np.int64)
    columns = write(preds) if write is not None else {c: preds[:, j].astype(np.int64) for j, c in enumerate(label_cols)}
    out = pd.DataFrame(columns)
    out.insert(0, id_col, ids.to_numpy())
    return out


def check_like_sample(frame: pd.DataFrame, sample: pd.DataFrame, id_col: str, classes: Optional[list] = None) -> None:
    """Raise unless columns, order, id order and prediction values match the sample's shape: 0/1 int64
    columns, or (classes given) a column of class names."""
    if list(frame.columns) != list(sample.columns):
        raise DataError(f"submission columns {list(frame.columns)} differ from the sample's {list(sample.columns)}")
    if not np.array_equal(frame[id_col].astype(str).to_numpy(), sample[id_col].astype(str).to_numpy()):
        raise DataError("submission ids are not in the sample submission's order")
    for col in frame.columns:
        if col == id_col:
            continue
        if classes is not None:
            unknown = sorted(set(frame[col]) - set(classes))
            if unknown:
                raise DataError(f"submission column '{col}' holds {unknown[:5]}, not among the classes {classes}")
        elif frame[col].dtype != np.int64 or not frame[col].isin([0, 1]).all():
            raise DataError(f"submission column '{col}' must be int64 0/1, got {frame[col].dtype}")


def write_submission(path: Path, frame: pd.DataFrame, sample: pd.DataFrame, id_col: str,
                     classes: Optional[list] = None) -> None:
    """Check against the sample, then write atomically (no half-written file on failure)."""
    check_like_sample(frame, sample, id_col, classes)
    atomic_write_csv(Path(path), frame)
