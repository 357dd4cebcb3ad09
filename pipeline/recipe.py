"""Recipes (`run_recipe.py`): a declared sequence of pretrainings, K-fold runs and one ensemble, run in order
through the ordinary entry points (pretrain.py, run_cv.py, make_submission.py), so every step is a command a user
could type and every step resumes as that command does.

Recipe directory (default runs/recipes/<name>): models/<name>/ (pretrain.py outputs), runs/<name>/ (run
directories, all with the recipe's seed, and the recipe's folds except a run on another competition, an
intermediate fine-tuning a later run starts from with `model.init_from: run:<name>`), submission.csv (+ .json,
.html, ledger.csv beside it), and recipe.json (written after every step: each step's status, command and wall
time, each run's and the ensemble's OOF figures). A rerun of the same command skips finished steps. Reading and
checking the recipe file itself is pipeline/recipe_file.py's job.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.cli import _guard, _setup_logging
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import atomic_write_json
from pipeline.recipe_file import REF_PREFIXES, Recipe, load_recipe, ref_values
from pipeline.recipe_jobs import compute_shares, plan_runs, pool_applies, train_runs_at_once
from pipeline.run_layout import fold_finished

log = logging.getLogger("pipeline")

RECORD = "recipe.json"  # written into the recipe directory after every step
SUBMISSION = "submission.csv"  # the ensemble's submission, in the recipe directory


@dataclass(frozen=True)
class Step:
    """One command of a recipe: `python <entry> <argv>`."""
    kind: str  # 'pretrain', 'run' or 'ensemble'
    name: str  # the pretrain or run name ('ensemble' for the ensemble)
    key: str  # where the recipe declares it, e.g. 'runs[1]' (for messages)
    entry: str  # 'pretrain.py', 'run_cv.py' or 'make_submission.py'
    argv: tuple  # the entry's arguments
    output: str  # the folder or file it writes
    uses: tuple = ()  # pretrain names whose output it starts from
    competition: Optional[str] = None  # a run on another competition than the recipe's (an intermediate one)
    fold: Optional[int] = None  # such a run may train one fold only (run_cv.py --fold): done once that fold is
    after: tuple = ()  # run names whose folders it reads (`run:<name>`): it starts once they are finished

    @property
    def command(self) -> str:
        return shlex.join(["python", self.entry, *self.argv])


def default_recipe_dir(recipe: Recipe) -> Path:
    return Path("runs") / "recipes" / recipe.name


def _resolve(overrides: tuple, recipe_dir: Path) -> tuple:
    """Overrides with `pretrained:<name>` and `run:<name>` values replaced by those steps' folders, the pretrain
    names used and the run names used."""
    out, uses, runs = [], [], []

    def folder(value: str) -> str:
        if value.startswith("pretrained:"):
            uses.append(value[len("pretrained:"):])
            return str(recipe_dir / "models" / uses[-1])
        if value.startswith("run:"):
            runs.append(value[len("run:"):])
            return str(recipe_dir / "runs" / runs[-1])
        return value

    for item in overrides:
        key, value = item.split("=", 1)
        items = ref_values(value)
        if value.startswith("[") and any(v.startswith(REF_PREFIXES) for v in items):
            value = json.dumps([folder(v) for v in items])  # a list naming steps: each one's folder
        else:
            value = folder(value)
        out.append(f"{key}={value}")
    return tuple(out), tuple(uses), tuple(dict.fromkeys(runs))


def recipe_steps(recipe: Recipe, recipe_dir: Path, data_dir: Optional[str] = None, quiet: bool = False,
                 jobs: int = 1) -> list:
    """The recipe as commands, in order: each pretraining, each run, then the ensemble. Returns Step list.
    jobs: `run_cv.py --jobs` of every run of all its folds (a run decides whether its folds gain from it); on a
    CPU run_recipe trains the runs in one pool of that many processes instead, to the same effect per run."""
    recipe_dir = Path(recipe_dir)
    data = ["--data-dir", str(data_dir)] if data_dir else []
    loud = ["--quiet"] if quiet else []
    steps = []
    for i, p in enumerate(recipe.pretrain):
        out = recipe_dir / "models" / p.name
        overrides, uses, _ = _resolve(p.set, recipe_dir)
        argv = ["--model", p.model, "--competition", recipe.competition, *data, "--out", str(out),
                "--epochs", str(p.epochs), "--seed", str(recipe.seed)]
        steps.append(Step("pretrain", p.name, f"pretrain[{i}]", "pretrain.py",
                          tuple(argv + [a for s in overrides for a in ("--set", s)] + loud), str(out), uses))
    for i, r in enumerate(recipe.runs):
        out = recipe_dir / "runs" / r.name
        overrides, uses, after = _resolve(recipe.set + r.set, recipe_dir)
        argv = (["--config", str(r.config)] if r.config else []) + (["--model", r.model] if r.model else [])
        where = ["--competition", recipe.competition, *data]
        if r.competition:  # its own folder: given, else the sibling of the recipe's --data-dir named for it
            folder = r.data_dir or (str(Path(data_dir).parent / r.competition) if data_dir else None)
            where = ["--competition", r.competition] + (["--data-dir", folder] if folder else [])
        argv += [*where, "--folds", str(r.folds or recipe.folds), "--seed", str(recipe.seed), "--run-dir", str(out)]
        argv += ["--fold", str(r.fold)] if r.fold is not None else (["--jobs", str(jobs)] if jobs > 1 else [])
        steps.append(Step("run", r.name, f"runs[{i}]", "run_cv.py",
                          tuple(argv + [a for s in overrides for a in ("--set", s)] + loud), str(out), uses,
                          r.competition, r.fold, after))
    e = recipe.ensemble
    out = recipe_dir / SUBMISSION
    argv = ["--runs", *(str(recipe_dir / "runs" / n) for n in e.runs), "--out", str(out), *data]
    steps.append(Step("ensemble", "ensemble", "ensemble", "make_submission.py",
                      tuple(argv + (["--weights", e.weights] if e.weights != "equal" else [])), str(out)))
    return steps


def step_config(step: Step):
    """The RunConfig a pretrain or run step resolves to, built as its entry point builds it (validated)."""
    from pipeline.cli import config_from_args, cv_parser
    from pipeline.config import load_config

    if step.kind == "run":
        return config_from_args(cv_parser().parse_args(list(step.argv)))
    from pipeline.pretrain import check_pretrainable, pretrain_parser

    args = pretrain_parser().parse_args(list(step.argv))
    flags = {"model.preset": args.model, "data.competition": args.competition, "data.data_dir": args.data_dir,
             "train.epochs": args.epochs, "cv.seed": args.seed}
    cfg = load_config(None, [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides)
    check_pretrainable(cfg)
    return cfg


def check_steps(recipe: Recipe, steps: list) -> dict:
    """Every step's config, checked before anything trains. Returns {step.key: RunConfig} (no ensemble);
    raises one ConfigError naming the recipe file and each bad step."""
    configs, problems = {}, []
    for step in steps:
        if step.kind == "ensemble":
            continue
        try:
            configs[step.key] = step_config(step)
        except PipelineError as exc:
            problems.append(f"{step.key} ({step.name}): {exc}")
    one_fold = {s.output: s for s in steps if s.kind == "run" and s.fold is not None}
    for step in steps:  # a run starting from a one-fold run (`fold: k`) must start from that fold
        cfg = configs.get(step.key)
        source = one_fold.get(str(cfg.model.init_from)) if cfg is not None and cfg.model.init_from else None
        if source is not None and cfg.model.init_fold != source.fold:
            problems.append(f"{step.key}.set: model.init_from: run:{source.name} trains fold {source.fold} only, so "
                            f"model.init_fold must be {source.fold} (got {cfg.model.init_fold})")
    if problems:
        raise ConfigError(f"{recipe.source}: " + "; ".join(problems))
    return configs


def check_weights(recipe: Recipe, steps: list, configs: dict) -> None:
    """Every step's packaged weights are installed (split archives unpacked now, as their first run would), so a
    recipe does not train for an hour and then stop at a missing package. Steps given a `model.path` are skipped
    (another step's output may not exist yet); hub ids are left to the run (they need internet, not a package)."""
    from pipeline.presets import weights_source

    _check_each(recipe, steps, configs, lambda cfg: cfg.model.path is None and weights_source(cfg.model))


def check_precision(recipe: Recipe, steps: list, configs: dict) -> None:
    """Every step's train.mixed_precision runs on this machine (CPU bf16 needs native bf16), before anything trains."""
    from pipeline.precision import resolve_precision

    _check_each(recipe, steps, configs, lambda cfg: resolve_precision(cfg.train.mixed_precision))


def _check_each(recipe: Recipe, steps: list, configs: dict, check) -> None:
    """`check(config)` on every run's config; one ConfigError naming the recipe file and each step it refused
    (steps refused for the same reason named together before it)."""
    problems: dict = {}  # reason -> the steps it refused
    for step in steps:
        cfg = configs.get(step.key)
        if cfg is not None:
            try:
                check(cfg)
            except PipelineError as exc:
                problems.setdefault(str(exc), []).append(f"{step.key} ({step.name})")
    if problems:
        raise ConfigError(f"{recipe.source}: " + "; ".join(f"{', '.join(where)}: {reason}"
                                                          for reason, where in problems.items()))


def _pool_runs(steps: list, configs: dict, fresh: set, recipe_dir: Path, jobs: int) -> Optional[dict]:
    """--jobs N: every run of the recipe trained in one pool on a CPU (pipeline/recipe_jobs.py); returns its result,
    or None where it does not apply (each run then gets run_cv.py --jobs)."""
    if why_not := pool_applies(jobs):
        log.info("run_recipe.py --jobs %d: the runs train one after the other, as %s", jobs, why_not)
        return None
    runs = [s for s in steps if s.kind == "run"]
    for step in runs:
        _check_not_stale(step, fresh, recipe_dir, configs)
    return train_runs_at_once(runs, configs, lambda s: _finished_run(Path(s.output), configs[s.key], s.fold), jobs)


def _check_not_stale(step: Step, fresh: set, recipe_dir: Path, configs: dict) -> None:
    """A run started from a pretraining redone just now must not resume folds trained from the earlier weights."""
    stale = [n for n in step.uses if n in fresh]
    if stale and (Path(step.output) / "folds").is_dir() and \
            not _finished_run(Path(step.output), configs[step.key], step.fold):
        raise ConfigError(f"{recipe_dir / 'models' / stale[0]} was pretrained again just now, but "
                          f"{step.output} holds folds trained from the earlier weights; remove "
                          f"{step.output} to train it from the new ones")


def _finished_run(run_dir: Path, cfg, fold: Optional[int] = None) -> bool:
    """A completed run directory made with exactly this config (for a one-fold step: that fold finished)."""
    from pipeline.config import diff_configs, read_saved_config

    saved = run_dir / "config.yaml"
    done = (run_dir / "report.json").is_file() if fold is None else fold_finished(run_dir, fold)
    return done and saved.is_file() and \
        not diff_configs(read_saved_config(saved).result_dict(), cfg.result_dict())


def _own_wall_seconds(step: Step) -> Optional[float]:
    """The wall time a finished step's own record holds (pretrain.json, report.json), when no recipe.json has it."""
    path = Path(step.output) / ("pretrain.json" if step.kind == "pretrain" else "report.json")
    if step.kind == "ensemble" or not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record.get("wall_seconds") if step.kind == "pretrain" else record.get("timing", {}).get("wall_seconds")


def _run_figures(run_dir: Path) -> dict:
    """A finished run's OOF headline: metric, untuned_rule, untuned, tuned, cv."""
    head = json.loads((Path(run_dir) / "report.json").read_text(encoding="utf-8")).get("headline", {})
    return {k: head.get(k) for k in ("metric", "untuned_rule", "untuned", "tuned", "cv")}


def _ensemble_figures(submission: Path, metric: str, untuned_rule: str) -> dict:
    """The ensemble's OOF figures from make_submission.py's summary, in the run headline's shape."""
    summary = json.loads(Path(submission).with_suffix(".json").read_text(encoding="utf-8"))
    scores = summary["ensemble"]
    untuned = next(k for k in scores if k not in (f"{metric}_tuned", f"{metric}_cv"))
    return {"metric": metric, "untuned_rule": untuned_rule, "untuned": scores[untuned],
            "tuned": scores[f"{metric}_tuned"], "cv": scores[f"{metric}_cv"], "weights": summary["weights"],
            "weights_searched": summary["weights_searched"], "rule": summary["rule"],
            "combine": summary.get("combine", "average")}


def check_same_folds(run_dirs: list) -> None:
    """Every run's folds.csv assigns each id the same fold (the ensemble's cross-validated score needs it)."""
    import pandas as pd

    from pipeline.errors import RunDirError

    first = pd.read_csv(Path(run_dirs[0]) / "folds.csv", dtype={"id": str}).set_index("id").iloc[:, 0]
    for run_dir in run_dirs[1:]:
        other = pd.read_csv(Path(run_dir) / "folds.csv", dtype={"id": str}).set_index("id").iloc[:, 0]
        if set(other.index) != set(first.index) or not other.loc[first.index].equals(first):
            raise RunDirError(f"{run_dir}/folds.csv differs from {run_dirs[0]}/folds.csv: a recipe's runs must share "
                              f"one fold split (same data, folds and seed)")


def _read_record(recipe: Recipe, recipe_dir: Path) -> dict:
    path = recipe_dir / RECORD
    if not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("name") != recipe.name and record.get("name") not in recipe.bases:  # a base's runs are reused
        raise ConfigError(f"{recipe_dir} holds recipe '{record.get('name')}', not '{recipe.name}' ({recipe.source}); "
                          f"pass another --recipe-dir")
    return record


def run_recipe(recipe: Recipe, recipe_dir: Path, data_dir: Optional[str] = None, quiet: bool = False,
               jobs: int = 1) -> dict:
    """Run every step not yet finished, in order; write recipe.json after each. Returns the final record.

    A finished run (report.json, same config) is skipped; a pretraining whose output exists is handed to
    pretrain.py, which does nothing when its settings match (and refuses when they differ); the ensemble is
    rebuilt when a run changed or its submission is missing. A failing step stops the recipe with a PipelineError
    (the step's own error is printed above it). jobs > 1 on a CPU: the runs train as one pool of fold tasks
    (pipeline/recipe_jobs.py), started at the first unfinished run; each is recorded as that pool finished it.
    """
    from pipeline.cli import make_submission_main, run_cv_main
    from pipeline.pretrain import pretrain_main

    recipe_dir = Path(recipe_dir)
    steps = recipe_steps(recipe, recipe_dir, data_dir, quiet, jobs)
    configs = check_steps(recipe, steps)
    check_precision(recipe, steps, configs)
    check_weights(recipe, steps, configs)
    earlier = {(s["kind"], s["name"]): s for s in _read_record(recipe, recipe_dir).get("steps", [])}
    record = {"name": recipe.name, "recipe_file": recipe.source, "recipe_dir": str(recipe_dir),
              "data_dir": data_dir, "competition": recipe.competition, "folds": recipe.folds, "seed": recipe.seed,
              "finished": False, "steps": []}
    fresh, ran_run = set(), False
    pooled, pool_checked = None, False  # --jobs on a CPU: the runs' folds in one pool (pipeline/recipe_jobs.py)
    step_names = {s.key: s.name for s in steps}
    for i, step in enumerate(steps):
        before = earlier.get((step.kind, step.name), {})
        entry = {"kind": step.kind, "name": step.name, "command": step.command, "output": step.output}
        if step.competition:
            entry["competition"] = step.competition
        if step.fold is not None:
            entry["fold"] = step.fold
        started, pool_seconds = time.perf_counter(), None
        if step.kind == "pretrain":
            done = (Path(step.output) / "pretrain.json").is_file()
            code = pretrain_main(list(step.argv))
            if not done:
                fresh.add(step.name)
        elif step.kind == "run":
            if not pool_checked and jobs > 1 and not _finished_run(Path(step.output), configs[step.key], step.fold):
                pool_checked, pooled = True, _pool_runs(steps, configs, fresh, recipe_dir, jobs)
            if pooled is not None and step.key in pooled["seconds"]:  # trained by the pool just now
                done, code, pool_seconds = False, 0, pooled["seconds"][step.key]
                entry.update(pooled=True, worker_seconds=round(pooled["worker_seconds"][step.key], 2))
                if (peak := pooled["worker_peak"][step.key]) is not None:
                    entry["worker_peak_gb"] = round(peak / 1e9, 2)
            else:
                done = _finished_run(Path(step.output), configs[step.key], step.fold)
                _check_not_stale(step, fresh, recipe_dir, configs)
                if done or pooled is None:
                    code = 0 if done else run_cv_main(list(step.argv))
                else:  # the pool stopped at a failed task before this run finished
                    failed_key, message = pooled["failed"] or (step.key, "never started (no task of it was ready)")
                    entry.update(status="failed" if failed_key == step.key else "stopped",
                                 wall_seconds=round(time.perf_counter() - started, 2))
                    record["steps"].append(entry)
                    _write_record(recipe_dir, record, steps[i + 1:])
                    raise PipelineError(f"recipe {recipe.name} stopped: {failed_key} ({step_names[failed_key]}) "
                                        f"{message}; fix it and rerun the same command to resume (finished folds "
                                        f"are kept)")
            ran_run = ran_run or not done
        else:
            members = [Path(recipe_dir / "runs" / n) for n in recipe.ensemble.runs]
            done = (not ran_run and before.get("status") in ("ran", "done earlier")
                    and before.get("command") == step.command and Path(step.output).is_file()
                    and Path(step.output).with_suffix(".json").is_file())
            if not done:
                check_same_folds(members)
            code = 0 if done else make_submission_main(list(step.argv))
        seconds = time.perf_counter() - started if pool_seconds is None else pool_seconds
        if code:
            entry.update(status="failed", wall_seconds=round(seconds, 2))
            record["steps"].append(entry)
            _write_record(recipe_dir, record, steps[i + 1:])
            raise PipelineError(f"recipe {recipe.name} stopped at {step.key} ({step.kind} {step.name}, exit {code}; "
                                f"its error is above); fix it and rerun the same command to resume")
        wall = before.get("wall_seconds") if done else None
        if done and before.get("pooled"):
            entry.update({k: before[k] for k in ("pooled", "worker_seconds", "worker_peak_gb") if k in before})
        entry.update(status="done earlier" if done else "ran",
                     wall_seconds=round(seconds if not done else wall if wall is not None else
                                        (_own_wall_seconds(step) or seconds), 2))
        if step.kind == "run" and step.fold is None:  # one fold of a run has no OOF figures
            entry["figures"] = _run_figures(Path(step.output))
        record["steps"].append(entry)
        if step.kind == "ensemble":
            head = next(s["figures"] for s in record["steps"] if s["name"] == recipe.ensemble.runs[0])
            record["ensemble"] = _ensemble_figures(Path(step.output), head["metric"], head["untuned_rule"])
            record["submission"] = step.output
            record["finished"] = True
        _write_record(recipe_dir, record, steps[i + 1:])
    return record


def _write_record(recipe_dir: Path, record: dict, pending: list) -> None:
    record["pending"] = [{"kind": s.kind, "name": s.name, "command": s.command} for s in pending]
    record["total_wall_seconds"] = round(sum(s["wall_seconds"] for s in record["steps"]), 2)
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(recipe_dir / RECORD, record)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def recipe_table(record: dict) -> str:
    """The short table printed at the end: each step's status and wall time, each run's and the ensemble's OOF
    figures (untuned, tuned on all of OOF, cross-validated)."""
    # the header's metric and rule are the recipe competition's (a run on another one may score another way)
    figures = [s["figures"] for s in record["steps"] if "figures" in s and "competition" not in s]
    metric = figures[0]["metric"] if figures else "score"
    rule = figures[0]["untuned_rule"] if figures else "untuned"
    pooled = any(s.get("pooled") for s in record["steps"])
    worker = " worker s | peak GB |" if pooled else ""
    lines = [f"recipe {record['name']} in {record['recipe_dir']}", "",
             f"| step | status | wall s |{worker} OOF {metric} {rule} | tuned | cross-validated |",
             "|---|---|---:|" + "---:|" * (5 if pooled else 3)]
    for s in record["steps"]:
        f = record.get("ensemble", {}) if s["kind"] == "ensemble" else s.get("figures", {})
        where = (f" ({s['competition']}, fold {s['fold']} only)" if "fold" in s else
                 f" ({s['competition']}, its own metric)" if "competition" in s else "")
        mark = "*" if s.get("pooled") else ""
        in_workers = ((f" {s['worker_seconds']:.1f} |" if "worker_seconds" in s else " - |") +
                      (f" {s['worker_peak_gb']:.1f} |" if "worker_peak_gb" in s else " - |")) if pooled else ""
        lines.append(f"| {s['kind']} {s['name']}{where} | {s['status']} | {s['wall_seconds']:.1f}{mark} |{in_workers}"
                     f" {_fmt(f.get('untuned'))} | {_fmt(f.get('tuned'))} | {_fmt(f.get('cv'))} |")
    total = record["total_wall_seconds"]
    lines += ["", f"total wall time {total:.0f} s ({total / 60:.1f} min; each step's time in the invocation that "
                  f"finished it)"]
    if pooled:
        lines.append("runs marked * trained in one pool of processes (--jobs): their wall s is from the end of the "
                     "run finished before it to its own end (they add up to the pool's time); worker s is what its "
                     "tasks took in the workers, beside other tasks; peak GB the most memory one of its tasks held "
                     "(resident, in its worker process)")
    if record.get("submission"):
        e = record["ensemble"]
        shown = ", ".join(f"{w:.2f}" for w in e["weights"])
        how = (f"stacked, mean coefficients {shown}" if e.get("combine") == "stack" else
               f"weights {shown}{' searched on OOF' if e['weights_searched'] else ''}")
        lines.append(f"submission: {record['submission']} ({how}; decision rule: {e['rule']})")
    return "\n".join(lines)


def dry_run(recipe: Recipe, steps: list) -> None:
    """Print each step's command and, for each run, `run_cv.py --dry-run`'s memory plan. Writes nothing."""
    from competition import get_competition
    from pipeline.cli import run_cv_main
    from pipeline.plan import CARDS_GIB, estimate_memory, gib
    from pipeline.presets import get_preset

    configs = check_steps(recipe, steps)
    print(f"recipe {recipe.name} ({recipe.source}): {len(steps)} steps, nothing trained or written")
    for i, step in enumerate(steps, 1):
        what = f"{recipe.ensemble.weights} weights" if step.kind == "ensemble" else step.name
        print(f"\n== step {i}/{len(steps)}: {step.kind} {what}\n{step.command}")
        if step.kind == "run":
            print()
            run_cv_main([a for a in step.argv if a != "--quiet"] + ["--dry-run"])
    print("\nPlanned peak GPU memory per run (bf16 compute, gradient checkpointing as configured):")
    for step in steps:
        if step.kind != "run":
            continue
        cfg = configs[step.key]
        if get_preset(cfg.model.preset).kind == "tfidf":
            print(f"  {step.name:24s} {cfg.model.preset:24s} no neural network")
            continue
        n_labels = len(get_competition(cfg.data.competition).classes) or 11  # as run_cv.py --dry-run counts them
        est = estimate_memory(cfg, "cuda", n_labels)
        cards = [f"{c} GB" for c in CARDS_GIB if est.fits(c)]
        print(f"  {step.name:24s} {cfg.model.preset:24s} {gib(est.total()):>10s}   fits: "
              f"{', '.join(cards) or 'none of ' + ', '.join(f'{c} GB' for c in CARDS_GIB)}")
    runs = plan_runs([s for s in steps if s.kind == "run"], configs)
    print(f"\nEstimated compute per run (a CPU pool, --jobs 2+, starts the longest first):\n  {compute_shares(runs)}")


def recipe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_recipe.py", description="Run a recipe: pretrainings, K-fold runs (same "
                                "folds and seed) and their ensemble's submission, in order, each through its own "
                                "entry point. Rerunning the same command resumes.")
    p.add_argument("recipe", help="recipe YAML (see configs/recipes/)")
    p.add_argument("--data-dir", help="folder with the competition's files (default data/<competition>)")
    p.add_argument("--recipe-dir", help="where models, runs, the submission and recipe.json go (default "
                   "runs/recipes/<name>)")
    p.add_argument("--dry-run", action="store_true", help="train and write nothing: print each step's command and "
                   "each run's memory plan (run_cv.py --dry-run)")
    p.add_argument("--jobs", type=int, default=1, help="on a CPU, this many folds train at once, the runs' folds "
                   "in one pool of processes, each run once the runs it names are finished (2 on a 2-core "
                   "machine); on a GPU each run gets run_cv.py --jobs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return p


@_guard  # a PipelineError prints as one line `error: ...` with status 2
def recipe_main(argv: Optional[list] = None) -> int:
    args = recipe_parser().parse_args(argv)
    _setup_logging(args.quiet)
    recipe = load_recipe(args.recipe)
    recipe_dir = Path(args.recipe_dir) if args.recipe_dir else default_recipe_dir(recipe)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be 1 or more, got {args.jobs}")
    steps = recipe_steps(recipe, recipe_dir, args.data_dir, args.quiet, args.jobs)
    if args.dry_run:
        dry_run(recipe, steps)
        return 0
    try:
        record = run_recipe(recipe, recipe_dir, args.data_dir, args.quiet, args.jobs)
    except KeyboardInterrupt:
        print(f"interrupted: finished steps are kept in {recipe_dir}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(recipe_table(record))
    return 0
