"""Hyperparameter search with Optuna (`tune_cv.py`): each trial trains a few folds of the saved K-fold split
and is scored by the cross-validated metric over them; weak trials are pruned epoch by epoch.

Search directory: study.db (Optuna's SQLite storage: rerunning resumes it), folds.csv (the split, the same
a full run of the base config makes), trials/trial_<n>/ (a run directory holding only the searched folds),
best.yaml (the best trial's full config, for `run_cv.py --config`), search.lock (one search at a time).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
import pandas as pd
import yaml

from pipeline.cli import _guard, _setup_logging, config_from_args
from pipeline.config import RunConfig, diff_configs
from pipeline.errors import ConfigError, PipelineError, RunDirError
from pipeline.io import atomic_write_text
from pipeline.run_layout import fold_dir
from pipeline.search_space import (baseline_params, check_space, config_with, drop_fixed, merge_space, most_epochs,
                                   read_space_file, space_for, suggest)

log = logging.getLogger("pipeline")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class SearchSettings:
    trials: int = 20  # trials in the study in total (complete, pruned or failed), earlier invocations included
    search_folds: tuple = (0, 1)  # folds (0-based) of the K-fold split every trial trains
    prune: bool = True  # stop a trial whose running validation score is below the median of earlier trials
    prune_startup_trials: int = 3  # complete trials before any trial may be pruned
    prune_warmup_epochs: int = 1  # epochs of the first searched fold that are never pruned


def check_search_folds(search_folds, n_folds: int) -> tuple:
    """At least two distinct folds in [0, n_folds): each fold's rule is fitted on the others' OOF."""
    folds = tuple(search_folds)
    if len(folds) < 2 or len(set(folds)) != len(folds) or not all(0 <= k < n_folds for k in folds):
        raise ConfigError(f"--search-folds must list at least two different folds in [0, {n_folds - 1}] for "
                          f"cv.n_folds={n_folds} (each fold's thresholds are fitted on the others), got "
                          f"{','.join(str(k) for k in folds)}")
    return folds


class FoldPruning:
    """A run's status listener (`run_cv(on_status=...)`) that reports a trial's running score and prunes it.

    Step = position of the fold among the searched ones x `stride` (the most epochs a trial can train) +
    epoch - 1, so a step means the same fold and epoch in every trial. Value = mean over the folds validated
    so far of each fold's best validation score so far: what the trial would keep if it stopped there.
    score_key: the status fact holding the validation score (the task's val_metric, dots as underscores).
    """

    def __init__(self, trial, search_folds, stride: int, score_key: str):
        self.trial, self.stride, self.score_key = trial, stride, score_key
        self.position = {fold: i for i, fold in enumerate(search_folds)}
        self.best: dict = {}  # fold -> best validation score so far
        self.fold: Optional[int] = None

    def __call__(self, **facts) -> None:
        if facts.get("phase") == "starting":
            self.fold = facts["fold"]
        if facts.get("phase") != "validated" or self.score_key not in facts or self.fold is None:
            return
        epoch = facts["epoch"]
        assert 1 <= epoch <= self.stride, "a fold trained more epochs than the search space allows"
        self.best[self.fold] = max(self.best.get(self.fold, -np.inf), float(facts[self.score_key]))
        value = float(np.mean(list(self.best.values())))
        self.trial.report(value, self.position[self.fold] * self.stride + epoch - 1)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", {"fold": self.fold, "epoch": epoch, "value": value})
            raise optuna.TrialPruned(f"mean validation score {value:.4f} after fold {self.fold} epoch {epoch} is "
                                     f"below the median of earlier trials there")


def searched_figures(cfg: RunConfig, data, folds: np.ndarray, search_folds, run_dir: Path) -> dict:
    """The metric over the searched folds' OOF three ways, as a run's headline: untuned, tuned on all of it,
    and cross-validated (each fold decided by the rule fitted on the other searched folds: the objective).

    data: the CompetitionData the folds index; folds: (n_train,) fold per row; run_dir: holds
    folds/fold_<k>/oof.csv for each searched fold. Nothing here reads test predictions."""
    from pipeline.ensemble import cross_validated_preds
    from pipeline.report import headline

    task, metric = data.task, data.competition.metric
    mask = np.isin(folds, list(search_folds))
    ids = data.train_ids[mask]
    oof = pd.concat([pd.read_csv(fold_dir(run_dir, k) / "oof.csv", dtype={"id": str})
                     for k in search_folds]).set_index("id")
    if len(oof) != len(ids) or set(oof.index) != set(ids):
        raise RunDirError(f"{run_dir}: the OOF of folds {list(search_folds)} covers {len(oof)} rows, expected "
                          f"each of the {len(ids)} rows of those folds once")
    probs = oof.loc[list(ids), data.label_cols].to_numpy()  # matched by id, in train.csv order
    labels, held = data.labels[mask], folds[mask]

    def make_tuner():
        return task.decider(cfg.thresholds, cfg.cv.seed, metric)

    cv_preds = cross_validated_preds([probs], labels, held, make_tuner, weights=np.ones(1))
    return headline(task, metric, probs, labels, make_tuner().fit(probs, labels), cv_preds)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Objective:
    """One trial: suggest values, build the config through the normal path, train the searched folds into
    the trial's run directory (reporting to the pruner), score them."""

    def __init__(self, cfg: RunConfig, space: dict, settings: SearchSettings, search_dir: Path, data,
                 folds: np.ndarray, quiet: bool):
        self.cfg, self.space, self.settings, self.search_dir = cfg, space, settings, search_dir
        self.data, self.folds, self.quiet = data, folds, quiet
        self.stride = most_epochs(space, cfg)
        self.score_key = data.task.val_metric.replace(".", "_")

    def __call__(self, trial) -> float:
        from pipeline.cv import prepare_run_dir, run_cv

        params = suggest(trial, self.space)
        run_dir = self.search_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.search_dir)))
        log.info("trial %d: %s", trial.number, _params_text(params))
        start = time.perf_counter()
        try:
            trial_cfg = config_with(self.cfg, params, f"trial {trial.number}")
            run_cfg = copy.deepcopy(trial_cfg)
            run_cfg.train.save_models = False  # a search keeps no fold models; it changes no prediction
            shutil.rmtree(run_dir, ignore_errors=True)  # left by a study whose database was deleted
            prepare_run_dir(run_cfg, run_dir)
            shutil.copyfile(self.search_dir / "folds.csv", run_dir / "folds.csv")
            pruning = FoldPruning(trial, self.settings.search_folds, self.stride, self.score_key)
            run_cv(run_cfg, run_dir, quiet=self.quiet, only_fold=list(self.settings.search_folds), on_status=pruning,
                   validation_only=True)  # the objective reads validation rows only: test.csv is never predicted
            figures = searched_figures(trial_cfg, self.data, self.folds, self.settings.search_folds, run_dir)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, which a NaN marks FAIL; the search goes on
            trial.set_user_attr("error", _one_line(exc))
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            if not isinstance(exc, PipelineError):  # a bug or out of memory: the traceback helps
                log.warning("trial %d raised", trial.number, exc_info=True)
            return float("nan")
        best_epochs = {}
        for k in self.settings.search_folds:
            result = json.loads((fold_dir(run_dir, k) / "result.json").read_text())
            best_epochs[str(k)] = result["best_epoch"]
        trial.set_user_attr("metric", figures["metric"])
        for key in ("untuned", "tuned", "cv", "rule"):
            trial.set_user_attr(key, figures[key])
        trial.set_user_attr("best_epochs", best_epochs)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        return figures["cv"]


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _identity(cfg: RunConfig, space: dict, settings: SearchSettings, folds: np.ndarray) -> dict:
    """What makes trials comparable; a resumed search must match it."""
    from pipeline.cv import folds_digest

    return json.loads(json.dumps({"base_config": cfg.result_dict(), "space": space,
                                  "search_folds": list(settings.search_folds), "folds_hash": folds_digest(folds)}))


