"""Multiclass: exactly one class per row (labels one-hot). Class-stratified folds, softmax
cross-entropy with class weights from the training fold, softmax, argmax with optional per-class
biases tuned on OOF, and accuracy / macro- and weighted F1 / ROC-AUC / log loss / confusion matrix."""
from __future__ import annotations

import numpy as np

from pipeline import metrics


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(1, keepdims=True))
    return x / x.sum(1, keepdims=True)


class MultinomialDecision:
    """x -> (n, K) float32 decision values of one fitted multinomial logistic regression; a class, not a
    closure, so a tfidf-lr fold can keep it (pickled)."""

    def __init__(self, model, n_classes: int):
        self.model, self.n_classes = model, n_classes

    def __call__(self, x) -> np.ndarray:
        out = np.full((x.shape[0], self.n_classes), -1e4, dtype=np.float32)  # a class absent from the fold: never
        d = self.model.decision_function(x)
        if d.ndim == 1:  # two classes: one score for the second; split it so softmax gives the same odds
            d = np.column_stack([-d / 2, d / 2])
        out[:, self.model.classes_] = d
        return out


class Multiclass:
    name = "multiclass"
    untuned = "argmax"
    report_untuned_key = "oof_argmax"
    decision_file = "biases.json"
    val_metric = "val_macro_f1_argmax"
    rule_name = "bias"  # what the tuned rule sets per class
    no_rows = "classes {} have no rows"

    def check_rows(self, labels: np.ndarray, ids, name: str, label_cols: list) -> None:
        """Exactly one class per row; rows with none or several are named by id."""
        from pipeline.data import _show
        from pipeline.errors import DataError

        ones = labels.sum(1)
        if (ones != 1).any():
            none, many = ids[ones == 0], ids[ones > 1]
            raise DataError(f"{name}: each row must have exactly one 1 across {', '.join(label_cols)} (one class "
                            f"per row); {len(none)} rows have none (first ids: {_show(none) or '-'}), {len(many)} "
                            f"rows have two or more (first ids: {_show(many) or '-'})")

    def make_folds(self, labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
        import warnings

        from sklearn.model_selection import StratifiedKFold

        from pipeline.folds import assign_folds

        with warnings.catch_warnings():  # a class smaller than n_folds: sparse_warnings says so in our words
            warnings.simplefilter("ignore", UserWarning)
            return assign_folds(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed), labels.argmax(1))

    def subset(self, labels: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
        from sklearn.model_selection import train_test_split

        y = labels.argmax(1)
        stratify = y if np.bincount(y).min() >= 2 else None
        keep, _ = train_test_split(np.arange(len(y)), train_size=n_rows, random_state=seed, stratify=stratify)
        return keep

    def sparse_warnings(self, labels: np.ndarray, label_cols: list, n_folds: int) -> list:
        return [f"class '{c}' has {int(n)} rows, fewer than {n_folds} folds: some validation folds hold "
                f"none of it" for c, n in zip(label_cols, labels.sum(0)) if n < n_folds]

    def class_weights(self, labels: np.ndarray, mode: str) -> np.ndarray:
        from pipeline.losses import class_weights

        return class_weights(labels, mode)

    def loss(self, labels: np.ndarray, mode: str):
        """Softmax cross-entropy weighted per class from the training fold; takes one-hot float targets."""
        from pipeline.losses import cross_entropy_loss

        return cross_entropy_loss(labels, mode)

    def val_loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(_softmax(logits)[labels.astype(bool)], 1e-12, 1.0))))

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return _softmax(logits)

    def untuned_preds(self, probs: np.ndarray) -> np.ndarray:
        from pipeline.thresholds import one_hot

        return one_hot(probs.argmax(1), probs.shape[1])

    def val_score(self, labels: np.ndarray, logits: np.ndarray) -> float:
        """Early stopping: macro-F1 of the argmax."""
        return metrics.class_f1(labels, self.untuned_preds(logits))

    def score(self, labels: np.ndarray, preds: np.ndarray, metric: str = "macro_f1") -> float:
        return metrics.class_f1(labels, preds) if metric == "macro_f1" else metrics.accuracy(labels, preds)

    def decider(self, th, seed: int, metric: str = "macro_f1"):
        """An unfitted per-class bias tuner ('fixed' = plain argmax) maximising the competition metric."""
        from pipeline.thresholds import BiasTuner

        return BiasTuner(th.method, th.n_trials, metric=metric, seed=seed)

    def decision_json(self, decider, label_cols: list) -> dict:
        return dict(zip(label_cols, decider.biases_.tolist()))

    def stacker(self, seed: int):
        """An unfitted stacker for `--weights stack`: one multinomial logistic regression on all members'
        log-probabilities (pipeline/stacking.py)."""
        from pipeline.stacking import MultinomialStacker

        return MultinomialStacker(seed=seed)

    def search_score(self, probs: np.ndarray, labels: np.ndarray, metric: str = "macro_f1") -> float:
        """What ensemble-weight search maximises: the metric of the argmax (bias tuning is too slow
        to run inside the search; biases are tuned once the weights are chosen)."""
        return self.score(labels, self.untuned_preds(probs), metric)

    def linear_model(self, x, labels: np.ndarray, weights: np.ndarray, C: float, seed: int):
        """One multinomial logistic regression; returns x -> decision values (n, K)."""
        from sklearn.linear_model import LogisticRegression

        y = labels.argmax(1)
        model = LogisticRegression(C=C, class_weight={k: float(w) for k, w in enumerate(weights)},
                                   max_iter=2000, random_state=seed).fit(x, y)
        return MultinomialDecision(model, labels.shape[1])

    def decider_from_json(self, values: dict, label_cols: list):
        """A fitted rule from saved per-class biases (`decision_json`'s output, e.g. biases.json)."""
        from pipeline.thresholds import BiasTuner

        rule = BiasTuner(method="fixed")
        rule.biases_ = np.array([float(values[c]) for c in label_cols])
        return rule

    def scores(self, labels: np.ndarray, preds: np.ndarray, probs: np.ndarray = None) -> dict:
        out = {"accuracy": metrics.accuracy(labels, preds), "macro_f1": metrics.class_f1(labels, preds),
               "weighted_f1": metrics.weighted_f1(labels, preds)}
        if probs is not None:
            out.update(metrics.multiclass_probability_scores(labels, probs))
        return out

    def build_report(self, probs, labels, folds, decider, label_cols, extra=None) -> dict:
        from pipeline.report import multiclass_report

        return multiclass_report(self, probs, labels, folds, decider, label_cols, extra)

    def html_sections(self, view) -> list:
        """The task's sections of report.html (a RunView in)."""
        from pipeline.report_html import multiclass_sections

        return multiclass_sections(view)

    def render_markdown(self, report: dict, title: str) -> str:
        from pipeline.report import render_multiclass_markdown

        return render_multiclass_markdown(report, title)

    def write_predictions(self, preds: np.ndarray, label_cols: list, comp) -> dict:
        """Submission columns: the class name in `label_col`, or one int64 0/1 column per class."""
        if comp.label_col:
            return {comp.label_col: np.asarray(label_cols, dtype=object)[preds.argmax(1)]}
        return {c: preds[:, j].astype(np.int64) for j, c in enumerate(label_cols)}
