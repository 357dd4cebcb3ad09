"""Does `torch.compile` speed up training on this CPU? Eager against compiled training steps, same model, same
batches, in one process. With --for-loop-adamw, also eager with torch's for-loop AdamW (its CPU default) in place
of the loop's fused one (`pipeline.train.adamw`).

Each variant (eager, then one per compile mode) is a copy of the same freshly built model with its own AdamW.
Each first runs untimed warm-up steps (for the compiled ones: compilation and, for max-autotune, GEMM
autotuning; inductor caches both on disk, so a second run warms up faster), then all variants take turns over
blocks of steps on the same length-grouped batches (the order rotated per block, so a machine that speeds up or
slows down during the run favours none of them). A step is the training loop's work without its positive
weights and learning-rate schedule: forward, BCE with logits, backward, clipping, AdamW.

    python benchmarks/torch_compile.py --data-dir ../shared/data/emotion-detection-fall-2024 --out runs/compile.json
    python benchmarks/torch_compile.py --data-dir ../shared/data/emotion-detection-fall-2024 --modes --for-loop-adamw
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError


def _batches(cfg: RunConfig, data_dir: Optional[str], rows: int, seed: int) -> tuple:
    """The first `rows` training texts tokenized as the loop does, cut into length-grouped batches of the
    preset's batch size; returns (model inputs and labels per batch, the tokenizer)."""
    from pipeline.config import DataConfig
    from pipeline.data import load_competition_data
    from pipeline.inputs import Encoded, format_texts, tokenize
    from pipeline.models import load_tokenizer
    from pipeline.presets import settings, train_settings
    from pipeline.train import LengthGroupedBatches

    frame = load_competition_data(DataConfig(), data_dir)
    st, tokenizer = settings(cfg.model), load_tokenizer(cfg.model)
    ids = tokenize(tokenizer, format_texts(frame.train_texts[:rows], cfg.model.prompt), st.max_length, st.append_eos)
    inputs, index = Encoded(ids, [], tokenizer.pad_token_id, tokenizer.padding_side), np.arange(len(ids))
    dataset, collate = inputs.dataset("train", index, frame.labels[:rows]), inputs.collate()
    grouped = LengthGroupedBatches(inputs.lengths("train", index), train_settings(cfg)[1], seed)
    return [collate([dataset[i] for i in batch]) for batch in grouped], tokenizer


FOR_LOOP = "eager-for-loop-adamw"  # the variant --for-loop-adamw adds


def _stepper(model: torch.nn.Module, mode: Optional[str]):
    """One training step on a copy of `model`: eager when mode is None or FOR_LOOP, else compiled in that mode."""
    from pipeline.train import adamw

    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=False) if mode == FOR_LOOP else adamw(params, 1e-5)
    mode = None if mode == FOR_LOOP else mode
    forward = model if mode is None else torch.compile(model, mode=mode, dynamic=True)

    def step(batch: dict) -> None:
        logits = forward(**batch["inputs"])
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def run_benchmark(args: argparse.Namespace, log=lambda line: print(line, file=sys.stderr)) -> dict:
    from pipeline.models import build_model

    torch.manual_seed(args.seed)
    cfg = RunConfig()
    cfg.model.preset = "tiny-encoder" if args.tiny else args.preset
    batches, tokenizer = _batches(cfg, args.data_dir, args.rows, args.seed)
    need = args.warmup + args.blocks * args.steps_per_block
    if len(batches) < need:
        raise ConfigError(f"--rows {args.rows} gives {len(batches)} batches; {need} are needed "
                          f"(--warmup + --blocks x --steps-per-block)")
    model, _ = build_model(cfg.model, batches[0]["labels"].shape[1], tokenizer, device=torch.device("cpu"))
    names = ["eager"] + ([FOR_LOOP] if args.for_loop_adamw else []) + list(args.modes)
    steppers, warmup_seconds = {}, {}
    for name in names:
        steppers[name] = _stepper(model, None if name == "eager" else name)
        start = time.perf_counter()
        for batch in batches[:args.warmup]:
            steppers[name](batch)
        warmup_seconds[name] = round(time.perf_counter() - start, 2)
        log(f"{name}: {args.warmup} warm-up steps in {warmup_seconds[name]} s")
    seconds = dict.fromkeys(names, 0.0)
    for block in range(args.blocks):
        part = batches[args.warmup + block * args.steps_per_block:args.warmup + (block + 1) * args.steps_per_block]
        for name in names[block % len(names):] + names[:block % len(names)]:
            start = time.perf_counter()
            for batch in part:
                steppers[name](batch)
            seconds[name] += time.perf_counter() - start
    examples = sum(len(b["labels"]) for b in batches[args.warmup:need])
    result = dict(preset=cfg.model.preset, rows=args.rows, timed_steps=need - args.warmup, timed_examples=examples,
                  blocks=args.blocks, torch=torch.__version__, threads=torch.get_num_threads(),
                  warmup_seconds=warmup_seconds, seconds={k: round(v, 2) for k, v in seconds.items()},
                  examples_per_second={k: round(examples / v, 2) for k, v in seconds.items()},
                  speedup_over_eager={k: round(seconds["eager"] / v, 3) for k, v in seconds.items()})
    for name in names:
        log(f"{name}: {result['examples_per_second'][name]} examples/s, {result['speedup_over_eager'][name]}x eager")
    return result


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="competition folder (default: data/emotion-detection-fall-2024)")
    p.add_argument("--preset", default="minilm-l6", help="encoder preset (default: minilm-l6)")
    p.add_argument("--tiny", action="store_true", help="the tiny-encoder preset instead (tests)")
    p.add_argument("--modes", nargs="*", default=["default", "max-autotune-no-cudagraphs"], choices=MODES,
                   metavar="MODE", help=f"torch.compile modes to compare with eager, of {', '.join(MODES)} "
                   "(none: eager alone, for a quick check)")
    p.add_argument("--for-loop-adamw", action="store_true", help="also eager with torch's for-loop AdamW (its "
                   "default on CPU) instead of the fused one the loop uses")
    p.add_argument("--rows", type=_positive, default=3000, help="training rows tokenized and batched (default: 3000)")
    p.add_argument("--warmup", type=_positive, default=3, help="untimed steps per variant first (default: 3)")
    p.add_argument("--blocks", type=_positive, default=4, help="timed blocks, each variant once per block (default: 4)")
    p.add_argument("--steps-per-block", type=_positive, default=20, help="steps per variant per block (default: 20)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="write the result as JSON here too")
    return p


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run_benchmark(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        from pipeline.io import atomic_write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
