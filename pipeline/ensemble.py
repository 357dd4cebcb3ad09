"""Reads finished runs and averages their probabilities, matched by id (never by row order)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.errors import RunDirError


@dataclass
class RunProbs:
    name: str
    oof: pd.DataFrame  # index id; one probability column per label
    test: pd.DataFrame  # index id; one probability column per label
    label_cols: list


def read_run(run_dir: Path) -> RunProbs:
    """Load oof.csv and test_probs.csv of a completed run (one whose report.json exists)."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise RunDirError(f"{run_dir} is not a completed run (no report.json); finish it with run_cv.py first")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str}).set_index("id")
    test = pd.read_csv(run_dir / "test_probs.csv", dtype={"id": str}).set_index("id")
    label_cols = [c for c in test.columns]
    oof = oof.drop(columns=["fold"])
    if list(oof.columns) != label_cols:
        raise RunDirError(f"{run_dir}: oof.csv columns {list(oof.columns)} differ from test_probs.csv's {label_cols}")
    return RunProbs(run_dir.name, oof, test, label_cols)


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
