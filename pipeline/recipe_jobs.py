"""A recipe's runs trained as one pool of fold tasks on a CPU (`run_recipe.py --jobs N`).

`run_cv.py --jobs N` trains one run's folds N at a time, in waves: a 5-fold run's last fold trains alone, and so do
a recipe's one-fold stages, its TF-IDF run and its frozen-backbone heads, each leaving cores to a second thread that
gains little. Here every unfinished run of a recipe becomes tasks for one pool of N worker processes with cores/N
torch threads each: one task per missing fold, or the whole run where its folds gain nothing from training at once
(pipeline/fold_jobs.py says which), then the run's assembly. A run's tasks are ready once every run it names
(`run:<name>` in its settings: model.init_from, data.pseudo_label_from) is finished. Assemblies start first (they
are short and finish runs others wait for); then the ready run with the most compute ahead gives the next fold: its
own folds left plus the longest chain of runs waiting on it, estimated in FLOPs (pipeline/run_cost.py), ties in the
recipe's order. So the long runs start at once and short ones fill the gaps at the end, instead of a long run's last
fold training alone while the other workers sit idle. Each task does what `run_cv.py ... --fold K` (then
`run_cv.py ...`) does, in a fresh process of its own, into the run's own directory, so a stopped recipe resumes as
it does without the pool.

A failing task stops new ones from starting; the running ones finish (their folds are kept) and the recipe stops
with the failure. Used only on a CPU: with a GPU each run gets `--jobs` as the command line shows.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline import process_memory, run_cost
from pipeline.fold_jobs import _train_one, cores, why_not_concurrent, worker_pool
from pipeline.run_layout import fold_finished

log = logging.getLogger("pipeline")


def pool_applies(jobs: int) -> str:
    """'' when a recipe's runs can share one pool of `jobs` CPU processes; else why not."""
    import torch

    if jobs < 2:
        return "--jobs is 1"
    if torch.cuda.is_available():
        return "a GPU is present (each run's folds follow its own --jobs)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the recipe runs under several accelerate processes"
    return ""


@dataclass
class _Run:
    """One unfinished run of the recipe and what of it is left."""
    step: object  # pipeline.recipe.Step
    cfg: object  # its RunConfig
    folds: list  # fold tasks left (None: the whole run as one task)
    assemble: bool  # an assembly task follows the folds
    task_cost: float = 0.0  # estimated FLOPs of one of its fold tasks (pipeline/run_cost.py)
    running: int = 0  # its tasks in the pool now
    worker_seconds: float = 0.0  # its finished tasks' own seconds in the workers
    worker_peak: Optional[int] = None  # the largest resident peak of its tasks' workers, bytes (None: unknown)

    @property
    def name(self) -> str:
        return self.step.name


def _plan(step, cfg) -> _Run:
    run_dir = Path(step.output)
    if step.fold is not None:  # a one-fold stage: that fold, never assembled
        return _Run(step, cfg, [step.fold], assemble=False, task_cost=run_cost.fold_cost(cfg))
    if why_not_concurrent(cfg):  # TF-IDF, a frozen head: the run in one task, as run_cv.py does it
        return _Run(step, cfg, [None], assemble=False, task_cost=run_cost.run_cost(cfg))
    missing = [k for k in range(cfg.cv.n_folds) if not fold_finished(run_dir, k)]
    return _Run(step, cfg, missing, assemble=True, task_cost=run_cost.fold_cost(cfg))


