"""HTML reports a person reads: one self-contained page per run (`runs/<name>/report.html`), per
submission (`submissions/<name>.html`) and for runs side by side (`compare_runs.py --html`).

Figures come from matplotlib, metrics from scikit-learn; every section opens with a one-line reading
of what it shows. What differs by task (per-label curves and co-occurrence for multilabel, the
confusion matrix for multiclass) comes from the task object (`task.html_sections`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline import html
from pipeline.errors import DataError, RunDirError
from pipeline.html import esc, img, new_figure, num, section, table

N_WORST = 5  # most confident mistakes shown per label and kind
N_BEST = 3
TEXT_CHARS = 280


@dataclass
class RunView:
    """What a run page is drawn from: the run's report and OOF, with the training labels and texts."""
    name: str
    report: dict
    task: object
    label_cols: list
    ids: np.ndarray  # (n,) OOF row ids, in oof.csv order
    folds: np.ndarray  # (n,) fold of each row
    probs: np.ndarray  # (n, L) OOF probabilities as saved
    labels: np.ndarray  # (n, L) 0/1 (one-hot for multiclass)
    texts: list  # (n,) training texts of those ids
    config_yaml: str


def load_run_view(run_dir: Path, data=None, report: Optional[dict] = None, data_dir: Optional[str] = None) -> RunView:
    """Read a run directory's outputs; `data` (a CompetitionData) is loaded from the saved config when
    not given (its folder, or `data_dir`, must hold the training file: the page shows texts)."""
    from pipeline.config import read_saved_config
    from pipeline.data import load_competition_data

    run_dir = Path(run_dir)
    if report is None:
        if not (run_dir / "report.json").is_file():
            raise RunDirError(f"{run_dir} is not a completed run (no report.json); finish it with run_cv.py first")
        report = json.loads((run_dir / "report.json").read_text())
    if data is None:
        data = load_competition_data(read_saved_config(run_dir / "config.yaml").data, data_dir)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    label_cols = [c for c in oof.columns if c not in ("id", "fold")]
    ids = oof["id"].to_numpy(dtype=object)
    id_col = data.competition.id_col
    texts = pd.Series(data.train_texts, index=data.train[id_col].astype(str))
    unknown = sorted(set(ids) - set(texts.index))
    if unknown:
        raise DataError(f"{run_dir / 'oof.csv'}: ids {unknown[:5]} ({len(unknown)} in all) are not in the "
                        f"competition's training file")
    return RunView(run_dir.name, report, data.task, label_cols, ids, oof["fold"].to_numpy(),
                   oof[label_cols].to_numpy(dtype=np.float64), data.labels_for(ids), texts.loc[list(ids)].tolist(),
                   (run_dir / "config.yaml").read_text())



def _headline_table(rows: list) -> str:
    """rows: (name, [(key, value), ...]) with keys for the data-key attribute the render test reads."""
    head = "<tr><th class=text>OOF score</th>" + "".join(f"<th>{esc(k)}</th>" for k in HEADLINE_COLUMNS) + "</tr>"
    body = ""
    for name, cells in rows:
        body += f"<tr><td class=text>{esc(name)}</td>" + "".join(
            f'<td class=num data-key="{esc(key)}">{num(value)}</td>' for key, value in cells) + "</tr>"
    return f"<table class=headline>{head}{body}</table>"


HEADLINE_COLUMNS = ("untuned", "tuned on all OOF", "cross-validated")


