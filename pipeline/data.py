"""Reads a competition's CSVs, checks them against its definition, returns frames and labels.

Every check raises a one-line `DataError` naming the file, the column and the bad values.
Text is kept exactly as given (no stripping, no NaN conversion).
"""
from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from competition import Competition, get_competition
from pipeline.config import DataConfig
from pipeline.errors import DataError


@dataclass
class CompetitionData:
    competition: Competition
    train: pd.DataFrame  # id_col, text_col and label columns, in file order
    test: pd.DataFrame  # id_col and text_col, in file order
    sample: pd.DataFrame  # the sample submission as read (fixes columns and id order)
    label_cols: list  # from the sample submission's header
    labels: np.ndarray  # (n_train, n_labels) int8 0/1

    @property
    def train_ids(self) -> np.ndarray:
        return self.train[self.competition.id_col].to_numpy(dtype=object)

    @property
    def test_ids(self) -> np.ndarray:
        return self.test[self.competition.id_col].to_numpy(dtype=object)

    @property
    def train_texts(self) -> list:
        return self.train[self.competition.text_col].tolist()

    @property
    def test_texts(self) -> list:
        return self.test[self.competition.text_col].tolist()


def _show(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def missing_data_message(comp: Competition, folder: Path, missing: list) -> str:
    what = "does not exist" if not folder.exists() else f"has no {', '.join(missing)}"
    return (f"data folder {folder} {what}. Get the files with `{comp.download} -p {folder}` and unzip "
            f"them there, or pass --data-dir pointing at a folder with "
            f"{comp.train_file}, {comp.test_file} and {comp.sample_submission_file}")


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with every cell as a string, exactly as written (a BOM is dropped)."""
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}") from exc
    if not raw.strip():
        raise DataError(f"{name} is empty ({path})")
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                        f"cannot be decoded; re-save the file as UTF-8") from exc
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                            encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL)
    except pd.errors.ParserError as exc:
        raise DataError(f"{name} is not a well-formed CSV: {exc}".replace("\n", " ")) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name} is empty ({path})") from exc
    if frame.empty:
        raise DataError(f"{name} has a header but no data rows ({path})")
    dupes = [c for c in frame.columns if "." in str(c) and str(c).rsplit(".", 1)[0] in frame.columns
             and str(c).rsplit(".", 1)[1].isdigit()]
    if dupes:
        raise DataError(f"{name} has duplicated column names: {_show(c.rsplit('.', 1)[0] for c in dupes)}")
    return frame


def _check_columns(frame: pd.DataFrame, name: str, expected: list) -> None:
    found = list(frame.columns)
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if len(found) == 1 and len(expected) > 1 and any(sep in found[0] for sep in (";", "\t", "|")):
        raise DataError(f"{name} has a single column {found[0]!r}: is it comma-separated? "
                        f"expected columns: {', '.join(expected)}")
    if missing:
        hints = [difflib.get_close_matches(c, extra, n=1, cutoff=0.6) for c in missing]
        hint = ", ".join(f"'{h[0]}'" for h in hints if h)
        hint = f" (did you mean {hint}?)" if hint else ""
        raise DataError(f"{name} is missing columns {missing}{hint}; found: {', '.join(map(str, found))}")
    if extra:
        raise DataError(f"{name} has unexpected columns {extra}; expected exactly: {', '.join(expected)}")


def _check_ids(frame: pd.DataFrame, name: str, id_col: str) -> None:
    ids = frame[id_col]
    blank = ids.str.strip() == ""
    if blank.any():
        raise DataError(f"{name}: column '{id_col}' is empty in {int(blank.sum())} rows "
                        f"(first rows: {_show((np.flatnonzero(blank) + 2).tolist())}, counting the header as row 1)")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{name} has {dup.nunique()} duplicate ids in column '{id_col}' (first: {_show(dup.unique())})")


def _check_text(frame: pd.DataFrame, name: str, id_col: str, text_col: str) -> None:
    text = frame[text_col]
    empty = text.str.strip() == ""
    if empty.any():
        raise DataError(f"{name}: column '{text_col}' is empty in {int(empty.sum())} rows "
                        f"(first ids: {_show(frame.loc[empty, id_col])})")


def _parse_labels(frame: pd.DataFrame, name: str, id_col: str, label_cols: list) -> np.ndarray:
    out = np.zeros((len(frame), len(label_cols)), dtype=np.int8)
    for j, col in enumerate(label_cols):
        values = frame[col].str.strip()
        is_one = values.isin(["1", "1.0"])
        bad = ~(is_one | values.isin(["0", "0.0"]))
        if bad.any():
            shown = sorted({("nan" if v == "" else v) for v in frame.loc[bad, col]})
            raise DataError(f"{name}: column '{col}' must contain only 0/1; found {{{', '.join(shown)}}} in "
                            f"{int(bad.sum())} rows (first ids: {_show(frame.loc[bad, id_col])})")
        out[:, j] = is_one.to_numpy()
    return out


def load_competition_data(cfg: DataConfig, data_dir: Optional[str] = None) -> CompetitionData:
    """Read and check train, test and sample submission. Returns a `CompetitionData`."""
    comp = get_competition(cfg.competition)
    folder = Path(data_dir or cfg.data_dir)
    files = [comp.train_file, comp.test_file, comp.sample_submission_file]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(missing_data_message(comp, folder, missing))
    sample = read_csv(folder / comp.sample_submission_file)
    sname = comp.sample_submission_file
    if comp.id_col not in sample.columns:
        raise DataError(f"{sname} has no id column '{comp.id_col}'; found: {', '.join(sample.columns)}")
    label_cols = [c for c in sample.columns if c != comp.id_col]
    if not label_cols:
        raise DataError(f"{sname} has no label columns besides '{comp.id_col}'")
    _check_ids(sample, sname, comp.id_col)

    train = read_csv(folder / comp.train_file)
    _check_columns(train, comp.train_file, [comp.id_col, comp.text_col] + label_cols)
    train = train[[comp.id_col, comp.text_col] + label_cols]
    _check_ids(train, comp.train_file, comp.id_col)
    _check_text(train, comp.train_file, comp.id_col, comp.text_col)
    labels = _parse_labels(train, comp.train_file, comp.id_col, label_cols)
    train = train.copy()
    for j, col in enumerate(label_cols):
        train[col] = labels[:, j].astype(np.int64)
    no_pos = [c for j, c in enumerate(label_cols) if labels[:, j].sum() == 0]
    if no_pos:
        raise DataError(f"{comp.train_file}: label columns {no_pos} have no positive rows; "
                        f"a classifier cannot learn them")

    test = read_csv(folder / comp.test_file)
    _check_columns(test, comp.test_file, [comp.id_col, comp.text_col])
    test = test[[comp.id_col, comp.text_col]]
    _check_ids(test, comp.test_file, comp.id_col)
    _check_text(test, comp.test_file, comp.id_col, comp.text_col)

    test_ids, sample_ids = set(test[comp.id_col]), set(sample[comp.id_col])
    if test_ids != sample_ids:
        only_test = sorted(test_ids - sample_ids)
        only_sample = sorted(sample_ids - test_ids)
        raise DataError(f"{comp.test_file} and {sname} list different ids: {len(only_test)} only in "
                        f"{comp.test_file} ({_show(only_test)}), {len(only_sample)} only in {sname} "
                        f"({_show(only_sample)})")
    overlap = set(train[comp.id_col]) & test_ids
    if overlap:
        raise DataError(f"{len(overlap)} ids appear in both {comp.train_file} and {comp.test_file} "
                        f"(first: {_show(sorted(overlap))})")
    return CompetitionData(comp, train.reset_index(drop=True), test.reset_index(drop=True),
                           sample, label_cols, labels)


_MENTION_URL = re.compile(r"@\w+|https?://\S+|www\.\S+")
_WORD = re.compile(r"[^\W_]+")


def fit_filter_mask(texts: list, labels: np.ndarray, how: str) -> tuple:
    """Rows a fold may fit on. texts: n_train strings; labels: (n_train, n_labels) 0/1.

    'none' keeps every row. 'clean' drops, from fitting only (every row is still validated, so OOF
    scores stay comparable across runs): tweets with no emotion label; tweets with fewer than 3 words
    once @mentions and links are removed; and repeated texts (same words, case and mentions ignored),
    keeping the first copy when every copy has the same labels and none when they disagree.
    Returns (mask (n_train,) bool, {reason: rows dropped}).
    """
    keep = np.ones(len(texts), dtype=bool)
    if how == "none":
        return keep, {}
    words = [_WORD.findall(_MENTION_URL.sub(" ", t).lower()) for t in texts]
    no_label = labels.sum(1) == 0
    short = np.array([len(w) < 3 for w in words])
    groups: dict = {}
    for i, w in enumerate(words):
        groups.setdefault(" ".join(w), []).append(i)
    conflicting = np.zeros(len(texts), dtype=bool)
    repeated = np.zeros(len(texts), dtype=bool)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        if len({labels[i].tobytes() for i in rows}) > 1:
            conflicting[rows] = True
        else:
            repeated[rows[1:]] = True
    reasons = {"no emotion label": no_label, "fewer than 3 words": short,
               "repeated text, conflicting labels": conflicting, "repeated text, same labels (copies)": repeated}
    for mask in reasons.values():
        keep &= ~mask
    return keep, {name: int(mask.sum()) for name, mask in reasons.items()}
