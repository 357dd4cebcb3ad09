"""Shared fixtures: a small generated competition folder in tmp_path, and the real data's location."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

LABELS = ["anger", "fear", "joy", "trust"]
CUES = {"anger": ["furious", "rage", "hate"], "fear": ["scared", "afraid", "terror"],
        "joy": ["happy", "delight", "smile"], "trust": ["reliable", "faith", "loyal"]}
FILLER = ["the", "day", "was", "really", "just", "some", "people", "today", "this", "morning", "again"]

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emotion-detection-fall-2024"


def pytest_configure(config):
    """Under pytest-xdist (`-n auto` in setup.cfg) each test process gets its share of the cores, and so do the
    runs it starts in subprocesses, so the threads never outnumber the cores (seen on 2 cores: two test processes
    of two torch threads each beside a 2-thread fold took the fold from 4.5 to 22-30 s a step)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        # the cores this process may use (macOS has no affinity call: all of them)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def make_frames(n_train: int = 160, n_test: int = 40, seed: int = 0):
    """Tweets whose words reveal their labels (so a model can learn), plus the sample submission."""
    rng = np.random.default_rng(seed)

    def texts_and_labels(n):
        labels = (rng.random((n, len(LABELS))) < [0.4, 0.3, 0.35, 0.2]).astype(int)
        texts = []
        for row in labels:
            words = list(rng.choice(FILLER, 5))
            for j, on in enumerate(row):
                if on:
                    words.append(rng.choice(CUES[LABELS[j]]))
            rng.shuffle(words)
            texts.append(" ".join(words) + ("!" if rng.random() < 0.3 else ""))
        return texts, labels

    train_texts, train_labels = texts_and_labels(n_train)
    train = pd.DataFrame({"ID": [f"2017-{i:05d}" for i in range(n_train)], "Tweet": train_texts})
    for j, col in enumerate(LABELS):
        train[col] = train_labels[:, j]
    test_texts, _ = texts_and_labels(n_test)
    test = pd.DataFrame({"ID": [f"2018-{i:05d}" for i in range(n_test)], "Tweet": test_texts})
    sample = pd.DataFrame({"ID": test["ID"]})
    for col in LABELS:
        sample[col] = 0
    return train, test, sample


def write_competition(folder: Path, train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return folder


@pytest.fixture
def frames():
    return make_frames()


@pytest.fixture
def comp_dir(tmp_path, frames) -> Path:
    return write_competition(tmp_path / "comp", *frames)


@pytest.fixture(autouse=True)
def _chdir(tmp_path, monkeypatch):
    # runs/ and submissions/ default to the working directory: keep them out of the checkout
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # tests build Accelerator(cpu=True) beside runs that pick their own device and precision; accelerate keeps
    # one process-wide state and refuses a change, which on a GPU machine fails the next test (not on a CPU)
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


DAIR_CLASSES = ["sadness", "joy", "love", "anger", "fear", "surprise"]
DAIR_CUES = {"sadness": ["gloomy", "tears"], "joy": ["happy", "glad"], "love": ["adore", "darling"],
             "anger": ["furious", "rage"], "fear": ["scared", "afraid"], "surprise": ["shocked", "amazed"]}


def make_multiclass_frames(n_train: int = 150, n_val: int = 30, n_test: int = 60, seed: int = 0):
    """A dair-emotion-like competition: `id,text,label` (class names) in train, validation and test (the
    test labels are the hold-out). Cue words reveal the class; class frequencies are uneven."""
    rng = np.random.default_rng(seed)
    p = np.array([0.3, 0.3, 0.1, 0.12, 0.12, 0.06])

    def frame(prefix, n):
        classes = rng.choice(len(DAIR_CLASSES), n, p=p)
        texts = [" ".join(list(rng.choice(FILLER, 5)) + [rng.choice(DAIR_CUES[DAIR_CLASSES[c]])]) for c in classes]
        return pd.DataFrame({"id": [f"{prefix}_{i:05d}" for i in range(n)], "text": texts,
                             "label": [DAIR_CLASSES[c] for c in classes]})

    return frame("train", n_train), frame("validation", n_val), frame("test", n_test)


def write_multiclass(folder: Path, train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    validation.to_csv(folder / "validation.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def dair_dir(tmp_path) -> Path:
    return write_multiclass(tmp_path / "dair", *make_multiclass_frames())


def run_and_kill_a_worker(argv: list, cwd: Path) -> tuple:
    """Start `python argv` (a command with --jobs), SIGKILL its first multiprocessing worker as soon as one exists
    (as the system's out-of-memory killer would; found through Linux /proc), and return (exit code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    def workers(pid: int) -> list:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (found := workers(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert found, "no worker process appeared"
    os.kill(found[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err