def _open_study(search_dir: Path, identity: dict, pruner):
    """Create the study in search_dir/study.db, or load it and check it was made by the same search."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{(search_dir / 'study.db').resolve()}")
    study = optuna.create_study(storage=storage, study_name="search", direction="maximize", pruner=pruner,
                                load_if_exists=True)
    saved = {k: study.user_attrs[k] for k in identity if k in study.user_attrs}
    if not saved:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    else:
        diffs = diff_configs(saved, identity)
        if diffs:
            raise RunDirError(f"{search_dir} holds a search with other settings ({'; '.join(diffs)}); use another "
                              f"--search-dir or rerun with the same config, space and --search-folds")
    # a trial left RUNNING was killed with its process (this one holds the lock): it failed
    study_id = storage.get_study_id_from_name("search")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", "its process was killed; marked failed on resume")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        log.warning("trial %d was left running by a killed search: marked failed", trial.number)
    return study


def write_best(study, base: RunConfig, search_dir: Path, search_folds) -> Optional[Path]:
    """search_dir/best.yaml: the best complete trial's full config (None while no trial completed)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    cfg = config_with(base, best.params, f"trial {best.number}")
    path = search_dir / "best.yaml"
    a = best.user_attrs
    n_done = len(study.get_trials(deepcopy=False, states=FINISHED))
    header = [f"# best of {n_done} finished trials in {search_dir}: trial {best.number}, cross-validated "
              f"{a.get('metric')} {best.value:.4f} over folds {', '.join(str(k) for k in search_folds)}",
              f"# (tuned on all of their OOF {a.get('tuned', float('nan')):.4f}, untuned "
              f"{a.get('untuned', float('nan')):.4f}); searched: {_params_text(best.params)}",
              f"# full run: python run_cv.py --config {path}"]
    atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def trials_table(study) -> str:
    """One line per trial: number, state, cv / tuned / untuned figures, seconds, values (or why it stopped)."""
    lines = [f"{'trial':>5}  {'state':8}  {'cv':>7}  {'tuned':>7}  {'untuned':>7}  {'seconds':>7}  values"]
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs

        def fig(key):
            value = a.get(key)
            return f"{value:7.4f}" if isinstance(value, float) else f"{'-':>7}"

        note = ""
        if t.state == optuna.trial.TrialState.FAIL:
            note = f"  ({a.get('error', 'failed')})"
        elif t.state == optuna.trial.TrialState.PRUNED and "pruned_at" in a:
            p = a["pruned_at"]
            note = f"  (pruned at fold {p['fold']} epoch {p['epoch']}: {p['value']:.4f})"
        seconds = f"{a['seconds']:7.0f}" if "seconds" in a else f"{'-':>7}"
        lines.append(f"{t.number:5d}  {t.state.name:8}  {fig('cv')}  {fig('tuned')}  {fig('untuned')}  {seconds}  "
                     f"{_params_text(t.params)}{note}")
    return "\n".join(lines)


