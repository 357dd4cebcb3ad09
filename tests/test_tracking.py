"""Experiment trackers (train.log_with): one tensorboard run per fold with loss, lr and validation scores."""
from __future__ import annotations

import json

import pytest

from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.errors import ConfigError


def tracked_cfg(comp_dir, *extra):
    return load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder", "cv.n_folds=2",
                              "train.epochs=2", "train.batch_size=16", "train.max_steps=8", "train.head_lr=2e-3",
                              "thresholds.n_trials=5", "train.log_with=tensorboard", *extra])


def test_tensorboard_logs_loss_lr_and_validation_per_fold(tmp_path, comp_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tracked_cfg(comp_dir)
    run = run_cv(cfg, tmp_path / "run", quiet=True)
    for fold in range(2):
        history = json.loads((run / "folds" / f"fold_{fold}" / "result.json").read_text())["history"]
        events = EventAccumulator(str(run / "tracking" / f"fold_{fold}"))
        events.Reload()
        assert {"train/loss", "train/lr", "train/head_lr", "val/loss", "val/macro_f1_at_0.5"} <= set(
            events.Tags()["scalars"])
        steps = history[-1]["optimizer_steps"]
        assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
        lrs = [e.value for e in events.Scalars("train/lr")]
        head_lrs = [e.value for e in events.Scalars("train/head_lr")]
        # 8 steps, no warmup step (int(0.1 * 8) = 0): linear decay from the peak, the head at twice the rate
        assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] > 0
        assert head_lrs == pytest.approx([2 * lr for lr in lrs])
        scores = events.Scalars("val/macro_f1_at_0.5")
        assert [e.step for e in scores] == [h["optimizer_steps"] for h in history]
        assert [e.value for e in scores] == pytest.approx([h["val_macro_f1_at_0.5"] for h in history], abs=1e-5)


def test_log_with_is_validated_left_out_of_the_hash_and_needs_its_package(tmp_path, comp_dir, monkeypatch):
    import accelerate.tracking

    with pytest.raises(ConfigError, match=r"train.log_with must be one of tensorboard, wandb.*"
                                          r"did you mean 'tensorboard'"):
        load_config(None, ["train.log_with=tensorbord"])
    plain = load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder"])
    tracked = load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder", "train.log_with=wandb"])
    assert plain.short_hash() == tracked.short_hash() and plain.result_dict() == tracked.result_dict()
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"^train.log_with=tensorboard needs the tensorboard package, which is not "
                                          r"installed \(pip install tensorboard"):
        run_cv(tracked_cfg(comp_dir), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # refused before anything is written