def headline_section(view: RunView) -> str:
    r, task = view.report, view.task
    untuned, tuned, cv = r[task.report_untuned_key], r["oof_tuned"], r.get("oof_tuned_cv", {})
    rows = [(name.replace("_", " "), [(f"{part}.{name}", src.get(name)) for part, src in
                                      (("untuned", untuned), ("tuned", tuned), ("cv", cv))])
            for name in list(untuned) + [k for k in tuned if k not in untuned]]  # AUC, log loss: untuned only
    h = r.get("headline", {})
    body = _headline_table(rows)
    if h:
        body += (f"<p>Untuned means {esc(task.untuned)}. The submission uses the <b>{esc(h['rule'])}</b> rule: "
                 f"its cross-validated {esc(h['metric'])} {num(h['cv'])} against {num(h['untuned'])} untuned.</p>")
    if "per_fold" in r:
        pf = r["per_fold"]
        keys = [k for k in pf if isinstance(pf[k], list)]
        rows = [[k] + [num(pf[key][k]) for key in keys] for k in range(len(pf[keys[0]]))]
        means = [f"{num(float(np.mean(pf[key])))} ± {num(float(np.std(pf[key])))}" for key in keys]
        body += table(["fold"] + [k.replace("_", " ") for k in keys], rows + [["mean ± std"] + means])
    body += f"<details><summary>config that produced it</summary><pre>{esc(view.config_yaml)}</pre></details>"
    return section("Headline", "The cross-validated column is the honest estimate (each fold's rule fitted on the "
                   "other folds); tuned on all OOF is optimistic, untuned involves no fitting at all.", body,
                   "headline")


def learning_curves_section(view: RunView) -> str:
    folds = view.report.get("folds") or []
    curves = [f for f in folds if f.get("history")]
    if not curves:
        return section("Learning curves", "This model trains in one pass (no epochs), so there is no curve.", "",
                       "learning-curves")
    key = view.task.val_metric
    fig = new_figure(10, 3.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    for f in curves:
        epochs = [h["epoch"] for h in f["history"]]
        line, = ax_loss.plot(epochs, [h.get("train_loss") for h in f["history"]], marker="o", label=f"fold {f['fold']}")
        if all("val_loss" in h for h in f["history"]):
            ax_loss.plot(epochs, [h["val_loss"] for h in f["history"]], ls="--", color=line.get_color())
        vals = [h.get(key) for h in f["history"]]
        ax_val.plot(epochs, vals, marker="o", color=line.get_color(), label=f"fold {f['fold']}")
        best = f["best_epoch"]
        if best in epochs:
            ax_val.plot([best], [vals[epochs.index(best)]], marker="*", ms=15, color=line.get_color(), mec="black")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss (solid), validation loss (dashed)")
    ax_val.set(xlabel="epoch", ylabel=key.removeprefix("val_").replace("_", " "),
               title="validation score; star = epoch kept")
    ax_val.legend(fontsize=8)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return section("Learning curves", "Training loss and validation score per epoch for every fold; the starred "
                   "epoch is the one whose weights made the OOF predictions (early stopping on the validation "
                   "score).", img(fig, "learning curves"), "learning-curves")


def _text(t: str) -> str:
    t = " ".join(str(t).split())
    return t if len(t) <= TEXT_CHARS else t[:TEXT_CHARS - 1] + "…"


def holdout_and_timing_section(view: RunView) -> str:
    r = view.report
    body = ""
    if "holdout_test" in r:
        h = r["holdout_test"]
        keys = [k for k, v in h["tuned"].items() if v is not None]
        body += (f"<h3>Hold-out test ({h['n_rows']} rows with known labels, scored once after everything was fitted)"
                 f"</h3>" + table(["rule"] + keys, [[h["untuned_rule"]] + [num(h["untuned"].get(k)) for k in keys],
                                                   ["tuned on OOF"] + [num(h["tuned"].get(k)) for k in keys]]))
    elif r.get("holdout_test_note"):
        body += f"<p>{esc(r['holdout_test_note'])}.</p>"
    t = r.get("timing")
    if t:
        rows = [["wall time", f"{t['wall_seconds']:.1f} s"],
                ["training", f"{t['train_examples']} examples in {t['train_seconds']:.1f} s = "
                             f"{t['train_examples_per_second']:.1f} examples/s"],
                ["prediction", f"{t['predict_examples']} examples in {t['predict_seconds']:.1f} s = "
                               f"{t['predict_examples_per_second']:.1f} examples/s"]]
        if t.get("gpu_peak_bytes"):
            rows.append(["peak GPU memory (largest fold)", f"{t['gpu_peak_bytes'] / 2 ** 30:.2f} GiB; planned "
                         f"{t['gpu_peak_estimate_bytes'] / 2 ** 30:.2f} GiB"])
        body += "<h3>Timing</h3>" + table(["", "value"], rows, text_cols=[0, 1])
    if not body:
        return ""
    return section("Hold-out test and timing", "Scores on test labels when the competition has them (never used "
                   "for any choice), and how long the run took.", body, "holdout-timing")



GRID = np.linspace(0.01, 0.99, 99)


def threshold_curves(probs: np.ndarray, labels: np.ndarray) -> tuple:
    """probs, labels: (n,) for one label. Precision, recall and F1 at each threshold of GRID."""
    preds = probs[None, :] >= GRID[:, None]
    tp = (preds & (labels[None, :] == 1)).sum(1)
    n_pred, n_true = preds.sum(1), labels.sum()
    precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 1.0)
    recall = tp / max(n_true, 1)
    f1 = np.where(tp > 0, 2 * tp / np.maximum(n_pred + n_true, 1), 0.0)
    return precision, recall, f1


