"""Per-label and overall cross-validation tables: `report.json` and a readable `report.md`."""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline import metrics


def _scores(labels: np.ndarray, preds: np.ndarray) -> dict:
    return {"macro_f1": metrics.macro_f1(labels, preds), "micro_f1": metrics.micro_f1(labels, preds),
            "samples_jaccard": metrics.samples_jaccard(labels, preds)}


def build_report(oof_probs: np.ndarray, labels: np.ndarray, folds: Optional[np.ndarray], thresholds: np.ndarray,
                 label_cols: list, extra: Optional[dict] = None) -> dict:
    """oof_probs: (n, n_labels) in [0, 1]; labels: (n, n_labels) 0/1; folds: (n,) or None.

    Returns a JSON-ready dict: overall scores at 0.5 and tuned, per-label table, per-fold scores.
    """
    at_half = (oof_probs >= 0.5).astype(np.int8)
    tuned = (oof_probs >= thresholds[None, :]).astype(np.int8)
    p, r, f, s = metrics.per_label(labels, tuned)
    _, _, f_half, _ = metrics.per_label(labels, at_half)
    report = {
        "n_rows": int(labels.shape[0]),
        "oof_at_0.5": _scores(labels, at_half),
        "oof_tuned": _scores(labels, tuned),
        "per_label": [{"label": c, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                       "f1_at_0.5": float(f_half[j]), "threshold": float(thresholds[j]), "support": int(s[j]),
                       "predicted_rate": float(tuned[:, j].mean()), "true_rate": float(labels[:, j].mean())}
                      for j, c in enumerate(label_cols)],
    }
    if folds is not None:
        per_fold = [metrics.macro_f1(labels[folds == k], tuned[folds == k]) for k in np.unique(folds)]
        per_fold_half = [metrics.macro_f1(labels[folds == k], at_half[folds == k]) for k in np.unique(folds)]
        report["per_fold"] = {"macro_f1_tuned": per_fold, "macro_f1_at_0.5": per_fold_half,
                              "mean_tuned": float(np.mean(per_fold)), "std_tuned": float(np.std(per_fold)),
                              "mean_at_0.5": float(np.mean(per_fold_half)),
                              "std_at_0.5": float(np.std(per_fold_half))}
    report.update(extra or {})
    return report


def render_markdown(report: dict, title: str) -> str:
    """A report a person can read: headline scores, per-label table, per-fold scores, timing."""
    half, tuned = report["oof_at_0.5"], report["oof_tuned"]
    lines = [f"# {title}", ""]
    if "config" in report:
        c = report["config"]
        lines += [f"Model `{c['model']['preset']}`, {c['cv']['n_folds']} folds, seed {c['cv']['seed']}, "
                  f"{report['n_rows']} training rows.", ""]
    lines += ["| OOF score | at 0.5 | tuned thresholds |", "|---|---|---|"]
    for key, name in (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"), ("samples_jaccard", "samples Jaccard")):
        lines.append(f"| {name} | {half[key]:.4f} | {tuned[key]:.4f} |")
    lines += ["", "Thresholds were tuned on these same OOF predictions, so the tuned score is slightly "
              "optimistic; the score at 0.5 involves no tuning."]
    if "oof_tuned_cv" in report:
        lines.append(f"With each fold's thresholds tuned on the other folds only, macro-F1 is "
                     f"**{report['oof_tuned_cv']['macro_f1']:.4f}**: the honest estimate of the tuned score.")
    lines += ["",
              "| label | support | true rate | predicted rate | threshold | precision | recall | F1 | F1 at 0.5 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in report["per_label"]:
        lines.append(f"| {row['label']} | {row['support']} | {row['true_rate']:.3f} | {row['predicted_rate']:.3f} | "
                     f"{row['threshold']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                     f"{row['f1_at_0.5']:.3f} |")
    if "per_fold" in report:
        pf = report["per_fold"]
        lines += ["", "| fold | macro-F1 at 0.5 | macro-F1 tuned |", "|---|---|---|"]
        for k, (a, b) in enumerate(zip(pf["macro_f1_at_0.5"], pf["macro_f1_tuned"])):
            lines.append(f"| {k} | {a:.4f} | {b:.4f} |")
        lines.append(f"| mean ± std | {pf['mean_at_0.5']:.4f} ± {pf['std_at_0.5']:.4f} | "
                     f"{pf['mean_tuned']:.4f} ± {pf['std_tuned']:.4f} |")
    if "timing" in report:
        t = report["timing"]
        lines += ["", "| timing | value |", "|---|---|",
                  f"| wall time | {t['wall_seconds']:.1f} s |",
                  f"| training | {t['train_examples']} examples in {t['train_seconds']:.1f} s = "
                  f"{t['train_examples_per_second']:.1f} examples/s |",
                  f"| prediction | {t['predict_examples']} examples in {t['predict_seconds']:.1f} s = "
                  f"{t['predict_examples_per_second']:.1f} examples/s |"]
        if "feature_seconds" in t:
            lines.append(f"| frozen features (once, shared by all folds) | {t['feature_examples']} texts in "
                         f"{t['feature_seconds']:.1f} s = {t['feature_examples_per_second']:.1f} texts/s |")
    if "folds" in report:
        lines += ["", "| fold | best epoch | epochs run |", "|---|---|---|"]
        for f in report["folds"]:
            lines.append(f"| {f['fold']} | {f['best_epoch']} | {len(f['history']) or 1} |")
    return "\n".join(lines) + "\n"
