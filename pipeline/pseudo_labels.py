"""Pseudo-labelled test texts (`data.pseudo_label_from`): each fold also trains on the competition's test
texts, with soft targets from finished teacher runs' models of the same fold.

Honesty: fold k's student never meets fold k's validation labels. Its targets are the teachers' fold-k
test probabilities (those models trained without fold k's rows); with several teachers a stacker per label
(pipeline/stacking.py) combines them, fitted on the teachers' OOF rows of the other folds only. So the
teachers must have made this run's folds (same training ids, same split): anything else is refused.

Targets are probabilities, not thresholded 0/1 labels: the BCE loss takes them as they are, and the
per-label positive weights count them as fractional positives. On the emotion competition hard labels
(each stacked probability at 0.5) lost 0.009 on fold 0, where soft targets did not (docs/BENCHMARKS.md).
Multiclass trains on each row's most probable class (its cross-entropy takes one class per row).

The test texts join once, after the real rows (and any data.extra_train rows), with fold -1 so no fold
validates them; `labels_for(fold)` gives the label matrix a fold trains on, its pseudo block set to that
fold's targets.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import CompetitionData
from pipeline.errors import ConfigError, RunDirError
from pipeline.run_layout import fold_dir


@dataclass
class PseudoRows:
    targets: np.ndarray  # (n_folds, n_test, n_labels) float32: fold k's soft targets for every test text
    sources: list  # the teacher run folders, as configured
    teacher: str  # how the targets were made, for the report
    digest: str  # sha256 of the targets: folds trained on other targets are not reused

    def __len__(self) -> int:
        return self.targets.shape[1]

    def joined(self, data: CompetitionData) -> CompetitionData:
        """`data` with the test texts after its training rows (labels: fold 0's targets, float32 from here on;
        `labels_for` swaps in each fold's)."""
        comp = data.competition
        frame = pd.DataFrame({comp.id_col: [f"pseudo-{i}" for i in data.test_ids], comp.text_col: data.test_texts})
        train = pd.concat([data.train, frame.reindex(columns=list(data.train.columns))], ignore_index=True)
        labels = np.vstack([data.labels.astype(np.float32), self.targets[0]])
        return CompetitionData(comp, train, data.test, data.sample, data.label_cols, labels, data.holdout_labels,
                               data.holdout_note)

    def folds(self, folds: np.ndarray) -> np.ndarray:
        """(n_rows + n_test,) the rows' folds, then -1: no fold validates a pseudo-labelled row."""
        return np.concatenate([folds, np.full(len(self), -1, dtype=folds.dtype)])

    def labels_for(self, fold: int, labels: np.ndarray) -> np.ndarray:
        """`labels` (the joined data's) with the pseudo-labelled rows' targets set to fold `fold`'s."""
        out = labels.copy()
        out[-len(self):] = self.targets[fold]
        return out

    def summary(self, label_cols: list) -> dict:
        """What the report records: teachers, rows, and the targets' mean per label (over folds)."""
        return {"from": [str(s) for s in self.sources], "teacher": self.teacher, "rows": len(self),
                "sha256": self.digest,
                "mean_target": dict(zip(label_cols, self.targets.mean((0, 1), dtype=np.float64).round(4).tolist()))}


def describe(summary: dict) -> str:
    """One sentence for the run's reports (markdown and HTML) from `PseudoRows.summary`'s entry."""
    return (f"Every fold also trained on the {summary['rows']} test texts with soft targets from "
            f"{', '.join(summary['from'])}: {summary['teacher']}; never validated or scored.")


def load_pseudo_rows(cfg, data: CompetitionData, folds: np.ndarray):
    """The soft targets of `cfg.data.pseudo_label_from` (finished run folders) for this run's `folds`, or None.

    Refused with one line: a model that cannot train on probabilities (tfidf-lr; model.finetune='generate',
    whose answers name labels), no test texts, a source that is not a finished run, or one whose labels,
    training ids, folds or test ids differ."""
    from pipeline.ensemble import read_run
    from pipeline.presets import get_preset

    sources = cfg.data.pseudo_label_from
    if not sources:
        return None
    if get_preset(cfg.model.preset).kind == "tfidf" or cfg.model.finetune == "generate":
        raise ConfigError("data.pseudo_label_from trains on probabilities, which tfidf-lr's logistic regressions "
                          "and model.finetune='generate' (answers naming labels) cannot take")
    if not len(data.test_ids):
        raise ConfigError("data.pseudo_label_from needs the competition's test texts, and this run reads none "
                          "(a search trial predicts no test text: search without it)")
    train_ids = [str(i) for i in data.train_ids]
    test_ids = [str(i) for i in data.test_ids]
    try:
        runs = [read_run(Path(s)) for s in sources]
    except RunDirError as exc:
        raise RunDirError(f"data.pseudo_label_from: {exc}") from exc
    for source, run in zip(sources, runs):
        _check_teacher(source, run, data.label_cols, train_ids, test_ids, folds)
    n_folds = int(folds.max()) + 1
    fold_probs = [[_fold_test_probs(Path(s), k, data.label_cols, test_ids) for s in sources]
                  for k in range(n_folds)]
    if len(runs) == 1:
        targets = np.stack([p[0] for p in fold_probs])
        teacher = "each fold's own test probabilities of the one teacher run"
    else:
        oofs = [run.oof.loc[train_ids, data.label_cols].to_numpy() for run in runs]
        targets = np.stack([_stacked(data.task.stacker(cfg.cv.seed), oofs, data.labels, folds != k, fold_probs[k])
                            for k in range(n_folds)])
        teacher = (f"a stacker per label on {len(runs)} teacher runs, for fold k fitted on the other folds' "
                   "OOF rows and applied to their fold-k test probabilities")
    targets = targets.astype(np.float32)
    return PseudoRows(targets, list(sources), teacher, hashlib.sha256(targets.tobytes()).hexdigest())


def _check_teacher(source, run, label_cols: list, train_ids: list, test_ids: list, folds: np.ndarray) -> None:
    what = f"data.pseudo_label_from: {source}"
    if run.label_cols != list(label_cols):
        raise ConfigError(f"{what} predicts labels {run.label_cols}, this run {list(label_cols)}")
    if sorted(map(str, run.oof.index)) != sorted(train_ids):
        raise ConfigError(f"{what} was trained on other training rows ({len(run.oof)} against {len(train_ids)} "
                          f"here): its folds cannot be matched to this run's")
    theirs = run.folds.loc[train_ids].to_numpy()
    if not np.array_equal(theirs, folds):
        raise ConfigError(f"{what} has other folds ({int((theirs != folds).sum())} rows differ): its fold-k "
                          f"models trained on this run's fold-k validation rows; use its folds (same cv.n_folds, "
                          f"cv.seed and data)")
    if sorted(map(str, run.test.index)) != sorted(test_ids):
        raise ConfigError(f"{what} predicted other test ids ({len(run.test)} against {len(test_ids)} here)")


def _fold_test_probs(source: Path, fold: int, label_cols: list, test_ids: list) -> np.ndarray:
    path = fold_dir(source, fold) / "test_probs.csv"
    if not path.is_file():
        raise RunDirError(f"data.pseudo_label_from: {path} is missing: the teacher's fold {fold} test "
                          f"probabilities are needed")
    frame = pd.read_csv(path, dtype={"id": str}).set_index("id")
    return frame.loc[test_ids, label_cols].to_numpy(dtype=np.float64)


def _stacked(stacker, oofs: list, labels: np.ndarray, rows: np.ndarray, test_probs: list) -> np.ndarray:
    """The stacker fitted on `rows` of the teachers' OOF, applied to their test probabilities."""
    return stacker.fit([o[rows] for o in oofs], labels[rows]).predict(test_probs)
