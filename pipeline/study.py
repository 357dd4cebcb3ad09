"""The study grid: a declared grid of runs (models x data subsets) -> a results table and a heatmap.

Every cell is an ordinary resumable run in `<study_dir>/runs/<model>__k{K}-n{N}/` on a subset saved in
`<study_dir>/data/k{K}-n{N}/` (pipeline/subsets.py), so a killed study resumes by rerunning the same
command and `--cell` lets a cluster run cells in parallel. Outputs: results.csv, results.md, heatmap.png.
"""
from __future__ import annotations

import difflib
import fnmatch
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import yaml

from pipeline.errors import ConfigError, PipelineError
from pipeline.io import atomic_write_csv, atomic_write_text

log = logging.getLogger("pipeline")

COMPETITION = "goemotions-subset"  # the competition every cell's run reads its subset with


@dataclass(frozen=True)
class StudyModel:
    name: str  # row name in the table and prefix of the cell names
    preset: str  # model preset (pipeline/presets.py)
    overrides: tuple = ()  # `section.key=value` strings for this model's runs only


@dataclass
class StudyConfig:
    name: str  # study folder name under studies/
    models: list  # StudyModel entries, in the order cells run
    source: str = "../shared/data/goemotions"  # folder with train.csv, validation.csv, test.csv (id, text, 0/1 labels)
    seed: int = 42  # seed for the subsets, folds and training
    classes: list = field(default_factory=lambda: [2, 4, 8, 16])  # K: numbers of classes
    train_rows: list = field(default_factory=lambda: [800, 1600, 2400])  # N: training rows, balanced over K
    folds: int = 3  # K-fold folds of each run
    set: list = field(default_factory=list)  # `section.key=value` overrides for every run
    holdout_per_class: int = 200  # cap on hold-out rows per class (also limited by the rarest class)
    train_splits: list = field(default_factory=lambda: ["train"])  # source splits training rows come from


@dataclass(frozen=True)
class Cell:
    model: StudyModel
    k: int
    n: int

    @property
    def data_name(self) -> str:
        return f"k{self.k}-n{self.n}"

    @property
    def name(self) -> str:
        return f"{self.model.name}__{self.data_name}"


def _close(name: str, options) -> str:
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def _plain_name(value) -> bool:
    return isinstance(value, str) and bool(value) and "/" not in value and "__" not in value \
        and not value.startswith(".")


def _int_list(key: str, value, low: int, problems: list) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          and v >= low for v in value):
        problems.append(f"{key} must be a non-empty list of integers >= {low}, got {value!r}")
        return []
    if len(set(value)) != len(value):
        problems.append(f"{key} lists a value twice: {value!r}")
    return value


def _overrides(key: str, value, problems: list) -> tuple:
    value = [value] if isinstance(value, str) else (value or [])
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        problems.append(f"{key} must be a list of 'section.key=value' strings, got {value!r}")
        return ()
    return tuple(value)


def _model(entry, i: int, problems: list) -> Optional[StudyModel]:
    if isinstance(entry, str):
        return StudyModel(entry, entry)
    if not isinstance(entry, dict) or "preset" not in entry:
        problems.append(f"models[{i}] must be a preset name or a mapping with 'preset' (and optional 'name', "
                        f"'set'), got {entry!r}")
        return None
    unknown = [k for k in entry if k not in ("name", "preset", "set")]
    if unknown:
        problems.append(f"models[{i}]: unknown key '{unknown[0]}'{_close(unknown[0], ['name', 'preset', 'set'])}; "
                        f"valid keys: name, preset, set")
    return StudyModel(str(entry.get("name", entry["preset"])), str(entry["preset"]),
                      _overrides(f"models[{i}].set", entry.get("set"), problems))


