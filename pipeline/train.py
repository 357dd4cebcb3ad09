"""The only training loop, on `accelerate`: `train_fold(...)` fits one fold and predicts.

AdamW (fused) with warmup and linear decay, gradient accumulation through `accelerator.accumulate`,
clipping on sync steps, per-epoch validation with early stopping (best epoch's weights kept),
dynamic padding and length-grouped batches over texts tokenized once per run, and optional
checkpoints every N optimizer steps (accelerate `save_state`) to resume inside a fold, and
an optional experiment tracker per fold (`train.log_with`, pipeline/tracking.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.config import RunConfig
from pipeline.finetune import finetune_mode, save_fold_model
from pipeline.models import trainable_state
from pipeline.precision import attention_for_training
from pipeline.presets import train_settings
from pipeline.tasks import task_for
from pipeline.tracking import end_fold, epoch_values, start_fold, step_values

log = logging.getLogger("pipeline")


@dataclass
class FoldResult:
    fold: int
    val_index: np.ndarray  # (n_val,) row positions in train.csv
    val_logits: np.ndarray  # (n_val, n_labels)
    test_logits: np.ndarray  # (n_test, n_labels)
    best_epoch: int  # 1-based
    history: list = field(default_factory=list)  # one dict per epoch
    train_seconds: float = 0.0
    train_examples: int = 0  # examples seen in training (epochs x fold size)
    predict_seconds: float = 0.0
    predict_examples: int = 0  # validation + test examples predicted
    # torch.cuda.max_memory_allocated (CUDA runs only) while loading the model, then while training and predicting
    gpu_load_peak_bytes: Optional[int] = None
    gpu_peak_bytes: Optional[int] = None
    # model.finetune='generate': the best epoch's constrained-generation labels, 0/1 int8 in label column order
    val_generated: Optional[np.ndarray] = None  # (n_val, n_labels)
    test_generated: Optional[np.ndarray] = None  # (n_test, n_labels)
    generate_seconds: float = 0.0  # time spent writing those answers (validation + test)


class LengthGroupedBatches:
    """Shuffled batches of similar-length texts: shuffle, cut into chunks of 50 batches,
    sort each chunk by length, batch it, shuffle the batches. Reseeded per pass, so each
    epoch differs but a rerun with the same seed gives the same batches."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, grouped: bool = True):
        self.lengths, self.batch_size, self.seed, self.grouped = lengths, batch_size, seed, grouped
        self.passes = 0

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.passes])
        self.passes += 1
        order = rng.permutation(len(self.lengths))
        bs = self.batch_size
        if self.grouped:
            chunk = bs * 50
            order = np.concatenate([sorted(order[i:i + chunk], key=lambda k: -self.lengths[k])
                                    for i in range(0, len(order), chunk)])
        batches = [order[i:i + bs].tolist() for i in range(0, len(order), bs)]
        for b in rng.permutation(len(batches)):
            yield batches[b]


