"""Loss functions picked by the task: BCE with per-label positive weights (multilabel) and softmax
cross-entropy with class weights (multiclass), both weighted from the training fold only.

`pos_weight` for label j is n_negative_j / n_positive_j, counted within that label on the
training fold only ('full'), its square root ('sqrt', a milder push towards recall), or 1 ('none').
Class weights for multiclass follow the same modes: 'full' is scikit-learn's 'balanced'.
"""
from __future__ import annotations

import numpy as np
import torch


def pos_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """labels: (n_samples, n_labels) 0/1 of the training fold. Returns (n_labels,) float32."""
    n_pos = labels.sum(0).astype(np.float64)
    n_neg = labels.shape[0] - n_pos
    # a label with no positive in this fold gets weight n_neg (as if it had one), not infinity
    return _damped(n_neg / np.maximum(n_pos, 1.0), mode)


def _damped(weights: np.ndarray, mode: str) -> np.ndarray:
    """'full' keeps the weights, 'sqrt' takes their square root (milder), 'none' makes them all 1."""
    if mode == "full":
        return weights.astype(np.float32)
    if mode == "sqrt":
        return np.sqrt(weights).astype(np.float32)
    if mode == "none":
        return np.ones_like(weights, dtype=np.float32)
    raise ValueError(f"unknown weight mode {mode!r}")


def bce_loss(labels: np.ndarray, mode: str) -> torch.nn.Module:
    """BCEWithLogitsLoss weighted from the training fold's labels (n_samples, n_labels)."""
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pos_weights(labels, mode)))


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """labels: one-hot (n, K) of the training fold. 'full' is scikit-learn's compute_class_weight
    'balanced' (n / (K * n_k)), 'sqrt' its square root (milder), 'none' all ones. A class absent from
    the fold is weighted as if it had one row. Returns (K,) float32."""
    n_k = labels.sum(0).astype(np.float64)
    return _damped(labels.shape[0] / (labels.shape[1] * np.maximum(n_k, 1.0)), mode)


class OneHotCrossEntropy(torch.nn.Module):
    """Softmax cross-entropy over class weights, taking one-hot float targets like the BCE loss does
    (so the loop passes the same batch to either); the mean is weighted as in torch's CrossEntropyLoss."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, targets.argmax(1), weight=self.weight)


def cross_entropy_loss(labels: np.ndarray, mode: str) -> torch.nn.Module:
    """Class-weighted softmax cross-entropy from the training fold's one-hot labels (n_samples, n_classes)."""
    return OneHotCrossEntropy(torch.from_numpy(class_weights(labels, mode)))