def parse_study(raw, source: str = "study config") -> StudyConfig:
    """A StudyConfig from a YAML mapping; every problem (unknown key, bad value) is collected, raised once."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of study keys, got {type(raw).__name__}")
    known = ["name", "models", "source", "seed", "classes", "train_rows", "folds", "set", "holdout_per_class",
             "train_splits"]
    problems = [f"unknown study key '{k}'{_close(k, known)}; valid keys: {', '.join(known)}"
                for k in raw if k not in known]
    problems += [f"{k} is required" for k in ("name", "models") if k not in raw]
    study = StudyConfig(name=raw.get("name", ""), models=[])
    for key in ("source", "seed", "folds", "holdout_per_class"):
        if key in raw:
            setattr(study, key, raw[key])
    if "name" in raw and not _plain_name(study.name):
        problems.append(f"name must be a plain folder name (no '/', '__' or leading '.'), got {study.name!r}")
    if not isinstance(study.source, str):
        problems.append(f"source must be a folder path, got {study.source!r}")
    for key, low in (("seed", 0), ("folds", 2), ("holdout_per_class", 1)):
        value = getattr(study, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{key} must be an integer >= {low}, got {value!r}")
    study.classes = _int_list("classes", raw.get("classes", study.classes), 2, problems)
    study.train_rows = _int_list("train_rows", raw.get("train_rows", study.train_rows), 1, problems)
    study.set = list(_overrides("set", raw.get("set"), problems))
    splits = raw.get("train_splits", study.train_splits)
    if not isinstance(splits, list) or not splits or not set(splits) <= {"train", "validation"}:
        problems.append(f"train_splits must be a non-empty list from [train, validation], got {splits!r}")
    study.train_splits = splits
    models = raw.get("models", [])
    if "models" in raw and (not isinstance(models, list) or not models):
        problems.append(f"models must be a non-empty list of presets or mappings, got {models!r}")
        models = []
    study.models = [m for m in (_model(e, i, problems) for i, e in enumerate(models)) if m is not None]
    names = [m.name for m in study.models]
    problems += [f"model name '{n}' appears twice; give one a 'name'" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"model name {n!r} must be a plain folder name without '__'" for n in names if not _plain_name(n)]
    for k in study.classes:
        for n in study.train_rows:
            if n % k:
                problems.append(f"train_rows {n} is not divisible by classes {k} (the subsets are balanced)")
            elif isinstance(study.folds, int) and n // k < study.folds:
                problems.append(f"k{k}-n{n} has {n // k} rows per class, fewer than folds {study.folds}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return study


def load_study(path) -> StudyConfig:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"study config {path} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_study(raw, str(path))


def study_cells(study: StudyConfig) -> list:
    """Every cell, model-major in the YAML's order (so fast models listed first finish first)."""
    return [Cell(m, k, n) for m in study.models for k in study.classes for n in study.train_rows]


def select_cells(cells: list, wanted: list) -> list:
    """Cells named by index (as --list numbers them), exact name or glob pattern, in grid order."""
    chosen = set()
    for item in wanted:
        if item.isdigit():
            if int(item) >= len(cells):
                raise ConfigError(f"cell index {item} is out of range: the study has {len(cells)} cells (0.."
                                  f"{len(cells) - 1}); see --list")
            chosen.add(int(item))
            continue
        hits = {i for i, c in enumerate(cells) if fnmatch.fnmatchcase(c.name, item)}
        if not hits:
            raise ConfigError(f"no cell matches '{item}'{_close(item, [c.name for c in cells])}; see --list")
        chosen |= hits
    return [c for i, c in enumerate(cells) if i in chosen]


def cell_run_dir(study_dir: Path, cell: Cell) -> Path:
    return Path(study_dir) / "runs" / cell.name


def cell_overrides(study: StudyConfig, cell: Cell, data_dir: Path) -> list:
    """The `--set` strings of one cell's run: the subset, preset, folds and seed, then the study's and the
    model's own overrides (the later win)."""
    return [f"data.competition={COMPETITION}", f"data.data_dir={data_dir}", f"model.preset={cell.model.preset}",
            f"cv.n_folds={study.folds}", f"cv.seed={study.seed}", *study.set, *cell.model.overrides]


