"""Speed on this CPU, in one process, one measurement after the other: the matmul rate, the project's
training and prediction rates (pipeline.train's `train_fold` and `predict_logits`) for an encoder and a LoRA
decoder, and a `transformers.Trainer` + `DataCollatorWithPadding` reference on the same rows and model.

Each rate is also given as a fraction of the matmul-bound limit: the model FLOPs of the batches divided by
the time, over the best sustained GEMM rate. FLOPs come from `FlopModel` (2 per weight per token forward;
training adds the input gradients, 2 per weight, and the weight gradients, 2 per trainable weight: 6N for a
full fine-tune, about 4N under LoRA; attention QK^T and AV over the T keys of each text, 3x in training),
counted twice: on the tokens computed (every batch padded to its longest text) and on the real tokens (the
attention-mask ones). Warm-up (the first optimizer steps, one prediction batch) runs first and is not timed.
`--mixed-precision bf16` (a CPU with native bf16: AMX or AVX-512 bf16) runs every loop, the Trainer's too, under
bf16 autocast and takes the bf16 matmul rate as the limit.

    python benchmarks/speed.py --data-dir ../shared/data/emotion-detection-fall-2024 --out runs/speed.json
"""
from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from pipeline.config import RunConfig, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.inputs import Encoded
from pipeline.precision import resolve_precision

# Environment variables that cap the instruction set torch's CPU kernels, MKL (fp32 matmuls) and oneDNN (bf16) use:
# all three set to AVX2 make an AVX-512 / AMX machine run as an AVX2 one (docs/BENCHMARKS.md, "The AVX2 class on an
# AMX machine"). Recorded with the result, so a capped run is never read as the machine's own.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
N_VAL = 8  # rows train_fold validates on after the timed steps (it needs some); also its "test" rows
NOTES = [
    "project training: train_fold with length-grouped batches; its validation and test prediction come after the "
    "timed steps",
    "project prediction: predict_logits (batches sorted by length) on a freshly built model of the same "
    "architecture: the weights do not change the speed",
    "Trainer: its random sampler, DataCollatorWithPadding, AutoModelForSequenceClassification (pooler + head, "
    "BCE without pos_weight) on the project's backbone config, weights and frozen embeddings; Trainer.predict "
    "takes the rows in file order",
]


# ---- tokens and FLOPs ------------------------------------------------------------------------------------

@dataclass
class TokenTally:
    """Batches as computed: rows, padded width, and the attention-mask tokens inside them."""
    batches: int = 0
    rows: int = 0
    computed: int = 0  # rows x padded width, summed over batches: what the matmuls ran on
    computed_sq: int = 0  # rows x width^2 (attention scores computed)
    real: int = 0  # attention-mask ones: the texts' own tokens
    real_sq: int = 0  # sum over texts of length^2

    def add(self, attention_mask: torch.Tensor) -> None:
        """attention_mask: (rows, width) 0/1, one batch."""
        rows, width = attention_mask.shape
        lengths = attention_mask.sum(1).to(torch.int64)
        self.batches += 1
        self.rows += rows
        self.computed += rows * width
        self.computed_sq += rows * width * width
        self.real += int(lengths.sum())
        self.real_sq += int((lengths * lengths).sum())

    def __add__(self, other: "TokenTally") -> "TokenTally":
        return TokenTally(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


def tally_of(masks: list) -> TokenTally:
    """The tally of several batches' attention masks ((rows, width) each)."""
    total = TokenTally()
    for mask in masks:
        total.add(mask)
    return total


@dataclass(frozen=True)
class FlopModel:
    """The matmuls of one model: weights applied per token and per text, trainable or not, and attention."""
    token_weights: int  # weight entries of linear layers run on every token (q, k, v, o, MLP, LoRA A and B)
    token_trainable: int  # of those, the trainable ones (they also get weight gradients)
    text_weights: int  # weight entries of linear layers run once per text (pooler, classification head)
    text_trainable: int
    layers: int  # attention layers
    attn_width: int  # query heads x head dim

    def forward_flops(self, tokens: int, tokens_sq: int, texts: int) -> int:
        """FLOPs of a forward pass over `texts` texts of `tokens` tokens in all; tokens_sq = sum of lengths^2."""
        return (2 * self.token_weights * tokens + 4 * self.layers * self.attn_width * tokens_sq
                + 2 * self.text_weights * texts)

    def train_flops(self, tokens: int, tokens_sq: int, texts: int) -> int:
        """Forward + backward: input gradients for every layer (an upper bound: the first layer skips them
        when nothing below it trains) and weight gradients for the trainable ones; attention backward is
        four matmuls to forward's two. Per-text layers count as trained (an unused pooler is not: <0.1%)."""
        return ((4 * self.token_weights + 2 * self.token_trainable) * tokens
                + 12 * self.layers * self.attn_width * tokens_sq
                + (4 * self.text_weights + 2 * self.text_trainable) * texts)

    def flops(self, tally: TokenTally, train: bool, computed: bool) -> int:
        """The FLOPs of a tally's batches, on the tokens computed (padded) or the real ones."""
        tokens, sq = (tally.computed, tally.computed_sq) if computed else (tally.real, tally.real_sq)
        return (self.train_flops if train else self.forward_flops)(tokens, sq, tally.rows)


def _hf_config(model: nn.Module):
    from transformers import PretrainedConfig

    return next(m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig))


