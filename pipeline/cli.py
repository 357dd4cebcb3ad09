"""Command lines of `run_cv.py`, `make_submission.py`, `compare_runs.py`, `run_study.py`, `predict.py` and
`python -m pipeline.kaggle`: parse flags, build the config, call the library.

A `PipelineError` (bad file, config or flag) is printed as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (as logging's last-resort handler does), not to the
    stream of the moment it was made: a command called again under another stderr (redirect_stderr, a notebook, a
    test's capture) never writes to a closed one."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(quiet: bool) -> None:
    """Our messages go to stderr through one handler on the 'pipeline' logger; libraries stay quiet."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    for handler in [h for h in log.handlers if getattr(h, "_pipeline", False)]:
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler._pipeline = True
    log.addHandler(handler)
    # bitsandbytes warns at import that an optional CPU kernel package is missing; it changes nothing here
    for noisy in ("transformers", "accelerate", "optuna", "bitsandbytes", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if quiet:  # no weight-loading bars from transformers and the hub either
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        # nor transformers' GGUF conversion bar (plain tqdm, which reads TQDM_* defaults when first imported: a
        # spawned --jobs worker or a fresh `--quiet` command sets this before it)
        os.environ["TQDM_DISABLE"] = "1"


def _guard(main):
    def wrapped(argv: Optional[list] = None) -> int:
        try:
            return main(argv)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapped


def cv_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_cv.py", description="K-fold cross-validation: trains one model per "
                                "fold, writes OOF and test probabilities, tuned thresholds and a report.")
    p.add_argument("--model", help="model preset (default: minilm-l6); see --list-models")
    p.add_argument("--competition", help="competition definition in competition/ (default: "
                   "emotion-detection-fall-2024; also dair-emotion, goemotions)")
    p.add_argument("--folds", type=int, help="number of folds K, 2..20 (default 5)")
    p.add_argument("--seed", type=int, help="seed for folds, subset, initialisation and shuffling (default 42)")
    p.add_argument("--data-dir", help="folder with the competition's files, e.g. train.csv, test.csv and "
                   "sample_submission.csv (default data/<competition>)")
    p.add_argument("--run-dir", help="where outputs go (default runs/<preset>-f<K>-s<seed>-<config hash>); "
                   "rerunning into the same folder resumes it")
    p.add_argument("--config", help="YAML file with config sections (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.lr=3e-5 (repeatable)")
    p.add_argument("--max-rows", type=int, help="train on a stratified subset of N rows for quick trials "
                   "(the test set stays whole, so the submission stays valid)")
    p.add_argument("--fold", type=int, help="run only this fold (0-based) into the shared run directory; "
                   "once every fold is there the run is assembled (for SLURM arrays or one GPU per fold)")
    p.add_argument("--merge", action="store_true", help="train nothing: assemble OOF, thresholds and report "
                   "from the finished folds in the run directory (all must be present)")
    p.add_argument("--jobs", type=int, default=1, help="on a CPU, train this many folds at once, each in its own "
                   "process with cores/N torch threads (2 on 2 cores: folds 1.14-1.26x faster, docs/BENCHMARKS.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines (for CI)")
    p.add_argument("--list-models", action="store_true", help="print the model presets and exit")
    p.add_argument("--dry-run", action="store_true", help="train nothing: print the model's parameter counts and "
                   "estimated peak GPU memory for the configured batch size and max_length, then exit "
                   "(no weights, no data, no files)")
    return p


def config_from_args(args: argparse.Namespace):
    """The RunConfig a `run_cv.py` command line asks for: --config, then flags, then --set overrides."""
    from pipeline.config import load_config

    flags = {"model.preset": args.model, "data.competition": args.competition, "cv.n_folds": args.folds,
             "cv.seed": args.seed,
             "data.data_dir": args.data_dir, "data.max_rows": args.max_rows}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    return load_config(args.config, overrides)


