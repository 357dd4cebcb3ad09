"""Folds trained at once on a CPU (`run_cv.py --jobs N`): waves of N worker processes, each training one fold
with cores/N torch threads into the run directory, as `--fold K` shards do; the calling process assembles the run.

Why: one process with every core's thread leaves cores idle in the loop's single-threaded parts (Python, the
optimizer's small tensors) and in small matmuls that split poorly across threads. On a 2-core machine two
folds at once, one thread each, were done 1.14x (MiniLM-L6) and 1.26x (SmolLM2-135M LoRA) sooner than one after
the other with two threads (whole folds; docs/BENCHMARKS.md). The last wave, when fewer folds are left than N,
gives each its share of the cores. A thread count changes the order of float sums, so a run with --jobs agrees
with a one-process run closely, not bit for bit.

What gains nothing runs in the calling process instead, with a log line: TF-IDF (no torch), a frozen backbone's
head (its features are computed once per run), several accelerate processes, or a GPU.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from pipeline import process_memory

log = logging.getLogger("pipeline")


def cores() -> int:
    """The threads the calling process's torch uses (OMP_NUM_THREADS when set, else the usable cores)."""
    import torch

    return torch.get_num_threads()


def why_not_concurrent(cfg, processes: int = 1, device: str = "cpu") -> str:
    """'' when a run's folds gain from training at once; else the reason they train in one process.
    processes, device: the run's accelerate processes and device type."""
    from pipeline.finetune import finetune_mode
    from pipeline.presets import get_preset

    if get_preset(cfg.model.preset).kind == "tfidf":
        return "a TF-IDF model has no torch threads to share"
    if finetune_mode(cfg.model).frozen_features:
        return "model.finetune=head computes its frozen features once per run"
    if processes > 1:
        return "the run already has several accelerate processes"
    if device != "cpu":
        return f"it trains on {device}, not a CPU (one fold per GPU: --fold K)"
    return ""


def waves(folds: list, jobs: int, threads: int) -> list:
    """[(folds of the wave, torch threads of each)]: N folds at a time, the cores shared among a wave."""
    out = []
    for i in range(0, len(folds), jobs):
        wave = folds[i:i + jobs]
        out.append((wave, max(1, threads // len(wave))))
    return out


def _start_worker(threads: int) -> None:
    """A spawned worker starts bare: its torch threads, and the calling command's quiet logging (our warnings
    shown, libraries' import-time chatter such as bitsandbytes' optional-kernel warning not)."""
    from pipeline.cli import _setup_logging

    _setup_logging(quiet=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def worker_pool(processes: int, threads: int) -> ProcessPoolExecutor:
    """`processes` spawned workers (no forked torch thread pools) of `threads` torch threads, each training one task
    and then replaced by a fresh one: what a task leaves resident (cached weights, a fragmented heap) is never
    carried into the next (a reused worker held 2.4-4.1 GB at a task's start, docs/BENCHMARKS.md)."""
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads,), max_tasks_per_child=1)


def _train_one(task: tuple) -> tuple:
    """In a worker: train fold `fold` of the run into run_dir, leaving the assembly to the caller; fold None: the
    whole run as `run_cv.py` does it (what is missing, then the assembly). Returns (fold, the task's resident peak
    in bytes, counted from its start, and what was resident then: the worker's own imports)."""
    cfg, run_dir, fold = task
    from pipeline import models
    from pipeline.cv import run_cv

    if fold is not None:  # the worker ends after this fold (max_tasks_per_child=1): no weights kept for another
        models.one_model_per_process()
    before = process_memory.resident()
    process_memory.reset_peak()
    run_cv(cfg, Path(run_dir), quiet=True, only_fold=fold, assemble=fold is None)
    return fold, process_memory.peak(), before


def train_folds_at_once(cfg, run_dir: Path, folds: list, jobs: int, n_folds: int) -> None:
    """Train `folds` in waves of `jobs` spawned processes. A worker's error stops the run once the wave's other
    folds finish (finished folds stay); a worker killed by the system is a one-line RunDirError."""
    from pipeline.errors import RunDirError

    for wave, threads in waves(list(folds), jobs, cores()):
        log.info("folds %s at once, %d process%s of %d torch thread%s", wave, len(wave),
                 "es" if len(wave) > 1 else "", threads, "s" if threads > 1 else "")
        try:
            with worker_pool(len(wave), threads) as pool:
                for future in as_completed([pool.submit(_train_one, (cfg, str(run_dir), k)) for k in wave]):
                    fold, peak, _ = future.result()
                    log.info("fold %d/%d done (worker process, resident peak %s)", fold + 1, n_folds,
                             process_memory.gigabytes(peak))
        except BrokenProcessPool as exc:
            raise RunDirError(f"{run_dir}: a worker process training folds {wave} died ({exc}); killed by the "
                              f"system, e.g. out of memory? Finished folds are kept: rerun to resume, with fewer "
                              f"--jobs if memory is short") from None