def flop_model(model: nn.Module, input_ids: list) -> FlopModel:
    """Counts the linear layers that one forward pass over one text (`input_ids`, at least 2 tokens) runs,
    each sorted by how many rows it saw: the text's length (per token) or one (per text). Layers that do
    not run (peft's copy of a replaced head) are not counted. Attention shape from the model's config."""
    from transformers.pytorch_utils import Conv1D

    length = len(input_ids)
    if length < 2:
        raise ValueError("flop_model needs a text of at least 2 tokens to tell per-token from per-text layers")
    seen: dict = {}

    def hook(module, args, output):
        width = module.weight.shape[0] if isinstance(module, Conv1D) else module.in_features
        rows = args[0].numel() // width
        if rows not in (1, length):
            raise AssertionError(f"a linear layer saw {rows} rows of a {length}-token text")
        seen[module] = rows

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, Conv1D))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            ids = torch.tensor([input_ids], device=device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    counts = {"token": [0, 0], "text": [0, 0]}
    for module, rows in seen.items():
        kind = counts["token" if rows == length else "text"]
        kind[0] += module.weight.numel()
        kind[1] += module.weight.numel() if module.weight.requires_grad else 0
    config = _hf_config(model)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return FlopModel(counts["token"][0], counts["token"][1], counts["text"][0], counts["text"][1],
                     config.num_hidden_layers, heads * head_dim)


# ---- the matmul rate -------------------------------------------------------------------------------------

def matmul_rate(sizes: list, seconds: float, dtype: torch.dtype = torch.float32) -> dict:
    """torch.mm of square (n, n) `dtype` matrices for n in `sizes`: GFLOP/s sustained over a block of at least
    `seconds` after one untimed call, per size, and the best of them."""
    rates = {}
    for n in sizes:
        a, b, out = (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype))
        torch.mm(a, b, out=out)
        calls, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates[str(n)] = round(2 * n ** 3 * calls / elapsed / 1e9, 2)
    return {"gflops_by_size": rates, "best_gflops": max(rates.values()), "seconds_per_size": seconds}


# ---- measurements ----------------------------------------------------------------------------------------

@dataclass
class _CountedEncoded(Encoded):
    """The run's token ids, with every batch the loop collates tallied (in the order collated)."""
    masks: list = field(default_factory=list)

    def collate(self):
        inner = super().collate()

        def counted(items):
            batch = inner(items)
            self.masks.append(batch["inputs"]["attention_mask"])
            return batch
        return counted