def _sorted_batches(lengths: np.ndarray, batch_size: int) -> list:
    """Prediction batches in decreasing length (least padding, fixed order)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def release(accelerator) -> None:
    """Free a finished fold's model before the next one loads: drop accelerate's references, then collect.
    Under mixed precision accelerate wraps `forward` in autocast, a reference cycle that plain reference
    counting never frees, and its own free_memory collects before it drops its lists: without this the
    previous fold's weights stayed on the GPU through the next fold's loading and training."""
    import gc

    accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def adamw(param_groups, lr: float, weight_decay: float = 0.01):
    """The AdamW every loop here steps with: torch's fused kernel (one in-place pass per tensor, no scratch
    copies) where all parameters sit on a CPU or a CUDA GPU, as `transformers.Trainer` uses by default. On
    this CPU torch's for-loop default took 14 % of a MiniLM training step with its token embeddings trained and
    the fused one 3 %; with them frozen (`minilm-l6`) the whole step is the same within noise (docs/BENCHMARKS.md)."""
    params = [p for group in param_groups for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _param_groups(model, cfg: RunConfig, lr: float) -> list:
    head_lr = cfg.train.head_lr or lr
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2  # biases and LayerNorm weights
        is_head = "head" in name.split(".")  # also under peft: base_model.model.head.modules_to_save...
        key = (is_head, no_decay)
        groups.setdefault(key, {"params": [], "lr": head_lr if is_head else lr,
                                "weight_decay": 0.0 if no_decay else cfg.train.weight_decay})
        groups[key]["params"].append(param)
    return list(groups.values())


def predict_logits(model, accelerator, inputs, split: str, index: np.ndarray, batch_size: int,
                   progress: Optional[Callable] = None, desc: str = "predict") -> np.ndarray:
    """Outputs (len(index), n_out) of `model` for rows `index` of `split` ('train' or 'test') of
    `inputs` (Encoded or Features), in the order of `index`. Under several processes each predicts
    a share and the shares are gathered (no duplicated rows). progress: a tqdm-like factory or None."""
    loader = DataLoader(inputs.dataset(split, index, None),
                        batch_sampler=_sorted_batches(inputs.lengths(split, index), batch_size),
                        collate_fn=inputs.collate())
    loader = accelerator.prepare_data_loader(loader)
    model.eval()
    rows, outs = [], []
    batches = loader if progress is None else progress(loader, total=len(loader), desc=desc)
    with torch.no_grad():
        for batch in batches:
            logits = model(**batch["inputs"])
            r, lg = accelerator.gather_for_metrics((batch["row"], logits.float()))
            rows.append(r.cpu().numpy())
            outs.append(lg.cpu().numpy())
    rows_all, logits_all = np.concatenate(rows), np.concatenate(outs)
    assert set(rows_all.tolist()) == set(index.tolist()), "gathered predictions must cover every row"
    position = {r: i for i, r in enumerate(index)}
    result = np.zeros((len(index), logits_all.shape[1]), dtype=np.float32)
    result[[position[r] for r in rows_all]] = logits_all
    return result


@dataclass
class _LoopState:
    """Where a fold's training stands; saved beside accelerate's state to resume inside a fold."""
    epoch: int = 1  # current epoch, 1-based
    batches_done: int = 0  # batches of the current epoch already trained on
    steps: int = 0  # optimizer steps so far
    running: float = 0.0  # smoothed training loss
    seen: int = 0  # examples seen in the current epoch (this process)
    best_score: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    train_examples: int = 0
    predict_seconds: float = 0.0
    predict_examples: int = 0


def _save_checkpoint(accelerator, folder: Path, state: _LoopState, best: Optional[dict]) -> None:
    """accelerate's state (model, optimizer, scheduler, RNGs) plus the loop state, then a marker."""
    import json

    marker = folder / "state.json"
    if accelerator.is_main_process and marker.exists():
        marker.unlink()  # a crash while saving must not leave an old marker over new files
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder / "accelerate"))
    if accelerator.is_main_process:
        torch.save(best, folder / "best.pt")
        from pipeline.io import atomic_write_text

        atomic_write_text(marker, json.dumps(dataclasses.asdict(state)))
    accelerator.wait_for_everyone()


def _keep_trainable(accelerator):
    """A save_state hook: checkpoint only the weights that train (LoRA adapters and head), not a
    frozen base of billions of parameters that `build_model` recreates identically on resume."""
    def hook(models, weights, output_dir):
        for model, state in zip(models, weights):
            keep = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
            for name in [k for k in state if k not in keep]:
                del state[name]
    return hook


def _load_checkpoint(accelerator, folder: Path):
    import json

    state = _LoopState(**json.loads((folder / "state.json").read_text()))
    accelerator.load_state(str(folder / "accelerate"), strict=False)  # frozen weights are not in it
    best = torch.load(folder / "best.pt", weights_only=False)
    return state, best


