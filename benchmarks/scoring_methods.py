"""Generate mode: three per-label scores read from the same model's answer lattice, compared on its OOF rows.

For every fold of a generate-mode run with a kept model, the fold's validation rows are scored once through
`pipeline.generative.scoring.lattice_transitions` (the passes a run makes) and three scores are read from it:

- `marginal`: P(label in the answer), summed over every canonical answer (what runs write: oof.csv);
- `first`: P(the answer's first item is the label) (only the distribution after the prompt);
- `alone`: P(the answer is the label alone), the first step times the step from the label to the end.

Then each score's macro average precision (threshold-free), macro-F1 at thresholds tuned on the same rows
(optimistic) and, with two folds or more, cross-validated (each fold's thresholds fitted on the other folds' rows,
as the run's own figure). `marginal` is checked against the fold's oof.csv.

    python benchmarks/scoring_methods.py --run runs/smollm2-generate --out runs/scoring-methods.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

METHODS = ("marginal", "first", "alone")


def fold_scores(run: Path, cfg, data, fold: int, val_idx: np.ndarray) -> tuple:
    """({method: (n_val, n_labels) scores in the run's label order}, seconds) for one fold's validation rows."""
    from pipeline.finetune import finetune_mode, load_fold_model
    from pipeline.generative.scoring import DONE, START, lattice_transitions, marginals

    folder = run / "folds" / f"fold_{fold}" / "model"
    model, tokenizer = load_fold_model(cfg, len(data.label_cols), folder)
    conv = finetune_mode(cfg.model).inputs(tokenizer, cfg.model, list(data.train_texts), [], kept=folder)
    prompts = [conv.train[i][len(conv.prefix):] for i in val_idx]
    n = len(model.fmt.columns)
    out = {m: np.empty((len(prompts), n)) for m in METHODS}
    start = time.perf_counter()
    for idx, trans in lattice_transitions(model.lm, model.fmt, prompts, cfg.train.eval_batch_size, conv.prefix):
        out["marginal"][idx] = marginals(trans, n)  # what runs write
        out["first"][idx] = torch.stack([trans[START][k] for k in range(n)], 1).numpy()
        out["alone"][idx] = torch.stack([trans[START][k] * trans[k][DONE] for k in range(n)], 1).numpy()
    seconds = time.perf_counter() - start
    return {m: v[:, model.to_run] for m, v in out.items()}, seconds


def summarize(scores: dict, labels: np.ndarray, fold_of: np.ndarray, cfg) -> dict:
    """Per method: macro average precision, macro-F1 tuned on the same rows, and cross-validated when possible."""
    from sklearn.metrics import average_precision_score

    from pipeline.metrics import macro_f1
    from pipeline.thresholds import ThresholdTuner

    th = cfg.thresholds
    tuner = lambda: ThresholdTuner(th.method, th.n_trials, th.low, th.high, seed=cfg.cv.seed)  # noqa: E731
    out = {}
    for method, probs in scores.items():
        row = {"macro_average_precision": float(average_precision_score(labels, probs, average="macro")),
               "macro_f1_tuned_same_rows": float(macro_f1(labels, tuner().fit(probs, labels).predict(probs)))}
        folds = np.unique(fold_of)
        if len(folds) >= 2:
            preds = np.zeros_like(labels)
            for k in folds:
                inside, other = fold_of == k, fold_of != k
                preds[inside] = tuner().fit(probs[other], labels[other]).predict(probs[inside])
            row["macro_f1_cross_validated"] = float(macro_f1(labels, preds))
        out[method] = row
    return out


def main(argv=None) -> int:
    from pipeline.config import read_saved_config
    from pipeline.data import load_competition_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a generate-mode run directory with kept fold models")
    parser.add_argument("--folds", type=int, nargs="*", help="folds to score (default: every fold with a model)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    run = Path(args.run)
    cfg = read_saved_config(run / "config.yaml")
    data = load_competition_data(cfg.data)
    saved = pd.read_csv(run / "folds.csv")
    folds = saved.set_index(saved.columns[0])["fold"].loc[data.train_ids].to_numpy()  # in train.csv order
    chosen = args.folds if args.folds else sorted(
        int(p.name.split("_")[1]) for p in (run / "folds").glob("fold_*") if (p / "model" / "fold.json").is_file())
    scores = {m: [] for m in METHODS}
    rows, fold_of, timing, check = [], [], {}, {}
    for k in chosen:
        val_idx = np.flatnonzero(folds == k)
        s, seconds = fold_scores(run, cfg, data, k, val_idx)
        oof = pd.read_csv(run / "folds" / f"fold_{k}" / "oof.csv")
        oof = oof.set_index(oof.columns[0]).loc[data.train_ids[val_idx], data.label_cols].to_numpy()
        check[k] = float(np.abs(oof - np.clip(s["marginal"], 1e-6, 1 - 1e-6)).max())
        timing[k] = {"rows": len(val_idx), "seconds": round(seconds, 1), "rows_per_s": round(len(val_idx) / seconds, 2)}
        print(f"fold {k}: {len(val_idx)} rows in {seconds:.0f} s; marginal vs oof.csv max |diff| {check[k]:.2e}",
              file=sys.stderr)
        for m in METHODS:
            scores[m].append(s[m])
        rows.append(val_idx)
        fold_of.append(np.full(len(val_idx), k))
    index = np.concatenate(rows)
    result = {"run": str(run), "folds": chosen, "timing": timing, "marginal_vs_oof_max_abs_diff": check,
              "methods": summarize({m: np.concatenate(v) for m, v in scores.items()}, data.labels[index],
                                   np.concatenate(fold_of), cfg)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
