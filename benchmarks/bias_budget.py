"""How many TPE trials the multiclass decision rule (BiasTuner) needs: finished runs' OOF refitted per budget.

    python benchmarks/bias_budget.py RUN [RUN ...] [--rounds 1 2 4] [--out runs/bias-budget.json]

For each multiclass run (its oof.csv, folds and labels) and each `rounds` (TPE trials = n_trials per free bias, at
most rounds x n_trials; the coordinate grids follow as always): the tuned OOF score (rule fitted on all rows), the
cross-validated one (each fold's rule fitted on the other folds: the figure to quote) and the seconds the fits took.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import read_saved_config  # noqa: E402
from pipeline.data import load_competition_data  # noqa: E402
from pipeline.ensemble import cross_validated_preds  # noqa: E402
from pipeline.thresholds import BiasTuner  # noqa: E402


def measure(run_dir: Path, rounds: list) -> list:
    cfg = read_saved_config(run_dir / "config.yaml")
    data = load_competition_data(cfg.data)
    if data.task.name != "multiclass":
        raise SystemExit(f"{run_dir} is a {data.task.name} run: the bias budget concerns multiclass runs")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str}).set_index("id").loc[[str(i) for i in data.train_ids]]
    probs, folds, labels = oof[data.label_cols].to_numpy(), oof["fold"].to_numpy(), data.labels
    metric = data.competition.metric
    rows = []
    for r in rounds:
        def make():
            return BiasTuner(cfg.thresholds.method, cfg.thresholds.n_trials, metric=metric, seed=cfg.cv.seed, rounds=r)

        start = time.perf_counter()
        tuned = make().fit(probs, labels)
        cv = data.task.scores(labels, cross_validated_preds([probs], labels, folds, make, weights=np.ones(1)))
        rows.append({"run": run_dir.name, "classes": len(data.label_cols), "rows": len(labels), "rounds": r,
                     "trials": make().budget(len(data.label_cols)), "tuned": tuned.score_, "cv": cv[metric],
                     "seconds": time.perf_counter() - start})
        print(f"{run_dir.name}: {len(data.label_cols)} classes, rounds {r} ({rows[-1]['trials']} trials): tuned "
              f"{tuned.score_:.4f}, cross-validated {cv[metric]:.4f}, {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--rounds", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=Path("runs/bias-budget.json"))
    args = p.parse_args(argv)
    rows = [row for run in args.runs for row in measure(run, args.rounds)]
    frame = pd.DataFrame(rows)
    summary = frame.groupby("rounds").agg(tuned=("tuned", "mean"), cv=("cv", "mean"), seconds=("seconds", "sum"))
    print("\nmean over runs (seconds: summed)\n" + summary.to_string(float_format=lambda v: f"{v:.4f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