def run_search(cfg: RunConfig, space: dict, settings: SearchSettings, search_dir: Path, quiet: bool = False):
    """Run (or resume) the search until the study holds `settings.trials` finished trials; returns the study.

    cfg: the base config (validated); space: {dotted key: spec}, checked by `check_space`. Trials run one at
    a time; one that raises is recorded FAIL and the search goes on. best.yaml is rewritten after each trial."""
    from filelock import FileLock, Timeout

    from pipeline.cv import subset_data
    from pipeline.data import load_competition_data
    from pipeline.folds import make_folds, save_folds

    search_dir = Path(search_dir)
    settings = dataclasses.replace(settings, search_folds=check_search_folds(settings.search_folds, cfg.cv.n_folds))
    problems = [f"{flag} must be >= {low}, got {value}" for flag, value, low in (
        ("--trials", settings.trials, 1), ("--prune-startup-trials", settings.prune_startup_trials, 0),
        ("--prune-warmup-epochs", settings.prune_warmup_epochs, 0)) if value < low]
    if problems:
        raise ConfigError("; ".join(problems))
    data = subset_data(load_competition_data(cfg.data), cfg.data.max_rows, cfg.cv.seed)
    folds = make_folds(data.labels, cfg.cv.n_folds, cfg.cv.seed, data.task)  # as run_cv makes them
    search_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(search_dir / "search.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise RunDirError(f"another search is running in {search_dir} (it holds {lock.lock_file}); wait for it "
                          f"or use another --search-dir") from exc
    try:
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials,
                                              n_warmup_steps=settings.prune_warmup_epochs)
                  if settings.prune else optuna.pruners.NopPruner())
        study = _open_study(search_dir, _identity(cfg, space, settings, folds), pruner)
        save_folds(search_dir / "folds.csv", data.train_ids, folds)
        if not study.trials:
            baseline = baseline_params(space, cfg)
            if baseline is not None:  # the base config's own values first: the search starts where a run would
                study.enqueue_trial(baseline, user_attrs={"baseline": True})
        # seeded, and offset by the trials so far: a resumed search does not replay the first draws
        study.sampler = optuna.samplers.TPESampler(seed=cfg.cv.seed + len(study.trials))
        remaining = settings.trials - len(study.get_trials(deepcopy=False, states=FINISHED))
        if remaining <= 0:
            log.info("%s already holds %d finished trials (asked for %d)", search_dir,
                     len(study.get_trials(deepcopy=False, states=FINISHED)), settings.trials)
        else:
            def after_trial(study, trial):
                _log_trial(study, trial)
                write_best(study, cfg, search_dir, settings.search_folds)
                _free_memory()

            study.optimize(_Objective(cfg, space, settings, search_dir, data, folds, quiet), n_trials=remaining,
                           catch=(Exception,), callbacks=[after_trial])
        write_best(study, cfg, search_dir, settings.search_folds)
        return study
    finally:
        lock.release()


def _log_trial(study, trial) -> None:
    a = trial.user_attrs
    if trial.state == optuna.trial.TrialState.COMPLETE:
        log.info("trial %d: cross-validated %s %.4f (tuned %.4f, untuned %.4f) in %.0f s; best so far: trial %d "
                 "(%.4f)", trial.number, a.get("metric"), trial.value, a.get("tuned"), a.get("untuned"),
                 a.get("seconds", 0), study.best_trial.number, study.best_value)
    elif trial.state == optuna.trial.TrialState.PRUNED:
        log.info("trial %d pruned: %s", trial.number, a.get("pruned_at"))
    else:
        log.warning("trial %d failed: %s", trial.number, a.get("error", "see the message above"))