@_guard
def run_cv_main(argv: Optional[list] = None) -> int:
    args = cv_parser().parse_args(argv)
    from pipeline.presets import PRESETS

    if args.list_models:
        for preset in PRESETS.values():
            print(f"{preset.name:26s} {preset.kind:8s} {preset.description}")
        return 0
    _setup_logging(args.quiet)
    cfg = config_from_args(args)
    if args.dry_run:
        from competition import get_competition
        from pipeline.plan import render_plan

        # the head's width when the definition declares its labels (the plan reads no data)
        print(render_plan(cfg, len(get_competition(cfg.data.competition).classes) or 11))
        return 0
    from pipeline.cv import run_cv

    run_dir = run_cv(cfg, Path(args.run_dir) if args.run_dir else None, quiet=args.quiet,
                     only_fold=args.fold, merge_only=args.merge, jobs=args.jobs)
    if (run_dir / "report.json").is_file():
        print(f"run complete: {run_dir} (report: {run_dir / 'report.md'})")
    else:
        print(f"fold {args.fold} finished in {run_dir}; the run is assembled when every fold is there")
    return 0


def submission_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_submission.py", description="Average one or more completed runs "
                                "(matched by id), tune thresholds on the averaged OOF, write a submission CSV.")
    p.add_argument("--runs", nargs="+", help="run directories (or names under runs/) to average "
                   "(default: the latest completed run)")
    p.add_argument("--weights", nargs="+", help="one weight per run; 'auto' to search them on OOF by ensemble "
                   "selection; or 'stack' to fit a logistic regression per label on the runs' logits (weights and "
                   "calibration per label, fitted across folds); default: equal")
    p.add_argument("--out", help="submission path (default submissions/<run or ensemble name>.csv)")
    p.add_argument("--data-dir", help="competition data folder (default: the one the first run used)")
    p.add_argument("--runs-root", default="runs", help="where run directories live (default runs/)")
    p.add_argument("--score", metavar="SOLUTION.csv", help="also score the submission against this solution file "
                   "(test labels, e.g. published after the competition closed) with the competition's metric")
    p.add_argument("--submission", metavar="FILE.csv", help="with --score: score this existing submission file "
                   "instead of building one from runs")
    p.add_argument("--competition", help="with --score --submission: the competition definition (default: the "
                   "latest run's); with --leaderboard: fetch only this competition")
    p.add_argument("--submit", metavar="MESSAGE", help="upload the file just written to Kaggle, the run names and "
                   "cross-validated OOF score appended to MESSAGE, and record it in the ledger (needs credentials)")
    p.add_argument("--leaderboard", action="store_true", help="fetch your Kaggle submissions, fill their public and "
                   "private scores into the ledger (matched by file name and message), print it")
    p.add_argument("--ledger", action="store_true", help="print the ledger (submissions/ledger.csv, or beside --out) "
                   "and write ledger.html: CV against leaderboard, correlation, gap trend")
    return p


def _resolve_run(name: str, root: Path) -> Path:
    path = Path(name)
    if path.is_dir():
        return path
    if (root / name).is_dir():
        return root / name
    raise PipelineError(f"run '{name}' not found (looked for {path} and {root / name})")


def latest_run(root: Path) -> Path:
    done = sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not done:
        raise PipelineError(f"no completed run under {root}/; run `python run_cv.py` first or pass --runs")
    return done[-1].parent


@_guard
def make_submission_main(argv: Optional[list] = None) -> int:
    args = submission_parser().parse_args(argv)
    _setup_logging(False)
    from pipeline.submit import make_submission, score_submission

    root = Path(args.runs_root)
    if args.submission and not args.score:
        raise PipelineError("--submission is for scoring an existing file; add --score SOLUTION.csv")
    if args.submission:
        competition = args.competition
        if competition is None:
            from pipeline.config import read_saved_config

            competition = read_saved_config(latest_run(root) / "config.yaml").data.competition
        print(score_submission(competition, Path(args.submission), Path(args.score)))
        return 0
    if (args.ledger or args.leaderboard) and not (args.runs or args.submit or args.weights):
        return _ledger_commands(args, Path(args.out).parent / "ledger.csv" if args.out else None)
    runs = [_resolve_run(r, root) for r in args.runs] if args.runs else [latest_run(root)]
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = Path("submissions") / f"{runs[0].name}.csv"
    else:
        digest = hashlib.sha256("+".join(sorted(r.name for r in runs)).encode()).hexdigest()[:8]
        out = Path("submissions") / f"ensemble-{len(runs)}runs-{digest}.csv"
    weights = args.weights
    if weights in (["auto"], ["stack"]):
        weights = weights[0]
    elif weights is not None:
        try:
            weights = [float(w) for w in weights]
        except ValueError as exc:
            raise PipelineError(f"--weights takes one number per run, 'auto' or 'stack', got {' '.join(weights)}") from exc
    summary = make_submission(runs, out, weights, args.data_dir)
    print(summary)
    if args.score:
        from pipeline.config import read_saved_config

        print(score_submission(read_saved_config(runs[0] / "config.yaml").data.competition, out, Path(args.score)))
    if args.submit:
        from pipeline.kaggle import get_client
        from pipeline.ledger import submit_to_kaggle

        print(submit_to_kaggle(out, args.submit, get_client()))
    return _ledger_commands(args, out.parent / "ledger.csv")


