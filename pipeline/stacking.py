"""Stacking: a logistic regression learns how to combine ensemble members from their OOF probabilities.

Weight search (pipeline/ensemble.py) gives every label the same member weights. A stacker fits them per
label (multilabel: one logistic regression per label on the members' logits of that label only) or per
class (multiclass: one multinomial logistic regression on all members' log-probabilities), in logit space
and with an intercept, so it also recalibrates. Features from other labels were measured on the emotion
competition and lost (docs/BENCHMARKS.md), so the multilabel stacker does not use them.

Honesty: a stacker is fitted on OOF rows, so its own outputs on those rows are optimistic. `cross_fit`
predicts each fold's rows with a stacker fitted on the other folds; `cross_validated_preds` nests it, so
for each held-out fold both the stacker and the decision rule (fitted on cross-fitted outputs of the
other folds) never saw that fold. A fitted stacker is saved as plain JSON (`to_json`) so predict.py can
apply a submission's stacker to new texts.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import DataError, RunDirError

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before logs: members write 0 and 1 exactly at times


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _logistic(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


class LabelwiseStacker:
    """Multilabel: label j's probability is sigmoid(b_j + sum_m a_jm * logit(p_m[:, j])) over members m."""

    kind = "labelwise-logistic"
    what = "a logistic regression per label on the runs' logits"

    def __init__(self, C: float = 1.0, seed: int = 42):
        self.C, self.seed = C, seed

    def fit(self, oofs: list, labels: np.ndarray) -> "LabelwiseStacker":
        """oofs: one (n, L) probability array per member, rows aligned; labels: (n, L) 0/1."""
        n_labels = labels.shape[1]
        self.coef_, self.intercept_ = np.zeros((n_labels, len(oofs))), np.zeros(n_labels)
        for j in range(n_labels):
            y = labels[:, j]
            if y.min() == y.max():  # a label constant in these rows: its rate, whatever the members say
                self.intercept_[j] = _logit(np.array([y.mean()]))[0]
                continue
            model = _logistic(self.C, self.seed).fit(np.column_stack([_logit(p[:, j]) for p in oofs]), y)
            self.coef_[j], self.intercept_[j] = model.coef_[0], model.intercept_[0]
        return self

    def predict(self, probs: list) -> np.ndarray:
        z = self.intercept_ + sum(self.coef_[:, m] * _logit(p) for m, p in enumerate(probs))
        return 1.0 / (1.0 + np.exp(-z))

    def member_weights(self) -> np.ndarray:
        """Each member's coefficient averaged over labels (what the summary shows as its weight)."""
        return self.coef_.mean(0)

    def to_json(self, label_cols: list, members: list) -> dict:
        return {"kind": self.kind, "C": self.C, "members": list(members),
                "labels": {c: {"intercept": float(self.intercept_[j]),
                               "coef": dict(zip(members, self.coef_[j].tolist()))} for j, c in enumerate(label_cols)}}

    @classmethod
    def from_json(cls, saved: dict, label_cols: list, members: list) -> "LabelwiseStacker":
        stacker = cls(saved.get("C", 1.0))
        stacker.intercept_ = np.array([saved["labels"][c]["intercept"] for c in label_cols], dtype=np.float64)
        stacker.coef_ = np.array([[saved["labels"][c]["coef"][m] for m in members] for c in label_cols],
                                 dtype=np.float64)
        return stacker