class _StepClock:
    """A train_fold `status` callback: the time of each optimizer step's end, and how many batches had
    been collated when training stopped (the loader collates one batch ahead)."""

    def __init__(self, inputs: _CountedEncoded):
        self.inputs, self.times, self.collated_in_training = inputs, {}, None

    def __call__(self, phase: str, step: int = 0, **facts) -> None:
        if phase == "train":
            self.times[step] = time.perf_counter()
        elif phase == "validate" and self.collated_in_training is None:
            self.collated_in_training = len(self.inputs.masks)


def _figures(name: str, loop: str, phase: str, seconds: float, tally: TokenTally, flops: FlopModel,
             **facts) -> dict:
    train = phase == "train"
    computed, real = flops.flops(tally, train, True), flops.flops(tally, train, False)
    return dict(model=name, loop=loop, phase=phase, **facts, examples=tally.rows, batches=tally.batches,
                seconds=round(seconds, 3), examples_per_s=round(tally.rows / seconds, 2),
                real_tokens=tally.real, computed_tokens=tally.computed,
                padding_share=round(1 - tally.real / tally.computed, 4),
                real_tokens_per_s=round(tally.real / seconds, 1),
                computed_tokens_per_s=round(tally.computed / seconds, 1),
                model_gflop_computed=round(computed / 1e9, 3), model_gflop_real=round(real / 1e9, 3),
                gflops_computed=round(computed / seconds / 1e9, 3), gflops_real=round(real / seconds / 1e9, 3),
                threads=torch.get_num_threads(), load_average=[round(x, 2) for x in os.getloadavg()])


def _loop_config(base: Optional[str], preset: str, warmup: int, steps: int, precision: str = "no") -> RunConfig:
    """The run config a user's run of `preset` gets (from `base` YAML, or the defaults), trained for
    warmup + steps optimizer steps in one epoch under `precision` (train.mixed_precision)."""
    return load_config(base, [f"model.preset={preset}", "train.epochs=1", f"train.max_steps={warmup + steps}",
                              "train.patience=0", "train.save_models=false", "train.checkpoint_every=0",
                              # 'auto' is fp32 on a CPU ('no' would read as YAML's false)
                              f"train.mixed_precision={'auto' if precision == 'no' else precision}"])


@dataclass
class Slice:
    """The fixed rows measured: the first `rows` of train.csv train, the next N_VAL validate."""
    texts: list
    labels: np.ndarray  # (rows + N_VAL, n_labels) 0/1
    rows: int


