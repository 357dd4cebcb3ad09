"""The preset registry, model building and pooling over non-pad tokens for both padding sides."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, validate, RunConfig
from pipeline.errors import ConfigError
from pipeline.models import build_model, pool
from pipeline.presets import PRESETS, get_preset


def test_registry_has_the_issue_presets():
    expected = {"minilm-l6", "distilbert-base-uncased", "distilroberta-base", "roberta-base", "deberta-v3-base",
                "tiny-encoder", "tfidf-lr"}
    assert expected <= set(PRESETS)
    for preset in PRESETS.values():
        assert preset.kind in ("encoder", "decoder", "tfidf")
        if preset.kind != "tfidf" and preset.tiny is None:
            assert preset.hf_id and preset.arch, preset.name
        cfg = RunConfig()
        cfg.model.preset = preset.name
        validate(cfg)


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown model preset 'robreta-base'; did you mean 'roberta-base'.*"
                                          r"available: minilm-l6"):
        get_preset("robreta-base")


def test_tiny_encoder_builds_and_predicts():
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(preset="tiny-encoder"), n_labels=3)
    batch = tok(["hello there", "a much longer sentence than that one"], padding=True, return_tensors="pt")
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, 3)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_minilm_loads_real_weights_offline():
    model, tok = build_model(ModelConfig(preset="minilm-l6"), n_labels=11)
    assert model.backbone.config.hidden_size == 384 and model.backbone.config.num_hidden_layers == 6
    assert not model.backbone.get_input_embeddings().weight.requires_grad  # preset freezes embeddings
    model2, _ = build_model(ModelConfig(preset="minilm-l6"), n_labels=11, tokenizer=tok)
    w1 = model.backbone.encoder.layer[0].attention.self.query.weight
    w2 = model2.backbone.encoder.layer[0].attention.self.query.weight
    assert torch.equal(w1, w2)  # pretrained, not random


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_uses_only_real_tokens(side):
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # value = position index + 4*row
    if side == "right":
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        last = [2, 1]
        real = [[0, 1, 2], [0, 1]]
    else:
        mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
        last = [3, 3]
        real = [[1, 2, 3], [2, 3]]
    got_last = pool(hidden, mask, "last").squeeze(-1)
    assert got_last.tolist() == [hidden[0, last[0], 0].item(), hidden[1, last[1], 0].item()]
    got_mean = pool(hidden, mask, "mean").squeeze(-1)
    expected = [hidden[r, real[r], 0].mean().item() for r in range(2)]
    assert got_mean.tolist() == pytest.approx(expected)
    assert pool(hidden, mask, "cls").squeeze(-1).tolist() == [0.0, 4.0]


def test_encoder_lora_trains_adapters_and_head_only_and_reloads(tmp_path, dair_dir):
    """`--set model.finetune=lora` on an encoder preset (its `lora_targets`), through a multiclass run:
    only adapters and head train, the fold's adapter is saved and reproduces the fold's test predictions."""
    import numpy as np
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.cv import run_cv
    from pipeline.data import load_competition_data
    from pipeline.finetune import load_fold_model
    from pipeline.presets import settings
    from pipeline.tasks import get_task
    from pipeline.inputs import tokenize

    cfg = load_config(None, [f"data.data_dir={dair_dir}", "data.competition=dair-emotion", "model.preset=tiny-encoder",
                             "model.finetune=lora", "cv.n_folds=2", "train.epochs=1", "train.max_steps=4",
                             "thresholds.n_trials=5"])
    model, _ = build_model(cfg.model, n_labels=6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".head." in n for n in trainable), trainable
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)

    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    data = load_competition_data(cfg.data)
    reloaded, tok = load_fold_model(cfg, 6, run_dir / "folds" / "fold_0" / "model")
    ids = tokenize(tok, data.test_texts, settings(cfg.model).max_length)
    with torch.no_grad():
        logits = torch.cat([reloaded(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in ids])
    saved = pd.read_csv(run_dir / "folds" / "fold_0" / "test_probs.csv")[data.label_cols].to_numpy()
    np.testing.assert_allclose(get_task("multiclass").probs(logits.numpy()), saved, atol=1e-5)


def test_gguf_weights_are_dequantized_once_per_process_and_not_kept_in_a_one_fold_worker(monkeypatch):
    """A process that trains several folds dequantizes a GGUF file once and copies it per fold; a `--jobs` worker,
    which trains one fold and exits, keeps no cached copy beside its fold's (about 0.5 GB less for a SmolLM2 fold)."""
    from pipeline import models

    loads = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(source, gguf_file):
            loads.append((source, gguf_file))
            return torch.nn.Linear(2, 2)

    monkeypatch.setattr(models, "_auto_class", lambda causal: FakeAuto)
    monkeypatch.setattr(models, "_keep_dequantized", True)  # restored after the test
    models._dequantized_gguf.cache_clear()
    try:
        a, b = (models._gguf_model("src", "m.gguf", False) for _ in range(2))
        assert len(loads) == 1 and a is not b and torch.equal(a.weight, b.weight)
        assert models._dequantized_gguf.cache_info().currsize == 1
        models._dequantized_gguf.cache_clear()
        models.one_model_per_process()
        models._gguf_model("src", "m.gguf", False)
        assert len(loads) == 2 and models._dequantized_gguf.cache_info().currsize == 0
    finally:
        models._dequantized_gguf.cache_clear()
