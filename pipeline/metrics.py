"""Scores on 0/1 arrays and probabilities, through scikit-learn (no torch).

Multilabel: labels and preds are (n_samples, n_labels) 0/1. Multiclass: one-hot (n_samples, n_classes),
exactly one 1 per row; the functions below take the class index (argmax) where scikit-learn wants it.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, jaccard_score, log_loss,
                             precision_recall_fscore_support, roc_auc_score)


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """labels, preds: (n_samples, n_labels) 0/1. Mean over labels of per-label F1 (0 when undefined).
    On one-hot multiclass arrays this equals scikit-learn's multiclass macro-F1."""
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


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """labels, preds: one-hot (n_samples, n_classes). Share of rows whose class is right."""
    return float(accuracy_score(labels.argmax(1), preds.argmax(1)))


def weighted_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Per-class F1 averaged with the classes' true counts as weights (one-hot inputs)."""
    n = labels.shape[1]
    return float(f1_score(labels.argmax(1), preds.argmax(1), labels=np.arange(n), average="weighted",
                          zero_division=0))


def class_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Macro-F1 over the classes of one-hot inputs (classes absent from both count as 0, as above)."""
    n = labels.shape[1]
    return float(f1_score(labels.argmax(1), preds.argmax(1), labels=np.arange(n), average="macro",
                          zero_division=0))


def multiclass_probability_scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    """One-vs-rest ROC-AUC (weighted and macro) and log loss of probs (n, n_classes) rows summing to 1.
    A score that is undefined (a class absent from labels) is None."""
    y = labels.argmax(1)
    n = labels.shape[1]
    probs = np.clip(probs, 1e-12, 1.0)
    probs = probs / probs.sum(1, keepdims=True)  # CSV rounding leaves sums a hair off 1
    out = {}
    for average in ("weighted", "macro"):
        with warnings.catch_warnings():  # a class absent from labels: undefined, reported as None
            warnings.simplefilter("ignore")
            try:
                auc = float(roc_auc_score(y, probs, multi_class="ovr", average=average, labels=np.arange(n)))
            except ValueError:
                auc = float("nan")
        out[f"roc_auc_{average}_ovr"] = None if np.isnan(auc) else auc
    out["log_loss"] = float(log_loss(y, probs, labels=np.arange(n)))
    return out


def confusion(labels: np.ndarray, preds: np.ndarray) -> tuple:
    """Confusion matrix of one-hot inputs: (counts (n, n) int, row-normalised (n, n) float; rows = true)."""
    n = labels.shape[1]
    counts = confusion_matrix(labels.argmax(1), preds.argmax(1), labels=np.arange(n))
    rows = counts.sum(1, keepdims=True)
    return counts, np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)


METRICS = {"macro_f1": macro_f1, "accuracy": accuracy}  # competition metrics, by the name a definition uses

__all__ = ["macro_f1", "micro_f1", "samples_jaccard", "per_label", "jaccard_score", "accuracy", "weighted_f1",
           "class_f1", "multiclass_probability_scores", "confusion", "METRICS"]