class MultinomialStacker:
    """Multiclass: softmax(b + A @ [log p_1, ..., log p_M]) over all members' class log-probabilities."""

    kind = "multinomial-logistic"
    what = "a multinomial logistic regression on the runs' log-probabilities"

    def __init__(self, C: float = 1.0, seed: int = 42):
        self.C, self.seed = C, seed

    @staticmethod
    def _features(probs: list) -> np.ndarray:
        return np.hstack([np.log(np.clip(p.astype(np.float64), EPS, 1.0)) for p in probs])

    def fit(self, oofs: list, labels: np.ndarray) -> "MultinomialStacker":
        """oofs: one (n, K) probability array per member; labels: (n, K) one-hot."""
        y = labels.argmax(1)
        n_classes = labels.shape[1]
        self.coef_ = np.zeros((n_classes, n_classes * len(oofs)))
        self.intercept_ = np.full(n_classes, -1e4)  # a class absent from these rows: never
        seen = np.unique(y)
        if len(seen) == 1:
            self.intercept_[seen[0]] = 0.0
            return self
        model = _logistic(self.C, self.seed).fit(self._features(oofs), y)
        if len(seen) == 2:  # sklearn keeps one row for two classes: split it so softmax gives the same odds
            coef, intercept = np.vstack([-model.coef_[0] / 2, model.coef_[0] / 2]), np.array(
                [-model.intercept_[0] / 2, model.intercept_[0] / 2])
        else:
            coef, intercept = model.coef_, model.intercept_
        self.coef_[model.classes_], self.intercept_[model.classes_] = coef, intercept
        return self

    def predict(self, probs: list) -> np.ndarray:
        z = self._features(probs) @ self.coef_.T + self.intercept_
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def member_weights(self) -> np.ndarray:
        """Each member's coefficient on its own class's log-probability, averaged over classes."""
        k = self.coef_.shape[0]
        return np.array([np.mean([self.coef_[c, m * k + c] for c in range(k)]) for m in range(self.coef_.shape[1] // k)])

    def to_json(self, label_cols: list, members: list) -> dict:
        return {"kind": self.kind, "C": self.C, "members": list(members), "classes": list(label_cols),
                "features": [f"{m}:{c}" for m in members for c in label_cols],
                "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}

    @classmethod
    def from_json(cls, saved: dict, label_cols: list, members: list) -> "MultinomialStacker":
        if saved.get("classes") != list(label_cols):
            raise RunDirError(f"the saved stacker's classes {saved.get('classes')} differ from the runs' {label_cols}")
        stacker = cls(saved.get("C", 1.0))
        stacker.coef_ = np.asarray(saved["coef"], dtype=np.float64)
        stacker.intercept_ = np.asarray(saved["intercept"], dtype=np.float64)
        return stacker


STACKERS = {s.kind: s for s in (LabelwiseStacker, MultinomialStacker)}


def stacker_from_json(saved: dict, label_cols: list, members: list):
    """A fitted stacker from `to_json`'s output; members: the run names in the order probabilities come."""
    if not isinstance(saved, dict) or saved.get("kind") not in STACKERS:
        raise RunDirError(f"unknown stacker {saved.get('kind') if isinstance(saved, dict) else saved!r}; "
                          f"known: {', '.join(STACKERS)}")
    if saved.get("members") != list(members):
        raise RunDirError(f"the saved stacker combines {saved.get('members')}, not {list(members)}")
    return STACKERS[saved["kind"]].from_json(saved, label_cols, members)


MIN_FOLDS = 3  # the cross-validated figure fits a rule on cross-fitted outputs of the other folds: two at least


def check_folds(folds: np.ndarray) -> None:
    """Refuse runs with too few folds to stack honestly, in one line."""
    n = len(np.unique(folds))
    if n < MIN_FOLDS:
        raise DataError(f"--weights stack needs runs with at least {MIN_FOLDS} folds (its rule is fitted on stacker "
                        f"outputs cross-fitted within the other folds); these runs have {n}")


def cross_fit(make_stacker, oofs: list, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's rows predicted by a stacker fitted on the other folds' rows: stacked OOF probabilities
    no stacker saw the labels of."""
    out = np.zeros(labels.shape, dtype=np.float64)
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        out[held] = make_stacker().fit([p[fit] for p in oofs], labels[fit]).predict([p[held] for p in oofs])
    return out


def cross_validated_preds(make_stacker, oofs: list, labels: np.ndarray, folds: np.ndarray, make_tuner) -> np.ndarray:
    """Honest stacked OOF predictions: for each held-out fold, the stacker is fitted on the other folds and
    the decision rule on those folds' cross-fitted stacker outputs (a stacker's outputs on its own training
    rows would flatter the rule). make_tuner: () -> an unfitted ThresholdTuner or BiasTuner. Returns 0/1."""
    check_folds(folds)
    preds = np.zeros_like(labels)
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        fit_oofs = [p[fit] for p in oofs]
        rule = make_tuner().fit(cross_fit(make_stacker, fit_oofs, labels[fit], folds[fit]), labels[fit])
        stacker = make_stacker().fit(fit_oofs, labels[fit])
        preds[held] = rule.predict(stacker.predict([p[held] for p in oofs]))
    return preds
