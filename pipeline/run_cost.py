"""A run's compute, estimated before it trains: what a recipe's pool (pipeline/recipe_jobs.py) orders its tasks by.

The estimate is in matmul FLOPs, from the planner's parameter counts (meta skeletons, nothing loaded) and the
characters of the competition's texts (a token count's stand-in that needs no tokenizer): per token, a forward
pass costs 2 N for a backbone of N weights outside its embeddings, full fine-tuning's step 6 N, LoRA's 4 N (the
backward pass still runs through every frozen layer). A fold trains `train.epochs` passes over its K-1 folds (and
the test texts when it learns from pseudo-labels, the rows of `data.extra_train` too), scores its validation fold
after each and predicts the test set once; a frozen backbone reads every text once per run. Attention's quadratic
term, precision and early stopping are left out: the figures only rank runs of one recipe on one machine, where
a fold of MiniLM-L6 (3 epochs), SmolLM2-135M with LoRA (1 epoch) and MPNet-base fine-tuned (2 epochs) took 276, 875
and 1307 seconds in one recipe (estimated 1, 2.6 and 5.4 times MiniLM's, measured 1, 3.2 and 4.7; docs/BENCHMARKS.md,
"The pool starts the longest chain first"). A TF-IDF model costs nothing here.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger("pipeline")

_STEP_PER_FORWARD = {"full": 3.0, "lora": 2.0, "generate": 2.0}  # a training step's FLOPs over a forward pass's


@functools.lru_cache(maxsize=None)
def _text_stats(path: str, column: str) -> tuple:
    """(rows, characters of one column) of a CSV, read once; (0, 0) when it cannot be read (the run will say why)."""
    from pipeline.data import read_csv

    try:
        texts = read_csv(Path(path))[column].astype(str)
    except Exception as exc:  # noqa: BLE001 - an estimate never stops a recipe; reading the data does
        log.debug("no text size for %s: %s", path, exc)
        return 0, 0
    return len(texts), int(texts.str.len().sum())


def _chars(path: str, column: str) -> int:
    return _text_stats(path, column)[1]


def _text_sizes(cfg) -> tuple:
    """(characters of the training texts, of the test texts, of the extra rows every fold trains on) of a run."""
    from competition import get_competition
    from pipeline.data import data_folder

    comp = get_competition(cfg.data.competition)
    folder = data_folder(cfg.data)
    train = sum(_chars(str(folder / f), comp.text_col) for f in comp.train_files)
    if cfg.data.max_rows is not None:  # a stratified subset: its share of the rows, taken as its share of the text
        rows = sum(_text_stats(str(folder / f), comp.text_col)[0] for f in comp.train_files)
        train = train * min(1.0, cfg.data.max_rows / rows) if rows else train
    extra = sum(_chars(str(p), comp.text_col) for p in cfg.data.extra_train or [])
    return train, _chars(str(folder / comp.test_file), comp.text_col), extra


def forward_weights(cfg) -> int:
    """N: the backbone's weights outside its token embeddings (0 for a model with no backbone, TF-IDF)."""
    from pipeline import arch, presets

    if presets.get_preset(cfg.model.preset).kind == "tfidf":
        return 0
    counts = arch.count_parameters(presets.settings(cfg.model))
    return counts.backbone - counts.embeddings


def fold_cost(cfg) -> float:
    """FLOPs of one fold task of `cfg`'s run (training, validation each epoch, the test predictions)."""
    n = forward_weights(cfg)
    if not n:
        return 0.0
    from pipeline.presets import settings

    train, test, extra = _text_sizes(cfg)
    k = cfg.cv.n_folds
    forward = 2.0 * n
    learned = train * (k - 1) / k + extra + (test if cfg.data.pseudo_label_from else 0)
    step = forward * _STEP_PER_FORWARD.get(settings(cfg.model).finetune, 3.0)
    return cfg.train.epochs * (learned * step + train / k * forward) + test * forward


def run_cost(cfg) -> float:
    """FLOPs of a run done as one task (a frozen backbone's features over every text; TF-IDF: 0)."""
    n = forward_weights(cfg)
    if not n:
        return 0.0
    train, test, extra = _text_sizes(cfg)
    return 2.0 * n * (train + test + extra)
