"""Reads a competition's CSVs, checks them against its definition, returns frames and labels.

Every check raises a one-line `DataError` naming the file, the column and the bad values.
Text is kept exactly as given (no stripping, no NaN conversion).
"""
from __future__ import annotations

import csv
import difflib
import hashlib
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
    train: pd.DataFrame  # id_col, text_col and the label column(s), in file order (train files concatenated)
    test: pd.DataFrame  # id_col and text_col, in file order
    sample: pd.DataFrame  # the sample submission as read, or one made from the definition (fixes columns, id order)
    label_cols: list  # labels (multilabel) or classes (multiclass): the probability columns, in output order
    labels: np.ndarray  # (n_train, n_labels) int8 0/1; one-hot for multiclass
    holdout_labels: Optional[np.ndarray] = None  # (n_test, n_labels) test labels from the solution file, or None
    holdout_note: str = ""  # why there is no hold-out score, when the definition names a solution file

    @property
    def task(self):
        from pipeline.tasks import get_task

        return get_task(self.competition.task)

    def labels_for(self, ids) -> np.ndarray:
        """Label rows (n, n_labels) of training ids, in the order given."""
        position = pd.Series(np.arange(len(self.train)), index=self.train[self.competition.id_col])
        return self.labels[position.loc[list(ids)].to_numpy()]

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