def run_study(study: StudyConfig, study_dir: Path, cells: Optional[list] = None,
              run_fn: Optional[Callable] = None, quiet: bool = False) -> list:
    """Draw (or reuse) the subsets, run every cell not yet finished, write the table and heatmap.

    run_fn(cfg, run_dir, quiet=...) runs one cell (default pipeline.cv.run_cv). A failing cell is logged
    and skipped; returns the names of the cells that failed.
    """
    from pipeline.config import load_config
    from pipeline.subsets import build_subsets

    study_dir = Path(study_dir)
    cells = study_cells(study) if cells is None else cells
    folders = build_subsets(Path(study.source), study_dir / "data", study.classes, study.train_rows, study.seed,
                            study.holdout_per_class, tuple(study.train_splits), only={c.data_name for c in cells})
    configs = {}
    for cell in cells:  # every cell's config is checked before the first one trains
        try:
            configs[cell.name] = load_config(None, cell_overrides(study, cell, folders[cell.data_name]))
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.name}: {exc}") from exc
    if run_fn is None:
        from pipeline.cv import run_cv as run_fn
    failed = []
    for i, cell in enumerate(cells):
        run_dir = cell_run_dir(study_dir, cell)
        if (run_dir / "report.json").is_file() and _same_config(run_dir, configs[cell.name]):
            log.info("cell %d/%d %s already finished, skipping", i + 1, len(cells), cell.name)
            continue
        log.info("cell %d/%d %s: running into %s", i + 1, len(cells), cell.name, run_dir)
        try:
            run_fn(configs[cell.name], run_dir, quiet=quiet)
        except PipelineError as exc:
            log.error("cell %s failed: %s", cell.name, exc)
            failed.append(cell.name)
        except Exception:  # noqa: BLE001 - one broken cell must not stop the grid; the traceback is logged
            log.exception("cell %s failed", cell.name)
            failed.append(cell.name)
    write_outputs(study, study_dir)
    return failed


def _same_config(run_dir: Path, cfg) -> bool:
    from pipeline.config import diff_configs, read_saved_config

    saved = run_dir / "config.yaml"
    return saved.is_file() and not diff_configs(read_saved_config(saved).result_dict(), cfg.result_dict())


def _dig(tree, *keys):
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return float(tree) if isinstance(tree, (int, float)) and not isinstance(tree, bool) else np.nan


RESULT_COLUMNS = ["model", "preset", "data", "k", "n", "status", "holdout_rows", "holdout_accuracy",
                  "holdout_macro_f1", "holdout_accuracy_tuned", "holdout_macro_f1_tuned", "oof_macro_f1",
                  "oof_macro_f1_tuned", "oof_macro_f1_cv", "train_seconds", "wall_seconds", "run_dir"]


def collect_results(study: StudyConfig, study_dir: Path) -> pd.DataFrame:
    """One row per cell of the grid (RESULT_COLUMNS); a cell without report.json has status 'missing'
    (no run directory) or 'incomplete' and NaN scores."""
    rows = []
    for cell in study_cells(study):
        run_dir = cell_run_dir(study_dir, cell)
        row = {"model": cell.model.name, "preset": cell.model.preset, "data": cell.data_name, "k": cell.k,
               "n": cell.n, "run_dir": str(run_dir)}
        report_path = run_dir / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
        row["status"] = "done" if report else ("incomplete" if run_dir.is_dir() else "missing")
        hold, head = report.get("holdout_test", {}), report.get("headline", {})
        row.update(holdout_rows=_dig(hold, "n_rows"),
                   holdout_accuracy=_dig(hold, "untuned", "accuracy"),
                   holdout_macro_f1=_dig(hold, "untuned", "macro_f1"),
                   holdout_accuracy_tuned=_dig(hold, "tuned", "accuracy"),
                   holdout_macro_f1_tuned=_dig(hold, "tuned", "macro_f1"),
                   oof_macro_f1=_dig(head, "untuned"), oof_macro_f1_tuned=_dig(head, "tuned"),
                   oof_macro_f1_cv=_dig(head, "cv"), train_seconds=_dig(report, "timing", "train_seconds"),
                   wall_seconds=_dig(report, "timing", "wall_seconds"))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["holdout_rows"] = frame["holdout_rows"].astype("Int64")
    return frame