def measure_project(cfg: RunConfig, data: Slice, warmup: int, steps: int, predict_rows: int, log) -> tuple:
    """Training examples/s of `train_fold` over optimizer steps warmup+1 .. warmup+steps, then prediction
    examples/s of `predict_logits` over `predict_rows` rows after one untimed batch.
    Returns (train figures, predict figures, FlopModel, the tokenizer)."""
    from accelerate.utils import set_seed

    from pipeline.cv import make_accelerator
    from pipeline.models import build_model, load_tokenizer
    from pipeline.presets import settings, train_settings
    from pipeline.inputs import format_texts, tokenize
    from pipeline.train import predict_logits, release, train_fold

    name, st = cfg.model.preset, settings(cfg.model)
    _, batch_size = train_settings(cfg)
    per_step = batch_size * cfg.train.grad_accum_steps
    tokenizer = load_tokenizer(cfg.model)
    ids = tokenize(tokenizer, format_texts(data.texts, cfg.model.prompt), st.max_length, st.append_eos)
    inputs = _CountedEncoded(ids, ids[data.rows:], tokenizer.pad_token_id, tokenizer.padding_side)
    folds = np.r_[np.ones(data.rows, dtype=int), np.zeros(len(ids) - data.rows, dtype=int)]
    accelerator = make_accelerator(cfg)
    clock = _StepClock(inputs)
    facts = dict(batch_size=batch_size, max_length=st.max_length, finetune=st.finetune)
    log(f"{name}: train_fold, {warmup} warm-up + {steps} timed optimizer steps of {per_step}")
    train_fold(cfg, 0, folds, data.labels, inputs, accelerator, None, tokenizer, status=clock)
    g = cfg.train.grad_accum_steps
    if len(clock.times) < warmup + steps or clock.collated_in_training < (warmup + steps) * g:
        raise AssertionError(f"train_fold ran {len(clock.times)} steps, not {warmup + steps}")
    tally = tally_of(inputs.masks[warmup * g:(warmup + steps) * g])
    seconds = clock.times[warmup + steps] - clock.times[warmup]

    set_seed(cfg.cv.seed)
    model, _ = build_model(cfg.model, data.labels.shape[1], tokenizer, device=accelerator.device)
    flops = flop_model(model, max(ids[:50], key=len))
    train = _figures(name, "project", "train", seconds, tally, flops, warmup=f"{warmup} steps", **facts)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    eval_bs = cfg.train.eval_batch_size
    log(f"{name}: predict_logits on {predict_rows} rows in batches of {eval_bs}")
    predict_logits(model, accelerator, inputs, "train", np.arange(min(eval_bs, predict_rows)), eval_bs)
    inputs.masks.clear()
    start = time.perf_counter()
    predict_logits(model, accelerator, inputs, "train", np.arange(predict_rows), eval_bs)
    seconds = time.perf_counter() - start
    predict = _figures(name, "project", "predict", seconds, tally_of(inputs.masks), flops,
                       warmup="1 batch", **dict(facts, batch_size=eval_bs))
    del model
    release(accelerator)
    return train, predict, flops, tokenizer


class _CountingCollator:
    """DataCollatorWithPadding, with the attention mask of each batch kept."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorWithPadding

        self.inner, self.masks = DataCollatorWithPadding(tokenizer), []

    def __call__(self, features):
        batch = self.inner(features)
        self.masks.append(batch["attention_mask"])
        return batch


def measure_reference(cfg: RunConfig, data: Slice, tokenizer, warmup: int, steps: int, predict_rows: int,
                      log) -> tuple:
    """The same measurements through `transformers.Trainer` (AdamW, linear warmup and decay, clipping, its
    random sampler) with `DataCollatorWithPadding` and AutoModelForSequenceClassification (multilabel BCE):
    the same weights, dropout and frozen embeddings as the project's model, batch size, steps, lr and rows.
    Returns (train figures, predict figures)."""
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from pipeline.models import build_model
    from pipeline.presets import settings, train_settings, weights_source
    from pipeline.inputs import format_texts, tokenize

    name, st = cfg.model.preset, settings(cfg.model)
    lr, batch_size = train_settings(cfg)
    set_seed(cfg.cv.seed)
    # the backbone config the project builds (its dropout, its tiny shape), with a multilabel head
    project, _ = build_model(cfg.model, data.labels.shape[1], tokenizer)
    config = copy.deepcopy(project.backbone.config)
    del project
    config.num_labels, config.problem_type = data.labels.shape[1], "multi_label_classification"
    set_seed(cfg.cv.seed)
    if st.preset.tiny is not None:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(weights_source(cfg.model), config=config)
    if st.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    ids = tokenize(tokenizer, format_texts(data.texts, cfg.model.prompt), st.max_length, st.append_eos)
    rows = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": y.astype(np.float32).tolist()}
            for x, y in zip(ids[:data.rows], data.labels)]
    collator = _CountingCollator(tokenizer)
    times: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times[state.global_step] = time.perf_counter()

    out = tempfile.mkdtemp(prefix="speed-trainer-")
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, per_device_eval_batch_size=cfg.train.eval_batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum_steps, max_steps=warmup + steps, learning_rate=lr,
        weight_decay=cfg.train.weight_decay, warmup_steps=cfg.train.warmup_ratio, lr_scheduler_type="linear",
        max_grad_norm=cfg.train.max_grad_norm, seed=cfg.cv.seed, report_to="none", save_strategy="no",
        logging_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
        bf16=cfg.train.mixed_precision == "bf16", use_cpu=True)  # transformers refuses bf16 on CPU without it
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # it prints the run's metrics dict into the table's stdout
    facts = dict(batch_size=batch_size, max_length=st.max_length, finetune=st.finetune)
    log(f"{name}: transformers.Trainer, {warmup} warm-up + {steps} timed optimizer steps of {batch_size}")
    try:
        trainer.train()
        g = cfg.train.grad_accum_steps
        tally = tally_of(collator.masks[warmup * g:(warmup + steps) * g])
        seconds = times[warmup + steps] - times[warmup]
        flops = flop_model(model, max(ids[:50], key=len))
        train = _figures(name, "Trainer", "train", seconds, tally, flops, warmup=f"{warmup} steps",
                         **facts)
        log(f"{name}: Trainer.predict on {predict_rows} rows")
        unlabelled = [{k: v for k, v in r.items() if k != "labels"} for r in rows[:predict_rows]]
        trainer.predict(unlabelled[:cfg.train.eval_batch_size])
        collator.masks.clear()
        start = time.perf_counter()
        trainer.predict(unlabelled)
        seconds = time.perf_counter() - start
        predict = _figures(name, "Trainer", "predict", seconds, tally_of(collator.masks), flops,
                           warmup="1 batch", **dict(facts, batch_size=cfg.train.eval_batch_size))
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return train, predict


# ---- the whole run ---------------------------------------------------------------------------------------

def _ratios(measured: list) -> dict:
    """project/Trainer per model and phase, and prediction/training rate of each model's project loop."""
    rate = {(m["model"], m["loop"], m["phase"]): m["examples_per_s"] for m in measured}
    out = {}
    for (model, loop, phase), value in rate.items():
        if loop == "Trainer" and (model, "project", phase) in rate:
            out[f"{model} {phase}: project / Trainer (examples/s)"] = round(rate[(model, "project", phase)] / value, 3)
    for (model, loop, phase), value in rate.items():
        if loop == "project" and phase == "train" and (model, loop, "predict") in rate:
            out[f"{model}: prediction / training rate (project; target >= 2.5)"] = round(
                rate[(model, loop, "predict")] / value, 3)
    return out


