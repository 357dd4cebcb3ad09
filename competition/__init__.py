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
    sample_submission_file: str = "sample_submission.csv"
    task: str = "multilabel"  # label columns are the sample submission's non-id columns, each 0/1
    metric: str = "macro_f1"  # what the leaderboard scores
    download: str = ""  # how a user gets the files


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