def _pr_and_reliability(ax_pr, ax_cal, probs: np.ndarray, labels: np.ndarray, title: str,
                        threshold: Optional[float] = None) -> None:
    """One label's (or one class's, one-vs-rest) precision-recall curve, with the operating point at
    `threshold` starred when given, and its reliability curve. probs, labels: (n,)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if labels.sum() and labels.sum() < len(labels):  # both kinds present: the curves are defined
        prec, rec, _ = precision_recall_curve(labels, probs)
        ax_pr.plot(rec, prec)
        if threshold is not None:
            chosen = probs >= threshold
            tp = (chosen & (labels == 1)).sum()
            ax_pr.plot([tp / labels.sum()], [tp / max(chosen.sum(), 1)], "k*", ms=10)
        ax_pr.axhline(labels.mean(), color="grey", ls=":", lw=1)
        ax_pr.set_title(f"{title}, AP {average_precision_score(labels, probs):.3f}", fontsize=9)
        frac_pos, mean_pred = calibration_curve(labels, probs, n_bins=10, strategy="quantile")
        ax_cal.plot(mean_pred, frac_pos, marker="o")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax_cal.plot([0, 1], [0, 1], color="grey", ls=":")
    ax_cal.set(xlabel="mean predicted probability", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1))
    ax_cal.set_title("reliability (10 quantile bins)", fontsize=9)
    for ax in (ax_pr, ax_cal):
        ax.grid(alpha=.3)


def _label_figure(col: str, probs: np.ndarray, labels: np.ndarray, threshold: float) -> str:
    fig = new_figure(11, 2.6, dpi=72)
    ax_t, ax_pr, ax_cal = fig.subplots(1, 3)
    p, r, f = threshold_curves(probs, labels)
    for values, name in ((p, "precision"), (r, "recall"), (f, "F1")):
        ax_t.plot(GRID, values, label=name)
    ax_t.axvline(threshold, color="black", ls="--", lw=1)
    ax_t.axvline(0.5, color="grey", ls=":", lw=1)
    ax_t.set(xlabel=f"threshold (dashed: tuned {threshold:.2f}; dotted: 0.5)", ylim=(0, 1.02), title=f"{col}")
    ax_t.legend(fontsize=7, loc="lower left")
    ax_t.grid(alpha=.3)
    _pr_and_reliability(ax_pr, ax_cal, probs, labels, "PR curve (star: tuned)", threshold)
    return img(fig, f"{col}: threshold curves, precision-recall, reliability")


def multilabel_label_section(view: RunView) -> str:
    rows = {row["label"]: row for row in view.report["per_label"]}
    body = table(["label", "support", "true rate", "predicted rate", "threshold", "precision", "recall", "F1",
                  "F1 at 0.5"],
                 [[c, rows[c]["support"], num(rows[c]["true_rate"], 3), num(rows[c]["predicted_rate"], 3),
                   num(rows[c]["threshold"], 3), num(rows[c]["precision"], 3), num(rows[c]["recall"], 3),
                   num(rows[c]["f1"], 3), num(rows[c]["f1_at_0.5"], 3)] for c in view.label_cols], text_cols=[0])
    for j, c in enumerate(view.label_cols):
        body += f"<h3>{esc(c)} <span class=muted>(support {rows[c]['support']})</span></h3>"
        body += _label_figure(c, view.probs[:, j], view.labels[:, j], rows[c]["threshold"])
    return section("Per label", "Left: precision, recall and F1 as the threshold moves, with the tuned threshold "
                   "dashed; middle: the precision-recall curve (dotted line: the label's base rate); right: how "
                   "often the label is true at each predicted probability (on the diagonal = calibrated).",
                   body, "per-label")


def _heatmap(ax, matrix: np.ndarray, names: list, title: str, vmax: float) -> None:
    ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(names) <= 15:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] < vmax / 2 else "black")


def cooccurrence_section(view: RunView, preds: np.ndarray) -> str:
    y = view.labels.astype(np.int64)
    p = preds.astype(np.int64)
    true_c, pred_c = y.T @ y, p.T @ p
    off = ~np.eye(len(view.label_cols), dtype=bool)
    # the scale of the pairs, not of the diagonal (each label's own count), which would wash them out
    vmax = float(max(true_c[off].max(initial=0), pred_c[off].max(initial=0), 1))
    size = max(4.0, 0.35 * len(view.label_cols) + 2)
    fig = new_figure(2 * size, size)
    ax_true, ax_pred = fig.subplots(1, 2)
    _heatmap(ax_true, true_c, view.label_cols, "true labels: rows with both", vmax)
    _heatmap(ax_pred, pred_c, view.label_cols, "predicted (tuned thresholds): rows with both", vmax)
    return section("Label co-occurrence", "How often two labels are on in the same row (diagonal: how often each is "
                   "on), in the truth and in the tuned OOF predictions, on one colour scale set by the pairs: a "
                   "brighter cell on the right means the model pairs those labels more often than the data does.",
                   img(fig, "label co-occurrence, true and predicted"), "cooccurrence")


def _row(view: RunView, i: int, j: int) -> list:
    on = ", ".join(c for c, v in zip(view.label_cols, view.labels[i]) if v) or "(none)"
    return [view.ids[i], int(view.folds[i]), f"{view.probs[i, j]:.3f}", on, _text(view.texts[i])]


def multilabel_rows_section(view: RunView) -> str:
    head = ["id", "fold", "probability", "true labels", "text"]
    body = ""
    for j, c in enumerate(view.label_cols):
        p, y = view.probs[:, j], view.labels[:, j]
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        fp = neg[np.argsort(-p[neg], kind="stable")[:N_WORST]]
        fn = pos[np.argsort(p[pos], kind="stable")[:N_WORST]]
        best = pos[np.argsort(-p[pos], kind="stable")[:N_BEST]]
        parts = [("most confident false positives (not labelled, highest probability)", fp),
                 ("most confident false negatives (labelled, lowest probability)", fn),
                 ("most confident true positives", best)]
        inner = "".join(f"<h3>{esc(title)}</h3>" + table(head, [_row(view, i, j) for i in rows], text_cols=[0, 3, 4])
                        for title, rows in parts if len(rows))
        body += f"<details{' open' if j == 0 else ''}><summary>{esc(c)}</summary>{inner}</details>"
    return section("Worst and best OOF rows", "Per label, the rows the model got most confidently wrong, then a "
                   "few it got most confidently right: read them for label noise, sarcasm, and what the model "
                   "keys on.", body, "rows")


def multilabel_sections(view: RunView) -> list:
    thresholds = np.array([row["threshold"] for row in view.report["per_label"]])
    preds = (view.probs >= thresholds[None, :]).astype(np.int8)
    return [multilabel_label_section(view), cooccurrence_section(view, preds), learning_curves_section(view),
            multilabel_rows_section(view)]



def confusion_section(view: RunView) -> str:
    from sklearn.metrics import ConfusionMatrixDisplay

    y, pred = view.labels.argmax(1), view.probs.argmax(1)
    names = view.label_cols
    size = max(4.5, 0.45 * len(names) + 2.5)
    fig = new_figure(2 * size, size)
    ax_counts, ax_norm = fig.subplots(1, 2)
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=range(len(names)), display_labels=names, ax=ax_counts,
                                            colorbar=False, xticks_rotation=90)
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=range(len(names)), display_labels=names, ax=ax_norm,
                                            normalize="true", values_format=".2f", colorbar=False, xticks_rotation=90)
    ax_counts.set_title("counts (argmax)", fontsize=9)
    ax_norm.set_title("row-normalised: share of each true class", fontsize=9)
    return section("Confusion matrix", "Rows are the true class, columns the argmax prediction on OOF; the "
                   "right-hand matrix divides each row by its class size, so its diagonal is each class's recall.",
                   img(fig, "confusion matrix, counts and row-normalised"), "confusion")


def _class_figure(col: str, probs: np.ndarray, labels: np.ndarray) -> str:
    fig = new_figure(7.4, 2.6, dpi=72)
    ax_pr, ax_cal = fig.subplots(1, 2)
    _pr_and_reliability(ax_pr, ax_cal, probs, labels, f"{col}: one-vs-rest PR")
    return img(fig, f"{col}: precision-recall and reliability")


def multiclass_class_section(view: RunView) -> str:
    rows = {row["class"]: row for row in view.report["per_class"]}
    body = table(["class", "support", "true rate", "predicted rate", "bias", "precision", "recall", "F1",
                  "F1 argmax"],
                 [[c, rows[c]["support"], num(rows[c]["true_rate"], 3), num(rows[c]["predicted_rate"], 3),
                   f"{rows[c]['bias']:+.2f}", num(rows[c]["precision"], 3), num(rows[c]["recall"], 3),
                   num(rows[c]["f1"], 3), num(rows[c]["f1_argmax"], 3)] for c in view.label_cols], text_cols=[0])
    body += "<div class=figs>" + "".join(_class_figure(c, view.probs[:, j], view.labels[:, j])
                                         for j, c in enumerate(view.label_cols)) + "</div>"
    return section("Per class", "Precision, recall and F1 with the tuned class biases, then for each class its "
                   "one-vs-rest precision-recall curve and reliability curve (on the diagonal = calibrated).",
                   body, "per-class")


def multiclass_rows_section(view: RunView) -> str:
    y, pred = view.labels.argmax(1), view.probs.argmax(1)
    conf = view.probs.max(1)
    head = ["id", "fold", "true class", "predicted", "probability", "text"]
    body = ""
    for j, c in enumerate(view.label_cols):
        wrong = np.flatnonzero((y == j) & (pred != j))
        right = np.flatnonzero((y == j) & (pred == j))
        worst = wrong[np.argsort(-conf[wrong], kind="stable")[:N_WORST]]
        best = right[np.argsort(-conf[right], kind="stable")[:N_BEST]]

        def rows(index):
            return [[view.ids[i], int(view.folds[i]), c, view.label_cols[pred[i]], f"{conf[i]:.3f}",
                     _text(view.texts[i])] for i in index]

        inner = "".join(f"<h3>{esc(title)}</h3>" + table(head, rows(index), text_cols=[0, 2, 3, 5])
                        for title, index in (("most confident mistakes", worst), ("most confident right", best))
                        if len(index))
        body += f"<details{' open' if j == 0 else ''}><summary>{esc(c)}</summary>{inner}</details>"
    return section("Worst and best OOF rows", "Per true class, the rows predicted as another class with the most "
                   "confidence, then a few right with the most confidence.", body, "rows")


def multiclass_sections(view: RunView) -> list:
    return [multiclass_class_section(view), confusion_section(view), learning_curves_section(view),
            multiclass_rows_section(view)]



def run_page(view: RunView) -> str:
    """The whole report page of one run."""
    parts = [headline_section(view)] + view.task.html_sections(view) + [holdout_and_timing_section(view)]
    c = view.report.get("config", {})
    sub = (f"<p class=muted>Model <code>{esc(c.get('model', {}).get('preset', '?'))}</code>, "
           f"{esc(c.get('cv', {}).get('n_folds', '?'))} folds, seed {esc(c.get('cv', {}).get('seed', '?'))}, "
           f"{view.report['n_rows']} training rows, competition {esc(c.get('data', {}).get('competition', '?'))}.</p>")
    if "extra_train" in view.report:
        x = view.report["extra_train"]
        sub += (f"<p>Every fold also trained on {x['rows']} extra rows ({esc(', '.join(x['files']))}), never "
                f"validated or scored; left out per fold as leaks of its validation part: "
                f"{esc(x['left_out_per_fold'])}.</p>")
    if "pseudo_labels" in view.report:
        from pipeline.pseudo_labels import describe

        sub += f"<p>{esc(describe(view.report['pseudo_labels']))}</p>"
    return html.page(f"CV report: {view.name}", sub + "".join(parts))


def write_run_html(run_dir: Path, data=None, report: Optional[dict] = None, data_dir: Optional[str] = None) -> Path:
    """Write `run_dir/report.html` atomically. Returns its path."""
    from pipeline.io import atomic_write_text

    view = load_run_view(run_dir, data, report, data_dir)
    out = Path(run_dir) / "report.html"
    atomic_write_text(out, run_page(view))
    return out


def submission_page(summary: dict, name: str) -> str:
    """A submission's page from its `<out>.json`: member runs and the ensemble, weights, the decision rule,
    and each label's predicted rate on test against its training rate."""
    metric_keys = list(summary["ensemble"])
    body_rows = [[run, num(w)] + [num(s[k]) for k in metric_keys]
                 for (run, s), w in zip(summary["per_run"].items(), summary["weights"])]
    stacked = summary.get("combine") == "stack"
    head = f"<tr><th class=text>member</th><th>{'mean coefficient' if stacked else 'weight'}</th>" + "".join(
        f"<th>{esc(k.replace('_', ' '))}</th>" for k in metric_keys) + "</tr>"
    rows = "".join("<tr>" + f"<td class=text>{esc(r[0])}</td>" + "".join(f"<td>{esc(v)}</td>" for v in r[1:]) + "</tr>"
                   for r in body_rows)
    rows += f"<tr><td class=text><b>ensemble</b></td><td>{'' if stacked else 1}</td>" + "".join(
        f'<td class=num data-key="ensemble.{esc(k)}">{num(summary["ensemble"][k])}</td>' for k in metric_keys)
    rows += "</tr>"
    how = ("stacked by a logistic regression fitted on OOF, its coefficients per label in the summary's 'stacker'; "
           "the ensemble's OOF rows are cross-fitted (each fold by a stacker fitted on the others)" if stacked else
           f"their weighted average (weights {'searched on OOF' if summary.get('weights_searched') else 'as given'})")
    body = section("Members and ensemble", f"OOF scores of each run and of the ensemble, {how}; the cross-validated "
                   f"column fits {'stacker' if stacked else 'weights'} and rule on the other folds only, so it is the "
                   f"one to compare with the leaderboard. Rule used: {summary['rule']}.",
                   f"<table class=headline>{head}{rows}</table>",
                   "members")
    rule_key = next(k for k in ("thresholds", "biases") if k in summary)
    train_rate, test_rate = summary["training_positive_rate"], summary["predicted_positive_rate"]
    labels = list(test_rate)
    fig = new_figure(max(6.0, 0.5 * len(labels) + 2), 3.2)
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [train_rate[c] for c in labels], 0.4, label="training rate (true)")
    ax.bar(x + 0.2, [test_rate[c] for c in labels], 0.4, label="test rate (predicted)")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="share of rows")
    ax.legend(fontsize=8)
    ax.grid(alpha=.3, axis="y")
    table_rows = [[c, num(summary[rule_key][c], 3), num(train_rate[c], 3), num(test_rate[c], 3),
                   num(test_rate[c] / train_rate[c], 2) if train_rate[c] else "-"] for c in labels]
    body += section("Predicted rates on test", "Each label's share of test rows predicted positive against its share "
                    "in training: a ratio far from 1 means the test set differs or the rule over- or under-fires.",
                    img(fig, "predicted test rate against training rate") +
                    table(["label", {"thresholds": "threshold", "biases": "bias"}[rule_key], "training rate",
                           "test rate", "ratio"], table_rows,
                          text_cols=[0]), "rates")
    if "holdout_test" in summary:
        h = summary["holdout_test"]["submitted"]
        body += section("Hold-out test", "This submission scored on the competition's test labels (never used for "
                        "any choice).", table(list(h), [[num(v) for v in h.values()]]), "holdout")
    return html.page(f"Submission: {name}", body)


