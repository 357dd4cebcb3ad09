"""The K-fold run: data, folds, each fold (resumable), then OOF, test means, thresholds, report.

Run directory `runs/<name>/`: config.yaml, folds.csv, folds/fold_<k>/ (oof.csv, test_probs.csv,
result.json written last), oof.csv, test_probs.csv, thresholds.json, report.md, report.json
(written last: its presence marks a completed run).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.config import RunConfig, diff_configs, read_saved_config, save_config
from pipeline.data import CompetitionData, load_competition_data
from pipeline.errors import RunDirError
from pipeline.folds import load_folds, make_folds, save_folds, sparse_label_warnings, stratified_subset
from pipeline.io import atomic_write_csv, atomic_write_json, atomic_write_text
from pipeline.models import get_preset
from pipeline.report import build_report, render_markdown
from pipeline.thresholds import ThresholdTuner

log = logging.getLogger("pipeline")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def subset_data(data: CompetitionData, max_rows: Optional[int], seed: int) -> CompetitionData:
    """Keep a label-stratified subset of the training rows; the test set stays whole."""
    if not max_rows or max_rows >= len(data.train):
        return data
    keep = stratified_subset(data.labels, max_rows, seed)
    return CompetitionData(data.competition, data.train.iloc[keep].reset_index(drop=True), data.test,
                           data.sample, data.label_cols, data.labels[keep])


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run directory, or check that an existing one was made with the same config."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = read_saved_config(saved)
        diffs = diff_configs(old.result_dict(), cfg.result_dict())
        if diffs:
            raise RunDirError(f"{run_dir} holds a run with a different config ({'; '.join(diffs)}); "
                              f"use another --run-dir or rerun with the saved config {saved}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} is not empty and has no config.yaml; it is not a run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)


def _fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / "folds" / f"fold_{fold}"


def _save_fold(run_dir: Path, result, train_ids, test_ids, label_cols: list) -> None:
    out = _fold_dir(run_dir, result.fold)
    oof = pd.DataFrame(sigmoid(result.val_logits), columns=label_cols)
    oof.insert(0, "id", train_ids[result.val_index])
    atomic_write_csv(out / "oof.csv", oof)
    test = pd.DataFrame(sigmoid(result.test_logits), columns=label_cols)
    test.insert(0, "id", test_ids)
    atomic_write_csv(out / "test_probs.csv", test)
    atomic_write_json(out / "result.json", {
        "fold": result.fold, "best_epoch": result.best_epoch, "history": result.history,
        "n_val": int(len(result.val_index)), "train_seconds": result.train_seconds,
        "train_examples": result.train_examples, "predict_seconds": result.predict_seconds,
        "predict_examples": result.predict_examples})


def _load_fold(run_dir: Path, fold: int) -> Optional[dict]:
    out = _fold_dir(run_dir, fold)
    if not (out / "result.json").is_file():
        return None
    info = json.loads((out / "result.json").read_text())
    info["oof"] = pd.read_csv(out / "oof.csv", dtype={"id": str})
    info["test"] = pd.read_csv(out / "test_probs.csv", dtype={"id": str})
    return info


class _NeuralFolds:
    """Tokenizes train and test once per run, then trains folds through the one loop."""

    def __init__(self, cfg: RunConfig, data: CompetitionData, quiet: bool):
        from accelerate import Accelerator

        from pipeline.models import load_tokenizer, max_length
        from pipeline.train import Encoded, resolve_precision, tokenize

        self.cfg, self.data = cfg, data
        self.accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum_steps,
                                       mixed_precision=resolve_precision(cfg.train.mixed_precision))
        self.tokenizer = load_tokenizer(cfg.model)
        length = max_length(cfg.model)
        start = time.perf_counter()
        self.encoded = Encoded(tokenize(self.tokenizer, data.train_texts, length),
                               tokenize(self.tokenizer, data.test_texts, length),
                               self.tokenizer.pad_token_id, self.tokenizer.padding_side)
        log.info("tokenized %d train + %d test texts in %.1f s (max_length %d)", len(data.train),
                 len(data.test), time.perf_counter() - start, length)
        self.progress = None
        if not quiet:
            from functools import partial

            from tqdm.auto import tqdm
            self.progress = partial(tqdm, leave=False, dynamic_ncols=True,
                                    disable=not self.accelerator.is_local_main_process)

    def __call__(self, fold: int, folds: np.ndarray):
        from pipeline.train import train_fold

        return train_fold(self.cfg, fold, folds, self.data.labels, self.encoded, self.accelerator,
                          self.progress, self.tokenizer)


class _TfidfFolds:
    def __init__(self, cfg: RunConfig, data: CompetitionData, quiet: bool):
        self.cfg, self.data = cfg, data

    def __call__(self, fold: int, folds: np.ndarray):
        from pipeline.linear import fit_tfidf_fold

        return fit_tfidf_fold(self.cfg, fold, folds, self.data.labels, self.data.train_texts,
                              self.data.test_texts)


FOLD_RUNNERS = {"encoder": _NeuralFolds, "tfidf": _TfidfFolds}


def default_run_dir(cfg: RunConfig, runs_root: Path = Path("runs")) -> Path:
    return Path(runs_root) / cfg.run_name()


def run_cv(cfg: RunConfig, run_dir: Optional[Path] = None, quiet: bool = False) -> Path:
    """Run (or resume) every fold of `cfg` and assemble the outputs. Returns the run directory."""
    wall_start = time.perf_counter()
    data = subset_data(load_competition_data(cfg.data), cfg.data.max_rows, cfg.cv.seed)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    prepare_run_dir(cfg, run_dir)
    train_ids, test_ids = data.train_ids, data.test_ids
    n_folds = cfg.cv.n_folds
    for message in sparse_label_warnings(data.labels, data.label_cols, n_folds):
        log.warning(message)
    folds_path = run_dir / "folds.csv"
    if folds_path.is_file():
        folds = load_folds(folds_path, train_ids, n_folds)
    else:
        folds = make_folds(data.labels, n_folds, cfg.cv.seed)
        save_folds(folds_path, train_ids, folds)
    log.info("run directory %s: %d training rows, %d test rows, %d folds", run_dir, len(train_ids),
             len(test_ids), n_folds)

    results, runner = {}, None
    for fold in range(n_folds):
        done = _load_fold(run_dir, fold)
        if done is not None:
            log.info("fold %d/%d already finished, skipping", fold + 1, n_folds)
            results[fold] = done
            continue
        if runner is None:
            runner = FOLD_RUNNERS[get_preset(cfg.model.preset).kind](cfg, data, quiet)
        start = time.perf_counter()
        result = runner(fold, folds)
        _save_fold(run_dir, result, train_ids, test_ids, data.label_cols)
        results[fold] = _load_fold(run_dir, fold)
        log.info("fold %d/%d done in %.1f s, best epoch %d", fold + 1, n_folds,
                 time.perf_counter() - start, result.best_epoch)
    return assemble_run(cfg, run_dir, data, folds, results, time.perf_counter() - wall_start)


def assemble_run(cfg: RunConfig, run_dir: Path, data: CompetitionData, folds: np.ndarray, results: dict,
                 wall_seconds: float) -> Path:
    """Write oof.csv, test_probs.csv, thresholds.json and the reports from finished folds."""
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
    # tune on the probabilities as saved (rounded), so a later reader gets the same thresholds
    oof_probs = pd.read_csv(run_dir / "oof.csv")[label_cols].to_numpy()

    th = cfg.thresholds
    tuner = ThresholdTuner(th.method, th.n_trials, th.low, th.high, seed=cfg.cv.seed).fit(oof_probs, data.labels)
    atomic_write_json(run_dir / "thresholds.json", dict(zip(label_cols, tuner.thresholds_.tolist())))
    fold_infos = [{k: results[f][k] for k in ("fold", "best_epoch", "history")} for f in sorted(results)]
    train_s = sum(results[f]["train_seconds"] for f in results)
    train_n = sum(results[f]["train_examples"] for f in results)
    pred_s = sum(results[f]["predict_seconds"] for f in results)
    pred_n = sum(results[f]["predict_examples"] for f in results)
    timing = {"wall_seconds": wall_seconds, "train_seconds": train_s, "train_examples": train_n,
              "train_examples_per_second": train_n / max(train_s, 1e-9), "predict_seconds": pred_s,
              "predict_examples": pred_n, "predict_examples_per_second": pred_n / max(pred_s, 1e-9),
              "note": "wall time of the last invocation; folds resumed from disk add no time"}
    report = build_report(oof_probs, data.labels, folds, tuner.thresholds_, label_cols,
                          {"run": run_dir.name, "timing": timing, "folds": fold_infos, "config": cfg.to_dict()})
    atomic_write_text(run_dir / "report.md", render_markdown(report, f"CV report: {run_dir.name}"))
    atomic_write_json(run_dir / "report.json", report)
    log.info("OOF macro-F1 %.4f at 0.5, %.4f with tuned thresholds -> %s",
             report["oof_at_0.5"]["macro_f1"], report["oof_tuned"]["macro_f1"], run_dir / "report.md")
    return run_dir
