"""Turns test probabilities and thresholds into a CSV that matches the sample submission exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.io import atomic_write_csv


def build_submission(sample: pd.DataFrame, id_col: str, test_probs: pd.DataFrame,
                     thresholds: np.ndarray) -> pd.DataFrame:
    """sample: the sample submission as read; test_probs: indexed by id, one column per label.

    Returns a frame with the sample's columns, column order and id order, labels as int64 0/1.
    """
    label_cols = [c for c in sample.columns if c != id_col]
    if list(test_probs.columns) != label_cols:
        raise DataError(f"predictions have label columns {list(test_probs.columns)} but the sample "
                        f"submission has {label_cols}")
    ids = sample[id_col]
    missing = sorted(set(ids) - set(test_probs.index))
    extra = sorted(set(test_probs.index) - set(ids))
    if missing or extra:
        raise DataError(f"predictions cover {len(test_probs)} ids but the sample submission has {len(ids)}; "
                        f"missing: {missing[:5]}, not in the sample: {extra[:5]}")
    probs = test_probs.loc[ids.tolist(), label_cols].to_numpy()
    preds = (probs >= np.asarray(thresholds)[None, :]).astype(np.int64)
    out = pd.DataFrame(preds, columns=label_cols)
    out.insert(0, id_col, ids.to_numpy())
    return out


def check_like_sample(frame: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> None:
    """Raise unless columns, order, id order and label values/dtypes match the sample's shape."""
    if list(frame.columns) != list(sample.columns):
        raise DataError(f"submission columns {list(frame.columns)} differ from the sample's {list(sample.columns)}")
    if not np.array_equal(frame[id_col].astype(str).to_numpy(), sample[id_col].astype(str).to_numpy()):
        raise DataError("submission ids are not in the sample submission's order")
    for col in frame.columns:
        if col == id_col:
            continue
        if frame[col].dtype != np.int64 or not frame[col].isin([0, 1]).all():
            raise DataError(f"submission column '{col}' must be int64 0/1, got {frame[col].dtype}")


def write_submission(path: Path, frame: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> None:
    """Check against the sample, then write atomically (no half-written file on failure)."""
    check_like_sample(frame, sample, id_col)
    atomic_write_csv(Path(path), frame)
