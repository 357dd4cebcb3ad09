"""The synthetic CSV (competition columns + `gen_*` provenance), its resume journal, and `read_extra_train`,
which checks a synthetic file against a competition before its rows join the training data.

The CSV's id, text and label column(s) are the competition's training format (multiclass: one column of
class names; multilabel: one 0/1 column per label), so it reads with the same checks as train.csv.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import CompetitionData, _check_ids, _check_text, _show, label_block_columns, parse_label_block
from pipeline.data import read_csv
from pipeline.errors import ConfigError, DataError
from pipeline.io import atomic_write_csv, atomic_write_text

GEN_PREFIX = "gen_"  # provenance columns; every other column must be the competition's
ID_PREFIX = "syn-"  # synthetic ids never look like real ones
GEN_COLS = ["gen_backend", "gen_model", "gen_seed", "gen_temperature", "gen_style", "gen_length", "gen_topic",
            "gen_explicitness", "gen_examples", "gen_request", "gen_attempt"]


def sidecar_path(out: Path) -> Path:
    return Path(out).with_suffix(".json")


def journal_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".answers.jsonl")


def synthetic_frame(rows: list, comp, label_cols: list, with_filter: bool) -> pd.DataFrame:
    """The CSV's frame. rows: dicts with id, text, labels (tuple of names) and the gen_* values."""
    frame = pd.DataFrame({comp.id_col: [r["id"] for r in rows], comp.text_col: [r["text"] for r in rows]})
    if comp.label_col:
        frame[comp.label_col] = [r["labels"][0] for r in rows]
    else:
        for col in label_cols:
            frame[col] = [int(col in r["labels"]) for r in rows]
    for col in GEN_COLS + (["gen_filter_prob"] if with_filter else []):
        frame[col] = [r[col] for r in rows]
    return frame


def write_outputs(out: Path, frame: pd.DataFrame, sidecar: dict) -> None:
    atomic_write_csv(out, frame)
    atomic_write_text(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")


class Journal:
    """Every answer the model gave (raw, in order) and every round-trip score, with the settings that
    produced them: a rerun with the same settings replays it instead of asking the model again, so an
    interrupted run ends with the file an uninterrupted one writes. Rewritten atomically as a whole."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = Path(path), settings
        self.answers: dict = {}  # (request, attempt) -> record
        self.scores: dict = {}  # row id -> record
        self.elapsed_s = 0.0  # generation time of earlier sessions
        self.dirty = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            lines = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"resume journal {self.path} cannot be read ({exc}); delete it to start over") from exc
        if not lines or lines[0].get("kind") != "header":
            raise DataError(f"resume journal {self.path} has no header line; delete it to start over")
        old = lines[0].get("settings", {})
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.settings.items() if old.get(k) != v]
        if changed:
            raise ConfigError(f"{self.path} holds answers generated with other settings ({'; '.join(changed)}); "
                              f"pass another --out, or delete {self.path.name} to start over")
        self.elapsed_s = float(lines[0].get("elapsed_s", 0.0))
        for rec in lines[1:]:
            if rec.get("kind") == "answer":
                self.answers[(rec["request"], rec["attempt"])] = rec
            elif rec.get("kind") == "score":
                self.scores[rec["id"]] = rec

    def add_answer(self, rec: dict) -> None:
        self.answers[(rec["request"], rec["attempt"])] = {"kind": "answer", **rec}
        self.dirty += 1

    def add_score(self, rec: dict) -> None:
        self.scores[rec["id"]] = {"kind": "score", **rec}
        self.dirty += 1

    def save(self, elapsed_s: float) -> None:
        header = {"kind": "header", "settings": self.settings, "elapsed_s": round(elapsed_s, 3)}
        records = [header] + [self.answers[k] for k in sorted(self.answers)] + list(self.scores.values())
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.dirty = 0


def read_extra_train(path: Path, data: CompetitionData) -> tuple:
    """Read and check a synthetic (or any extra) training file for `data`'s competition.

    The file needs the competition's id and text columns and its label column(s) exactly (class names or
    0/1 columns); `gen_*` provenance columns may follow. Refused, each with a one-line DataError naming the
    file and the values: a missing, empty or unreadable file; other label columns than the competition's;
    unknown class names or non-0/1 labels; empty texts; duplicate ids; ids that are real train or test ids.
    Returns (frame, labels): frame has the id, text and label column(s) as `data.train` has them, then the
    file's gen_* columns; labels is (n_rows, n_labels) int8 0/1 (one-hot for multiclass).
    """
    path = Path(path)
    comp, name = data.competition, path.name
    if not path.is_file():
        raise DataError(f"synthetic file {path} does not exist")
    frame = read_csv(path)
    block = label_block_columns(comp, data.label_cols)
    needed = [comp.id_col, comp.text_col] + block
    missing = [c for c in needed if c not in frame.columns]
    other = [c for c in frame.columns if c not in needed and not str(c).startswith(GEN_PREFIX)]
    if other:
        raise DataError(f"{name} has columns {other} that competition {comp.name} does not have (its label "
                        f"column(s): {', '.join(block)}; provenance columns start with '{GEN_PREFIX}')")
    if missing:
        raise DataError(f"{name} is missing columns {missing} of competition {comp.name}; found: "
                        f"{', '.join(map(str, frame.columns))}")
    _check_ids(frame, name, comp.id_col)
    _check_text(frame, name, comp.id_col, comp.text_col)
    labels = parse_label_block(frame, name, comp, data.label_cols)
    ids = frame[comp.id_col]
    for real, where in ((set(data.train_ids), " + ".join(comp.train_files)), (set(data.test_ids), comp.test_file)):
        clash = ids[ids.isin(real)]
        if len(clash):
            raise DataError(f"{name}: {len(clash)} ids are also ids of {where} (first: {_show(clash)}); synthetic "
                            f"ids must differ from real ones (generate_data.py writes '{ID_PREFIX}...')")
    out = frame[needed].copy()
    if not comp.label_col:
        for j, col in enumerate(data.label_cols):
            out[col] = labels[:, j].astype(np.int64)
    for col in [c for c in frame.columns if str(c).startswith(GEN_PREFIX)]:
        out[col] = frame[col]
    return out.reset_index(drop=True), labels


def leaky_rows(frame: pd.DataFrame, validation_ids) -> np.ndarray:
    """(n_rows,) bool: synthetic rows whose prompt showed a real example from `validation_ids`. A fold that
    validates on those ids must not train on these rows, or the example leaks into its score."""
    if "gen_examples" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    held = set(map(str, validation_ids))
    return np.array([bool(held & set(filter(None, str(v).split(";")))) for v in frame["gen_examples"]], dtype=bool)
