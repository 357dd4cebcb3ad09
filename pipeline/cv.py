"""The K-fold run: data, folds, each fold (resumable), then OOF, test means, thresholds, report.

Run directory `runs/<name>/`: config.yaml, folds.csv, status.json, folds/fold_<k>/ (oof.csv,
test_probs.csv, model/ unless train.save_models is false, result.json written last, checkpoint/ while a
fold trains), tracking/ (with train.log_with), oof.csv, test_probs.csv,
thresholds.json, report.md, report.json (written last: its presence marks a completed run). With
model.finetune='generate' also the constrained-generation labels: folds/fold_<k>/oof_generated.csv and
test_generated.csv, and oof_generated.csv.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from pipeline.config import RunConfig, diff_configs, read_saved_config, save_config
from pipeline.data import CompetitionData, fit_filter_mask, load_competition_data, texts_digest
from pipeline.ensemble import cross_validated_preds
from pipeline.errors import ConfigError, RunDirError
from pipeline.extra_train import load_extra_rows
from pipeline.fold_jobs import train_folds_at_once, why_not_concurrent
from pipeline.folds import load_folds, make_folds, save_folds, sparse_label_warnings, stratified_subset
from pipeline.init_from import check_source
from pipeline.io import atomic_write_csv, atomic_write_json, atomic_write_npz, atomic_write_text
from pipeline.presets import get_preset
from pipeline.plan import planned_tensor_peak
from pipeline.pseudo_labels import load_pseudo_rows
from pipeline.report import headline, holdout_section
from pipeline.report_html import write_run_html
from pipeline.run_layout import fold_dir

log = logging.getLogger("pipeline")


def subset_data(data: CompetitionData, max_rows: Optional[int], seed: int) -> CompetitionData:
    """Keep a label-stratified subset of the training rows; the test set stays whole."""
    if not max_rows or max_rows >= len(data.train):
        return data
    keep = stratified_subset(data.labels, max_rows, seed, data.task)
    return CompetitionData(data.competition, data.train.iloc[keep].reset_index(drop=True), data.test,
                           data.sample, data.label_cols, data.labels[keep], data.holdout_labels, data.holdout_note)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, create: bool = True) -> None:
    """Check that an existing run directory was made with the same config; create it if new.

    Every process checks (so all refuse together); only the one with `create` writes.
    """
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = read_saved_config(saved)
        diffs = diff_configs(old.result_dict(), cfg.result_dict())
        if diffs:
            raise RunDirError(f"{run_dir} holds a run with a different config ({'; '.join(diffs)}); "
                              f"use another --run-dir or rerun with the saved config {saved}")
    elif run_dir.exists() and any(p.name != "config.yaml" for p in run_dir.iterdir()) and create:
        raise RunDirError(f"{run_dir} is not empty and has no config.yaml; it is not a run directory")
    elif create:
        _create_run_dir(cfg, run_dir)


def _create_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """config.yaml in a temporary sibling folder renamed into place: shards started at the same moment (`--fold`,
    `--jobs`) never see a half-made run directory; the one that loses the race checks the winner's config."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".{run_dir.name}.{uuid.uuid4().hex}"  # mkdir, not mkdtemp: the usual permissions
    tmp.mkdir()
    save_config(cfg, tmp / "config.yaml")
    try:
        os.rename(tmp, run_dir)  # replaces an empty folder; fails once another process has made it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (run_dir / "config.yaml").is_file():
            raise
        prepare_run_dir(cfg, run_dir, create=False)


def folds_digest(folds: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(folds, dtype=np.int64).tobytes()).hexdigest()[:12]


