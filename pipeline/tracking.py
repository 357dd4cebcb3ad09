"""Experiment trackers through accelerate (`train.log_with`): one tracker run per fold, named fold_<k>.

The loop logs per optimizer step the training loss and learning rate, per epoch the validation loss and
score. Trackers that write files (tensorboard, mlflow, aim, dvclive, ...) write them under
runs/<name>/tracking/; tensorboard's runs are the folders tracking/fold_<k>/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import RunConfig
from pipeline.errors import ConfigError

# what `pip install` needs for each of accelerate's trackers
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim",
            "comet_ml": "comet-ml", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
            "trackio": "trackio"}


def tracker_settings(cfg: RunConfig, run_dir: Optional[Path]) -> dict:
    """Accelerator keyword arguments for cfg.train.log_with: {} when it is off, without a run directory,
    or for tfidf-lr (no training loop). Refuses a tracker whose package is missing, which accelerate
    itself would drop with a warning only."""
    from pipeline.presets import get_preset

    name = cfg.train.log_with
    if name is None or run_dir is None or get_preset(cfg.model.preset).kind == "tfidf":
        return {}
    from accelerate.tracking import get_available_trackers

    if name not in {getattr(t, "value", t) for t in get_available_trackers()}:
        extra = " or pip install -e '.[tracking]'" if name == "tensorboard" else ""
        raise ConfigError(f"train.log_with={name} needs the {PACKAGES[name]} package, which is not installed "
                          f"(pip install {PACKAGES[name]}{extra}; or leave train.log_with unset)")
    return {"log_with": name, "project_dir": str(Path(run_dir) / "tracking")}


def start_fold(accelerator, cfg: RunConfig, fold: int) -> bool:
    """Open the fold's tracker run, if the accelerator carries a tracker. Returns whether one is open."""
    if not accelerator.log_with:
        return False
    end_fold(accelerator)  # a failed attempt at this fold (out of memory, retried) may have left one open
    name = getattr(accelerator.log_with[0], "value", accelerator.log_with[0])
    run = f"fold_{fold}"
    run_name = Path(accelerator.project_dir).parent.name  # the run directory's name
    # tensorboard and most file trackers take the project name as the run's folder under tracking/; wandb
    # and mlflow get a project (experiment) per run directory holding one run per fold
    project, kwargs = run, {}
    if name == "wandb":
        project, kwargs = run_name, {"wandb": {"name": run, "dir": accelerator.project_dir}}
    elif name == "mlflow":
        project, kwargs = run_name, {"mlflow": {"run_name": run}}
    # tensorboard's hparams would add a second, timestamped run per fold; config.yaml holds the config
    config = None if name == "tensorboard" else _flat_config(cfg, fold)
    accelerator.init_trackers(project, config=config, init_kwargs=kwargs)
    return True


def end_fold(accelerator) -> None:
    """Close the fold's tracker runs. Not `accelerator.end_training()`: that also destroys the process
    group, which the next folds of a multi-process run still need."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def step_values(losses: list, step_lr: float, optimizer, lr: float, head_lr: Optional[float]) -> dict:
    """What a tracker gets per optimizer step: the mean loss over its batches and the learning rate the
    step used. step_lr: the first parameter group's lr at the step; its ratio to that group's peak is the
    schedule's factor, the same for every group, so this gives the backbone's and the head's lr."""
    factor = step_lr / optimizer.param_groups[0]["initial_lr"]
    values = {"train/loss": float(np.mean(losses)), "train/lr": lr * factor}
    if head_lr and head_lr != lr:
        values["train/head_lr"] = head_lr * factor
    return values


def epoch_values(epoch: int, train_loss: float, val_loss: float, metric: str, score: float) -> dict:
    """What a tracker gets per epoch: the smoothed training loss, the validation loss and score."""
    return {"epoch": epoch, "train/loss_smoothed": train_loss, "val/loss": val_loss,
            f"val/{metric.removeprefix('val_')}": score}


def _flat_config(cfg: RunConfig, fold: int) -> dict:
    """The config as flat `section.key` scalars (trackers take no nesting, lists or nulls)."""
    from pipeline.config import _flatten

    flat = _flatten(cfg.to_dict())
    flat["fold"] = fold
    return {k: "null" if v is None else ",".join(map(str, v)) if isinstance(v, list) else v for k, v in flat.items()}
