"""Training-only rows (`data.extra_train`: synthetic or other extra CSVs) joined to every fold's training
part, never to validation, OOF, thresholds, early stopping or reports.

The extra rows sit after the real ones with fold -1, so no fold validates on them. A fold also leaves out
the extra rows that leak its validation part: a row whose prompt showed one of the fold's validation
examples (`gen_examples`), or whose text is, after normalisation, one of the fold's validation texts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import CompetitionData


@dataclass
class ExtraRows:
    frame: pd.DataFrame  # id, text, label column(s) as data.train has them, then the files' gen_* columns
    labels: np.ndarray  # (n_extra, n_labels) int8 0/1
    files: list  # the paths, as configured
    digest: str  # sha256 of the files' bytes: a fold trained on other extra rows is not reused

    def __len__(self) -> int:
        return len(self.labels)

    def joined(self, data: CompetitionData) -> CompetitionData:
        """`data` whose training rows are the real ones, then these (test, sample, hold-out unchanged)."""
        cols = list(data.train.columns)
        train = pd.concat([data.train, self.frame.reindex(columns=cols)], ignore_index=True)
        return CompetitionData(data.competition, train, data.test, data.sample, data.label_cols,
                               np.vstack([data.labels, self.labels]).astype(data.labels.dtype),
                               data.holdout_labels, data.holdout_note)

    def folds(self, folds: np.ndarray) -> np.ndarray:
        """(n_real + n_extra,) the real rows' folds, then -1: no fold validates an extra row."""
        return np.concatenate([folds, np.full(len(self), -1, dtype=folds.dtype)])

    def leaks(self, data: CompetitionData, folds: np.ndarray) -> dict:
        """{fold: (n_extra,) bool}: the rows each fold must not train on (its validation examples in their
        prompt, or one of its validation texts as their text). Texts are normalised once for all folds."""
        from pipeline.synthetic.filters import dedup_key
        from pipeline.synthetic.files import leaky_rows

        comp = data.competition
        real_keys = np.array([dedup_key(t) for t in data.train_texts], dtype=object)
        extra_keys = [dedup_key(t) for t in self.frame[comp.text_col]]
        ids = data.train[comp.id_col].astype(str)
        out = {}
        for fold in sorted(set(folds.tolist())):
            val = folds == fold
            held = set(real_keys[val])
            out[fold] = leaky_rows(self.frame, ids[val]) | np.array([k in held for k in extra_keys], dtype=bool)
        return out

    def summary(self, data: CompetitionData, leaks: dict) -> dict:
        """What the report records: files, digest, rows, and per fold the rows left out as leaks."""
        return {"files": [str(f) for f in self.files], "sha256": self.digest, "rows": len(self),
                "rows_per_label": dict(zip(data.label_cols, self.labels.sum(0).astype(int).tolist())),
                "left_out_per_fold": [int(leaks[k].sum()) for k in sorted(leaks)]}


def load_extra_rows(files, data: CompetitionData):
    """The extra training rows of `data.extra_train` (a list of CSV paths), checked against the
    competition (pipeline.synthetic.files.read_extra_train), or None when there are none."""
    from pipeline.errors import DataError
    from pipeline.synthetic.files import read_extra_train

    if not files:
        return None
    frames, labels, digest = [], [], hashlib.sha256()
    for path in files:
        frame, y = read_extra_train(Path(path), data)
        frames.append(frame)
        labels.append(y)
        digest.update(Path(path).read_bytes())
    frame = pd.concat(frames, ignore_index=True)
    id_col = data.competition.id_col
    repeated = frame[id_col][frame[id_col].duplicated()]
    if len(repeated):
        raise DataError(f"data.extra_train files {', '.join(map(str, files))} share ids "
                        f"{repeated.head(5).tolist()} ({len(repeated)} in all); each extra row needs its own id")
    return ExtraRows(frame, np.vstack(labels).astype(np.int8), list(files), digest.hexdigest()[:12])