def _save_fold(run_dir: Path, result, train_ids, test_ids, label_cols: list, identity: dict,
               adjustments: list, task) -> None:
    out = fold_dir(run_dir, result.fold)
    oof = pd.DataFrame(task.probs(result.val_logits), columns=label_cols)  # the task's link: sigmoid or softmax
    oof.insert(0, "id", train_ids[result.val_index])
    atomic_write_csv(out / "oof.csv", oof)
    if len(test_ids):  # none in a validation-only fold
        test = pd.DataFrame(task.probs(result.test_logits), columns=label_cols)
        test.insert(0, "id", test_ids)
        atomic_write_csv(out / "test_probs.csv", test)
    if result.val_generated is not None:  # model.finetune='generate': the labels its free answers name
        outputs = [("oof_generated.csv", train_ids[result.val_index], result.val_generated)]
        if len(test_ids):
            outputs.append(("test_generated.csv", test_ids, result.test_generated))
        for name, ids, preds in outputs:
            frame = pd.DataFrame(preds.astype(np.int64), columns=label_cols)
            frame.insert(0, "id", ids)
            atomic_write_csv(out / name, frame)
    atomic_write_json(out / "result.json", {  # written last: its presence marks a finished fold
        "fold": result.fold, **identity, "best_epoch": result.best_epoch, "history": result.history,
        "n_val": int(len(result.val_index)), "train_seconds": result.train_seconds,
        "train_examples": result.train_examples, "predict_seconds": result.predict_seconds,
        "predict_examples": result.predict_examples, "gpu_load_peak_bytes": result.gpu_load_peak_bytes,
        "gpu_peak_bytes": result.gpu_peak_bytes, "generate_seconds": result.generate_seconds,
        "adjustments": adjustments})
    shutil.rmtree(out / "checkpoint", ignore_errors=True)


# identity facts that folds written by older versions lack; such folds are accepted without the check
RECORDED_SINCE = {"test_inputs_sha256"}


def _load_fold(run_dir: Path, fold: int, identity: dict) -> Optional[dict]:
    """A finished fold's outputs, or None; refuses a fold made by another config, fold split or test set."""
    out = fold_dir(run_dir, fold)
    if not (out / "result.json").is_file():
        return None
    info = json.loads((out / "result.json").read_text())
    if info.get("validation_only") and not identity.get("validation_only"):
        raise RunDirError(f"{out} predicted its validation rows only, not test.csv (a search trial's fold); "
                          f"delete that folder or use another --run-dir")
    for key, value in identity.items():
        if key in RECORDED_SINCE and key not in info:
            continue  # a fold written before this fact was recorded: nothing to compare
        if info.get(key) != value:
            what = {"config_hash": "config", "folds_hash": "fold split",
                    "init_from_sha256": "model.init_from fold model",
                    "pseudo_labels_sha256": "data.pseudo_label_from targets (the teachers changed)",
                    "test_inputs_sha256": "test set (ids or texts of test.csv changed since)"}.get(
                        key, "data.extra_train content")
            raise RunDirError(f"{out} was made with a different {what} ({key} {info.get(key)} vs {value} now); "
                              f"delete that folder or use another --run-dir")
    info["oof"] = pd.read_csv(out / "oof.csv", dtype={"id": str})
    if not info.get("validation_only"):
        info["test"] = pd.read_csv(out / "test_probs.csv", dtype={"id": str})
    if (out / "oof_generated.csv").is_file():
        info["oof_generated"] = pd.read_csv(out / "oof_generated.csv", dtype={"id": str})
    return info


class StatusFile:
    """A small JSON file another terminal can read: fold, epoch, step, last metric, time."""

    def __init__(self, path: Path, enabled: bool, every_seconds: float = 5.0, listener=None):
        self.path, self.enabled, self.every = path, enabled, every_seconds
        self.listener = listener  # also told every fact, in every process (a search's pruning: pipeline/search.py)
        self.facts: dict = {}
        self.last_write = 0.0
        self.started = time.time()

    def update(self, force: bool = False, **facts) -> None:
        if self.listener is not None:
            self.listener(**facts)
        if not self.enabled:
            return
        changed = facts.get("phase", self.facts.get("phase")) != self.facts.get("phase")
        self.facts.update(facts)
        now = time.time()
        # every change of phase is written; steps within a phase at most every few seconds
        if force or changed or now - self.last_write >= self.every:
            self.facts.update(updated=time.strftime("%Y-%m-%d %H:%M:%S"), elapsed_seconds=round(now - self.started, 1))
            atomic_write_json(self.path, self.facts)
            self.last_write = now


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch_oom_types()) or "out of memory" in str(exc).lower()


