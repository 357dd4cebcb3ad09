"""Where a run directory keeps each fold's files, spelled once for every module that reads or writes them."""
from __future__ import annotations

from pathlib import Path


def fold_dir(run_dir: Path, fold: int) -> Path:
    """`<run>/folds/fold_<k>`: the fold's OOF rows, test probabilities, result.json and kept model."""
    return Path(run_dir) / "folds" / f"fold_{fold}"


def fold_finished(run_dir: Path, fold: int) -> bool:
    """The fold's result.json is there (written last: the fold's outputs are complete)."""
    return (fold_dir(run_dir, fold) / "result.json").is_file()