def train_fold(cfg: RunConfig, fold: int, folds: np.ndarray, labels: np.ndarray, inputs,
               accelerator, progress: Optional[Callable] = None, tokenizer=None,
               checkpoint_dir: Optional[Path] = None, status: Optional[Callable] = None,
               fit_mask: Optional[np.ndarray] = None, save_dir: Optional[Path] = None) -> FoldResult:
    """Fit the preset on rows with folds != fold, keep the best epoch, predict fold rows and test.

    folds: (n_train,) fold per row; labels: (n_train, n_labels) 0/1.
    inputs: what the model.finetune mode computed once per run (pipeline/finetune.py): `Encoded` token ids,
    `Features` of a frozen backbone ('head') or `Conversations` ('generate').
    progress: a tqdm-like factory (iterable, total, desc) or None for quiet.
    checkpoint_dir: where to save every `train.checkpoint_every` optimizer steps, and resume from.
    status: called with keyword facts (phase, epoch, step, ...) as training goes.
    fit_mask: (n_train,) bool, rows allowed in training (data.fit_filter); validation uses every fold row.
    save_dir: where the main process saves the fold's trained model (adapter, head or weights).
    """
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    tcfg = cfg.train
    lr, batch_size = train_settings(cfg)
    status = status or (lambda **facts: None)
    train_idx = np.flatnonzero((folds != fold) & (True if fit_mask is None else fit_mask))
    val_idx = np.flatnonzero(folds == fold)
    set_seed(cfg.train_seed + fold)
    cuda = accelerator.device.type == "cuda"
    if cuda:  # the fold's own peaks, to set beside the dry-run estimate
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    mode = finetune_mode(cfg.model)  # what differs by model.finetune: the model, its loss, extra outputs
    model = mode.fold_model(cfg, inputs, labels.shape[1], tokenizer, accelerator.device)
    attention_for_training(model, accelerator)
    task = task_for(cfg.data.competition)  # the loss, validation score and link differ by task
    loss_of = mode.loss(cfg, task, labels[train_idx], accelerator.device)
    sampler = LengthGroupedBatches(inputs.lengths("train", train_idx), batch_size, cfg.train_seed * 1000 + fold,
                                   tcfg.length_grouped)
    # the sampler yields positions into train_idx; the dataset maps them to rows
    # a private generator: creating a loader iterator draws a seed from it, and drawing from the global
    # RNG instead would shift dropout masks after a resume (the iterator is re-created mid-epoch)
    loader = DataLoader(inputs.dataset("train", train_idx, labels), batch_sampler=sampler,
                        collate_fn=inputs.collate(), num_workers=tcfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.train_seed + fold))
    optimizer = adamw(_param_groups(model, cfg, lr), lr)
    accelerator.gradient_accumulation_steps = tcfg.grad_accum_steps
    steps_per_epoch = math.ceil(len(sampler) / tcfg.grad_accum_steps)
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tcfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    load_peak = None
    if cuda:  # loading may pass through bigger transients (a 16-bit copy before 4-bit quantization)
        load_peak = int(torch.cuda.max_memory_allocated(accelerator.device))
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    hook = accelerator.register_save_state_pre_hook(_keep_trainable(accelerator))
    tracking = start_fold(accelerator, cfg, fold)  # train.log_with: a tracker run for this fold
    step_losses, step_lr = [], lr

    state, best = _LoopState(), None  # best: {"weights": state dict on CPU or None, "val_logits": array}
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "state.json").is_file():
        state, best = _load_checkpoint(accelerator, Path(checkpoint_dir))
        log.info("fold %d: resuming from a checkpoint at epoch %d, optimizer step %d", fold, state.epoch,
                 state.steps)
    finished = bool(tcfg.max_steps and state.steps >= tcfg.max_steps)
    while state.epoch <= tcfg.epochs and not finished:
        epoch = state.epoch
        model.train()
        start = time.perf_counter()
        sampler.passes = epoch - 1  # an epoch's batch order depends only on (seed, fold, epoch)
        batches = loader if state.batches_done == 0 else accelerator.skip_first_batches(loader, state.batches_done)
        bar = None
        if progress is not None:
            bar = progress(batches, total=len(loader), initial=state.batches_done,
                           desc=f"fold {fold + 1}/{cfg.cv.n_folds} epoch {epoch}/{tcfg.epochs}")
            batches = bar
        for batch in batches:
            with accelerator.accumulate(model):
                loss = loss_of(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tcfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                if tracking:
                    step_losses.append(loss.item())
                    step_lr = optimizer.param_groups[0]["lr"]  # what this step uses, before the scheduler moves it
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            n = batch["row"].shape[0]
            state.running = 0.98 * state.running + 0.02 * loss.item() if state.seen else loss.item()
            state.seen += n
            state.batches_done += 1
            if accelerator.sync_gradients:
                state.steps += 1
                if tracking:
                    accelerator.log(step_values(step_losses, step_lr, optimizer, lr, tcfg.head_lr), step=state.steps)
                    step_losses = []
                status(phase="train", epoch=epoch, step=state.steps, total_steps=total_steps,
                       train_loss=round(state.running, 5))
                if tcfg.checkpoint_every and checkpoint_dir is not None and state.steps % tcfg.checkpoint_every == 0:
                    state.train_seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    _save_checkpoint(accelerator, Path(checkpoint_dir), state, best)
            if bar is not None:
                bar.set_postfix(loss=f"{state.running:.4f}", step=state.steps)
            if tcfg.max_steps and state.steps >= tcfg.max_steps:
                finished = True
                break
        if bar is not None:
            bar.close()
        state.train_seconds += time.perf_counter() - start
        state.train_examples += state.seen * accelerator.num_processes

        status(phase="validate", epoch=epoch, step=state.steps, total_steps=total_steps)
        start = time.perf_counter()
        val_logits = predict_logits(model, accelerator, inputs, "train", val_idx, tcfg.eval_batch_size)
        state.predict_seconds += time.perf_counter() - start
        state.predict_examples += len(val_idx)
        val_labels = labels[val_idx]
        val_loss = task.val_loss(val_logits, val_labels)
        score = task.val_score(val_labels, val_logits)
        state.history.append({"epoch": epoch, "train_loss": round(state.running, 5), "val_loss": round(val_loss, 5),
                              task.val_metric: round(score, 5), "optimizer_steps": state.steps})
        if tracking:
            accelerator.log(epoch_values(epoch, state.running, val_loss, task.val_metric, score), step=state.steps)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.stale = score, epoch, 0
            last = finished or epoch == tcfg.epochs
            # the live weights are the best ones when nothing trains after this epoch
            best = {"val_logits": val_logits, "weights": None if last else trainable_state(accelerator.unwrap_model(model))}
        else:
            state.stale += 1
        state.epoch, state.batches_done, state.seen = epoch + 1, 0, 0
        status(phase="validated", epoch=epoch, step=state.steps, total_steps=total_steps,
               **{task.val_metric.replace(".", "_"): round(score, 5)}, best_epoch=state.best_epoch)
        if tcfg.patience and state.stale >= tcfg.patience:
            break
        if tcfg.checkpoint_every and checkpoint_dir is not None and not finished and state.epoch <= tcfg.epochs:
            _save_checkpoint(accelerator, Path(checkpoint_dir), state, best)
    if best["weights"] is not None and state.best_epoch != state.history[-1]["epoch"]:
        accelerator.unwrap_model(model).load_state_dict(best["weights"], strict=False)
    status(phase="predict", epoch=state.best_epoch, step=state.steps, total_steps=total_steps)
    start = time.perf_counter()
    test_logits = predict_logits(model, accelerator, inputs, "test", np.arange(len(inputs.test)),
                                 tcfg.eval_batch_size) if len(inputs.test) else \
        np.zeros((0, labels.shape[1]), dtype=np.float32)  # a validation-only fold (run_cv validation_only)
    state.predict_seconds += time.perf_counter() - start
    state.predict_examples += len(inputs.test)
    if mode.extra_phase:  # e.g. generate mode's free answers, from the best epoch
        status(phase=mode.extra_phase, epoch=state.best_epoch, step=state.steps, total_steps=total_steps)
    extra = mode.extra_outputs(accelerator.unwrap_model(model), inputs, val_idx, tcfg.eval_batch_size)
    if save_dir is not None and accelerator.is_main_process:
        save_fold_model(accelerator.unwrap_model(model), Path(save_dir), cfg, fold)
    hook.remove()
    end_fold(accelerator)
    peaks = (load_peak, int(torch.cuda.max_memory_allocated(accelerator.device))) if cuda else (None, None)
    del model, optimizer, scheduler, loader
    release(accelerator)
    return FoldResult(fold, val_idx, best["val_logits"], test_logits, state.best_epoch, state.history,
                      state.train_seconds, state.train_examples, state.predict_seconds, state.predict_examples,
                      *peaks, **extra)