def torch_oom_types() -> tuple:
    import torch

    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)


class _NeuralFolds:
    """Tokenizes train and test once per run, then trains folds through the one loop. With
    model.finetune='head' the frozen backbone's pooled features are computed once per run (and cached
    in the run directory), and every fold trains only a head on them."""

    def __init__(self, cfg: RunConfig, data: CompetitionData, quiet: bool, accelerator,
                 run_dir: Optional[Path] = None):
        from pipeline.finetune import finetune_mode
        from pipeline.models import load_tokenizer

        self.cfg, self.data, self.accelerator, self.run_dir = cfg, data, accelerator, run_dir
        self.tokenizer = load_tokenizer(cfg.model)
        mode = finetune_mode(cfg.model)
        self.inputs = mode.inputs(self.tokenizer, cfg.model, data.train_texts, data.test_texts, data.label_cols)
        self.progress = None
        if not quiet:
            from functools import partial

            from tqdm.auto import tqdm
            self.progress = partial(tqdm, leave=False, dynamic_ncols=True,
                                    disable=not accelerator.is_local_main_process)
        self.feature_seconds = 0.0
        if mode.frozen_features:
            self.inputs = self._features()

    def _features(self):
        """Pooled backbone features of every train and test text: one pass, saved for reruns."""
        from accelerate.utils import set_seed

        from pipeline.models import FeatureExtractor, build_model
        from pipeline.inputs import Features
        from pipeline.train import predict_logits, release

        cache = self.run_dir / "features.npz" if self.run_dir is not None else None
        if cache is not None and cache.is_file():
            saved = np.load(cache)
            if len(saved["train"]) == len(self.inputs.train):  # else other extra training rows: recompute
                log.info("frozen features read from %s", cache)
                return Features(saved["train"], saved["test"])
        start = time.perf_counter()
        set_seed(self.cfg.train_seed)
        model, _ = build_model(self.cfg.model, len(self.data.label_cols), self.tokenizer,
                               device=self.accelerator.device)
        extractor = self.accelerator.prepare_model(FeatureExtractor(model), evaluation_mode=True)
        batch = self.cfg.train.eval_batch_size
        enc = self.inputs
        train = predict_logits(extractor, self.accelerator, enc, "train", np.arange(len(enc.train)), batch,
                               self.progress, "frozen features, train")
        test = predict_logits(extractor, self.accelerator, enc, "test", np.arange(len(enc.test)), batch,
                              self.progress, "frozen features, test") if len(enc.test) else \
            np.zeros((0, train.shape[1]), dtype=np.float32)
        self.feature_seconds = time.perf_counter() - start
        log.info("frozen features of %d texts computed once in %.1f s (%.1f texts/s)", len(train) + len(test),
                 self.feature_seconds, (len(train) + len(test)) / max(self.feature_seconds, 1e-9))
        del model, extractor
        release(self.accelerator)
        if cache is not None and self.accelerator.is_main_process:
            atomic_write_npz(cache, train=train, test=test, seconds=np.array(self.feature_seconds))
        return Features(train, test)

    def __call__(self, fold: int, folds: np.ndarray, checkpoint_dir: Optional[Path] = None, status=None,
                 fit_mask: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None):
        """labels: this fold's label matrix when it differs from the data's (pseudo-labelled rows)."""
        from pipeline.train import train_fold

        save_dir = checkpoint_dir.parent / "model" if checkpoint_dir is not None else None
        labels = self.data.labels if labels is None else labels
        return train_fold(self.cfg, fold, folds, labels, self.inputs, self.accelerator,
                          self.progress, self.tokenizer, checkpoint_dir, status, fit_mask, save_dir)


