"""Cross-validation tables: `report.json` and a readable `report.md`, for multilabel runs (per-label
table) and multiclass runs (per-class table, confusion matrix); the headline and the hold-out test
section are shared."""
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


def headline(task, metric: str, oof_probs: np.ndarray, labels: np.ndarray, decider, cv_preds: np.ndarray) -> dict:
    """The competition metric on OOF three ways: untuned (at 0.5 / argmax), with the rule tuned on all
    of OOF (optimistic), and cross-validated (rule fitted on the other folds: the honest one)."""
    out = {"metric": metric, "untuned_rule": task.untuned,
           "untuned": task.score(labels, task.untuned_preds(oof_probs), metric),
           "tuned": task.score(labels, decider.predict(oof_probs), metric),
           "cv": task.score(labels, cv_preds, metric)}
    # what make_submission.py applies: the tuned rule only where it wins out of sample
    out["rule"] = "tuned" if out["cv"] > out["untuned"] else task.untuned
    return out


def holdout_section(task, metric: str, test_probs: np.ndarray, test_labels: np.ndarray, decider) -> dict:
    """Scores of the fold-averaged test predictions against the solution, untuned and with the rule
    fitted on OOF. Computed once, after everything is fitted; nothing reads it back."""
    return {"n_rows": int(test_labels.shape[0]), "metric": metric, "untuned_rule": task.untuned,
            "untuned": task.scores(test_labels, task.untuned_preds(test_probs), test_probs),
            "tuned": task.scores(test_labels, decider.predict(test_probs), test_probs)}