def _ledger_commands(args: argparse.Namespace, path: Optional[Path]) -> int:
    """--leaderboard and --ledger of make_submission.py, on the ledger at path (default submissions/)."""
    from pipeline.ledger import fetch_leaderboard, show_ledger

    path = path or Path("submissions") / "ledger.csv"
    if args.leaderboard:
        from pipeline.kaggle import get_client

        print(fetch_leaderboard(path, get_client(), args.competition))
    if args.leaderboard or args.ledger:
        print(show_ledger(path))  # ledger.html too, so the page shows the scores just fetched
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare_runs.py", description="Tabulate completed runs side by side: the "
                                "settings that differ, OOF macro-F1 at 0.5 and tuned, fold spread, speed.")
    p.add_argument("runs", nargs="+", help="run directories (or names under --runs-root)")
    p.add_argument("--runs-root", default="runs", help="where run directories live (default runs/)")
    p.add_argument("--all-settings", action="store_true", help="also show settings equal in every run")
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--html", metavar="FILE.html", help="also write a self-contained HTML page: the table, a chart "
                   "of each run's OOF scores with fold spread, and per-label F1 of every run")
    return p


@_guard
def compare_main(argv: Optional[list] = None) -> int:
    args = compare_parser().parse_args(argv)
    from pipeline.compare import compare_runs

    table = compare_runs([_resolve_run(r, Path(args.runs_root)) for r in args.runs],
                         only_differing=not args.all_settings)
    if args.out:
        from pipeline.io import atomic_write_text

        atomic_write_text(Path(args.out), table)
    if args.html:
        from pipeline.io import atomic_write_text
        from pipeline.report_html import compare_page

        atomic_write_text(Path(args.html), compare_page([_resolve_run(r, Path(args.runs_root)) for r in args.runs]))
    print(table, end="")
    return 0


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.report", description="(Re)write the HTML report of a "
                                "completed run (RUN_DIR/report.html) or of a submission (its .json summary -> .html).")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR|SUBMISSION.json")
    p.add_argument("--data-dir", help="the competition's data folder, when not where the run read it (a run page "
                   "shows training texts and labels)")
    return p


@_guard
def report_main(argv: Optional[list] = None) -> int:
    args = report_parser().parse_args(argv)
    from pipeline.report_html import write_run_html, write_submission_html

    for name in args.paths:
        path = Path(name)
        if path.is_dir():
            out = write_run_html(path, data_dir=args.data_dir)
        elif path.suffix == ".json" and path.is_file():
            out = write_submission_html(path)
        else:
            raise PipelineError(f"{path} is neither a run directory nor a submission's .json summary")
        print(f"wrote {out}")
    return 0


def study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_study.py", description="Run a declared grid of models x data subsets "
                                "(each cell an ordinary resumable K-fold run), then write results.csv, results.md "
                                "and heatmap.png. Rerunning the same command resumes.")
    p.add_argument("--config", required=True, help="study YAML (see configs/studies/)")
    p.add_argument("--study-dir", help="where data subsets, runs and results go (default studies/<name>)")
    p.add_argument("--cell", action="append", default=[], metavar="NAME",
                   help="run only this cell: a name, a glob such as 'tfidf-lr__k2-*', or an index from --list "
                        "(repeatable; for running cells in parallel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one run-config key for every cell, after the study's own 'set' (repeatable)")
    p.add_argument("--list", action="store_true", help="print the cells with their index and status, then exit")
    p.add_argument("--table-only", action="store_true", help="train nothing: write the table and heatmap from the "
                   "cells finished so far")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return p


