"""pipeline/run_cost.py: a run's compute estimated from the planner's parameter counts and its texts' characters,
against a hand count, and the order it gives the shipped presets (what a recipe's pool starts first)."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline import arch, presets, run_cost
from pipeline.config import load_config


def _cfg(comp_dir, *extra):
    return load_config(None, [f"data.data_dir={comp_dir}", "cv.n_folds=5", *extra])


def _chars(path) -> int:
    return int(pd.read_csv(path)["Tweet"].astype(str).str.len().sum())


def _weights(cfg) -> int:
    counts = arch.count_parameters(presets.settings(cfg.model))
    return counts.backbone - counts.embeddings


def test_a_fold_costs_its_epochs_of_training_validation_and_the_test_predictions(comp_dir):
    cfg = _cfg(comp_dir, "model.preset=minilm-l6", "train.epochs=3")
    n, train, test = _weights(cfg), _chars(comp_dir / "train.csv"), _chars(comp_dir / "test.csv")
    assert 10e6 < n < 12e6  # MiniLM-L6: 6 blocks of 384 wide, its 30522 x 384 embeddings left out
    assert run_cost.forward_weights(cfg) == n
    assert run_cost.fold_cost(cfg) == pytest.approx(3 * (train * 4 / 5 * 6 * n + train / 5 * 2 * n) + test * 2 * n)
    # a student also learns the test texts each epoch; a subset of rows costs its share
    student = _cfg(comp_dir, "model.preset=minilm-l6", "train.epochs=3", "data.pseudo_label_from=[/a/run]")
    assert run_cost.fold_cost(student) - run_cost.fold_cost(cfg) == pytest.approx(3 * test * 6 * n)
    rows = len(pd.read_csv(comp_dir / "train.csv"))
    half = _cfg(comp_dir, "model.preset=minilm-l6", "train.epochs=3", f"data.max_rows={rows // 2}")
    assert run_cost.fold_cost(half) == pytest.approx(3 * (train * (rows // 2) / rows) * (4 / 5 * 6 + 1 / 5 * 2) * n
                                                     + test * 2 * n)
    # LoRA's step is two forward passes (the frozen weights still pass gradients back), not three
    lora = _cfg(comp_dir, "model.preset=minilm-l6", "train.epochs=3", "model.finetune=lora")
    assert run_cost.fold_cost(lora) == pytest.approx(3 * (train * 4 / 5 * 4 * n + train / 5 * 2 * n) + test * 2 * n)
    # a frozen backbone reads every text once per run; TF-IDF costs nothing
    assert run_cost.run_cost(_cfg(comp_dir, "model.preset=minilm-l6", "model.finetune=head")) == pytest.approx(
        2 * n * (train + test))
    assert run_cost.fold_cost(_cfg(comp_dir, "model.preset=tfidf-lr")) == 0.0


def test_the_shipped_presets_rank_as_their_measured_fold_times(comp_dir):
    """Measured a fold on one machine (docs/BENCHMARKS.md): MiniLM 3 epochs 275 s, SmolLM2 LoRA 1 epoch 880 s,
    MPNet fine-tuned 2 epochs 1300 s."""
    minilm = run_cost.fold_cost(_cfg(comp_dir, "model.preset=minilm-l6"))
    smollm2 = run_cost.fold_cost(_cfg(comp_dir, "model.preset=smollm2-135m", "model.finetune=lora", "train.epochs=1"))
    mpnet = run_cost.fold_cost(_cfg(comp_dir, "model.preset=mpnet-base", "train.epochs=2"))
    assert minilm < smollm2 < mpnet
    assert 1.5 < smollm2 / minilm < 4 and 3 < mpnet / minilm < 7


def test_unreadable_data_costs_nothing_rather_than_failing(tmp_path):
    cfg = load_config(None, [f"data.data_dir={tmp_path / 'missing'}", "model.preset=minilm-l6"])
    assert run_cost.fold_cost(cfg) == 0.0  # the run itself then says what is missing
