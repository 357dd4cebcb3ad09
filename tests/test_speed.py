"""benchmarks/speed.py: token counting on known batches, the FLOP count against a hand count and torch's
FlopCounterMode, and the whole script on the tiny presets writing every figure."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.precision import cpu_bf16_flag

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("benchmarks_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokens_of_a_known_batch_real_and_computed(speed, side):
    from pipeline.inputs import Encoded

    inputs = speed._CountedEncoded([[5, 6, 7], [8]], [], pad_id=0, padding_side=side)
    batch = inputs.collate()([{"row": 0, "input_ids": [5, 6, 7]}, {"row": 1, "input_ids": [8]}])
    assert batch["inputs"]["input_ids"].shape == (2, 3)
    assert isinstance(inputs, Encoded) and len(inputs.masks) == 1
    tally = speed.tally_of(inputs.masks)
    # two texts of 3 and 1 tokens padded to width 3: 6 computed, 4 real
    assert (tally.batches, tally.rows, tally.computed, tally.real) == (1, 2, 6, 4)
    assert (tally.computed_sq, tally.real_sq) == (2 * 9, 9 + 1)
    both = tally + speed.tally_of([torch.tensor([[1, 1]])])
    assert (both.batches, both.rows, both.computed, both.real, both.real_sq) == (2, 3, 8, 6, 14)


def _tiny(preset: str, n_labels: int = 4, eager: bool = False):
    from accelerate.utils import set_seed

    from pipeline.config import load_config
    from pipeline.models import build_model

    set_seed(0)
    cfg = load_config(None, [f"model.preset={preset}"])
    model, tokenizer = build_model(cfg.model, n_labels)
    if eager:  # torch's FlopCounterMode has no formula for the CPU SDPA kernel; eager attention is plain matmuls
        backbone = model.get_base_model().backbone if hasattr(model, "get_base_model") else model.backbone
        backbone.set_attn_implementation("eager")
    return model


def test_flop_model_of_tiny_encoder_equals_a_hand_count(speed):
    flops = speed.flop_model(_tiny("tiny-encoder"), [101, 2023, 2003, 102])
    # tiny-encoder: 2 layers, hidden 32, MLP 64. Per layer q, k, v, o = 4 x 32 x 32 and the MLP 32 x 64 + 64 x 32
    per_layer = 4 * 32 * 32 + 2 * 32 * 64
    assert flops.token_weights == flops.token_trainable == 2 * per_layer == 16384
    # once per text: BERT's pooler 32 x 32 and the head 32 x 4
    assert flops.text_weights == flops.text_trainable == 32 * 32 + 32 * 4 == 1152
    assert (flops.layers, flops.attn_width) == (2, 32)
    # one text of 10 tokens: 2 per weight per token, QK^T and AV = 2 x 2 x 10 keys x 32 per token per layer
    assert flops.forward_flops(10, 100, 1) == 2 * 16384 * 10 + 2 * 2 * 2 * 32 * 10 * 10 + 2 * 1152 == 355584
    # training: 6 per weight (forward, input and weight gradients), attention 3x forward
    assert flops.train_flops(10, 100, 1) == 6 * 16384 * 10 + 3 * 25600 + 6 * 1152 == 1066752


def _counted(model, ids, mask, train: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.train(train)
    with counter:
        if train:
            model(input_ids=ids, attention_mask=mask).float().pow(2).sum().backward()
        else:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
    return counter.get_total_flops()


BATCH_IDS = torch.tensor([[101, 2023, 2003, 1037, 7099, 102], [101, 7592, 102, 0, 0, 0]])
BATCH_MASK = (BATCH_IDS != 0).long()


def test_flop_model_equals_torch_flop_counter_on_a_padded_batch(speed):
    model = _tiny("tiny-encoder", eager=True)
    flops = speed.flop_model(model, [101, 2023, 2003, 102])
    tally = speed.tally_of([BATCH_MASK])
    assert _counted(model, BATCH_IDS, BATCH_MASK, train=False) == flops.flops(tally, train=False, computed=True)
    # in training BERT's pooler runs forward only (its output is unused): 4 x its 32 x 32 weights per text fewer
    assert _counted(model, BATCH_IDS, BATCH_MASK, train=True) == (flops.flops(tally, train=True, computed=True)
                                                                  - 4 * 32 * 32 * tally.rows)
    assert flops.flops(tally, train=False, computed=False) < flops.flops(tally, train=False, computed=True)


def test_flop_model_of_a_lora_decoder_is_a_close_upper_bound(speed):
    model = _tiny("tiny-decoder", eager=True)
    flops = speed.flop_model(model, [101, 2023, 2003, 102])
    # LoRA: only the adapters (and the head) train
    assert 0 < flops.token_trainable < 0.2 * flops.token_weights
    tally = speed.tally_of([BATCH_MASK])
    counted = _counted(model, BATCH_IDS, BATCH_MASK, train=False)
    assert counted == pytest.approx(flops.flops(tally, train=False, computed=True), rel=2e-3)  # + rotary angles
    # the first layer's input projections get no input gradient (frozen embeddings below): 5% here, 2 layers
    counted = _counted(model, BATCH_IDS, BATCH_MASK, train=True)
    assert 0.9 * flops.flops(tally, train=True, computed=True) < counted <= flops.flops(tally, train=True,
                                                                                          computed=True)


def test_matmul_rate_is_positive_per_size(speed):
    gemm = speed.matmul_rate([16, 32], 0.01)
    assert set(gemm["gflops_by_size"]) == {"16", "32"} and gemm["best_gflops"] == max(gemm["gflops_by_size"].values())
    assert gemm["best_gflops"] > 0


def _run(args: list, cwd: Path, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **env_vars)
    return subprocess.run([sys.executable, str(SCRIPT)] + args, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_script_on_tiny_presets_writes_every_figure(speed, tmp_path, comp_dir):
    out = tmp_path / "speed.json"
    done = _run(["--tiny", "--data-dir", str(comp_dir), "--warmup", "1", "--steps", "2", "--predict-rows", "24",
                 "--gemm-sizes", "32,64", "--gemm-seconds", "0.02", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {(m["model"], m["loop"], m["phase"]): m for m in result["measurements"]}
    assert set(runs) == {("tiny-encoder", "project", "train"), ("tiny-encoder", "project", "predict"),
                         ("tiny-encoder", "Trainer", "train"), ("tiny-encoder", "Trainer", "predict"),
                         ("tiny-decoder", "project", "train"), ("tiny-decoder", "project", "predict")}
    for key, m in runs.items():
        for name in ("seconds", "examples_per_s", "real_tokens_per_s", "computed_tokens_per_s", "gflops_computed",
                     "matmul_limit_share_computed", "matmul_limit_share_real", "model_gflop_real", "threads"):
            assert math.isfinite(m[name]) and m[name] > 0, (key, name, m[name])
        assert m["real_tokens"] <= m["computed_tokens"] and 0 <= m["padding_share"] < 1
        assert m["matmul_limit_share_real"] <= m["matmul_limit_share_computed"]
    # the timed steps only: 2 steps of the preset's batch (16 and 8); prediction of --predict-rows rows
    assert runs[("tiny-encoder", "project", "train")]["examples"] == 2 * 16
    assert runs[("tiny-encoder", "Trainer", "train")]["examples"] == 2 * 16
    assert runs[("tiny-decoder", "project", "train")]["examples"] == 2 * 8
    assert all(runs[(model, loop, "predict")]["examples"] == 24 for model, loop, _ in runs)
    assert result["settings"]["rows"] == 3 * 16 and result["settings"]["warmup_steps"] == 1
    gemm = result["matmul"]
    for when in ("before", "after"):  # measured before and after the models; the limit is the best of both
        assert set(gemm[when]["gflops_by_size"]) == {"32", "64"} and gemm[when]["best_gflops"] > 0
    assert gemm["best_gflops"] == max(gemm["before"]["best_gflops"], gemm["after"]["best_gflops"])
    share = runs[("tiny-encoder", "project", "train")]
    assert share["matmul_limit_share_computed"] == pytest.approx(share["gflops_computed"] / gemm["best_gflops"],
                                                                 abs=1e-4)
    assert len(result["load_average"]["start"]) == len(result["load_average"]["end"]) == 3
    assert isinstance(result["load_average"]["busy"], bool)
    assert len(result["ratios"]) == 4 and all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    assert "tiny-decoder" in done.stdout and "Trainer" in done.stdout and "prediction / training" in done.stdout
    caps = {k: os.environ[k] for k in speed.ISA_CAPS if os.environ.get(k)}  # none, unless the tests run capped
    assert result["machine"]["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert result["machine"]["isa_caps"] == caps and ("capped by" in done.stdout) == bool(caps)


def test_an_instruction_set_capped_by_the_environment_is_recorded(tmp_path, comp_dir):
    """ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS / ONEDNN_MAX_CPU_ISA (an AVX-512 machine run as an AVX2 one) are
    written with the result and printed, so a capped run is never read as the machine's own speed."""
    out = tmp_path / "speed.json"
    caps = dict(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    done = _run(["--tiny", "--no-decoder", "--no-reference", "--data-dir", str(comp_dir), "--warmup", "1", "--steps",
                 "2", "--predict-rows", "24", "--gemm-sizes", "32", "--gemm-seconds", "0.02", "--out", str(out)],
                tmp_path, **caps)
    assert done.returncode == 0, done.stderr[-3000:]
    machine = json.loads(out.read_text())["machine"]
    assert machine["isa_caps"] == caps
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # an x86 CPU with AVX2 at least
        assert machine["kernels"] == "AVX2"
    assert ("instruction set capped by ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
            in done.stdout)


def test_too_few_rows_is_one_line_naming_the_flag(speed, tmp_path, comp_dir, capsys):
    out = tmp_path / "speed.json"
    code = speed.main(["--tiny", "--data-dir", str(comp_dir), "--rows", "20", "--steps", "2", "--warmup", "1",
                       "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --rows 20 is too few")
    assert "tiny-encoder needs 48" in err[0] and "tiny-decoder needs 24" in err[0] and not out.exists()


def test_bf16_without_native_bf16_is_refused_before_anything_is_measured(speed, tmp_path, comp_dir, capsys,
                                                                         monkeypatch):
    import pipeline.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    out = tmp_path / "speed.json"
    code = speed.main(["--tiny", "--data-dir", str(comp_dir), "--mixed-precision", "bf16", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not out.exists()
    assert "bf16 needs a CUDA GPU or a CPU with native bf16" in err[0]


@pytest.mark.skipif(torch.cuda.is_available() or cpu_bf16_flag() is None, reason="bf16 on a CPU needs native bf16")
def test_script_under_bf16_on_a_cpu_with_native_bf16(tmp_path, comp_dir):
    out = tmp_path / "speed.json"
    done = _run(["--tiny", "--no-decoder", "--mixed-precision", "bf16", "--data-dir", str(comp_dir), "--warmup", "1",
                 "--steps", "2", "--predict-rows", "24", "--gemm-sizes", "32", "--gemm-seconds", "0.02",
                 "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["precision"] == "bf16" and "matmul bf16 before the models" in done.stdout
    assert {(m["loop"], m["phase"]) for m in result["measurements"]} == {
        ("project", "train"), ("project", "predict"), ("Trainer", "train"), ("Trainer", "predict")}
    assert all(m["examples_per_s"] > 0 for m in result["measurements"])


def test_generate_speed_script_on_a_tiny_decoder(comp_dir, tmp_path):
    """benchmarks/generate_speed.py end to end on tiny-qwen2 in generate mode: every rate written, positive."""
    out = tmp_path / "generate-speed.json"
    script = ROOT / "benchmarks" / "generate_speed.py"
    done = subprocess.run([sys.executable, str(script), "--data-dir", str(comp_dir), "--rows", "12",
                           "--train-batches", "2", "--set", "model.preset=tiny-qwen2", "--set", "train.batch_size=4",
                           "--set", "train.eval_batch_size=5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("train_rows_per_s", "score_rows_per_s", "generate_rows_per_s"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert result["shared_prefix_tokens"] > 10 and result["rows"] == 12 and result["train_batch"] == 4
    assert "score_rows_per_s" in done.stdout


@pytest.fixture(scope="module")
def compile_bench():
    spec = importlib.util.spec_from_file_location("benchmarks_torch_compile", ROOT / "benchmarks" / "torch_compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compile_benchmark_eager_only_on_the_tiny_encoder(compile_bench, comp_dir, tmp_path, capsys):
    """benchmarks/torch_compile.py with no compile mode (compiling takes a minute: measured in BENCHMARKS.md
    instead): the batches, the timed blocks and the JSON it writes. Too few rows: one line naming the flags."""
    out = tmp_path / "compile.json"
    args = ["--tiny", "--data-dir", str(comp_dir), "--modes", "--warmup", "1", "--blocks", "2",
            "--steps-per-block", "1", "--out", str(out)]
    assert compile_bench.main(args + ["--rows", "48"]) == 0  # tiny-encoder's batch is 16: 3 batches
    result = json.loads(out.read_text())
    assert result["timed_steps"] == 2 and result["timed_examples"] == 32 and result["blocks"] == 2
    assert set(result["seconds"]) == {"eager"} and result["speedup_over_eager"] == {"eager": 1.0}
    assert result["examples_per_second"]["eager"] > 0
    assert compile_bench.main(args + ["--rows", "64", "--for-loop-adamw"]) == 0  # 4 batches: 1 + 2 x 1 steps
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"eager", "eager-for-loop-adamw"} and result["speedup_over_eager"]["eager"] == 1.0
    assert result["examples_per_second"]["eager-for-loop-adamw"] > 0
    out.unlink()
    assert compile_bench.main(args + ["--rows", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --rows 30 gives 2 batches; 3 are needed (--warmup + --blocks x --steps-per-block)"
    assert not out.exists()
