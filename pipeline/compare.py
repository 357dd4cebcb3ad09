"""Tabulates finished runs side by side: settings that differ, OOF scores, timing (no torch)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.errors import RunDirError

# (column title, path into config.yaml) for the settings that tell experiment modes apart
SETTINGS = [("preset", "model.preset"), ("finetune", "model.finetune"), ("LoRA r", "model.lora_r"),
            ("LoRA targets", "model.lora_targets"), ("LoRA blocks", "model.lora_layers"),
            ("feature layers", "model.feature_layers"), ("pooling", "model.pooling"),
            ("prompt", "model.prompt"),
            ("max len", "model.max_length"), ("fit filter", "data.fit_filter"), ("rows", "data.max_rows"),
            ("folds", "cv.n_folds"), ("epochs", "train.epochs"), ("lr", "train.lr")]


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, str) and "\n" in value:
        return "yes"
    return str(value)


def run_row(run_dir: Path) -> dict:
    """One completed run's settings, scores and timing as a flat dict of strings."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise RunDirError(f"{run_dir} is not a completed run (no report.json)")
    report = json.loads((run_dir / "report.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    untuned = report.get("oof_at_0.5") or report["oof_argmax"]
    row = {"run": run_dir.name}
    row.update({title: _show(_get(config, key)) for title, key in SETTINGS})
    t = report.get("timing", {})
    pf = report.get("per_fold", {})
    row.update({
        "n": str(report["n_rows"]),
        # untuned: at 0.5 for multilabel runs, argmax for multiclass ones (report["headline"] says which)
        "macro-F1 untuned": f"{untuned['macro_f1']:.4f}",
        "macro-F1 tuned": f"{report['oof_tuned']['macro_f1']:.4f}",
        "macro-F1 tuned (cv)": f"{report['oof_tuned_cv']['macro_f1']:.4f}" if "oof_tuned_cv" in report else "-",
        "fold std": f"{pf['std_tuned']:.4f}" if pf else "-",
        "micro-F1 / accuracy tuned": f"{report['oof_tuned'].get('micro_f1', report['oof_tuned'].get('accuracy')):.4f}",
        "hold-out": f"{report['holdout_test']['tuned'][report['holdout_test']['metric']]:.4f}"
                    if "holdout_test" in report else "-",
        "train ex/s": f"{t['train_examples_per_second']:.1f}" if t else "-",
        "wall s": f"{t['wall_seconds']:.0f}" if t else "-",
    })
    return row


def comparison(run_dirs: list, only_differing: bool = True) -> tuple:
    """(columns, rows, same): one flat row per run; the settings equal in every run are left out of
    `columns` and listed in `same` unless only_differing is False."""
    rows = [run_row(Path(r)) for r in run_dirs]
    setting_titles = [title for title, _ in SETTINGS]
    same = [c for c in setting_titles if len({r[c] for r in rows}) == 1] if len(rows) > 1 and only_differing else []
    return [c for c in rows[0] if c not in same], rows, same


def compare_runs(run_dirs: list, only_differing: bool = True) -> str:
    """A markdown table with one row per run; settings equal in every run are left out (and listed
    under the table) unless only_differing is False."""
    columns, rows, same = comparison(run_dirs, only_differing)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    if same:
        lines += ["", "Same in every run: " + ", ".join(f"{c} {rows[0][c]}" for c in same) + "."]
    return "\n".join(lines) + "\n"
