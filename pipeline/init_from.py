"""`model.init_from`: a run starts from another run's fine-tuned fold model instead of the preset's
weights (e.g. fine-tune on GoEmotions first, then run the K-fold on the competition).

`load_into` (called once, by build_model) loads the source fold's backbone over the preset's one, a LoRA
source's adapters merged in first, and hands back its head when model.init_head is true. `check_source` (run
once by run_cv, before any fold trains) refuses a source whose training texts, or those of the runs it started
from in turn, include any of this run's train or test texts (more than model.init_max_overlap, default 0);
decides whether the head carries over (same task, same label columns in the same order); and returns what
report.json records.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.config import ModelConfig, RunConfig, read_saved_config
from pipeline.errors import ConfigError, DataError
from pipeline.run_layout import fold_dir, fold_finished

log = logging.getLogger("pipeline")


@dataclass
class Source:
    run_dir: Path  # the finished run, as model.init_from names it
    fold: int  # whose fold model (model.init_fold)
    cfg: RunConfig  # the config it was trained with
    folder: Path  # folds/fold_<fold>/model/
    finetune: str  # how that fold trained: 'full', 'lora' or 'head'
    label_cols: list  # its probability columns, in order


def source_run(cfg: ModelConfig) -> Source:
    """The run `cfg.init_from` names, checked: a run of the same preset whose fold `cfg.init_fold` finished and
    kept its model (the other folds need not be there: `run_cv.py --fold K` trains the one fold a later run
    starts from). Each refusal is one ConfigError naming the folder and what to change."""
    import pandas as pd

    from pipeline.presets import settings

    run, key = Path(cfg.init_from), f"model.init_from={cfg.init_from}"
    if not (run / "config.yaml").is_file():
        what = "does not exist" if not run.exists() else "is not a run directory (no config.yaml)"
        raise ConfigError(f"{key} {what}; it must be a run whose fold model the weights start from")
    saved = read_saved_config(run / "config.yaml")
    if saved.model.preset != cfg.preset:
        raise ConfigError(f"{key} was trained with preset '{saved.model.preset}', this run uses '{cfg.preset}'; a "
                          f"run can only start from a run of the same preset (same architecture)")
    n_folds, fold = saved.cv.n_folds, cfg.init_fold
    if not 0 <= fold < n_folds:
        raise ConfigError(f"model.init_fold must be in [0, {n_folds - 1}] for the {n_folds} folds of {run}, got {fold}")
    folder = fold_dir(run, fold)
    if not fold_finished(run, fold):
        raise ConfigError(f"{key} has not finished fold {fold} (no {folder / 'result.json'}); finish it with "
                          f"run_cv.py (--fold {fold} trains that fold alone) or set model.init_fold to a finished one")
    kept = [k for k in range(n_folds) if (fold_dir(run, k) / "model" / "fold.json").is_file()]
    if not kept:
        raise ConfigError(f"{key} kept no fold models (folds/fold_<k>/model/): it was trained with "
                          f"train.save_models=false; retrain it with train.save_models=true")
    if fold not in kept:
        raise ConfigError(f"{key} has no kept model for fold {fold} (folds/fold_{fold}/model/); set "
                          f"model.init_fold to one of {kept}")
    if settings(saved.model).load_in_4bit:
        raise ConfigError(f"{key} trained on a 4-bit base (model.load_in_4bit): its weights cannot be merged back "
                          f"to full precision; start from a run without 4-bit loading")
    meta = json.loads((folder / "model" / "fold.json").read_text())
    label_cols = list(pd.read_csv(folder / "oof.csv", nrows=0).columns[1:])  # its probability columns
    return Source(run, fold, saved, folder / "model", meta["finetune"], label_cols)


def weights_digest(source: Source) -> str:
    """sha256 (16 hex digits) of the source fold model's files; for a LoRA or head source, whose frozen base
    came from its own model.init_from, that run's digest too. A fold trained from other weights differs."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    if source.finetune != "full" and source.cfg.model.init_from:
        digest.update(weights_digest(source_run(source.cfg.model)).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _rng_kept():
    """Rebuilding a source model reseeds (load_fold_model): keep this run's random state as it was, so the
    head and dropout draw the same numbers with or without model.init_from."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _stamp(folder: Path) -> tuple:
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())


@functools.lru_cache(maxsize=1)
def _source_weights(run_dir: str, fold: int, preset: str, stamp: tuple) -> tuple:
    """(backbone state, head state) of a source fold model, on CPU; cached, since every fold of a run starts
    from it (`stamp`, the files' sizes and times, makes a changed fold model a new entry)."""
    from safetensors.torch import load_file

    from pipeline.finetune import load_fold_model

    source = source_run(ModelConfig(preset=preset, init_from=run_dir, init_fold=fold))
    if source.finetune == "full":  # every weight is in the file: read it, build nothing
        weights = load_file(str(source.folder / "model.safetensors"))
        return ({k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("backbone.")},
                {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("head.")})
    with _rng_kept():
        model, _ = load_fold_model(source.cfg, len(source.label_cols), source.folder)
        if hasattr(model, "merge_and_unload"):  # LoRA: adapters folded into the base weights, head unwrapped
            model = model.merge_and_unload()
    return ({k: v.detach().to("cpu", copy=True) for k, v in model.backbone.state_dict().items()},
            {k: v.detach().to("cpu", copy=True) for k, v in model.head.state_dict().items()})


def load_into(cfg: ModelConfig, backbone, n_labels: int) -> Optional[dict]:
    """Load the fold backbone of `cfg.init_from` into `backbone` (in place; nothing happens without init_from).
    Returns the source's head state ({'weight': (n_labels, hidden), 'bias': (n_labels,)}) to start from when
    cfg.init_head is true, else None (a fresh head). run_cv resolves init_head from the label columns."""
    if not cfg.init_from:
        return None
    source = source_run(cfg)
    state, head = _source_weights(str(source.run_dir.resolve()), source.fold, cfg.preset, _stamp(source.folder))
    target = backbone.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ConfigError(f"model.init_from={cfg.init_from}: its fold {source.fold} backbone does not fit this "
                          f"run's (missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]}); "
                          f"was it built from another model.path ({source.cfg.model.path} vs {cfg.path})?")
    backbone.load_state_dict(state)
    if not cfg.init_head:
        return None
    if head["weight"].shape[0] != n_labels:
        raise ConfigError(f"model.init_head=true: the head of {cfg.init_from} has {head['weight'].shape[0]} "
                          f"outputs, this run needs {n_labels}")
    return head


def normalise(text: str) -> str:
    """The leak-check key: NFKC, lower case, runs of whitespace as one space, no spaces at the ends."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _training_texts(source: Source, seen: set) -> list:
    """[(run, competition, texts)] for the source and each run it started from in turn: every row of its
    training files (a superset of a data.max_rows subset) plus its data.extra_train rows and, when it trained on
    pseudo-labelled test texts (data.pseudo_label_from), its test texts."""
    from pipeline.data import load_competition_data
    from pipeline.extra_train import load_extra_rows

    seen.add(source.run_dir.resolve())
    try:
        data = load_competition_data(source.cfg.data)
        extra = load_extra_rows(source.cfg.data.extra_train, data)
    except DataError as exc:
        raise DataError(f"model.init_from: cannot check {source.run_dir} for leaks, its training data is not "
                        f"readable: {exc}") from exc
    texts = data.train_texts + ([] if extra is None else extra.frame[data.competition.text_col].tolist())
    texts += data.test_texts if source.cfg.data.pseudo_label_from else []
    out = [(str(source.run_dir), data.competition.name, texts)]
    parent = source.cfg.model.init_from
    if parent and Path(parent).resolve() not in seen:
        try:
            out += _training_texts(source_run(source.cfg.model), seen)
        except ConfigError as exc:
            raise ConfigError(f"model.init_from: {source.run_dir} started from {parent}, whose training texts must "
                              f"be checked too: {exc}") from exc
    return out


def check_source(cfg: RunConfig, data) -> dict:
    """Check `cfg.model.init_from` against this run's `data` (a CompetitionData) before training.

    Refuses (DataError, one line) when more than model.init_max_overlap (default 0) training texts of the
    source, and of the runs it started from, equal one of data's train or test texts after `normalise`.
    Returns the report.json record: run, fold, preset, finetune, sha256, source_competition, rows_checked,
    overlap (count) and overlap_texts (up to 20, as the source has them), head ('kept' or 'fresh'), checked
    (per run: run, competition, rows, overlap)."""
    from pipeline.presets import settings

    source = source_run(cfg.model)
    same_labels = _task(source.cfg.data.competition) == data.competition.task and \
        source.label_cols == list(data.label_cols)
    if cfg.model.init_head and not same_labels:
        raise ConfigError(f"model.init_head=true needs {cfg.model.init_from} to predict this run's labels in the "
                          f"same order; it predicts {source.label_cols}, this run {list(data.label_cols)}")
    head_only = settings(cfg.model).finetune == "head"  # train.py fits a new HeadClassifier on frozen features
    if cfg.model.init_head and head_only:
        raise ConfigError("model.init_head=true does not apply to model.finetune=head: each fold trains a new head "
                          "on the frozen features; leave model.init_head unset")
    keep_head = not head_only and (same_labels if cfg.model.init_head is None else cfg.model.init_head)
    ours = {normalise(t) for t in data.train_texts + data.test_texts}
    checked, hits = [], []
    for run, competition, texts in _training_texts(source, set()):
        found = [t for t in texts if normalise(t) in ours]
        checked.append({"run": run, "competition": competition, "rows": len(texts), "overlap": len(found)})
        hits += found
    allowed = cfg.model.init_max_overlap
    if len(hits) > allowed:
        first = next(c for c in checked if c["overlap"])
        raise DataError(f"model.init_from={cfg.model.init_from}: {first['overlap']} training texts of {first['run']} "
                        f"({first['competition']}) are train or test texts of this run ({data.competition.name}), "
                        f"e.g. {hits[0][:80]!r} ({len(hits)} in all, model.init_max_overlap={allowed}); its weights "
                        f"have seen them, so this run's scores would leak; start from a run trained without them")
    rows = sum(c["rows"] for c in checked)
    record = {"run": str(source.run_dir), "fold": source.fold, "preset": source.cfg.model.preset,
              "finetune": source.finetune, "sha256": weights_digest(source),
              "source_competition": source.cfg.data.competition, "rows_checked": rows, "overlap": len(hits),
              "overlap_texts": hits[:20], "head": "kept" if keep_head else "fresh", "checked": checked}
    why = "model.finetune=head" if head_only else "model.init_head" if cfg.model.init_head is not None \
        else "its labels are this run's" if same_labels else "its labels differ"
    log.info("model.init_from: weights from %s fold %d (%s, %s fine-tuned, sha256 %s); head %s (%s); %d of %d "
             "source training texts are train or test texts of this run (allowed: %d)", source.run_dir, source.fold,
             source.cfg.data.competition, source.finetune, record["sha256"], record["head"], why, len(hits), rows,
             allowed)
    return record


def _task(competition: str) -> str:
    from competition import get_competition

    return get_competition(competition).task