def _fmt(value, digits: int = 4) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}"


def results_markdown(frame: pd.DataFrame, study_name: str) -> str:
    """The table a person reads: hold-out accuracy as a model x data-set grid, then one row per cell."""
    data_sets = list(dict.fromkeys(frame["data"]))
    done = int((frame["status"] == "done").sum())
    lines = [f"# Study {study_name}", "", f"{done} of {len(frame)} cells finished; '-' marks a cell not finished.",
             "", "Hold-out accuracy (argmax), models x data sets (k = classes, n = training rows):", "",
             "| model | " + " | ".join(data_sets) + " |", "|---" * (len(data_sets) + 1) + "|"]
    for model, rows in frame.groupby("model", sort=False):
        acc = dict(zip(rows["data"], rows["holdout_accuracy"]))
        lines.append(f"| {model} | " + " | ".join(_fmt(acc.get(d), 3) for d in data_sets) + " |")
    lines += ["", "| model | data | K | N | status | hold-out rows | hold-out acc | hold-out macro-F1 | "
                  "hold-out macro-F1 (tuned) | OOF macro-F1 (cv) | train s | wall s |", "|---" * 12 + "|"]
    for r in frame.itertuples():
        rows_text = "-" if pd.isna(r.holdout_rows) else str(int(r.holdout_rows))
        lines.append(f"| {r.model} | {r.data} | {r.k} | {r.n} | {r.status} | {rows_text} | "
                     f"{_fmt(r.holdout_accuracy)} | {_fmt(r.holdout_macro_f1)} | {_fmt(r.holdout_macro_f1_tuned)} | "
                     f"{_fmt(r.oof_macro_f1_cv)} | {_fmt(r.train_seconds, 1)} | {_fmt(r.wall_seconds, 1)} |")
    lines += ["", "Hold-out: the subset's test.csv (drawn balanced from the source's test split), scored once after "
                  "all folds; OOF macro-F1 (cv): the K-fold out-of-fold figure with biases fitted on other folds."]
    return "\n".join(lines) + "\n"


def heatmap_png(values: np.ndarray, row_labels: list, col_labels: list, title: str,
                colorbar_label: str = "hold-out accuracy") -> bytes:
    """A PNG heatmap with each value written in its cell. values: (n_rows, n_cols) floats in [0, 1],
    NaN where a cell is missing (drawn grey, marked '-'). Draws on its own Agg canvas (no pyplot state)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(6.0, 0.75 * n_cols + 2.5), max(2.5, 0.55 * n_rows + 1.8)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_cols), labels=col_labels, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), labels=row_labels)
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            # viridis is dark at the low end: white text there, black on the light end
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _atomic_write_bytes(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(study: StudyConfig, study_dir: Path) -> pd.DataFrame:
    """results.csv, results.md and heatmap.png in study_dir from whatever cells are finished."""
    study_dir = Path(study_dir)
    frame = collect_results(study, study_dir)
    atomic_write_csv(study_dir / "results.csv", frame)
    atomic_write_text(study_dir / "results.md", results_markdown(frame, study.name))
    grid = frame.pivot(index="model", columns="data", values="holdout_accuracy")
    rows, cols = list(dict.fromkeys(frame["model"])), list(dict.fromkeys(frame["data"]))
    png = heatmap_png(grid.loc[rows, cols].to_numpy(dtype=float), rows, cols,
                      f"{study.name}: hold-out accuracy (k = classes, n = training rows)")
    _atomic_write_bytes(study_dir / "heatmap.png", png)
    return frame
