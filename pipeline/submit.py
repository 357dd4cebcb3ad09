"""Builds a submission from completed runs: average by id, tune the decision rule on averaged OOF,
apply it to test; and scores a submission file against a solution file.

Writes `<out>.csv` (checked against the sample, atomically) and `<out>.json` (what went in, the OOF
scores of each run and of the ensemble, and the hold-out test score when the competition has one).
Each submission written also gets a row in the ledger beside it (pipeline/ledger.py).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from competition import get_competition
from pipeline import stacking
from pipeline.config import read_saved_config
from pipeline.data import label_block_columns, load_competition_data, read_csv, read_solution
from pipeline.ensemble import average_runs, cross_validated_preds, read_run, search_weights
from pipeline.errors import DataError
from pipeline.io import atomic_write_json
from pipeline.ledger import record_submission
from pipeline.report import holdout_section
from pipeline.report_html import write_submission_html
from pipeline.submission import build_submission, write_submission


def make_submission(run_dirs: list, out: Path, weights=None, data_dir: Optional[str] = None) -> str:
    """Ensemble `run_dirs`, write the submission to `out`. Returns a printable summary.

    weights: None (equal), one number per run, 'auto' (searched on OOF by ensemble selection) or 'stack'
    (a logistic regression per label on the runs' logits, pipeline/stacking.py; its OOF figures use
    cross-fitted stacker outputs).
    Scores come three ways: untuned (at 0.5 / argmax); with the rule (thresholds or class biases) and
    searched weights tuned on all of OOF, which is optimistic; and cross-validated, with rule and
    weights fitted on the other folds only. The submission uses the tuned rule when its cross-validated
    score beats the untuned one, else the untuned rule. A competition with test labels also gets the
    hold-out score of the submission.
    """
    runs = [read_run(Path(r)) for r in run_dirs]
    cfg = read_saved_config(Path(run_dirs[0]) / "config.yaml")
    data = load_competition_data(cfg.data, data_dir)
    comp, task, metric = data.competition, data.task, data.competition.metric
    id_col = comp.id_col
    if runs[0].label_cols != data.label_cols:
        raise DataError(f"run {runs[0].name} predicts {runs[0].label_cols} but the competition's "
                        f"labels are {data.label_cols}")
    average_runs(runs)  # refuses runs with other labels or ids before any search
    ids = runs[0].oof.index
    unknown = sorted(set(ids) - set(data.train[id_col]))
    if unknown:
        raise DataError(f"OOF ids not in {comp.train_file}: {unknown[:5]} ({len(unknown)} in all)")
    labels = data.labels_for(ids)
    folds = runs[0].folds.loc[ids].to_numpy()
    oofs = [run.oof.loc[ids, run.label_cols].to_numpy() for run in runs]
    stacked = weights == "stack"
    searched = isinstance(weights, str) and not stacked
    if searched and weights != "auto":
        raise DataError(f"--weights takes numbers, 'auto' or 'stack', got {weights!r}")
    if stacked and len(runs) < 2:
        raise DataError(f"--weights stack combines several runs; got one ({runs[0].name}): drop --weights or add runs")

    def search_score(probs, y):
        return task.search_score(probs, y, metric)

    if searched:
        weights = search_weights(oofs, labels, score=search_score).tolist() if len(runs) > 1 else [1.0]

    def make_tuner():
        return task.decider(cfg.thresholds, cfg.cv.seed, metric)

    def make_stacker():
        return task.stacker(cfg.cv.seed)

    if stacked:  # OOF: cross-fitted stacker outputs; test: the stacker fitted on all OOF rows
        stacking.check_folds(folds)
        stacker = make_stacker().fit(oofs, labels)
        test_ids = runs[0].test.index
        oof = pd.DataFrame(stacking.cross_fit(make_stacker, oofs, labels, folds), index=ids, columns=data.label_cols)
        test = pd.DataFrame(stacker.predict([run.test.loc[test_ids, run.label_cols].to_numpy() for run in runs]),
                            index=test_ids, columns=data.label_cols)
    else:
        oof, test = average_runs(runs, weights)
    tuner = make_tuner().fit(oof.to_numpy(), labels)

    untuned = f"{metric}_{task.untuned.replace(' ', '_')}"

    def scores(probs_list, run_weights, rule, probs=None):
        probs = sum(w * p for w, p in zip(run_weights, probs_list)) if probs is None else probs
        if stacked and len(probs_list) > 1:  # a member alone is scored as itself
            cv = stacking.cross_validated_preds(make_stacker, probs_list, labels, folds, make_tuner)
        else:
            cv = cross_validated_preds(probs_list, labels, folds, make_tuner,
                                       None if searched and len(probs_list) > 1 else np.asarray(run_weights, float),
                                       search_score)
        return {untuned: task.score(labels, task.untuned_preds(probs), metric),
                f"{metric}_tuned": task.score(labels, rule.predict(probs), metric),
                f"{metric}_cv": task.score(labels, cv, metric)}

    per_run = {run.name: scores([p], [1.0], make_tuner().fit(p, labels)) for run, p in zip(runs, oofs)}
    if stacked:  # each run's coefficient averaged over labels: the stacker's own weights are per label
        norm = stacker.member_weights()
    else:
        norm = np.ones(len(runs)) / len(runs) if weights is None else np.asarray(weights, float) / np.sum(weights)
    ensemble = scores(oofs, norm, tuner, oof.to_numpy())
    # the tuned rule is used only where it wins out of sample: its cross-validated score against the
    # untuned one (both honest; e.g. class biases on dair-emotion lose: docs/BENCHMARKS.md)
    use_tuned = ensemble[f"{metric}_cv"] > ensemble[untuned]
    rule = tuner if use_tuned else task.decider(replace(cfg.thresholds, method="fixed"), cfg.cv.seed, metric).fit(
        oof.to_numpy(), labels)
    frame = build_submission(data.sample, id_col, test, rule.predict,
                             lambda preds: task.write_predictions(preds, data.label_cols, comp))
    write_submission(out, frame, data.sample, id_col, data.label_cols if comp.label_col else None)
    test_probs = test.loc[list(data.test_ids)].to_numpy()
    train_rate = labels.mean(0)
    pred_rate = rule.predict(test_probs).mean(0)
    summary = {"runs": [str(r) for r in run_dirs], "weights": norm.tolist(), "weights_searched": searched,
               "combine": "stack" if stacked else "average",
               **({"stacker": stacker.to_json(data.label_cols, [run.name for run in runs])} if stacked else {}),
               "rule": "tuned" if use_tuned else task.untuned,
               "n_oof_rows": len(oof), task.decision_file.removesuffix(".json"): task.decision_json(rule, data.label_cols),
               "per_run": per_run, "ensemble": ensemble,
               "predicted_positive_rate": dict(zip(data.label_cols, pred_rate.tolist())),
               "training_positive_rate": dict(zip(data.label_cols, train_rate.tolist()))}
    if data.holdout_labels is not None:  # scored once, after weights and rule are fitted on OOF
        summary["holdout_test"] = holdout_section(task, metric, test_probs, data.holdout_labels, tuner)
        summary["holdout_test"]["submitted"] = summary["holdout_test"]["tuned" if use_tuned else "untuned"]
    atomic_write_json(Path(out).with_suffix(".json"), summary)
    tuned_preds = tuner.predict(oof.to_numpy())  # the fold spread of the tuned ensemble, as report.json has it
    record_submission(out, comp.name, metric, summary,
                      [task.score(labels[folds == k], tuned_preds[folds == k], metric) for k in np.unique(folds)])
    write_submission_html(Path(out).with_suffix(".json"))
    lines = [f"wrote {out} ({len(frame)} rows, columns {', '.join(frame.columns[:4])}"
             f"{', ...' if len(frame.columns) > 4 else ''})"]
    for name, s in per_run.items():
        lines.append(f"  run {name}: OOF {metric} {s[untuned]:.4f} {task.untuned}, {s[f'{metric}_tuned']:.4f} tuned, "
                     f"{s[f'{metric}_cv']:.4f} cross-validated")
    if len(runs) > 1:
        shown = ", ".join(f"{w:.2f}" for w in norm)
        how = (f"stacked: {stacker.what}, mean coefficients {shown}" if stacked else
               f"weights {shown}{', searched on OOF' if searched else ''}")
        lines.append(f"  ensemble of {len(runs)} ({how}): "
                     f"OOF {metric} {ensemble[untuned]:.4f} {task.untuned}, {ensemble[f'{metric}_tuned']:.4f} tuned, "
                     f"{ensemble[f'{metric}_cv']:.4f} cross-validated")
    lines.append(f"  decision rule: {'tuned' if use_tuned else task.untuned} (cross-validated {metric} with the tuned "
                 f"rule {ensemble[f'{metric}_cv']:.4f} {'>' if use_tuned else '<='} {ensemble[untuned]:.4f} {task.untuned})")
    if "holdout_test" in summary:
        h = summary["holdout_test"]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in h["submitted"].items() if v is not None)
        lines.append(f"  hold-out test ({h['n_rows']} rows, this submission): {shown}")
    lines.append(f"  {'label':14s} {task.rule_name:>9s} {'test rate':>9s} {'train rate':>10s}")
    values = task.decision_json(rule, data.label_cols)
    for j, col in enumerate(data.label_cols):
        lines.append(f"  {col:14s} {values[col]:9.3f} {pred_rate[j]:9.3f} {train_rate[j]:10.3f}")
    return "\n".join(lines)


def score_submission(competition: str, submission: Path, solution: Path) -> str:
    """Score a submission file against a solution file (test labels) with the competition's metric;
    with a Kaggle-style `Usage` column in the solution, also per Usage (Public / Private). Returns a
    printable summary."""
    from pipeline.tasks import get_task

    comp = get_competition(competition)
    task = get_task(comp.task)
    submission, solution = Path(submission), Path(solution)
    for path in (submission, solution):
        if not path.is_file():
            raise DataError(f"{path} does not exist")
    sol = read_csv(solution)
    if comp.classes:
        label_cols = list(comp.classes)
    elif comp.label_col:
        sub_frame = read_csv(submission)
        label_cols = sorted(set(sol.get(comp.label_col, [])) | set(sub_frame.get(comp.label_col, [])))
    else:
        label_cols = [c for c in sol.columns if c not in (comp.id_col, "Usage")]
    truth = read_solution(solution, comp, label_cols, sol[comp.id_col], solution.name)
    sub = read_csv(submission)
    block = label_block_columns(comp, label_cols)
    missing = [c for c in [comp.id_col] + block if c not in sub.columns]
    if missing:
        raise DataError(f"{submission.name} is missing columns {missing}; found: {', '.join(map(str, sub.columns))}")
    preds = read_solution(submission, comp, label_cols, sol[comp.id_col], solution.name)
    result = {"all": task.scores(truth, preds)}
    if "Usage" in sol.columns:
        for usage in sorted(set(sol["Usage"])):
            rows = (sol["Usage"] == usage).to_numpy()
            result[usage] = task.scores(truth[rows], preds[rows])
    lines = [f"{submission} against {solution} ({len(truth)} rows), metric {comp.metric}:"]
    for part, s in result.items():
        lines.append(f"  {part}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items() if v is not None))
    return "\n".join(lines)