class _TfidfFolds:
    def __init__(self, cfg: RunConfig, data: CompetitionData, quiet: bool, accelerator,
                 run_dir: Optional[Path] = None):
        self.cfg, self.data = cfg, data
        self.feature_seconds = 0.0

    def __call__(self, fold: int, folds: np.ndarray, checkpoint_dir: Optional[Path] = None, status=None,
                 fit_mask: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None):
        from pipeline.linear import fit_tfidf_fold

        save_dir = checkpoint_dir.parent / "model" if checkpoint_dir is not None else None
        labels = self.data.labels if labels is None else labels
        return fit_tfidf_fold(self.cfg, fold, folds, labels, self.data.train_texts,
                              self.data.test_texts, fit_mask, save_dir)


FOLD_RUNNERS = {"encoder": _NeuralFolds, "decoder": _NeuralFolds, "tfidf": _TfidfFolds}


def default_run_dir(cfg: RunConfig, runs_root: Path = Path("runs")) -> Path:
    return Path(runs_root) / cfg.run_name()


def make_accelerator(cfg: RunConfig, run_dir: Optional[Path] = None):
    """One Accelerator per run (processes, device, precision); the preset kind decides if it trains.
    With train.log_with (and a run directory) it carries that tracker, logging under run_dir/tracking/."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from pipeline.precision import resolve_precision
    from pipeline.tracking import tracker_settings

    precision = resolve_precision(cfg.train.mixed_precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision and not PartialState().use_distributed:
        # one process running runs in turn (a study, a notebook, tests) at another precision: accelerate keeps
        # one global state and refuses to change it, so a single-process run starts it afresh
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(gradient_accumulation_steps=cfg.train.grad_accum_steps, mixed_precision=precision,
                       **tracker_settings(cfg, run_dir))


def _train_with_oom_retry(runner, cfg: RunConfig, fold: int, folds: np.ndarray, checkpoint_dir: Path,
                          status: StatusFile, adjustments: list, fit_mask: np.ndarray,
                          labels: Optional[np.ndarray] = None):
    """On a GPU out-of-memory error, halve the batch and double accumulation (same effective batch)."""
    from pipeline.presets import train_settings

    while True:
        try:
            return runner(fold, folds, checkpoint_dir, status.update, fit_mask, labels)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
            batch = train_settings(cfg)[1]
            if not is_out_of_memory(exc) or batch <= 1:
                raise
            cfg.train.batch_size, cfg.train.grad_accum_steps = batch // 2, cfg.train.grad_accum_steps * 2
            adjustments.append({"fold": fold, "batch_size": cfg.train.batch_size,
                                "grad_accum_steps": cfg.train.grad_accum_steps})
            log.warning("fold %d ran out of memory at batch size %d: retrying with batch size %d and %d "
                        "accumulation steps (same effective batch)", fold, batch, cfg.train.batch_size,
                        cfg.train.grad_accum_steps)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        # after the handler, whose exception's traceback holds the failed attempt's frames (model, optimizer)
        accelerator = getattr(runner, "accelerator", None)
        if accelerator is not None:
            from pipeline.train import release

            release(accelerator)


def run_cv(cfg: RunConfig, run_dir: Optional[Path] = None, quiet: bool = False,
           only_fold=None, merge_only: bool = False, on_status=None, validation_only: bool = False,
           jobs: int = 1, assemble: bool = True) -> Path:
    """Run (or resume) the folds of `cfg`, then assemble the outputs. Returns the run directory.

    only_fold: run just this fold (0-based), or this list of folds, into a shared run directory; the run is
    assembled once every fold is present. on_status: called with every status fact (phase, fold, epoch,
    validation score, ...) as folds train; an exception it raises stops the run. merge_only: train nothing,
    assemble the finished folds (all must be there). validation_only: the folds predict their validation rows
    only, not test.csv (a search trial's: its objective never reads test), and the run is never assembled; such
    folds are refused by an ordinary run. jobs: on a CPU, train this many folds at once, each in its own process
    (pipeline/fold_jobs.py). assemble=False: never assemble (such a worker's caller does).
    Under `accelerate launch` every process trains; only the main process writes files.
    """
    wall_start = time.perf_counter()
    data = subset_data(load_competition_data(cfg.data), cfg.data.max_rows, cfg.cv.seed)
    if validation_only:  # no test text is tokenized, embedded or predicted
        data = dataclasses.replace(data, test=data.test.iloc[:0], holdout_labels=None)
    # model.init_from: refused before anything is written if its training texts include any of ours
    init = check_source(cfg, data) if cfg.model.init_from else None
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    n_folds = cfg.cv.n_folds
    wanted = None if only_fold is None else ([only_fold] if isinstance(only_fold, int) else list(only_fold))
    if wanted is not None and not all(0 <= k < n_folds for k in wanted):
        raise ConfigError(f"--fold must be in [0, {n_folds - 1}] for {n_folds} folds, got {only_fold}")
    if jobs < 1 or (jobs > 1 and (only_fold is not None or merge_only or validation_only)):
        raise ConfigError(f"--jobs must be 1 or more, and 1 with --fold or --merge, got {jobs}")
    accelerator = make_accelerator(cfg, run_dir)
    main = accelerator.is_main_process
    prepare_run_dir(cfg, run_dir, create=main)
    accelerator.wait_for_everyone()
    # what trains: the config, with any batch-size reduction an earlier OOM in this run made
    saved_runtime = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("runtime") or {}
    adjustments: list = list(saved_runtime.get("oom_adjustments", []))
    train_cfg = copy.deepcopy(cfg)
    if adjustments:
        train_cfg.train.batch_size = adjustments[-1]["batch_size"]
        train_cfg.train.grad_accum_steps = adjustments[-1]["grad_accum_steps"]
    train_ids, test_ids = data.train_ids, data.test_ids
    folds_path = run_dir / "folds.csv"
    if main and not folds_path.is_file():
        for message in sparse_label_warnings(data.labels, data.label_cols, n_folds, data.task):
            log.warning(message)
        save_folds(folds_path, train_ids, make_folds(data.labels, n_folds, cfg.cv.seed, data.task))
    accelerator.wait_for_everyone()
    folds = load_folds(folds_path, train_ids, n_folds)  # every stage reads the saved split
    fit_mask, dropped = fit_filter_mask(data.train_texts, data.labels, cfg.data.fit_filter)
    extra = load_extra_rows(cfg.data.extra_train, data)  # training-only rows, after the real ones
    fit_data = data if extra is None else extra.joined(data)
    fit_folds = folds if extra is None else extra.folds(folds)
    pseudo = load_pseudo_rows(cfg, data, folds)  # the test texts with each fold's soft targets, after those
    if pseudo is not None:
        fit_data, fit_folds = pseudo.joined(fit_data), pseudo.folds(fit_folds)
    if main and dropped:
        log.info("data.fit_filter=%s: folds fit on %d of %d rows (dropped: %s); every row is still validated",
                 cfg.data.fit_filter, int(fit_mask.sum()), len(fit_mask),
                 ", ".join(f"{n} {reason}" for reason, n in dropped.items()))
    identity = {"config_hash": cfg.short_hash(), "folds_hash": folds_digest(folds)}
    if validation_only:
        identity["validation_only"] = True
    else:  # a finished fold's test predictions are reused only for the same test texts
        identity["test_inputs_sha256"] = texts_digest(test_ids, data.test_texts)
    leaks = extra.leaks(data, folds) if extra is not None else {}  # extra rows each fold leaves out
    if extra is not None:
        identity["extra_train_sha256"] = extra.digest
        if main:
            log.info("data.extra_train: %d extra rows join every fold's training part (never validation); "
                     "left out as leaks of a fold's validation part: %s per fold", len(extra),
                     extra.summary(data, leaks)["left_out_per_fold"])
    if pseudo is not None:
        identity["pseudo_labels_sha256"] = pseudo.digest
        if main:
            log.info("data.pseudo_label_from: %d test texts join every fold's training part with that fold's "
                     "soft targets (%s)", len(pseudo), pseudo.teacher)
    if init is not None:  # folds trained from other starting weights are never reused
        identity["init_from_sha256"] = init["sha256"]
        train_cfg.model.init_head = init["head"] == "kept"
    if main:
        log.info("run directory %s: %d training rows, %d test rows, %d folds", run_dir, len(train_ids),
                 len(test_ids), n_folds)
    kind = get_preset(cfg.model.preset).kind
    status = StatusFile(run_dir / ("status.json" if wanted is None else
                                   f"status_fold_{'-'.join(str(k) for k in wanted)}.json"), enabled=main,
                        listener=on_status)
    n_adjustments = len(adjustments)
    runner = None
    todo = [] if merge_only else (wanted if wanted is not None else list(range(n_folds)))
    # every finished fold is read and checked before anything trains: one made from other inputs is refused now
    results = {k: done for k in range(n_folds) if (done := _load_fold(run_dir, k, identity)) is not None}
    if jobs > 1 and (pending := [k for k in todo if k not in results]):
        if not (reason := why_not_concurrent(cfg, accelerator.num_processes, accelerator.device.type)):
            train_folds_at_once(cfg, run_dir, pending, jobs, n_folds)  # read back below, with any other shard's
            todo = []
        elif main:
            log.info("--jobs %d: the folds train one after the other in this process, as %s", jobs, reason)
    for fold in todo:
        if fold in results:
            if main:
                log.info("fold %d/%d already finished, skipping", fold + 1, n_folds)
            continue
        status.update(force=True, phase="starting", fold=fold, n_folds=n_folds)
        if runner is None:
            runner = FOLD_RUNNERS[kind](train_cfg, fit_data, quiet, accelerator, run_dir)
        start = time.perf_counter()
        if kind == "tfidf" and not main:
            accelerator.wait_for_everyone()  # nothing to share: the main process fits it alone
            continue
        fold_mask = fit_mask if extra is None else np.concatenate([fit_mask, ~leaks[fold]])
        if pseudo is not None:
            fold_mask = np.concatenate([fold_mask, np.ones(len(pseudo), dtype=bool)])
        labels = None if pseudo is None else pseudo.labels_for(fold, fit_data.labels)
        result = _train_with_oom_retry(runner, train_cfg, fold, fit_folds, fold_dir(run_dir, fold) / "checkpoint",
                                       status, adjustments, fold_mask, labels)
        if main:
            _save_fold(run_dir, result, train_ids, test_ids, data.label_cols, identity, adjustments, data.task)
            log.info("fold %d/%d done in %.1f s, best epoch %d", fold + 1, n_folds,
                     time.perf_counter() - start, result.best_epoch)
        accelerator.wait_for_everyone()
        if main and len(adjustments) > n_adjustments:
            save_config(cfg, run_dir / "config.yaml", runtime={"oom_adjustments": adjustments})
            n_adjustments = len(adjustments)
    if validation_only or not assemble:
        return run_dir
    for fold in set(range(n_folds)) - set(results):  # trained above, or by another shard meanwhile
        done = _load_fold(run_dir, fold, identity)
        if done is not None:
            results[fold] = done
    results = dict(sorted(results.items()))
    missing = [k for k in range(n_folds) if k not in results]
    if missing:
        if only_fold is not None and not merge_only:
            if main:
                log.info("fold %s finished; folds %s are still missing, so the run is not assembled yet",
                         only_fold, missing)
            return run_dir
        raise RunDirError(f"{run_dir} is missing folds {missing}; run them with --fold K (or without --fold) "
                          f"before merging")
    if not main:
        return run_dir
    status.update(force=True, phase="assembling")
    wall = time.perf_counter() - wall_start
    if runner is None and (run_dir / "report.json").is_file():
        # nothing trained in this invocation (a rerun or --merge): keep the wall time of the run that did
        wall = json.loads((run_dir / "report.json").read_text()).get("timing", {}).get("wall_seconds", wall)
    facts = {} if extra is None else {"extra_train": extra.summary(data, leaks)}
    if pseudo is not None:
        facts["pseudo_labels"] = pseudo.summary(data.label_cols)
    if init is not None:
        facts["init_from"] = init
    out = assemble_run(cfg, run_dir, data, folds, results, wall, facts)
    status.update(force=True, phase="done", report=str(run_dir / "report.md"))
    return out


def _generated_labels(run_dir: Path, data: CompetitionData, folds: np.ndarray, results: dict, metric: str) -> tuple:
    """model.finetune='generate': writes oof_generated.csv (id, fold, 0/1 per label: the labels of each row's
    constrained free answer) and scores it. Returns (report.json entry, report.md section)."""
    from pipeline.metrics import per_label

    label_cols = data.label_cols
    frame = pd.concat([results[k]["oof_generated"] for k in sorted(results)]).set_index("id")
    frame = frame.loc[list(data.train_ids), label_cols].reset_index()
    frame.insert(1, "fold", folds)
    atomic_write_csv(run_dir / "oof_generated.csv", frame)
    preds = frame[label_cols].to_numpy()
    score = data.task.score(data.labels, preds, metric)
    f1 = per_label(data.labels, preds)[2]
    entry = {metric: score, "per_label_f1": dict(zip(label_cols, map(float, f1))), "file": "oof_generated.csv",
             "note": "labels named by greedy generation constrained to canonical answers, fold models on their "
                     "validation rows; no threshold"}
    section = (f"## Generated labels (OOF)\n\nConstrained free generation, parsed exactly, no threshold: "
               f"{metric} **{score:.4f}** (oof_generated.csv).\n\n| label | F1 |\n|---|---|\n"
               + "".join(f"| {c} | {v:.4f} |\n" for c, v in zip(label_cols, f1)))
    return entry, section


def assemble_run(cfg: RunConfig, run_dir: Path, data: CompetitionData, folds: np.ndarray, results: dict,
                 wall_seconds: float, extra_facts: Optional[dict] = None) -> Path:
    """Write oof.csv, test_probs.csv, thresholds.json and the reports from finished folds (real rows
    only). extra_facts: more entries for report.json (e.g. the extra training rows)."""
    label_cols = data.label_cols
    oof = pd.concat([results[k]["oof"] for k in sorted(results)]).set_index("id")
    train_ids = data.train_ids
    if len(oof) != len(train_ids) or set(oof.index) != set(train_ids):
        raise RunDirError(f"{run_dir}: fold outputs cover {len(oof)} rows, expected each of {len(train_ids)} once")
    oof = oof.loc[list(train_ids), label_cols]
    oof_probs = oof.to_numpy()
    test_probs = np.mean([results[k]["test"].set_index("id").loc[list(data.test_ids), label_cols].to_numpy()
                          for k in sorted(results)], axis=0)
    oof_frame = oof.reset_index()
    oof_frame.insert(1, "fold", folds)
    atomic_write_csv(run_dir / "oof.csv", oof_frame)
    test_frame = pd.DataFrame(test_probs, columns=label_cols)
    test_frame.insert(0, "id", data.test_ids)
    atomic_write_csv(run_dir / "test_probs.csv", test_frame)
    # tune on the probabilities as saved (rounded), so a later reader gets the same rule
    oof_probs = pd.read_csv(run_dir / "oof.csv")[label_cols].to_numpy()
    test_probs = pd.read_csv(run_dir / "test_probs.csv")[label_cols].to_numpy()

    task, metric = data.task, data.competition.metric
    def make_tuner():
        return task.decider(cfg.thresholds, cfg.cv.seed, metric)

    tuner = make_tuner().fit(oof_probs, data.labels)
    atomic_write_json(run_dir / task.decision_file, task.decision_json(tuner, label_cols))
    # the honest version of the tuned score: each fold's rule fitted on the other folds only
    cv_preds = cross_validated_preds([oof_probs], data.labels, folds, make_tuner, weights=np.ones(1))
    cv_scores = task.scores(data.labels, cv_preds)
    fold_infos = [{k: results[f][k] for k in ("fold", "best_epoch", "history")} for f in sorted(results)]
    train_s = sum(results[f]["train_seconds"] for f in results)
    train_n = sum(results[f]["train_examples"] for f in results)
    pred_s = sum(results[f]["predict_seconds"] for f in results)
    pred_n = sum(results[f]["predict_examples"] for f in results)
    timing = {"wall_seconds": wall_seconds, "train_seconds": train_s, "train_examples": train_n,
              "train_examples_per_second": train_n / max(train_s, 1e-9), "predict_seconds": pred_s,
              "predict_examples": pred_n, "predict_examples_per_second": pred_n / max(pred_s, 1e-9),
              "note": "wall time of the invocation that trained the last folds; folds resumed from disk add no time"}
    peaks = [results[f]["gpu_peak_bytes"] for f in results if results[f].get("gpu_peak_bytes")]
    if peaks:  # CUDA runs: the largest fold's training peak (torch.cuda.max_memory_allocated) beside the plan
        timing["gpu_peak_bytes"] = max(peaks)
        timing["gpu_load_peak_bytes"] = max(results[f].get("gpu_load_peak_bytes") or 0 for f in results)
        timing["gpu_peak_estimate_bytes"] = planned_tensor_peak(cfg, len(label_cols))
    if (run_dir / "features.npz").is_file():  # finetune='head': one backbone pass shared by every fold
        with np.load(run_dir / "features.npz") as saved:
            n_feat = len(saved["train"]) + len(saved["test"])
            timing.update(feature_seconds=float(saved["seconds"]), feature_examples=n_feat,
                          feature_examples_per_second=n_feat / max(float(saved["seconds"]), 1e-9))
    report = task.build_report(oof_probs, data.labels, folds, tuner, label_cols,
                               {"run": run_dir.name, "timing": timing, "folds": fold_infos, "config": cfg.to_dict(),
                                "oof_tuned_cv": cv_scores, **(extra_facts or {})})
    report["test_inputs_sha256"] = texts_digest(data.test_ids, data.test_texts)  # predict.py reads test_probs.csv
    report["headline"] = headline(task, metric, oof_probs, data.labels, tuner, cv_preds)
    # scored once, after everything is fitted; nothing above reads the test labels
    if data.holdout_labels is not None:
        report["holdout_test"] = holdout_section(task, metric, test_probs, data.holdout_labels, tuner)
    elif data.holdout_note:
        report["holdout_test_note"] = data.holdout_note
    markdown = task.render_markdown(report, f"CV report: {run_dir.name}")
    if all("oof_generated" in results[k] for k in results):  # model.finetune='generate'
        report["generated_labels"], section = _generated_labels(run_dir, data, folds, results, metric)
        markdown = markdown.rstrip("\n") + "\n\n" + section
    atomic_write_text(run_dir / "report.md", markdown)
    write_run_html(run_dir, data, report)
    atomic_write_json(run_dir / "report.json", report)
    h = report["headline"]
    chosen = "tuned" if h["rule"] == "tuned" else "untuned"
    hold = (f"; hold-out test {metric} {report['holdout_test'][chosen][metric]:.4f} ({h['rule']})"
            if "holdout_test" in report else "")
    log.info("OOF %s %.4f (%s), %.4f tuned, %.4f cross-validated%s -> %s", metric, h["untuned"], task.untuned,
             h["tuned"], h["cv"], hold, run_dir / "report.md")
    return run_dir
