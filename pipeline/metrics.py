"""Multilabel scores on 0/1 arrays, through scikit-learn (no torch)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, jaccard_score, precision_recall_fscore_support


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """labels, preds: (n_samples, n_labels) 0/1. Mean over labels of per-label F1 (0 when undefined)."""
    return float(f1_score(labels, preds, average="macro", zero_division=0))


def micro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(f1_score(labels, preds, average="micro", zero_division=0))


def samples_jaccard(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean per-tweet |pred & true| / |pred | true| (1 when both are empty), SemEval E-c's main score."""
    inter = (labels & preds).sum(1)
    union = (labels | preds).sum(1)
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


def per_label(labels: np.ndarray, preds: np.ndarray):
    """Returns precision, recall, f1, support: each (n_labels,)."""
    p, r, f, s = precision_recall_fscore_support(labels, preds, average=None, zero_division=0)
    return p, r, f, s


__all__ = ["macro_f1", "micro_f1", "samples_jaccard", "per_label", "jaccard_score"]
