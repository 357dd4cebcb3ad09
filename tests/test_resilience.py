"""Crash safety, checkpoints inside a fold, fold sharding, determinism, OOM fallback and status."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_frames, write_competition
from pipeline import cv as cv_module
from pipeline.config import load_config, read_saved_config
from pipeline.cv import run_cv
from pipeline.errors import RunDirError

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(folder, *extra):
    return load_config(None, [f"data.data_dir={folder}", "model.preset=tiny-encoder", "cv.n_folds=2",
                              "train.epochs=2", "thresholds.n_trials=10", *extra])


def assert_same_run(a: Path, b: Path):
    for name in ("oof.csv", "test_probs.csv", "thresholds.json", "folds.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_same_seed_gives_bitwise_identical_oof(tmp_path, comp_dir):
    a = run_cv(cfg_for(comp_dir), tmp_path / "a", quiet=True)
    b = run_cv(cfg_for(comp_dir), tmp_path / "b", quiet=True)
    assert_same_run(a, b)
    c = run_cv(cfg_for(comp_dir, "cv.seed=1"), tmp_path / "c", quiet=True)
    assert (a / "oof.csv").read_bytes() != (c / "oof.csv").read_bytes()
    assert (a / "folds.csv").read_bytes() != (c / "folds.csv").read_bytes()
    # train.seed: another initialisation and shuffling on the same folds (a seed ensemble's member)
    d = run_cv(cfg_for(comp_dir, "train.seed=1"), tmp_path / "d", quiet=True)
    assert (a / "folds.csv").read_bytes() == (d / "folds.csv").read_bytes()
    assert (a / "oof.csv").read_bytes() != (d / "oof.csv").read_bytes()
    e = run_cv(cfg_for(comp_dir, "train.seed=42"), tmp_path / "e", quiet=True)  # cv.seed's value: the same run
    assert_same_run(a, e)


def test_checkpoint_resume_inside_a_fold_is_identical(tmp_path, comp_dir, monkeypatch):
    cfg = cfg_for(comp_dir, "train.epochs=3", "train.checkpoint_every=3")
    whole = run_cv(cfg, tmp_path / "whole", quiet=True)
    # crash in the middle of fold 0's second epoch, right after a checkpoint was saved
    import pipeline.train as train_module

    real_save = train_module._save_checkpoint
    saves = []

    def save_then_crash(accelerator, folder, state, best):
        real_save(accelerator, folder, state, best)
        saves.append(state.steps)
        if state.epoch == 2 and state.batches_done > 0:
            raise KeyboardInterrupt("killed mid-epoch")

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, tmp_path / "resumed", quiet=True)
    state = json.loads((tmp_path / "resumed" / "folds" / "fold_0" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and state["batches_done"] > 0
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed = run_cv(cfg, tmp_path / "resumed", quiet=True)
    assert_same_run(whole, resumed)
    assert not (resumed / "folds" / "fold_0" / "checkpoint").exists()  # removed once the fold is saved


def _all_outputs_parse(run_dir: Path):
    for path in run_dir.rglob("*"):
        if path.name.startswith("."):
            raise AssertionError(f"temporary file left behind: {path}")
        if path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_kill_9_during_a_fold_then_rerun_matches_uninterrupted(tmp_path):
    train, test, sample = make_frames(n_train=1200, n_test=100)
    folder = write_competition(tmp_path / "data", train, test, sample)
    args = [sys.executable, str(ROOT / "run_cv.py"), "--model", "tiny-encoder", "--folds", "2",
            "--data-dir", str(folder), "--quiet", "--set", "train.epochs=2", "--set", "train.checkpoint_every=5",
            "--set", "thresholds.n_trials=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--run-dir", str(tmp_path / "whole")], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(args + ["--run-dir", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "folds" / "fold_1" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended before fold 1 checkpointed"
    assert not (tmp_path / "killed" / "report.json").exists()
    _all_outputs_parse(tmp_path / "killed")
    done = subprocess.run(args + ["--run-dir", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "whole", tmp_path / "killed")


def test_fold_sharding_assembles_when_all_folds_are_there(tmp_path, comp_dir):
    cfg = cfg_for(comp_dir, "cv.n_folds=3")
    whole = run_cv(cfg, tmp_path / "whole", quiet=True)
    shared = tmp_path / "shared"
    run_cv(cfg, shared, quiet=True, only_fold=2)
    assert (shared / "folds" / "fold_2" / "result.json").is_file()
    assert not (shared / "folds" / "fold_0").exists() and not (shared / "report.json").exists()
    assert (shared / "status_fold_2.json").is_file()
    with pytest.raises(RunDirError, match=r"is missing folds \[0, 1\]"):
        run_cv(cfg, shared, quiet=True, merge_only=True)
    run_cv(cfg, shared, quiet=True, only_fold=0)
    run_cv(cfg, shared, quiet=True, only_fold=1)  # the last shard assembles the run
    assert (shared / "report.json").is_file()
    assert_same_run(whole, shared)
    run_cv(cfg, shared, quiet=True, merge_only=True)  # an explicit merge gives the same files
    assert_same_run(whole, shared)


def test_shards_started_at_the_same_moment_share_the_new_run_directory(tmp_path):
    train, test, sample = make_frames(n_train=200, n_test=20)
    folder = write_competition(tmp_path / "data", train, test, sample)
    args = [sys.executable, str(ROOT / "run_cv.py"), "--model", "tiny-encoder", "--folds", "2", "--data-dir",
            str(folder), "--run-dir", str(tmp_path / "run"), "--quiet", "--set", "train.epochs=1",
            "--set", "thresholds.n_trials=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shards = [subprocess.Popen(args + ["--fold", str(k)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for k in (0, 1)]
    for shard in shards:
        _, err = shard.communicate(timeout=300)
        assert shard.returncode == 0, err
    assert (tmp_path / "run" / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no temporary folder left


def test_the_process_that_loses_the_race_to_create_the_run_dir_checks_the_winners(tmp_path, comp_dir, monkeypatch):
    cfg, run = cfg_for(comp_dir), tmp_path / "run"
    real_rename = os.rename

    def other_process_first(src, dst):  # another shard renames its folder into place just before this one
        os.mkdir(dst)
        cv_module.save_config(other, Path(dst) / "config.yaml")
        return real_rename(src, dst)  # fails: dst is no longer empty

    other = cfg_for(comp_dir)
    monkeypatch.setattr(cv_module.os, "rename", other_process_first)
    cv_module.prepare_run_dir(cfg, run)  # the same config: accepted
    assert read_saved_config(run / "config.yaml").result_dict() == cfg.result_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == [comp_dir.name, "run"]
    other = cfg_for(comp_dir, "train.lr=1e-3")
    with pytest.raises(RunDirError, match="holds a run with a different config"):
        cv_module.prepare_run_dir(cfg, tmp_path / "run2")


def test_mismatched_fold_is_refused(tmp_path, comp_dir):
    a = run_cv(cfg_for(comp_dir), tmp_path / "a", quiet=True, only_fold=0)
    b = tmp_path / "b"
    run_cv(cfg_for(comp_dir, "cv.seed=9"), b, quiet=True, only_fold=1)
    # copy a fold made with another seed (another fold split and config) into run a
    import shutil

    shutil.copytree(b / "folds" / "fold_1", a / "folds" / "fold_1")
    with pytest.raises(RunDirError, match=r"fold_1 was made with a different (config|fold split)"):
        run_cv(cfg_for(comp_dir), a, quiet=True, merge_only=True)


def test_fold_of_another_test_set_is_refused(tmp_path, comp_dir):
    """A finished fold's test predictions are reused on resume only for the same test texts."""
    run = tmp_path / "run"
    run_cv(cfg_for(comp_dir), run, quiet=True, only_fold=0)
    test = pd.read_csv(comp_dir / "test.csv", dtype=str, keep_default_na=False)
    test.loc[3, "Tweet"] = test.loc[3, "Tweet"] + " edited"
    test.to_csv(comp_dir / "test.csv", index=False)
    with pytest.raises(RunDirError, match=r"fold_0 was made with a different test set \(ids or texts of test.csv "
                                          r"changed since\) \(test_inputs_sha256 [0-9a-f]{64} vs [0-9a-f]{64} now\)"):
        run_cv(cfg_for(comp_dir), run, quiet=True, only_fold=1)
    assert not (run / "folds" / "fold_1").exists()  # refused before anything trained
    # a fold written before the digest was recorded is accepted as it is
    result = run / "folds" / "fold_0" / "result.json"
    info = json.loads(result.read_text())
    del info["test_inputs_sha256"]
    result.write_text(json.dumps(info))
    run_cv(cfg_for(comp_dir), run, quiet=True)
    assert (run / "report.json").is_file()