def texts_digest(ids, texts) -> str:
    """sha256 of ids and texts, in order: a run records its test set's, so `predict.py` knows when a file is that
    test set again and its folds' test predictions can be read instead of computed again."""
    digest = hashlib.sha256()
    for row_id, text in zip(ids, texts):
        digest.update(f"{len(str(row_id))}:{row_id}{len(text)}:".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _show(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def missing_data_message(comp: Competition, folder: Path, missing: list) -> str:
    what = "does not exist" if not folder.exists() else f"has no {', '.join(missing)}"
    files = comp.required_files
    listed = ", ".join(files[:-1]) + f" and {files[-1]}"
    return (f"data folder {folder} {what}. Get the files with `{comp.download} -p {folder}` and unzip "
            f"them there, or pass --data-dir pointing at a folder with {listed}")


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


def read_texts(path: Path, comp: Competition) -> pd.DataFrame:
    """Any CSV of texts to predict: it needs the competition's id and text columns (others are ignored)
    and is checked as test.csv is. Returns a frame of those two columns, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    frame = read_csv(path)
    missing = [c for c in (comp.id_col, comp.text_col) if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name} is missing columns {missing} (competition {comp.name} reads ids from "
                        f"'{comp.id_col}' and texts from '{comp.text_col}'); "
                        f"found: {', '.join(map(str, frame.columns))}")
    frame = frame[[comp.id_col, comp.text_col]].reset_index(drop=True)
    _check_ids(frame, path.name, comp.id_col)
    _check_text(frame, path.name, comp.id_col, comp.text_col)
    return frame


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


def _parse_classes(frame: pd.DataFrame, name: str, id_col: str, label_col: str, classes: list) -> np.ndarray:
    """One-hot (n, K) from a column of class names; unknown names are named with the closest classes."""
    values = frame[label_col].str.strip()
    known = values.isin(classes)
    if not known.all():
        bad = values[~known]
        shown = []
        for value in list(dict.fromkeys(bad))[:5]:
            close = difflib.get_close_matches(value, classes, n=2, cutoff=0.5)
            hint = f" (closest: {', '.join(repr(c) for c in close)})" if close else ""
            shown.append(f"{value!r} in {int((bad == value).sum())} rows{hint}")
        more = f", and {bad.nunique() - 5} more values" if bad.nunique() > 5 else ""
        raise DataError(f"{name}: column '{label_col}' has values that are not among the classes "
                        f"{', '.join(classes)}: {'; '.join(shown)}{more} (first ids: {_show(frame.loc[~known, id_col])})")
    index = values.map({c: k for k, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    out = np.zeros((len(frame), len(classes)), dtype=np.int8)
    out[np.arange(len(frame)), index] = 1
    return out


def parse_label_block(frame: pd.DataFrame, name: str, comp: Competition, label_cols: list) -> np.ndarray:
    """The labels of a train, test or solution frame as (n, n_labels) int8 0/1, checked for the task:
    0/1 columns (multilabel), a class-name column (multiclass with label_col), or one-hot columns with
    exactly one 1 per row (multiclass without)."""
    if comp.label_col:
        return _parse_classes(frame, name, comp.id_col, comp.label_col, label_cols)
    from pipeline.tasks import get_task

    labels = _parse_labels(frame, name, comp.id_col, label_cols)
    get_task(comp.task).check_rows(labels, frame[comp.id_col].to_numpy(dtype=object), name, label_cols)
    return labels


def label_block_columns(comp: Competition, label_cols: list) -> list:
    """The columns that hold a row's labels in train, test-with-labels and solution files."""
    return [comp.label_col] if comp.label_col else list(label_cols)


def _label_cols(comp: Competition, sample: Optional[pd.DataFrame], parts: list) -> list:
    """Labels or classes in output order: declared in the definition, else from the sample submission's
    header (0/1 columns), else the sorted class names found in the training data's label column."""
    if comp.classes:
        return list(comp.classes)
    if comp.label_col:
        for part, name in zip(parts, comp.train_files):
            if comp.label_col not in part.columns:
                raise DataError(f"{name} is missing the label column '{comp.label_col}'; found: "
                                f"{', '.join(map(str, part.columns))}")
        return sorted(set().union(*(part[comp.label_col].str.strip() for part in parts)))
    label_cols = [c for c in sample.columns if c != comp.id_col]
    if not label_cols:
        raise DataError(f"{comp.sample_submission_file} has no label columns besides '{comp.id_col}'")
    return label_cols


def data_folder(cfg: DataConfig, data_dir: Optional[str] = None) -> Path:
    """Where a run's competition files are: data_dir, else data.data_dir, else data/<competition>."""
    return Path(data_dir or cfg.data_dir or Path("data") / get_competition(cfg.competition).name)


def load_competition_data(cfg: DataConfig, data_dir: Optional[str] = None) -> CompetitionData:
    """Read and check the training file(s), the test file, the sample submission (when the competition
    has one) and the solution file (when it names one and it is there). Returns a `CompetitionData`."""
    comp = get_competition(cfg.competition)
    folder = data_folder(cfg, data_dir)
    missing = [f for f in comp.required_files if not (folder / f).is_file()]
    if missing:
        raise DataError(missing_data_message(comp, folder, missing))
    sample = None
    sname = comp.sample_submission_file
    if sname:
        sample = read_csv(folder / sname)
        if comp.id_col not in sample.columns:
            raise DataError(f"{sname} has no id column '{comp.id_col}'; found: {', '.join(sample.columns)}")
        _check_ids(sample, sname, comp.id_col)

    tname = " + ".join(comp.train_files)
    parts = [read_csv(folder / f) for f in comp.train_files]
    label_cols = _label_cols(comp, sample, parts)
    block = label_block_columns(comp, label_cols)
    if sample is not None and comp.label_col and list(sample.columns) != [comp.id_col, comp.label_col]:
        raise DataError(f"{sname} must have the columns {comp.id_col}, {comp.label_col}; found: "
                        f"{', '.join(sample.columns)}")
    for part, fname in zip(parts, comp.train_files):
        _check_columns(part, fname, [comp.id_col, comp.text_col] + block)
    train = pd.concat([part[[comp.id_col, comp.text_col] + block] for part in parts], ignore_index=True)
    _check_ids(train, tname, comp.id_col)
    _check_text(train, tname, comp.id_col, comp.text_col)
    labels = np.concatenate([parse_label_block(part, fname, comp, label_cols)
                             for part, fname in zip(parts, comp.train_files)])
    train = train.copy()
    if not comp.label_col:
        for j, col in enumerate(label_cols):
            train[col] = labels[:, j].astype(np.int64)
    no_pos = [c for j, c in enumerate(label_cols) if labels[:, j].sum() == 0]
    if no_pos:
        from pipeline.tasks import get_task

        raise DataError(f"{tname}: {get_task(comp.task).no_rows.format(no_pos)}; a classifier cannot learn them")

    test_raw = read_csv(folder / comp.test_file)
    labelled_test = comp.solution_file == comp.test_file
    _check_columns(test_raw, comp.test_file, [comp.id_col, comp.text_col] + (block if labelled_test else []))
    test = test_raw[[comp.id_col, comp.text_col]]
    _check_ids(test, comp.test_file, comp.id_col)
    _check_text(test, comp.test_file, comp.id_col, comp.text_col)
    test_ids = set(test[comp.id_col])

    if sample is not None:
        sample_ids = set(sample[comp.id_col])
        if test_ids != sample_ids:
            only_test = sorted(test_ids - sample_ids)
            only_sample = sorted(sample_ids - test_ids)
            raise DataError(f"{comp.test_file} and {sname} list different ids: {len(only_test)} only in "
                            f"{comp.test_file} ({_show(only_test)}), {len(only_sample)} only in {sname} "
                            f"({_show(only_sample)})")
    else:
        sample = submission_template(comp, test[comp.id_col], label_cols)
    overlap = set(train[comp.id_col]) & test_ids
    if overlap:
        raise DataError(f"{len(overlap)} ids appear in both {tname} and {comp.test_file} "
                        f"(first: {_show(sorted(overlap))})")
    holdout, note = None, ""
    if labelled_test:
        holdout = parse_label_block(test_raw, comp.test_file, comp, label_cols)
    elif comp.solution_file:
        path = folder / comp.solution_file
        if path.is_file():
            holdout = read_solution(path, comp, label_cols, test[comp.id_col], comp.test_file)
        else:
            note = f"no hold-out score: {path} is not there"
    return CompetitionData(comp, train.reset_index(drop=True), test.reset_index(drop=True),
                           sample, label_cols, labels, holdout, note)


def submission_template(comp: Competition, ids: pd.Series, label_cols: list) -> pd.DataFrame:
    """The submission's shape when the competition ships no sample: the test ids in file order, then a
    class-name column (multiclass with label_col) or one 0/1 column per label."""
    frame = pd.DataFrame({comp.id_col: ids.to_numpy()})
    if comp.label_col:
        frame[comp.label_col] = label_cols[0]
    else:
        for col in label_cols:
            frame[col] = 0
    return frame


def read_solution(path: Path, comp: Competition, label_cols: list, ids: pd.Series, ids_from: str) -> np.ndarray:
    """Labels (len(ids), n_labels) of a solution file (id + label column(s); other columns such as
    Kaggle's 'Usage' are ignored), aligned to `ids`; refuses a file whose ids differ from `ids_from`'s."""
    frame = read_csv(path)
    block = label_block_columns(comp, label_cols)
    missing = [c for c in [comp.id_col] + block if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name} is missing columns {missing}; found: {', '.join(map(str, frame.columns))}")
    _check_ids(frame, path.name, comp.id_col)
    wanted, found = set(ids), set(frame[comp.id_col])
    if wanted != found:
        only_a, only_b = sorted(wanted - found), sorted(found - wanted)
        raise DataError(f"{path.name} and {ids_from} list different ids: {len(only_b)} only in {path.name} "
                        f"({_show(only_b)}), {len(only_a)} only in {ids_from} ({_show(only_a)})")
    labels = parse_label_block(frame, path.name, comp, label_cols)
    position = pd.Series(np.arange(len(frame)), index=frame[comp.id_col])
    return labels[position.loc[list(ids)].to_numpy()]


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
