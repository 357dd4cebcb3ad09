"""Decision rules fitted on OOF probabilities (never on test predictions), through seeded Optuna.

Multilabel: `ThresholdTuner.fit(probs, labels)` sets per-label `thresholds_`; `predict(probs)` applies
them; `exact_threshold` sweeps every distinct cut and is the reference the tests compare against.
Multiclass: `BiasTuner` adds a per-class bias to the log-probabilities before the argmax.
Both search in one job with a seeded TPE sampler, so the same OOF gives the same rule.
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


def _untried(t: float, tried: list) -> bool:
    """Optuna's `enqueue_trial(skip_if_exists=True)` rule (np.isclose with atol 0 against every trial so far) in one
    vectorised call: Optuna compares with each trial in Python, which took over half of the search's time."""
    return not np.isclose(t, tried, atol=0.0).any()


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
        tried = [t.params["t"] for t in study.trials]
        for centre in centres:
            for t in np.round(np.arange(-REFINE, REFINE + 1e-9, 0.001) + centre, 6):
                if self.low <= t <= self.high and _untried(t, tried):
                    study.enqueue_trial({"t": float(t)})
                    tried.append(float(t))
        study.optimize(objective, n_trials=len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))),
                       n_jobs=1)
        # among thresholds tying for the best F1, take the middle of the tied ones: a sturdier cut
        best = study.best_value
        tied = sorted(t.params["t"] for t in study.trials if t.value is not None and t.value >= best - 1e-12)
        return float(tied[len(tied) // 2])

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """probs: (n_samples, n_labels). Returns int8 0/1 predictions."""
        return (probs >= self.thresholds_).astype(np.int8)


class BiasTuner:
    """Argmax over log-probabilities plus per-class additive biases that maximise `metric` on OOF.

    Class 0's bias stays 0 (adding a constant to every class changes nothing). A seeded multivariate
    TPE search over the other biases in [-span, span], started from all zeros (plain argmax), then
    coordinate-wise grids of `step` around the best point until no coordinate improves.
    method 'fixed' keeps every bias at 0. metric: 'macro_f1' or 'accuracy'.
    """

    def __init__(self, method: str = "optuna", n_trials: int = 100, metric: str = "macro_f1", span: float = 3.0,
                 step: float = 0.02, seed: int = 42, rounds: int = 4):
        if metric not in _FAST:
            raise ValueError(f"unknown metric {metric!r}")
        self.method, self.n_trials, self.metric, self.span, self.step, self.seed, self.rounds = \
            method, n_trials, metric, span, step, seed, rounds

    def budget(self, n_classes: int) -> int:
        """TPE trials for n_classes: n_trials per free bias, at most `rounds` x n_trials."""
        return min(self.n_trials * (n_classes - 1), self.rounds * self.n_trials)

    @staticmethod
    def _log(probs: np.ndarray) -> np.ndarray:
        return np.log(np.clip(probs, 1e-12, 1.0))

    def _score(self, logp: np.ndarray, y: np.ndarray, biases: np.ndarray) -> float:
        return _FAST[self.metric](y, (logp + biases).argmax(1), logp.shape[1])

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> "BiasTuner":
        """probs: (n_samples, n_classes), rows summing to 1; labels: one-hot (n_samples, n_classes)."""
        n = labels.shape[1]
        logp, y = self._log(probs), labels.argmax(1)
        best = np.zeros(n)
        if self.method != "fixed" and n > 1:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=self.seed, multivariate=True, n_startup_trials=20)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.enqueue_trial({f"b{k}": 0.0 for k in range(1, n)})

            def objective(trial):
                b = np.r_[0.0, [trial.suggest_float(f"b{k}", -self.span, self.span) for k in range(1, n)]]
                return self._score(logp, y, b)

            # TPE gets near the peak; the coordinate grids below land on it, so the budget stays modest
            study.optimize(objective, n_trials=self.budget(n), n_jobs=1)
            best = np.r_[0.0, [study.best_params[f"b{k}"] for k in range(1, n)]]
            best = self._refine(logp, y, best)
        self.biases_ = best
        self.score_ = self._score(logp, y, best)
        return self

    def _refine(self, logp: np.ndarray, y: np.ndarray, biases: np.ndarray) -> np.ndarray:
        """Coordinate ascent on grids of `step` within +-0.5 of each bias, repeated until nothing improves.
        Among tied values of a coordinate the middle one is kept: a sturdier rule, as for thresholds."""
        biases = biases.copy()
        current = self._score(logp, y, biases)
        offsets = np.round(np.arange(-0.5, 0.5 + 1e-9, self.step), 6)
        for _ in range(20):
            improved = False
            for k in range(1, len(biases)):
                grid = np.clip(np.round(biases[k] + offsets, 6), -self.span, self.span)
                trial = biases.copy()
                scores = []
                for value in grid:
                    trial[k] = value
                    scores.append(self._score(logp, y, trial))
                scores = np.array(scores)
                if scores.max() > current + 1e-12:
                    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
                    biases[k], current, improved = grid[tied[len(tied) // 2]], scores.max(), True
            if not improved:
                break
        return biases

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """probs: (n_samples, n_classes). Returns one-hot int8 predictions."""
        return one_hot((self._log(probs) + self.biases_).argmax(1), probs.shape[1])


def one_hot(index: np.ndarray, n: int) -> np.ndarray:
    """(n_samples,) class indices -> (n_samples, n) int8 one-hot."""
    out = np.zeros((len(index), n), dtype=np.int8)
    out[np.arange(len(index)), index] = 1
    return out


def _fast_macro_f1(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    """Macro-F1 from class indices through one bincount (the tuner scores thousands of rules);
    equal to scikit-learn's with zero_division=0 (tested)."""
    counts = np.bincount(y * n + pred, minlength=n * n).reshape(n, n)
    tp = np.diag(counts)
    denom = counts.sum(0) + counts.sum(1)
    return float(np.mean(np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)))


def _fast_accuracy(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    return float(np.mean(y == pred))


_FAST = {"macro_f1": _fast_macro_f1, "accuracy": _fast_accuracy}