def default_search_dir(cfg: RunConfig, runs_root: Path = Path("runs")) -> Path:
    return Path(runs_root) / f"{cfg.run_name()}-search"


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tune_cv.py",
        description="Hyperparameter search with Optuna: each trial trains a few folds of the saved K-fold split "
        "(the same a full run makes) and scores them by the cross-validated metric (each fold decided by the "
        "thresholds fitted on the other searched folds); weak trials are pruned after an epoch. Rerunning the "
        "same command resumes the study toward --trials in total. Inspect it live with "
        "`optuna-dashboard sqlite:///SEARCH_DIR/study.db` (pip install optuna-dashboard).")
    p.add_argument("--trials", type=int, help="trials in total, complete, pruned or failed, counting earlier runs of "
                   "this search (required)")
    p.add_argument("--search-folds", default="0,1", help="folds (0-based, comma-separated, at least two) each trial "
                   "trains (default 0,1)")
    p.add_argument("--space", metavar="FILE.yaml", help="search space overrides: 'train.lr: {type: float, low: "
                   "1e-5, high: 3e-4, log: true}', '{type: int, low: 2, high: 5}', '{type: categorical, choices: "
                   "[full, sqrt]}'; 'KEY: null' drops a key of the preset's space (see --show-space)")
    p.add_argument("--search-dir", help="where the study lives (default runs/<run name>-search)")
    p.add_argument("--no-prune", action="store_true", help="let every trial finish")
    p.add_argument("--prune-startup-trials", type=int, default=SearchSettings.prune_startup_trials,
                   help="complete trials before pruning starts (default %(default)s)")
    p.add_argument("--prune-warmup-epochs", type=int, default=SearchSettings.prune_warmup_epochs,
                   help="epochs of the first searched fold never pruned (default %(default)s)")
    p.add_argument("--show-space", action="store_true", help="print the search space (preset's, with --space and "
                   "--set applied) as YAML and exit")
    p.add_argument("--model", help="model preset (default: minilm-l6)")
    p.add_argument("--competition", help="competition definition in competition/")
    p.add_argument("--folds", type=int, help="number of folds K of the split, 2..20 (default 5)")
    p.add_argument("--seed", type=int, help="seed for folds, initialisation and the sampler (default 42)")
    p.add_argument("--data-dir", help="folder with the competition's files (default data/<competition>)")
    p.add_argument("--config", help="YAML base config (see configs/); trials change only the searched keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one base config key (repeatable); a key set here is not searched")
    p.add_argument("--max-rows", type=int, help="search on a stratified subset of N training rows")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return p


def _parse_folds(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"--search-folds takes comma-separated fold numbers like 0,1, got '{text}'") from exc


@_guard
def search_main(argv: Optional[list] = None) -> int:
    args = search_parser().parse_args(argv)
    _setup_logging(args.quiet)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets our own line instead
    cfg = config_from_args(args)
    space, source = space_for(cfg.model.preset), f"preset {cfg.model.preset}"
    if args.space:
        space, source = merge_space(space, read_space_file(args.space)), f"{source} with {args.space}"
    space, fixed = drop_fixed(space, args.overrides)
    if fixed:
        log.info("fixed by --set, so not searched: %s", ", ".join(fixed))
    space = check_space(space, cfg, source)
    if args.show_space:
        print(yaml.safe_dump(space, sort_keys=False), end="")
        return 0
    if args.trials is None:
        raise ConfigError("--trials N is required: how many trials the search holds in total")
    settings = SearchSettings(trials=args.trials, search_folds=_parse_folds(args.search_folds),
                              prune=not args.no_prune, prune_startup_trials=args.prune_startup_trials,
                              prune_warmup_epochs=args.prune_warmup_epochs)
    search_dir = Path(args.search_dir) if args.search_dir else default_search_dir(cfg)
    try:
        study = run_search(cfg, space, settings, search_dir, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the running trial is recorded as failed; rerun the same command to resume "
              f"{search_dir}", file=sys.stderr)
        return 130
    print(trials_table(study))
    best = search_dir / "best.yaml"
    if not best.is_file():
        print(f"no trial completed in {search_dir}; see the errors above", file=sys.stderr)
        return 1
    print(f"best: trial {study.best_trial.number}, cross-validated {study.best_trial.user_attrs.get('metric')} "
          f"{study.best_value:.4f} -> {best}\nfull run: python run_cv.py --config {best}\n"
          f"dashboard: optuna-dashboard sqlite:///{(search_dir / 'study.db').resolve()}")
    return 0
