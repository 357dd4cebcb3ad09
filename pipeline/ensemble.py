"""Reads finished runs and averages their probabilities, matched by id (never by row order)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.errors import RunDirError
from pipeline.thresholds import exact_threshold


@dataclass
class RunProbs:
    name: str
    oof: pd.DataFrame  # index id; one probability column per label
    test: pd.DataFrame  # index id; one probability column per label
    label_cols: list
    folds: pd.Series  # index id; the fold each OOF row was predicted in


def read_run(run_dir: Path) -> RunProbs:
    """Load oof.csv and test_probs.csv of a completed run (one whose report.json exists)."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise RunDirError(f"{run_dir} is not a completed run (no report.json); finish it with run_cv.py first")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str}).set_index("id")
    test = pd.read_csv(run_dir / "test_probs.csv", dtype={"id": str}).set_index("id")
    label_cols = [c for c in test.columns]
    folds = oof.pop("fold")
    if list(oof.columns) != label_cols:
        raise RunDirError(f"{run_dir}: oof.csv columns {list(oof.columns)} differ from test_probs.csv's {label_cols}")
    return RunProbs(run_dir.name, oof, test, label_cols, folds)


def average_runs(runs: list, weights: Optional[list] = None) -> tuple:
    """Weighted mean of OOF and test probabilities over runs, aligned on the first run's ids.

    Returns (oof, test): DataFrames indexed by id with one probability column per label.
    Refuses runs whose labels or id sets differ.
    """
    if not runs:
        raise RunDirError("no runs to ensemble")
    weights = np.ones(len(runs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(runs) or (weights < 0).any() or weights.sum() <= 0:
        raise RunDirError(f"need one non-negative weight per run ({len(runs)}), got {list(weights)}")
    weights = weights / weights.sum()
    first = runs[0]
    for run in runs[1:]:
        if run.label_cols != first.label_cols:
            raise RunDirError(f"runs {first.name} and {run.name} predict different labels: "
                              f"{first.label_cols} vs {run.label_cols}")
        for part in ("oof", "test"):
            a, b = set(getattr(first, part).index), set(getattr(run, part).index)
            if a != b:
                raise RunDirError(f"runs {first.name} and {run.name} cover different {part} ids "
                                  f"({len(a - b)} only in the first, {len(b - a)} only in the second); "
                                  f"were they made with different --max-rows or data?")
    oof = sum(w * r.oof.loc[first.oof.index, first.label_cols].to_numpy() for w, r in zip(weights, runs))
    test = sum(w * r.test.loc[first.test.index, first.label_cols].to_numpy() for w, r in zip(weights, runs))
    return (pd.DataFrame(oof, index=first.oof.index, columns=first.label_cols),
            pd.DataFrame(test, index=first.test.index, columns=first.label_cols))


def best_macro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    """probs, labels: (n, n_labels). Mean over labels of the best F1 any threshold reaches (exact sweep)."""
    return float(np.mean([exact_threshold(probs[:, j], labels[:, j])[1] for j in range(labels.shape[1])]))


def search_weights(oofs: list, labels: np.ndarray, rounds: int = 20, score=None) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004): start from the best run, then
    `rounds` times add the run (again, possibly) whose addition most raises the OOF score;
    weights are how often each run was picked (steps of 1/(rounds+1)).

    oofs: one (n, n_labels) probability array per run, rows aligned. score: (probs, labels) -> float,
    by default macro-F1 at per-label best thresholds (the task's `search_score`). Returns (n_runs,) summing to 1.
    """
    score = score or best_macro_f1
    counts = np.zeros(len(oofs))
    counts[int(np.argmax([score(p, labels) for p in oofs]))] = 1
    total = sum(c * p for c, p in zip(counts, oofs))
    for _ in range(rounds):
        scores = [score((total + p) / (counts.sum() + 1), labels) for p in oofs]
        pick = int(np.argmax(scores))  # ties go to the earliest run: deterministic
        counts[pick] += 1
        total = total + oofs[pick]
    return counts / counts.sum()


def cross_validated_preds(oofs: list, labels: np.ndarray, folds: np.ndarray, make_tuner,
                          weights: Optional[np.ndarray] = None, search_score=None) -> np.ndarray:
    """Honest OOF predictions: for each fold, the ensemble weights (searched with `search_score` when
    `weights` is None and there are several runs) and the decision rule (thresholds or biases) are fitted
    on the other folds' rows only, then applied to this fold's rows. make_tuner: () -> an unfitted
    ThresholdTuner or BiasTuner. Returns (n, n_labels) 0/1."""
    preds = np.zeros_like(labels)
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        w = weights
        if w is None:
            w = (search_weights([p[fit] for p in oofs], labels[fit], score=search_score) if len(oofs) > 1
                 else np.ones(1))
        mix = sum(wi * p for wi, p in zip(w, oofs))
        tuner = make_tuner().fit(mix[fit], labels[fit])
        preds[held] = tuner.predict(mix[held])
    return preds


def cross_validated_macro_f1(oofs: list, labels: np.ndarray, folds: np.ndarray, make_tuner,
                             weights: Optional[np.ndarray] = None, search_score=None) -> float:
    """Macro-F1 of `cross_validated_preds`: the honest estimate of the tuned OOF score."""
    from pipeline.metrics import macro_f1

    return macro_f1(labels, cross_validated_preds(oofs, labels, folds, make_tuner, weights, search_score))