def write_submission_html(summary_json: Path) -> Path:
    """Write `<submission>.html` beside the submission's JSON summary. Returns its path."""
    from pipeline.io import atomic_write_text

    summary_json = Path(summary_json)
    summary = json.loads(summary_json.read_text())
    out = summary_json.with_suffix(".html")
    atomic_write_text(out, submission_page(summary, summary_json.stem))
    return out


def compare_page(run_dirs: list) -> str:
    """Runs side by side: the comparison table, headline scores with fold spread, per-label F1."""
    from pipeline.compare import comparison

    reports = [json.loads((Path(r) / "report.json").read_text()) for r in run_dirs]
    names = [Path(r).name for r in run_dirs]
    fig = new_figure(max(6.0, 1.4 * len(names) + 2), 3.4)
    ax = fig.subplots()
    x = np.arange(len(names))
    for k, (label, get) in enumerate((("untuned", lambda r: (r.get("oof_at_0.5") or r["oof_argmax"])["macro_f1"]),
                                      ("tuned", lambda r: r["oof_tuned"]["macro_f1"]),
                                      ("cross-validated", lambda r: r.get("oof_tuned_cv", {}).get("macro_f1")))):
        values = [get(r) for r in reports]
        err = [r.get("per_fold", {}).get("std_tuned", 0) for r in reports] if label == "tuned" else None
        ax.bar(x + (k - 1) * 0.27, [v or 0 for v in values], 0.27, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="OOF macro-F1")
    low = min(min((r.get("oof_at_0.5") or r["oof_argmax"])["macro_f1"] for r in reports) - 0.05, 0.9)
    ax.set_ylim(max(0, low), None)
    ax.legend(fontsize=8)
    ax.grid(alpha=.3, axis="y")
    body = section("Scores", "OOF macro-F1 of each run untuned, tuned on all OOF (error bar: std over folds) and "
                   "cross-validated (the honest one).", img(fig, "OOF macro-F1 per run"), "scores")
    columns, rows, same = comparison(run_dirs)
    shared = f"<p>Same in every run: {esc(', '.join(f'{c} {rows[0][c]}' for c in same))}.</p>" if same else ""
    body += section("Settings and scores", "Settings that differ between the runs, with scores and speed "
                    "(the same table as compare_runs.py prints).",
                    "<div style='overflow-x:auto'>" + table(columns, [[r[c] for c in columns] for r in rows],
                                                            text_cols=[0]) + "</div>" + shared, "settings")
    per = [{(row.get("label") or row.get("class")): row["f1"] for row in (r.get("per_label") or r["per_class"])}
           for r in reports]
    labels = list(per[0])
    if all(list(p) == labels for p in per):
        fig = new_figure(max(6.0, 0.55 * len(labels) + 2), 3.4)
        ax = fig.subplots()
        for name, p in zip(names, per):
            ax.plot(range(len(labels)), [p[c] for c in labels], marker="o", label=name)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set(ylabel="F1 (tuned)")
        ax.legend(fontsize=7)
        ax.grid(alpha=.3)
        body += section("Per label", "Tuned F1 of every label in every run: where the runs disagree is where an "
                        "ensemble can gain.", img(fig, "per-label F1 per run"), "per-label")
    return html.page(f"Runs compared ({len(names)})", body)
