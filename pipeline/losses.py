"""Loss functions picked by name: BCE with logits and per-class positive weights.

`pos_weight` for label j is n_negative_j / n_positive_j, counted within that label on the
training fold only ('full'), its square root ('sqrt', a milder push towards recall), or 1 ('none').
"""
from __future__ import annotations

import numpy as np
import torch


def pos_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """labels: (n_samples, n_labels) 0/1 of the training fold. Returns (n_labels,) float32."""
    n_pos = labels.sum(0).astype(np.float64)
    n_neg = labels.shape[0] - n_pos
    # a label with no positive in this fold gets weight n_neg (as if it had one), not infinity
    ratio = n_neg / np.maximum(n_pos, 1.0)
    if mode == "full":
        return ratio.astype(np.float32)
    if mode == "sqrt":
        return np.sqrt(ratio).astype(np.float32)
    if mode == "none":
        return np.ones_like(ratio, dtype=np.float32)
    raise ValueError(f"unknown pos_weight mode {mode!r}")


def bce_loss(labels: np.ndarray, mode: str) -> torch.nn.Module:
    """BCEWithLogitsLoss weighted from the training fold's labels (n_samples, n_labels)."""
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pos_weights(labels, mode)))