def train_runs_at_once(steps: list, configs: dict, finished, jobs: int) -> dict:
    """Train the recipe's unfinished run steps in one pool of `jobs` worker processes.

    steps: the recipe's run Steps in order; configs: {step.key: RunConfig}; finished(step) -> bool: the step's
    output is complete already. Returns {"seconds": {step.key: its wall seconds}, "worker_seconds": {step.key: the
    seconds its tasks took in the workers, beside other tasks}, "worker_peak": {step.key: the largest resident
    peak of its tasks, bytes, or None}, "failed": None or (step.key, message)}, for the runs finished. The runs'
    wall seconds do not overlap: each run's is from the end of the run that finished before it (or the pool's
    start) to its own end, so they add up to the pool's wall time; the worker seconds are what a run costs,
    whatever order it finished in.
    """
    names = {s.name for s in steps}
    runs = [_plan(s, configs[s.key]) for s in steps if not finished(s)]  # in the recipe's order
    done = {s.name for s in steps if finished(s)}
    waiting = {r.name: [n for n in r.step.after if n in names and n not in done] for r in runs}
    threads = max(1, cores() // jobs)
    n_tasks = sum(len(r.folds) + r.assemble for r in runs)
    log.info("%d runs of the recipe in one pool: %d tasks on %d processes of %d torch thread%s", len(runs), n_tasks,
             jobs, threads, "s" if threads > 1 else "")
    if any(r.task_cost for r in runs):
        log.info("estimated compute (the longest chains start first): %s", compute_shares(runs))
    seconds, failed, running = {}, None, {}
    last_end = pool_start = time.perf_counter()
    with worker_pool(jobs, threads) as pool:
        while True:
            while failed is None and len(running) < jobs and (task := _next_task(runs, waiting)) is not None:
                run, fold, assembly = task
                run.running += 1
                future = pool.submit(_train_one, (run.cfg, run.step.output, None if assembly else fold))
                running[future] = (run, fold, assembly, time.perf_counter())
            if not running:
                break
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                run, fold, assembly, began = running.pop(future)
                run.running -= 1
                what = ("assembly" if assembly else "the whole run" if fold is None else
                        f"fold {fold + 1}/{run.cfg.cv.n_folds}")
                try:
                    _, peak, before = future.result()
                except Exception as exc:  # the task's own error, or its worker killed by the system
                    message = ("its worker process died (killed by the system, e.g. out of memory? rerun with fewer "
                               "--jobs if memory is short)" if isinstance(exc, BrokenProcessPool) else
                               str(exc) or type(exc).__name__)
                    log.error("%s (%s) %s failed: %s", run.step.key, run.name, what, message)
                    if failed is None:
                        failed = (run.step.key, f"{what}: {message}")
                        if running:
                            log.error("no new task starts; waiting for the %d running one%s (their folds are kept)",
                                      len(running), "s" if len(running) > 1 else "")
                    continue
                took = time.perf_counter() - began
                run.worker_seconds += took
                if peak is not None:
                    run.worker_peak = max(peak, run.worker_peak or 0)
                memory = (f"resident peak {process_memory.gigabytes(peak)}, "
                          f"{process_memory.gigabytes(before)} at its start")
                if run.folds or run.running or (run.assemble and not assembly):
                    log.info("%s: %s done in %.1f s (worker process, %s)", run.name, what, took, memory)
                    continue
                now = time.perf_counter()
                seconds[run.step.key], last_end = now - last_end, now
                done.add(run.name)
                for left in waiting.values():
                    if run.name in left:
                        left.remove(run.name)
                log.info("%s: %s done in %.1f s (%s); the run is finished, %.1f s into the pool%s", run.name, what,
                         took, memory, now - pool_start, _headline(run))
    finished_runs = [r for r in runs if r.step.key in seconds]
    return {"seconds": seconds, "worker_seconds": {r.step.key: r.worker_seconds for r in finished_runs},
            "worker_peak": {r.step.key: r.worker_peak for r in finished_runs}, "failed": failed}


def plan_runs(steps: list, configs: dict) -> list:
    """A _Run for each run step, its unfinished folds as tasks (every fold in an empty recipe directory)."""
    return [_plan(s, configs[s.key]) for s in steps]


def compute_shares(runs: list) -> str:
    """'mpnet-ft 57 %, smollm2-lora 28 %, ...': each run's share of the estimated FLOPs left, largest first."""
    total = sum(r.task_cost * len(r.folds) for r in runs)
    if not total:
        return "not estimated (no texts read: is the data folder there?)"
    ranked = sorted(runs, key=lambda r: -r.task_cost * len(r.folds))
    return ", ".join(f"{r.name} {100 * r.task_cost * len(r.folds) / total:.0f} %" for r in ranked)


def _next_task(runs: list, waiting: dict):
    """(run, fold, is_assembly) to start next, or None: a ready run's assembly once its folds are all done first,
    then the next fold of the ready run with the most compute ahead (_ahead), the first in the recipe's order
    among equals (ready: the runs it names are finished)."""
    for run in runs:
        if run.assemble and not run.folds and not run.running and not waiting[run.name]:
            run.assemble = False
            return run, None, True
    ready = [run for run in runs if run.folds and not waiting[run.name]]
    if not ready:
        return None
    run = max(ready, key=lambda r: _ahead(r, runs, waiting))  # max keeps the first of equals
    return run, run.folds.pop(0), False


def _ahead(run: _Run, runs: list, waiting: dict) -> float:
    """Estimated FLOPs from `run`'s next fold to the end of the longest chain through it: its folds left, then
    the costliest run waiting on it (and so on down)."""
    after = [_ahead(r, runs, waiting) for r in runs if run.name in waiting[r.name]]
    return run.task_cost * len(run.folds) + max(after, default=0.0)


def _headline(run: _Run) -> str:
    """', OOF macro_f1 0.5770 at 0.5, 0.5989 tuned, 0.5921 cross-validated' for an assembled run, else ''."""
    import json

    report = Path(run.step.output) / "report.json"
    if not report.is_file():
        return ""
    head = json.loads(report.read_text(encoding="utf-8")).get("headline", {})
    if head.get("cv") is None:
        return ""
    return (f"; OOF {head.get('metric')} {head.get('untuned'):.4f} {head.get('untuned_rule')}, "
            f"{head.get('tuned'):.4f} tuned, {head.get('cv'):.4f} cross-validated")