def _holdout_lines(report: dict) -> list:
    if "holdout_test" not in report:
        return ["", f"{report['holdout_test_note']}."] if "holdout_test_note" in report else []
    h = report["holdout_test"]
    keys = [k for k, v in h["tuned"].items() if v is not None]
    rule = report.get("headline", {}).get("rule")
    chose = f" The submission uses the {rule} rule (chosen on OOF by the cross-validated score)." if rule else ""
    lines = ["", f"Hold-out test ({h['n_rows']} rows with known labels, scored once after everything was "
             f"fitted; it never fed back into folds, early stopping or the decision rule).{chose}", "",
             "| hold-out test | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, rule in ((h["untuned_rule"], "untuned"), ("tuned on OOF", "tuned")):
        lines.append(f"| {name} | " + " | ".join(_num(h[rule].get(k)) for k in keys) + " |")
    return lines


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _config_line(report: dict) -> list:
    if "config" not in report:
        return []
    c = report["config"]
    lines = [f"Model `{c['model']['preset']}`, {c['cv']['n_folds']} folds, seed {c['cv']['seed']}, "
             f"{report['n_rows']} training rows.", ""]
    if "extra_train" in report:
        x = report["extra_train"]
        lines[-1:-1] = [f"Every fold also trained on {x['rows']} extra rows ({', '.join(x['files'])}), never validated "
                        f"or scored; left out per fold as leaks of its validation part: {x['left_out_per_fold']}."]
    if "pseudo_labels" in report:
        from pipeline.pseudo_labels import describe

        lines[-1:-1] = [describe(report["pseudo_labels"])]
    return lines


def _timing_lines(report: dict) -> list:
    lines = []
    if "timing" in report:
        t = report["timing"]
        lines += ["", "| timing | value |", "|---|---|",
                  f"| wall time | {t['wall_seconds']:.1f} s |",
                  f"| training | {t['train_examples']} examples in {t['train_seconds']:.1f} s = "
                  f"{t['train_examples_per_second']:.1f} examples/s |",
                  f"| prediction | {t['predict_examples']} examples in {t['predict_seconds']:.1f} s = "
                  f"{t['predict_examples_per_second']:.1f} examples/s |"]
        if t.get("gpu_peak_bytes"):
            lines.append(f"| peak GPU memory, training and prediction (torch.cuda.max_memory_allocated, largest "
                         f"fold) | {t['gpu_peak_bytes'] / 2 ** 30:.2f} GiB; the dry run planned "
                         f"{t['gpu_peak_estimate_bytes'] / 2 ** 30:.2f} GiB of tensors for full-length batches |")
            lines.append(f"| peak GPU memory while loading the model | {t['gpu_load_peak_bytes'] / 2 ** 30:.2f} GiB |")
        if "feature_seconds" in t:
            lines.append(f"| frozen features (once, shared by all folds) | {t['feature_examples']} texts in "
                         f"{t['feature_seconds']:.1f} s = {t['feature_examples_per_second']:.1f} texts/s |")
    if "folds" in report:
        lines += ["", "| fold | best epoch | epochs run |", "|---|---|---|"]
        for f in report["folds"]:
            lines.append(f"| {f['fold']} | {f['best_epoch']} | {len(f['history']) or 1} |")
    return lines


def render_markdown(report: dict, title: str) -> str:
    """A report a person can read: headline scores, per-label table, per-fold scores, timing."""
    half, tuned = report["oof_at_0.5"], report["oof_tuned"]
    lines = [f"# {title}", ""] + _config_line(report)
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
    lines += _holdout_lines(report)
    lines += _timing_lines(report)
    return "\n".join(lines) + "\n"


def multiclass_report(task, probs: np.ndarray, labels: np.ndarray, folds: Optional[np.ndarray], decider,
                      label_cols: list, extra: Optional[dict] = None) -> dict:
    """probs: (n, K) rows summing to 1; labels: one-hot (n, K); folds: (n,) or None; decider: a fitted
    BiasTuner. Returns a JSON-ready dict: scores with plain argmax and with the tuned biases, per-class
    table, confusion matrix (counts and row-normalised), per-fold scores."""
    argmax, tuned = task.untuned_preds(probs), decider.predict(probs)
    p, r, f, s = metrics.per_label(labels, tuned)
    _, _, f_arg, _ = metrics.per_label(labels, argmax)
    counts, normalised = metrics.confusion(labels, argmax)
    counts_t, normalised_t = metrics.confusion(labels, tuned)
    report = {
        "task": "multiclass",
        "n_rows": int(labels.shape[0]),
        "oof_argmax": task.scores(labels, argmax, probs),
        "oof_tuned": task.scores(labels, tuned),
        "biases": dict(zip(label_cols, decider.biases_.tolist())),
        "per_class": [{"class": c, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                       "f1_argmax": float(f_arg[j]), "bias": float(decider.biases_[j]), "support": int(s[j]),
                       "predicted_rate": float(tuned[:, j].mean()), "true_rate": float(labels[:, j].mean())}
                      for j, c in enumerate(label_cols)],
        "confusion_matrix": {"classes": list(label_cols), "rows": "true class", "columns": "predicted class (argmax)",
                             "counts": counts.tolist(), "row_normalised": np.round(normalised, 4).tolist(),
                             "tuned_counts": counts_t.tolist(), "tuned_row_normalised": np.round(normalised_t, 4).tolist()},
    }
    if folds is not None:
        ks = np.unique(folds)
        per_fold = [metrics.class_f1(labels[folds == k], tuned[folds == k]) for k in ks]
        per_fold_arg = [metrics.class_f1(labels[folds == k], argmax[folds == k]) for k in ks]
        acc = [metrics.accuracy(labels[folds == k], argmax[folds == k]) for k in ks]
        report["per_fold"] = {"macro_f1_tuned": per_fold, "macro_f1_argmax": per_fold_arg, "accuracy_argmax": acc,
                              "mean_tuned": float(np.mean(per_fold)), "std_tuned": float(np.std(per_fold)),
                              "mean_argmax": float(np.mean(per_fold_arg)), "std_argmax": float(np.std(per_fold_arg)),
                              "mean_accuracy": float(np.mean(acc)), "std_accuracy": float(np.std(acc))}
    report.update(extra or {})
    return report


def render_multiclass_markdown(report: dict, title: str) -> str:
    """A multiclass report: headline scores, per-class table, confusion matrix, per-fold, hold-out, timing."""
    arg, tuned = report["oof_argmax"], report["oof_tuned"]
    lines = [f"# {title}", ""] + _config_line(report)
    lines += ["| OOF score | argmax | argmax + tuned class biases |", "|---|---|---|"]
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        lines.append(f"| {key.replace('_', ' ')} | {arg[key]:.4f} | {tuned[key]:.4f} |")
    for key in ("roc_auc_weighted_ovr", "roc_auc_macro_ovr", "log_loss"):
        lines.append(f"| {key.replace('_', ' ')} | {_num(arg.get(key))} | (same probabilities) |")
    lines += ["", "The biases were tuned on these same OOF predictions, so the tuned scores are slightly "
              "optimistic; argmax involves no tuning."]
    if "oof_tuned_cv" in report:
        cv = report["oof_tuned_cv"]
        lines.append(f"With each fold's biases tuned on the other folds only: macro-F1 **{cv['macro_f1']:.4f}**, "
                     f"accuracy {cv['accuracy']:.4f} (the honest estimate of the tuned scores).")
    lines += ["", "| class | support | true rate | predicted rate | bias | precision | recall | F1 | F1 argmax |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in report["per_class"]:
        lines.append(f"| {row['class']} | {row['support']} | {row['true_rate']:.3f} | {row['predicted_rate']:.3f} | "
                     f"{row['bias']:+.2f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                     f"{row['f1_argmax']:.3f} |")
    cm = report["confusion_matrix"]
    classes = cm["classes"]
    lines += ["", "Confusion matrix (argmax; rows: true class, columns: predicted), counts and row-normalised:", "",
              "| true \\ predicted | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for c, counts, shares in zip(classes, cm["counts"], cm["row_normalised"]):
        lines.append(f"| {c} | " + " | ".join(f"{n} ({v:.2f})" for n, v in zip(counts, shares)) + " |")
    if "per_fold" in report:
        pf = report["per_fold"]
        lines += ["", "| fold | accuracy argmax | macro-F1 argmax | macro-F1 tuned |", "|---|---|---|---|"]
        for k, (a, b, t) in enumerate(zip(pf["accuracy_argmax"], pf["macro_f1_argmax"], pf["macro_f1_tuned"])):
            lines.append(f"| {k} | {a:.4f} | {b:.4f} | {t:.4f} |")
        lines.append(f"| mean ± std | {pf['mean_accuracy']:.4f} ± {pf['std_accuracy']:.4f} | "
                     f"{pf['mean_argmax']:.4f} ± {pf['std_argmax']:.4f} | {pf['mean_tuned']:.4f} ± {pf['std_tuned']:.4f} |")
    lines += _holdout_lines(report)
    lines += _timing_lines(report)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m pipeline.report RUN_DIR | SUBMISSION.json
    import sys

    from pipeline.cli import report_main

    sys.exit(report_main())
