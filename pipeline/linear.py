"""The `tfidf-lr` preset: word and character TF-IDF, then logistic regression (one per label for
multilabel, one multinomial for multiclass: the task decides).

Vectorizers are fitted on the training fold only; it returns the same `FoldResult` as the
neural loop (logits are the regressions' decision values), so folds, OOF, thresholds and
submissions take the same path.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.config import RunConfig
from pipeline.tasks import task_for
from pipeline.train import FoldResult


def _vectorizers():
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                           lowercase=True, token_pattern=r"(?u)[#@]?\w+|[^\w\s]")
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True,
                           lowercase=True, max_features=200_000)
    return word, char


C = 2.0  # inverse L2 strength; chosen by OOF macro-F1 on the emotion data (docs/BENCHMARKS.md)


def fit_tfidf_fold(cfg: RunConfig, fold: int, folds: np.ndarray, labels: np.ndarray,
                   train_texts: list, test_texts: list, fit_mask: Optional[np.ndarray] = None) -> FoldResult:
    """folds: (n_train,) fold per row; labels: (n_train, n_labels) 0/1. Fits on folds != fold
    (and fit_mask, when given); predicts every row of the fold."""
    train_idx = np.flatnonzero((folds != fold) & (True if fit_mask is None else fit_mask))
    val_idx = np.flatnonzero(folds == fold)
    start = time.perf_counter()
    word, char = _vectorizers()
    fit_texts = [train_texts[i] for i in train_idx]
    x_train = hstack([word.fit_transform(fit_texts), char.fit_transform(fit_texts)]).tocsr()
    task = task_for(cfg.data.competition)
    weights = task.class_weights(labels[train_idx], cfg.train.pos_weight)
    decide = task.linear_model(x_train, labels[train_idx], weights, C, cfg.cv.seed)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    val_texts = [train_texts[i] for i in val_idx]
    x_val = hstack([word.transform(val_texts), char.transform(val_texts)]).tocsr()
    x_test = hstack([word.transform(test_texts), char.transform(test_texts)]).tocsr()
    val_logits, test_logits = decide(x_val), decide(x_test)
    predict_seconds = time.perf_counter() - start
    return FoldResult(fold, val_idx, val_logits, test_logits, best_epoch=1, history=[],
                      train_seconds=train_seconds, train_examples=len(train_idx),
                      predict_seconds=predict_seconds, predict_examples=len(val_idx) + len(test_texts))