def run_benchmark(args: argparse.Namespace, log=lambda line: print(line, file=sys.stderr)) -> dict:
    """Every measurement of the command line `args` (see `parser`), one after the other; returns the result."""
    import transformers

    from pipeline.config import DataConfig
    from pipeline.data import load_competition_data
    from pipeline.presets import train_settings

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # GGUF dequantization and weight loading bars
    # bitsandbytes (imported by peft) warns that an optional CPU kernel package is missing; nothing here uses it
    for noisy in ("transformers", "accelerate", "bitsandbytes", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started, load_start = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    encoder_preset = "tiny-encoder" if args.tiny else args.preset
    decoder_preset = None if args.no_decoder else ("tiny-decoder" if args.tiny else args.decoder_preset)
    configs = [_loop_config(args.config, encoder_preset, args.warmup, args.steps, args.mixed_precision)]
    if decoder_preset:
        configs.append(_loop_config(None, decoder_preset, args.warmup, args.steps, args.mixed_precision))
    resolve_precision(args.mixed_precision)  # bf16 needs native bf16: refused before anything is measured
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[args.mixed_precision]
    kind = {"no": "fp32", "bf16": "bf16"}[args.mixed_precision]
    # one epoch must hold warm-up + timed steps (an epoch's end validates, which is not training)
    need = {c.model.preset: (args.warmup + args.steps) * train_settings(c)[1] * c.train.grad_accum_steps
            for c in configs}
    rows = args.rows or max(need.values())
    short = [f"{name} needs {n} ({args.warmup} warm-up + {args.steps} timed steps of its batch)"
             for name, n in need.items() if rows < n]
    if short:
        raise ConfigError(f"--rows {rows} is too few for one epoch of the measured steps: {'; '.join(short)}; "
                          f"raise --rows or lower --steps")
    if torch.cuda.is_available():
        raise ConfigError("benchmarks/speed.py measures the CPU; hide the GPU with CUDA_VISIBLE_DEVICES= ")
    frame = load_competition_data(DataConfig(), args.data_dir)
    if rows + N_VAL > len(frame.train):
        raise ConfigError(f"--rows {rows} (+{N_VAL} validation rows) exceeds the {len(frame.train)} rows of "
                          f"{args.data_dir}/train.csv")
    data = Slice(frame.train_texts[:rows + N_VAL], frame.labels[:rows + N_VAL], rows)
    predict_rows = min(args.predict_rows, rows)

    log(f"matmul: {kind} torch.mm at sizes {args.gemm_sizes}, {args.gemm_seconds} s each, before the models")
    gemm_first = matmul_rate(args.gemm_sizes, args.gemm_seconds, dtype)
    measured, flop_models = [], {}
    train, predict, flops, tokenizer = measure_project(configs[0], data, args.warmup, args.steps, predict_rows, log)
    measured += [train, predict]
    flop_models[encoder_preset] = asdict(flops)
    if not args.no_reference:
        if train["finetune"] != "full":
            log(f"{encoder_preset}: no Trainer reference (it is built for full fine-tuning, not {train['finetune']})")
        else:
            measured += measure_reference(configs[0], data, tokenizer, args.warmup, args.steps, predict_rows, log)
    if decoder_preset:
        train, predict, flops, _ = measure_project(configs[1], data, args.warmup, args.steps, predict_rows, log)
        measured += [train, predict]
        flop_models[decoder_preset] = asdict(flops)
    log("matmul: again, after the models")
    gemm_last = matmul_rate(args.gemm_sizes, args.gemm_seconds, dtype)
    gemm = dict(before=gemm_first, after=gemm_last, best_gflops=max(gemm_first["best_gflops"],
                                                                    gemm_last["best_gflops"]))
    for m in measured:
        m["matmul_limit_share_computed"] = round(m["gflops_computed"] / gemm["best_gflops"], 4)
        m["matmul_limit_share_real"] = round(m["gflops_real"] / gemm["best_gflops"], 4)
    load_end = os.getloadavg()
    return dict(
        started=started, finished=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(cpu=_cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
                     torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                     kernels=torch.backends.cpu.get_cpu_capability(),
                     isa_caps={k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}),
        load_average=dict(start=[round(x, 2) for x in load_start], end=[round(x, 2) for x in load_end],
                          busy=max(load_start[0], load_end[0]) > os.cpu_count() + 0.5),
        settings=dict(data_dir=str(args.data_dir), rows=rows, validation_rows=N_VAL, predict_rows=predict_rows,
                      warmup_steps=args.warmup, timed_steps=args.steps, config=args.config, precision=kind),
        warmup=(f"training: the first {args.warmup} optimizer steps of each loop run untimed; prediction: one "
                f"untimed batch before each timed pass"),
        tokens=("computed = rows x padded width of every batch (what the matmuls ran on); real = attention-mask "
                "tokens; attention FLOPs use width^2 (computed) or length^2 (real) per text"),
        notes=NOTES, matmul=gemm, flop_models=flop_models, measurements=measured, ratios=_ratios(measured))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(result: dict) -> str:
    """The result as a table a person reads."""
    m, s = result["machine"], result["settings"]
    caps = " ".join(f"{k}={v}" for k, v in m.get("isa_caps", {}).items())
    lines = [f"speed on {m['cpu']} ({m['cores']} cores), {m['threads']} torch threads, torch {m['torch']}, "
             f"transformers {m['transformers']}, {s['precision']}",
             f"torch CPU kernels: {m.get('kernels', '?')}" + (f"; instruction set capped by {caps}" if caps else ""),
             f"load average (1, 5, 15 min): start {result['load_average']['start']}, end {result['load_average']['end']}",
             f"rows: the first {s['rows']} of {s['data_dir']}/train.csv; prediction on the first {s['predict_rows']}",
             f"warm-up: {result['warmup']}",
             f"tokens: {result['tokens']}",
             *[f"note: {note}" for note in result["notes"]],
             *[f"matmul {s['precision']} {when} the models (GFLOP/s): "
               + ", ".join(f"{n}: {r}" for n, r in result["matmul"][when]["gflops_by_size"].items())
               for when in ("before", "after")],
             f"matmul-bound limit: the best of both, {result['matmul']['best_gflops']} GFLOP/s"]
    if result["load_average"]["busy"]:
        lines.append(f"BUSY MACHINE: the 1-minute load passed {m['cores']} cores + 0.5 (this run itself adds about "
                     f"{m['threads']}); other work shared the CPU, so these figures understate it")
    before, after = result["matmul"]["before"]["best_gflops"], result["matmul"]["after"]["best_gflops"]
    if abs(before - after) > 0.1 * max(before, after):
        lines.append(f"UNSTEADY MACHINE: the matmul rate moved from {before} to {after} GFLOP/s during the run")
    lines.append("")
    head = ("model", "loop", "phase", "batch", "examples", "s", "examples/s", "real tok/s", "comp tok/s", "pad",
            "GFLOP/s comp", "limit comp", "limit real")
    rows = [head] + [(r["model"], r["loop"], r["phase"], str(r["batch_size"]), str(r["examples"]),
                      f"{r['seconds']:.2f}", f"{r['examples_per_s']:.1f}", f"{r['real_tokens_per_s']:.0f}",
                      f"{r['computed_tokens_per_s']:.0f}", f"{100 * r['padding_share']:.0f}%",
                      f"{r['gflops_computed']:.1f}", f"{100 * r['matmul_limit_share_computed']:.1f}%",
                      f"{100 * r['matmul_limit_share_real']:.1f}%") for r in result["measurements"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines += ["", "limit comp / real: model FLOPs per second on computed / real tokens over the best matmul rate"]
    lines += [f"{k}: {v}x" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def _sizes(text: str) -> list:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,512, got {text!r}") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="competition folder (default: data/emotion-detection-fall-2024)")
    p.add_argument("--config", default=None, help="YAML config of the encoder run (default: the embedded default, "
                   "which configs/minilm-l6.yaml restates)")
    p.add_argument("--preset", default="minilm-l6", help="encoder preset (default: minilm-l6)")
    p.add_argument("--decoder-preset", default="smollm2-135m", help="LoRA decoder preset (default: smollm2-135m)")
    p.add_argument("--tiny", action="store_true", help="tiny-encoder and tiny-decoder instead (tests: seconds)")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers.Trainer reference")
    p.add_argument("--no-decoder", action="store_true", help="skip the decoder")
    p.add_argument("--rows", type=_positive, default=None,
                   help="training rows, the first of train.csv (default: what warm-up + steps need)")
    p.add_argument("--steps", type=_positive, default=30, help="timed optimizer steps per loop (default: 30)")
    p.add_argument("--warmup", type=_positive, default=5, help="untimed optimizer steps first (default: 5)")
    p.add_argument("--predict-rows", type=_positive, default=512, help="rows predicted, timed (default: 512)")
    p.add_argument("--gemm-sizes", type=_sizes, default=[256, 512, 1024, 2048], help="square matmul sizes")
    p.add_argument("--gemm-seconds", type=float, default=1.5, help="seconds of matmuls per size (default: 1.5)")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="train.mixed_precision of every loop, the Trainer's included, and the dtype of the matmul\n"
                        "limit (default: no, fp32; bf16 needs a CPU with native bf16)")
    p.add_argument("--out", default="runs/speed.json", help="JSON result (default: runs/speed.json)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run_benchmark(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from pipeline.io import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(render(result))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
