"""The `tfidf-lr` preset: word and character TF-IDF, then logistic regression (one per label for
multilabel, one multinomial for multiclass: the task decides).

Vectorizers are fitted on the training fold only; it returns the same `FoldResult` as the
neural loop (logits are the regressions' decision values), so folds, OOF, thresholds and
submissions take the same path. With `train.save_models` each fold's fitted vectorizers and
regressions are kept (a pickle, model.pkl) in folds/fold_<k>/model/, for `predict.py`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
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


class TfidfModel:
    """A fitted fold: texts -> (n, n_labels) float32 decision values (the task's logits)."""

    def __init__(self, word, char, decide):
        self.word, self.char, self.decide = word, char, decide

    def __call__(self, texts: list) -> np.ndarray:
        return self.decide(hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr())


MODEL_FILE = "model.pkl"


def save_tfidf_fold(model: TfidfModel, folder: Path, cfg: RunConfig, fold: int) -> None:
    """Keep a fitted fold in `folder` (model.pkl and fold.json), unless train.save_models is false.

    Python's C pickler, not joblib: joblib pickles through the pure-Python pickler, which took 1.0-1.3 s to write
    and 0.4-0.5 s to read an emotion fold (86k n-grams) against 0.25 s and 0.04 s, on an idle machine
    (docs/BENCHMARKS.md)."""
    import pickle

    from pipeline.io import atomic_write_folder

    if cfg.train.save_models is False:
        return
    for vectorizer in (model.word, model.char):
        if hasattr(vectorizer, "stop_words_"):  # older scikit-learn: every cut n-gram, for introspection only
            vectorizer.stop_words_ = None

    def write(tmp: Path) -> None:
        with open(tmp / MODEL_FILE, "wb") as handle:
            pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
        (tmp / "fold.json").write_text(json.dumps({"fold": fold, "preset": cfg.model.preset}))

    atomic_write_folder(Path(folder), write)


def load_tfidf_fold(folder: Path) -> TfidfModel:
    """A fold kept by `save_tfidf_fold` (a pickle: load only run directories you made or trust); runs kept
    before model.pkl have model.joblib."""
    import pickle

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() and (folder / "model.joblib").is_file():
        import joblib

        return joblib.load(folder / "model.joblib")
    with open(folder / MODEL_FILE, "rb") as handle:
        return pickle.load(handle)


def fit_tfidf_fold(cfg: RunConfig, fold: int, folds: np.ndarray, labels: np.ndarray,
                   train_texts: list, test_texts: list, fit_mask: Optional[np.ndarray] = None,
                   save_dir: Optional[Path] = None) -> FoldResult:
    """folds: (n_train,) fold per row; labels: (n_train, n_labels) 0/1. Fits on folds != fold
    (and fit_mask, when given); predicts every row of the fold. save_dir: where the fitted fold is kept."""
    train_idx = np.flatnonzero((folds != fold) & (True if fit_mask is None else fit_mask))
    val_idx = np.flatnonzero(folds == fold)
    start = time.perf_counter()
    word, char = _vectorizers()
    fit_texts = [train_texts[i] for i in train_idx]
    x_train = hstack([word.fit_transform(fit_texts), char.fit_transform(fit_texts)]).tocsr()
    task = task_for(cfg.data.competition)
    weights = task.class_weights(labels[train_idx], cfg.train.pos_weight)
    model = TfidfModel(word, char, task.linear_model(x_train, labels[train_idx], weights, C, cfg.train_seed))
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    val_logits = model([train_texts[i] for i in val_idx])
    test_logits = model(list(test_texts)) if len(test_texts) else np.zeros((0, val_logits.shape[1]))
    predict_seconds = time.perf_counter() - start
    if save_dir is not None:
        save_tfidf_fold(model, save_dir, cfg, fold)
    return FoldResult(fold, val_idx, val_logits, test_logits, best_epoch=1, history=[],
                      train_seconds=train_seconds, train_examples=len(train_idx),
                      predict_seconds=predict_seconds, predict_examples=len(val_idx) + len(test_texts))