@_guard  # a PipelineError prints as one line `error: ...` with status 2, as in run_cv.py
def study_main(argv: Optional[list] = None) -> int:
    args = study_parser().parse_args(argv)
    _setup_logging(args.quiet)
    from pipeline.study import collect_results, load_study, run_study, select_cells, study_cells, write_outputs

    study = load_study(args.config)
    study.set = study.set + args.overrides
    study_dir = Path(args.study_dir) if args.study_dir else Path("studies") / study.name
    cells = study_cells(study)
    if args.list:
        status = collect_results(study, study_dir)["status"]
        for i, (cell, state) in enumerate(zip(cells, status)):
            print(f"{i:3d}  {cell.name:40s} {state}")
        return 0
    if not args.table_only:
        selected = select_cells(cells, args.cell) if args.cell else cells
        failed = run_study(study, study_dir, selected, quiet=args.quiet)
    else:
        failed = []
        write_outputs(study, study_dir)
    print(f"table: {study_dir / 'results.md'} (and results.csv); heatmap: {study_dir / 'heatmap.png'}")
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {', '.join(failed)} (see the log above); rerun the same "
              f"command to retry them", file=sys.stderr)
        return 1
    return 0


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description="Predict any CSV with the competition's id and text "
                                "columns using the fold models that finished runs kept (folds averaged on "
                                "probabilities). Writes the id, <label>_prob and <label>_pred (0/1) per label.")
    p.add_argument("--runs", nargs="+", help="run directories (or names under --runs-root), averaged with equal "
                   "weights; one run uses its own decision rule (the one its report chose)")
    p.add_argument("--submission", metavar="SUBMISSION.json", help="instead of --runs: the runs, weights and decision "
                   "rule of a submission (the .json make_submission.py writes beside its CSV)")
    p.add_argument("--input", required=True, metavar="FILE.csv", help="texts to predict")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="where the predictions go")
    p.add_argument("--runs-root", default="runs", help="where run directories live (default runs/)")
    p.add_argument("--recompute", action="store_true", help="run the fold models even on a run's own test set "
                   "(by default its test_probs.csv is read: the same fold models' mean, within 1e-6)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return p


@_guard
def predict_main(argv: Optional[list] = None) -> int:
    args = predict_parser().parse_args(argv)
    _setup_logging(args.quiet)
    from pipeline.predict import predict_file

    if bool(args.runs) == bool(args.submission):
        raise PipelineError("predict.py needs either --runs RUN [RUN ...] or --submission SUBMISSION.json (not both)")
    root = Path(args.runs_root)
    runs = [_resolve_run(r, root) for r in args.runs] if args.runs else None
    progress = None
    if not args.quiet:
        from functools import partial

        from tqdm.auto import tqdm
        progress = partial(tqdm, leave=False, dynamic_ncols=True)
    print(predict_file(Path(args.input), Path(args.out), runs, Path(args.submission) if args.submission else None,
                       root, progress, reuse=not args.recompute))
    return 0


def kaggle_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.kaggle", description="Kaggle round trip: download a "
                                "competition's files (to submit and fetch scores: make_submission.py --submit, "
                                "--leaderboard).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="download, unzip and check a competition's files (needs Kaggle credentials)")
    d.add_argument("competition", nargs="?", default="emotion-detection-fall-2024",
                   help="competition definition with a Kaggle slug (default emotion-detection-fall-2024)")
    d.add_argument("--dest", help="folder for the files (default data/<competition>)")
    return p


@_guard
def kaggle_main(argv: Optional[list] = None) -> int:
    args = kaggle_parser().parse_args(argv)
    from pipeline.kaggle import download_competition

    print(download_competition(args.competition, Path(args.dest) if args.dest else None))
    return 0