def test_out_of_memory_halves_batch_and_records_it(tmp_path, comp_dir, monkeypatch):
    import torch

    import pipeline.train as train_module

    real = train_module.train_fold
    seen = []

    def oom_above_4(cfg, *args, **kwargs):
        seen.append((cfg.train.batch_size, cfg.train.grad_accum_steps))
        if cfg.train.batch_size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_fold", oom_above_4)
    cfg = cfg_for(comp_dir, "train.batch_size=16", "train.grad_accum_steps=1", "train.max_steps=3")
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    assert seen[:3] == [(16, 1), (8, 2), (4, 4)] and seen[3] == (4, 4)  # fold 1 starts at the reduced size
    saved = (run_dir / "config.yaml").read_text()
    assert "oom_adjustments" in saved and read_saved_config(run_dir / "config.yaml").train.batch_size == 16
    result = json.loads((run_dir / "folds" / "fold_0" / "result.json").read_text())
    assert result["adjustments"][-1] == {"fold": 0, "batch_size": 4, "grad_accum_steps": 4}
    # a rerun of the same command is not refused and does not redo the folds
    seen.clear()
    run_cv(cfg, run_dir, quiet=True)
    assert seen == []


def test_status_file_is_readable_while_running(tmp_path, comp_dir, monkeypatch):
    snapshots = []
    real = cv_module.StatusFile.update

    def spy(self, force=False, **facts):
        real(self, force, **facts)
        if self.path.exists():
            snapshots.append(json.loads(self.path.read_text()))

    monkeypatch.setattr(cv_module.StatusFile, "update", spy)
    run_dir = run_cv(cfg_for(comp_dir), tmp_path / "run", quiet=True)
    phases = {s["phase"] for s in snapshots}
    assert {"starting", "train", "validated", "predict", "done"} <= phases
    last_validated = [s for s in snapshots if s["phase"] == "validated"][-1]
    assert {"fold", "epoch", "step", "val_macro_f1_at_0_5", "updated", "elapsed_seconds"} <= set(last_validated)
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "done"


def test_two_processes_through_accelerate_launch_match_one(tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): OOF holds every row once, only the main
    process writes, and macro-F1 agrees with a one-process run of the same effective batch."""
    train, test, sample = make_frames(n_train=240, n_test=30)
    folder = write_competition(tmp_path / "data", train, test, sample)
    common = ["--model", "tiny-encoder", "--folds", "2", "--data-dir", str(folder), "--quiet",
              "--set", "train.epochs=8", "--set", "train.patience=0", "--set", "train.lr=5e-3",
              "--set", "thresholds.n_trials=20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "run_cv.py"), *common, "--set", "train.batch_size=8",
                          "--run-dir", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    launcher = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                          str(ROOT / "run_cv.py"), *common, "--set", "train.batch_size=4",
                          "--run-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    oof = pd.read_csv(tmp_path / "two" / "oof.csv", dtype={"ID": str})
    assert oof["id"].tolist() == train["ID"].tolist()
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r1["oof_tuned"]["macro_f1"] > 0.9
    assert abs(r1["oof_tuned"]["macro_f1"] - r2["oof_tuned"]["macro_f1"]) <= 0.01
    assert not list((tmp_path / "two").rglob(".*.tmp"))
