"""The CUDA measurement harness (pipeline/gpu_measure.py) as far as a CPU can check it: its random presets
keep the real architecture, its table reads results and failures, it fails cleanly without a GPU, and a run's
report shows a measured GPU peak beside the plan. The measurements themselves are in docs/MEMORY.md."""
from __future__ import annotations

import pytest

from pipeline import gpu_measure, plan, presets
from pipeline.report import _timing_lines


@pytest.fixture(autouse=True)
def _own_presets(monkeypatch):
    # case_config registers random-* presets: keep them out of the registry other tests read
    monkeypatch.setattr(presets, "PRESETS", dict(presets.PRESETS))


@pytest.mark.parametrize("index", range(len(gpu_measure.CASES)))
def test_each_case_is_the_real_architecture_with_random_weights(index):
    preset, finetune, four, ckpt, batch, length = gpu_measure.CASES[index]
    cfg = gpu_measure.case_config(dict(preset=preset, finetune=finetune, load_in_4bit=four,
                                       gradient_checkpointing=ckpt, batch_size=batch, max_length=length))
    clone, real = presets.get_preset(cfg.model.preset), presets.get_preset(preset)
    assert clone.name == f"random-{preset}" and clone.hf_id is None and clone.arch is None
    assert clone.tiny == {k: v for k, v in real.arch.items() if k != "vocab_size"}
    assert (clone.lora_targets, clone.pooling, clone.kind) == (real.lora_targets, real.pooling, real.kind)
    s = presets.settings(cfg.model)
    assert (s.finetune, s.load_in_4bit, s.gradient_checkpointing, s.max_length) == (finetune, four, ckpt, length)
    est = plan.estimate_memory(cfg, "cuda", 11)
    assert est.batch_size == batch and est.max_length == length
    # the plan of the clone is the real preset's but for the vocabulary (the tokenizer's 30,522 rows)
    real_est = plan.estimate_memory(plan_cfg(preset, cfg), "cuda", 11)
    assert est.activations == real_est.activations and est.weights < real_est.weights


def plan_cfg(preset, cfg):
    from pipeline.config import load_config

    m = cfg.model
    return load_config(None, [f"model.preset={preset}", f"model.finetune={m.finetune}",
                              f"model.load_in_4bit={str(m.load_in_4bit).lower()}",
                              f"model.gradient_checkpointing={str(m.gradient_checkpointing).lower()}",
                              f"train.batch_size={cfg.train.batch_size}", f"model.max_length={m.max_length}"])


def test_table_reads_measurements_and_failures():
    case = dict(preset="qwen2.5-1.5b", finetune="lora", load_in_4bit=True, gradient_checkpointing=True,
                batch_size=8, max_length=256)
    ok = dict(case=case, max_allocated=2 * plan.GIB, estimate_tensors=int(1.9 * plan.GIB),
              device_used_peak_seen=3 * plan.GIB, estimate_total=int(2.9 * plan.GIB), examples_per_second=27.6,
              tokens_per_second=7072.4)
    text = gpu_measure.table([ok, dict(case=case, error="RuntimeError: no CUDA GPUs are available")])
    rows = text.splitlines()
    assert rows[2] == ("| qwen2.5-1.5b | lora | yes | on | 8 x 256 | 2.00 GiB | 1.90 GiB | -5.0% | 3.00 GiB "
                       "| 2.90 GiB | 27.6 | 7,072 |")
    assert "failed: RuntimeError: no CUDA GPUs are available" in rows[3]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_measuring_without_a_gpu_reports_a_failure_not_a_traceback():
    case = dict(preset="smollm2-135m", finetune="lora", load_in_4bit=False, gradient_checkpointing=False,
                batch_size=2, max_length=16, n_labels=11, steps=3)
    result = gpu_measure.measure(case, timeout=300)
    assert result["case"] == case and "error" in result and "\n" not in result["error"]


def test_a_cuda_runs_report_sets_its_peaks_beside_the_plan():
    timing = dict(wall_seconds=60.9, train_seconds=36.6, train_examples=2000, train_examples_per_second=54.7,
                  predict_seconds=10.9, predict_examples=8518, predict_examples_per_second=784.0,
                  gpu_peak_bytes=int(3.5 * plan.GIB), gpu_load_peak_bytes=int(1.75 * plan.GIB),
                  gpu_peak_estimate_bytes=int(3.38 * plan.GIB))
    lines = "\n".join(_timing_lines({"timing": timing}))
    assert ("| peak GPU memory, training and prediction (torch.cuda.max_memory_allocated, largest fold) | 3.50 GiB; "
            "the dry run planned 3.38 GiB of tensors for full-length batches |") in lines
    assert "| peak GPU memory while loading the model | 1.75 GiB |" in lines
    del timing["gpu_peak_bytes"]
    assert "GPU" not in "\n".join(_timing_lines({"timing": timing}))  # CPU runs have no such line
