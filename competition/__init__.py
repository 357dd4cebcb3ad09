"""Competition definitions: one small module per competition, found automatically.

Each module defines `COMPETITION = Competition(...)`; adding a competition is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Competition:
    name: str  # the Kaggle slug, also the default data folder name
    id_col: str  # identifier column in train, test and sample submission
    text_col: str  # input text column in train and test
    train_file: str = "train.csv"
    test_file: str = "test.csv"
    sample_submission_file: str = "sample_submission.csv"  # "" = none: the format comes from this definition
    task: str = "multilabel"  # 'multilabel' (0/1 per label) or 'multiclass' (exactly one class per row)
    label_col: str = ""  # multiclass: the column holding each row's class name; "" = one 0/1 column per class
    classes: tuple = ()  # label columns or class names in output order; () = from the sample submission or data
    extra_train_files: tuple = ()  # more labelled files appended to the training rows (e.g. validation.csv)
    solution_file: str = ""  # test labels, scored once as "hold-out test" (may be test_file itself); "" = none
    metric: str = "macro_f1"  # what the leaderboard scores: 'macro_f1' or 'accuracy' (multiclass)
    download: str = ""  # how a user gets the files
    kaggle_slug: str = ""  # the competition's slug on kaggle.com; "" = not a Kaggle competition

    def __post_init__(self):
        problems = []
        if self.task not in ("multilabel", "multiclass"):
            problems.append(f"task must be multilabel or multiclass, got {self.task!r}")
        if self.task == "multilabel" and (self.label_col or self.metric != "macro_f1"):
            problems.append("a multilabel competition has one 0/1 column per label and is scored by macro_f1")
        if self.metric not in ("macro_f1", "accuracy"):
            problems.append(f"metric must be macro_f1 or accuracy, got {self.metric!r}")
        if not self.sample_submission_file and not self.classes and not self.label_col:
            problems.append("without a sample submission, declare the label columns in `classes`")
        if problems:
            raise ValueError(f"competition {self.name}: " + "; ".join(problems))

    @property
    def train_files(self) -> list:
        return [self.train_file, *self.extra_train_files]

    @property
    def required_files(self) -> list:
        return [*self.train_files, self.test_file] + ([self.sample_submission_file] if self.sample_submission_file else [])


def _discover() -> dict[str, Competition]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        comp = getattr(module, "COMPETITION", None)
        if isinstance(comp, Competition):
            found[comp.name] = comp
    return found


COMPETITIONS: dict[str, Competition] = _discover()


def get_competition(name: str) -> Competition:
    from pipeline.errors import ConfigError

    if name not in COMPETITIONS:
        raise ConfigError(f"unknown competition '{name}'; available: {', '.join(sorted(COMPETITIONS))}")
    return COMPETITIONS[name]
