"""What differs between task shapes, behind one small interface chosen in one place (`task_for`).

A task object says how folds are split, which loss trains and with which class weights, how logits
become probabilities (link), which decision rule turns probabilities into predictions (fitted on OOF),
which scores and report sections a run gets, and how predictions are written into a submission.
Everything else (the loop, presets, run directory, resume, sharding, ensembling by id) is shared.
Labels are always a (n_rows, n_labels) 0/1 matrix: for multiclass, one-hot with one 1 per row.
Adding a task is adding a module here and one entry in TASKS.
"""
from __future__ import annotations

from pipeline.tasks.multiclass import Multiclass
from pipeline.tasks.multilabel import Multilabel

TASKS = {"multilabel": Multilabel(), "multiclass": Multiclass()}


def get_task(name: str):
    return TASKS[name]


def task_for(competition_name: str):
    """The task of a competition definition (the one place a task is chosen)."""
    from competition import get_competition

    return get_task(get_competition(competition_name).task)
