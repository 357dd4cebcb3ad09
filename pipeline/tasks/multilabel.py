"""Multilabel: independent 0/1 labels. Multilabel-stratified folds, BCE with per-label pos_weight,
sigmoid, per-label thresholds tuned on OOF, macro-F1 / micro-F1 / samples-Jaccard."""
from __future__ import annotations

import numpy as np

from pipeline import metrics


class PerLabelDecision:
    """x -> (n, L) float32 decision values of one fitted logistic regression per label; a class, not a
    closure, so a tfidf-lr fold can keep it (pickled)."""

    def __init__(self, models: list):
        self.models = models

    def __call__(self, x) -> np.ndarray:
        return np.column_stack([m.decision_function(x) for m in self.models]).astype(np.float32)


class Multilabel:
    name = "multilabel"
    untuned = "at 0.5"  # the rule that involves no tuning, as the report names it
    report_untuned_key = "oof_at_0.5"
    decision_file = "thresholds.json"
    val_metric = "val_macro_f1_at_0.5"
    rule_name = "threshold"  # what the tuned rule sets per label
    no_rows = "label columns {} have no positive rows"

    def check_rows(self, labels: np.ndarray, ids, name: str, label_cols: list) -> None:
        """Any 0/1 combination is a valid multilabel row."""

    def make_folds(self, labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        from pipeline.folds import assign_folds

        return assign_folds(MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed), labels)

    def subset(self, labels: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        split = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=n_rows,
                                                 test_size=labels.shape[0] - n_rows, random_state=seed)
        keep, _ = next(split.split(np.zeros(labels.shape[0]), labels))
        return keep

    def sparse_warnings(self, labels: np.ndarray, label_cols: list, n_folds: int) -> list:
        return [f"label '{c}' has {int(n)} positive rows, fewer than {n_folds} folds: some validation "
                f"folds hold none of it, so its per-fold F1 is undefined there"
                for c, n in zip(label_cols, labels.sum(0)) if n < n_folds]

    def class_weights(self, labels: np.ndarray, mode: str) -> np.ndarray:
        from pipeline.losses import pos_weights

        return pos_weights(labels, mode)

    def loss(self, labels: np.ndarray, mode: str):
        """A loss module (logits (n, L), targets (n, L) float) weighted from the training fold's labels."""
        from pipeline.losses import bce_loss

        return bce_loss(labels, mode)

    def val_loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        x, y = logits.astype(np.float64), labels.astype(np.float64)
        return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def untuned_preds(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= 0.5).astype(np.int8)

    def val_score(self, labels: np.ndarray, logits: np.ndarray) -> float:
        """Early stopping: macro-F1 at 0.5 (logit 0)."""
        return metrics.macro_f1(labels, (logits > 0).astype(np.int8))

    def score(self, labels: np.ndarray, preds: np.ndarray, metric: str = "macro_f1") -> float:
        return metrics.macro_f1(labels, preds)

    def decider(self, th, seed: int, metric: str = "macro_f1"):
        """An unfitted per-label threshold tuner from the `thresholds` config section."""
        from pipeline.thresholds import ThresholdTuner

        return ThresholdTuner(th.method, th.n_trials, th.low, th.high, seed=seed)

    def decision_json(self, decider, label_cols: list) -> dict:
        return dict(zip(label_cols, decider.thresholds_.tolist()))

    def stacker(self, seed: int):
        """An unfitted stacker for `--weights stack`: one logistic regression per label (pipeline/stacking.py)."""
        from pipeline.stacking import LabelwiseStacker

        return LabelwiseStacker(seed=seed)

    def search_score(self, probs: np.ndarray, labels: np.ndarray, metric: str = "macro_f1") -> float:
        """What ensemble-weight search maximises: macro-F1 at each label's best threshold (exact sweep)."""
        from pipeline.ensemble import best_macro_f1

        return best_macro_f1(probs, labels)

    def linear_model(self, x, labels: np.ndarray, weights: np.ndarray, C: float, seed: int):
        """One liblinear logistic regression per label; returns x -> decision values (n, L)."""
        from sklearn.linear_model import LogisticRegression

        models = [LogisticRegression(C=C, solver="liblinear", class_weight={0: 1.0, 1: float(weights[j])},
                                     max_iter=1000, random_state=seed).fit(x, labels[:, j])
                  for j in range(labels.shape[1])]
        return PerLabelDecision(models)

    def decider_from_json(self, values: dict, label_cols: list):
        """A fitted rule from saved per-label thresholds (`decision_json`'s output, e.g. thresholds.json)."""
        from pipeline.thresholds import ThresholdTuner

        rule = ThresholdTuner(method="fixed")
        rule.thresholds_ = np.array([float(values[c]) for c in label_cols])
        return rule

    def scores(self, labels: np.ndarray, preds: np.ndarray, probs: np.ndarray = None) -> dict:
        return {"macro_f1": metrics.macro_f1(labels, preds), "micro_f1": metrics.micro_f1(labels, preds),
                "samples_jaccard": metrics.samples_jaccard(labels, preds)}

    def build_report(self, probs, labels, folds, decider, label_cols, extra=None) -> dict:
        from pipeline.report import build_report

        return build_report(probs, labels, folds, decider.thresholds_, label_cols, extra)

    def html_sections(self, view) -> list:
        """The task's sections of report.html (a RunView in)."""
        from pipeline.report_html import multilabel_sections

        return multilabel_sections(view)

    def render_markdown(self, report: dict, title: str) -> str:
        from pipeline.report import render_markdown

        return render_markdown(report, title)

    def write_predictions(self, preds: np.ndarray, label_cols: list, comp) -> dict:
        """Submission columns: one int64 0/1 column per label."""
        return {c: preds[:, j].astype(np.int64) for j, c in enumerate(label_cols)}
