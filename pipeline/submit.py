"""Builds a submission from completed runs: average by id, tune on averaged OOF, apply to test.

Writes `<out>.csv` (checked against the sample, atomically) and `<out>.json` (what went in and
the OOF scores of each run and of the ensemble).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline import metrics
from pipeline.config import read_saved_config
from pipeline.data import load_competition_data
from pipeline.ensemble import average_runs, cross_validated_macro_f1, read_run, search_weights
from pipeline.errors import DataError
from pipeline.io import atomic_write_json
from pipeline.submission import build_submission, write_submission
from pipeline.thresholds import ThresholdTuner


def make_submission(run_dirs: list, out: Path, weights=None, data_dir: Optional[str] = None) -> str:
    """Ensemble `run_dirs`, write the submission to `out`. Returns a printable summary.

    weights: None (equal), one number per run, or 'auto' (searched on OOF by ensemble selection).
    Scores come three ways: at 0.5; with thresholds (and searched weights) tuned on all of OOF, which
    is optimistic; and cross-validated, with thresholds and weights fitted on the other folds only.
    """
    runs = [read_run(Path(r)) for r in run_dirs]
    cfg = read_saved_config(Path(run_dirs[0]) / "config.yaml")
    data = load_competition_data(cfg.data, data_dir)
    id_col = data.competition.id_col
    if runs[0].label_cols != data.label_cols:
        raise DataError(f"run {runs[0].name} predicts {runs[0].label_cols} but "
                        f"{data.competition.sample_submission_file} has {data.label_cols}")
    average_runs(runs)  # refuses runs with other labels or ids before any search
    ids = runs[0].oof.index
    truth = data.train.set_index(id_col)
    unknown = sorted(set(ids) - set(truth.index))
    if unknown:
        raise DataError(f"OOF ids not in {data.competition.train_file}: {unknown[:5]} ({len(unknown)} in all)")
    labels = truth.loc[ids, data.label_cols].to_numpy().astype(np.int8)
    folds = runs[0].folds.loc[ids].to_numpy()
    oofs = [run.oof.loc[ids, run.label_cols].to_numpy() for run in runs]
    searched = isinstance(weights, str)
    if searched and weights != "auto":
        raise DataError(f"--weights takes numbers or 'auto', got {weights!r}")
    if searched:
        weights = search_weights(oofs, labels).tolist() if len(runs) > 1 else [1.0]
    oof, test = average_runs(runs, weights)
    th = cfg.thresholds

    def make_tuner():
        return ThresholdTuner(th.method, th.n_trials, th.low, th.high, seed=cfg.cv.seed)

    tuner = make_tuner().fit(oof.to_numpy(), labels)
    frame = build_submission(data.sample, id_col, test, tuner.thresholds_)
    write_submission(out, frame, data.sample, id_col)

    def scores(probs_list, run_weights, thresholds):
        probs = sum(w * p for w, p in zip(run_weights, probs_list))
        return {"macro_f1_at_0.5": metrics.macro_f1(labels, (probs >= 0.5).astype(np.int8)),
                "macro_f1_tuned": metrics.macro_f1(labels, (probs >= thresholds).astype(np.int8)),
                "macro_f1_cv": cross_validated_macro_f1(
                    probs_list, labels, folds, make_tuner,
                    None if searched and len(probs_list) > 1 else np.asarray(run_weights, dtype=float))}

    per_run = {run.name: scores([p], [1.0], make_tuner().fit(p, labels).thresholds_) for run, p in zip(runs, oofs)}
    norm = np.ones(len(runs)) / len(runs) if weights is None else np.asarray(weights, float) / np.sum(weights)
    ensemble = scores(oofs, norm, tuner.thresholds_)
    train_rate = labels.mean(0)
    pred_rate = frame[data.label_cols].to_numpy().mean(0)
    atomic_write_json(Path(out).with_suffix(".json"), {
        "runs": [str(r) for r in run_dirs], "weights": norm.tolist(), "weights_searched": searched,
        "n_oof_rows": len(oof), "thresholds": dict(zip(data.label_cols, tuner.thresholds_.tolist())),
        "per_run": per_run, "ensemble": ensemble,
        "predicted_positive_rate": dict(zip(data.label_cols, pred_rate.tolist())),
        "training_positive_rate": dict(zip(data.label_cols, train_rate.tolist()))})
    lines = [f"wrote {out} ({len(frame)} rows, columns as in {data.competition.sample_submission_file})"]
    for name, s in per_run.items():
        lines.append(f"  run {name}: OOF macro-F1 {s['macro_f1_at_0.5']:.4f} at 0.5, {s['macro_f1_tuned']:.4f} tuned, "
                     f"{s['macro_f1_cv']:.4f} cross-validated")
    if len(runs) > 1:
        shown = ", ".join(f"{w:.2f}" for w in norm)
        lines.append(f"  ensemble of {len(runs)} (weights {shown}{', searched on OOF' if searched else ''}): "
                     f"OOF macro-F1 {ensemble['macro_f1_at_0.5']:.4f} at 0.5, {ensemble['macro_f1_tuned']:.4f} tuned, "
                     f"{ensemble['macro_f1_cv']:.4f} cross-validated")
    lines.append(f"  {'label':14s} {'threshold':>9s} {'test rate':>9s} {'train rate':>10s}")
    for j, col in enumerate(data.label_cols):
        lines.append(f"  {col:14s} {tuner.thresholds_[j]:9.3f} {pred_rate[j]:9.3f} {train_rate[j]:10.3f}")
    return "\n".join(lines)
