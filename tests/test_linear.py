"""The tfidf-lr preset fits its vectorizers and regressions on the training fold only."""
from __future__ import annotations

import numpy as np

from conftest import LABELS, make_frames
from pipeline.config import load_config
from pipeline.linear import fit_tfidf_fold


def test_validation_rows_do_not_influence_the_fit():
    train, test, _ = make_frames(n_train=120, n_test=10)
    labels = train[LABELS].to_numpy()
    folds = np.arange(120) % 2
    cfg = load_config(None, ["model.preset=tfidf-lr"])
    texts = train["Tweet"].tolist()
    a = fit_tfidf_fold(cfg, 0, folds, labels, texts, test["Tweet"].tolist())
    # change every validation text and label: training-fold-only fitting must give the same test logits
    changed = [t if f != 0 else "zzz qqq" for t, f in zip(texts, folds)]
    flipped = labels.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    b = fit_tfidf_fold(cfg, 0, folds, flipped, changed, test["Tweet"].tolist())
    np.testing.assert_allclose(a.test_logits, b.test_logits)
    assert a.val_logits.shape == (60, 4) and np.array_equal(a.val_index, np.flatnonzero(folds == 0))
