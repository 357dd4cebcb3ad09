"""The training loop's parts: length-grouped batches, dynamic padding, one fold end to end."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.inputs import Encoded, _Collate
from pipeline.train import LengthGroupedBatches, train_fold


def test_length_grouped_batches_cover_every_row_once_and_reduce_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, 1000)
    sampler = LengthGroupedBatches(lengths, 16, seed=1)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert sorted(flat) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    plain = LengthGroupedBatches(lengths, 16, seed=1, grouped=False)
    padded_plain = sum(len(b) * lengths[b].max() for b in plain)
    assert padded < 0.75 * padded_plain
    # a new pass reshuffles; a new sampler with the same seed repeats
    assert [b for b in sampler] != batches
    assert list(LengthGroupedBatches(lengths, 16, seed=1)) == batches


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_dynamically(side):
    collate = _Collate(pad_id=0, padding_side=side)
    batch = collate([{"row": 0, "input_ids": [5, 6, 7]}, {"row": 3, "input_ids": [8]}])
    inputs = batch["inputs"]
    assert inputs["input_ids"].shape == (2, 3)
    if side == "right":
        assert inputs["input_ids"][1].tolist() == [8, 0, 0] and inputs["attention_mask"][1].tolist() == [1, 0, 0]
    else:
        assert inputs["input_ids"][1].tolist() == [0, 0, 8] and inputs["attention_mask"][1].tolist() == [0, 0, 1]
    assert batch["row"].tolist() == [0, 3]


def test_train_fold_tiny_encoder_learns_cues():
    from accelerate import Accelerator

    from conftest import make_frames
    from pipeline.models import load_tokenizer
    from pipeline.inputs import tokenize

    train, test, _ = make_frames(n_train=200, n_test=20)
    cfg = load_config(None, ["model.preset=tiny-encoder", "train.epochs=8", "train.patience=0",
                             "train.lr=5e-3", "train.batch_size=8", "cv.n_folds=2"])
    tok = load_tokenizer(cfg.model)
    labels = train[["anger", "fear", "joy", "trust"]].to_numpy()
    enc = Encoded(tokenize(tok, train["Tweet"], 64), tokenize(tok, test["Tweet"], 64), tok.pad_token_id, "right")
    folds = np.arange(200) % 2
    result = train_fold(cfg, 0, folds, labels, enc, Accelerator(cpu=True), None, tok)
    assert result.val_logits.shape == (100, 4) and result.test_logits.shape == (20, 4)
    assert np.array_equal(result.val_index, np.flatnonzero(folds == 0))
    assert len(result.history) == 8 and 1 <= result.best_epoch <= 8
    best = max(h["val_macro_f1_at_0.5"] for h in result.history)
    assert best == result.history[result.best_epoch - 1]["val_macro_f1_at_0.5"]
    assert best > 0.8  # the cue words are learnable (0.97 measured with these settings)
    assert result.train_examples == 8 * 100 and result.predict_examples == 8 * 100 + 20


def test_a_finished_folds_model_is_freed_before_the_next_fold_loads(tmp_path, monkeypatch):
    """Under mixed precision accelerate's autocast wrapper ties the model into a reference cycle; the loop
    must collect it itself, or the previous fold's weights stay on the GPU while the next fold loads and trains
    (measured on an H100: fold 2's peak held fold 1's model). bf16 on a CPU Accelerator shows the same cycle."""
    import gc
    import weakref

    from accelerate import Accelerator

    import pipeline.cv as cv
    from conftest import make_frames, write_competition
    from pipeline.finetune import FinetuneMode

    built, alive_at_build = [], []
    real_build = FinetuneMode.fold_model

    def spy(self, *args, **kwargs):
        alive_at_build.append([r() is not None for r in built])
        out = real_build(self, *args, **kwargs)
        built.append(weakref.ref(out))
        return out

    monkeypatch.setattr(FinetuneMode, "fold_model", spy)
    monkeypatch.setattr(cv, "make_accelerator",
                        lambda cfg, run_dir=None: Accelerator(cpu=True, mixed_precision="bf16"))
    comp = write_competition(tmp_path / "comp", *make_frames(n_train=60, n_test=10))
    cfg = load_config(None, ["model.preset=tiny-qwen2", f"data.data_dir={comp}", "cv.n_folds=3",
                             "train.epochs=1", "train.max_steps=1"])
    gc.disable()  # only what the loop frees itself counts
    try:
        cv.run_cv(cfg, tmp_path / "run", quiet=True)
    finally:
        gc.enable()
    assert alive_at_build == [[], [False], [False, False]]
