"""Per-class positive weights come from the training fold's own label counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses import bce_loss, pos_weights


def test_pos_weight_is_negatives_over_positives_per_class():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_allclose(pos_weights(labels, "full"), [1 / 3, 3 / 1, 3 / 1])
    np.testing.assert_allclose(pos_weights(labels, "sqrt"), np.sqrt([1 / 3, 3, 3]), rtol=1e-6)
    np.testing.assert_allclose(pos_weights(labels, "none"), [1, 1, 1])


def test_label_without_positives_gets_finite_weight():
    labels = np.array([[0, 1], [0, 0], [0, 1]])
    assert np.isfinite(pos_weights(labels, "full")).all()


def test_loss_matches_manual_weighted_bce():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
    loss = bce_loss(labels, "full")
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([3.0, 3.0])
    manual = -(w * target * torch.nn.functional.logsigmoid(logits)
               + (1 - target) * torch.nn.functional.logsigmoid(-logits)).mean()
    assert loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-6)
