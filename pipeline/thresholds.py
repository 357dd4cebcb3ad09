"""Per-label decision thresholds fitted on OOF probabilities (never on test predictions).

`ThresholdTuner.fit(probs, labels)` sets `thresholds_`; `predict(probs)` applies them.
The Optuna search is a seeded TPE run in one job, so the same OOF gives the same thresholds;
`exact_thresholds` sweeps every distinct cut and is the reference the tests compare against.
"""
from __future__ import annotations

import numpy as np
import optuna


def f1_at(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """probs, labels: (n_samples,). F1 of (probs >= threshold) against labels (0 when undefined)."""
    preds = probs >= threshold
    tp = np.count_nonzero(preds & (labels == 1))
    denom = np.count_nonzero(preds) + np.count_nonzero(labels)
    return 0.0 if denom == 0 else 2.0 * tp / denom


def exact_threshold(probs: np.ndarray, labels: np.ndarray, low: float = 0.0, high: float = 1.0):
    """The best F1 over every distinct cut in [low, high]. Returns (threshold, f1); the threshold
    is the midpoint between the cut's probability and the next lower one, so it generalises."""
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order].astype(np.int64)
    tp = np.cumsum(y)
    n_pred = np.arange(1, len(p) + 1)
    f1 = 2.0 * tp / (n_pred + y.sum())
    last = np.r_[p[1:] != p[:-1], True]  # a cut can only fall after the last of equal probabilities
    nxt = np.r_[p[1:], 0.0]
    cand = (p + nxt) / 2.0
    ok = last & (cand >= low) & (cand <= high)
    if not ok.any():
        return 0.5, f1_at(probs, labels, 0.5)
    best = np.flatnonzero(ok)[np.argmax(f1[ok])]
    return float(cand[best]), float(f1[best])


REFINE = 0.015  # half-width of the final grids around the three best TPE thresholds


class ThresholdTuner:
    """Per-label thresholds maximising F1. method: 'optuna', 'exact' or 'fixed' (0.5)."""

    def __init__(self, method: str = "optuna", n_trials: int = 100, low: float = 0.02,
                 high: float = 0.98, seed: int = 42):
        self.method, self.n_trials, self.low, self.high, self.seed = method, n_trials, low, high, seed

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> "ThresholdTuner":
        """probs: (n_samples, n_labels) in [0, 1]; labels: (n_samples, n_labels) 0/1."""
        n_labels = probs.shape[1]
        thresholds = np.full(n_labels, 0.5)
        for j in range(n_labels):
            if self.method == "exact":
                thresholds[j] = exact_threshold(probs[:, j], labels[:, j], self.low, self.high)[0]
            elif self.method == "optuna":
                thresholds[j] = self._optuna(probs[:, j], labels[:, j], j)
        self.thresholds_ = thresholds
        self.f1_ = np.array([f1_at(probs[:, j], labels[:, j], t) for j, t in enumerate(thresholds)])
        return self

    def _optuna(self, probs: np.ndarray, labels: np.ndarray, j: int) -> float:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.seed + j, n_startup_trials=20)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        # start from 0.5 and the label's base rate quantile, then let TPE refine
        study.enqueue_trial({"t": 0.5})
        objective = lambda trial: f1_at(probs, labels, trial.suggest_float("t", self.low, self.high))  # noqa: E731
        study.optimize(objective, n_trials=self.n_trials, n_jobs=1)
        # F1 against a threshold is a step function with narrow peaks that random proposals miss;
        # finish with fine grids (0.001 steps) around TPE's three best distinct peaks, evaluated in the same study
        ranked = sorted(study.trials, key=lambda t: -t.value)
        centres = []
        for trial in ranked:
            if all(abs(trial.params["t"] - c) > REFINE for c in centres):
                centres.append(trial.params["t"])
            if len(centres) == 3:
                break
        for centre in centres:
            for t in np.round(np.arange(-REFINE, REFINE + 1e-9, 0.001) + centre, 6):
                if self.low <= t <= self.high:
                    study.enqueue_trial({"t": float(t)}, skip_if_exists=True)
        study.optimize(objective, n_trials=len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))),
                       n_jobs=1)
        # among thresholds tying for the best F1, take the middle of the tied ones: a sturdier cut
        best = study.best_value
        tied = sorted(t.params["t"] for t in study.trials if t.value is not None and t.value >= best - 1e-12)
        return float(tied[len(tied) // 2])

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """probs: (n_samples, n_labels). Returns int8 0/1 predictions."""
        return (probs >= self.thresholds_).astype(np.int8)
