"""model.feature_layers: the vector a classification head reads pooled from several hidden states (averaged or
concatenated) instead of the last one; model.pooling: how each is pooled; what they build, the frozen features
cached, and the refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_frames, write_competition
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.errors import ConfigError
from pipeline.models import build_model, classifier_from_backbone, pool
from pipeline.presets import settings


def built(preset: str, *extra):
    cfg = load_config(None, [f"model.preset={preset}", *extra])
    torch.manual_seed(0)
    model, tok = build_model(cfg.model, 3)
    batch = tok(["so happy today", "a much longer and sadder sentence than that one"], padding=True,
                return_tensors="pt")
    return model.eval(), batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("preset", ["tiny-encoder", "tiny-decoder"])
def test_the_last_hidden_state_by_number_is_the_default_and_layers_pool_as_said(preset):
    model, ids, mask = built(preset)
    last, _, _ = built(preset, "model.feature_layers=2")  # the tiny presets have 2 blocks: hidden states 0-2
    mean, _, _ = built(preset, "model.feature_layers=0-2")
    cat, _, _ = built(preset, "model.feature_layers=1,2", "model.feature_combine=concat")
    with torch.no_grad():
        default = model.features(ids, mask)
        extra = {"position_ids": (mask.long().cumsum(1) - 1).clamp(min=0)} if model.decoder else {}
        states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra).hidden_states
        pooled = [pool(h, mask, model.pooling) for h in states]
        torch.testing.assert_close(last.features(ids, mask), default)
        torch.testing.assert_close(mean.features(ids, mask), torch.stack(pooled).mean(0))
        torch.testing.assert_close(cat.features(ids, mask), torch.cat(pooled[1:], -1))
    hidden = model.backbone.config.hidden_size
    assert model.head.in_features == mean.head.in_features == hidden and cat.head.in_features == 2 * hidden
    assert cat(ids, mask).shape == (2, 3)
    assert not torch.allclose(mean.features(ids, mask), default)


@pytest.mark.parametrize("preset, default", [("tiny-encoder", "mean"), ("tiny-decoder", "last")])
def test_model_pooling_replaces_the_presets_pooling_of_every_layer_read(preset, default):
    model, ids, mask = built(preset, "model.feature_layers=1,2")
    for how in ("mean", "cls", "last"):
        other, _, _ = built(preset, "model.feature_layers=1,2", f"model.pooling={how}")  # the same weights (seed 0)
        assert (model.pooling, other.pooling) == (default, how)
        with torch.no_grad():
            extra = {"position_ids": (mask.long().cumsum(1) - 1).clamp(min=0)} if model.decoder else {}
            states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                    **extra).hidden_states
            expected = torch.stack([pool(states[i], mask, how) for i in (1, 2)]).mean(0)
            torch.testing.assert_close(other.features(ids, mask), expected)
            if how != default:
                assert not torch.allclose(other.features(ids, mask), model.features(ids, mask))


def test_a_frozen_run_caches_the_wider_features_and_trains_its_head_on_them(tmp_path):
    train, test, sample = make_frames(n_train=60, n_test=20)
    folder = write_competition(tmp_path / "data", train, test, sample)
    cfg = load_config(None, [f"data.data_dir={folder}", "model.preset=tiny-encoder", "model.finetune=head",
                             "model.feature_layers=0-2", "model.feature_combine=concat", "cv.n_folds=2",
                             "train.epochs=2", "thresholds.n_trials=5"])
    run = run_cv(cfg, tmp_path / "run", quiet=True)
    saved = np.load(run / "features.npz")
    assert saved["train"].shape == (60, 3 * 32) and saved["test"].shape == (20, 3 * 32)
    assert json.loads((run / "report.json").read_text())["config"]["model"]["feature_layers"] == "0-2"


@pytest.mark.parametrize("extra, message", [
    (["model.feature_layers=1-3"], r"model.feature_layers '1-3': preset 'tiny-encoder' has hidden states 0-2"),
    (["model.feature_layers=2-1"], r"model.feature_layers has a range running backwards"),
    (["model.feature_layers=last"], r"model.feature_layers must list layer numbers like"),
    (["model.feature_combine=sum"], r"model.feature_combine must be mean or concat, got 'sum'"),
    (["model.pooling=max"], r"model.pooling must be one of cls, mean, last, got 'max'"),
    (["model.preset=tfidf-lr", "model.pooling=mean"], r"model.pooling needs a classification head on a neural "
                                                      r"preset, not preset 'tfidf-lr'"),
    (["model.preset=tiny-decoder", "model.finetune=generate", "model.pooling=mean"], r"model.pooling needs .* not "
                                                                                     r"model.finetune=generate"),
    (["model.preset=tfidf-lr", "model.feature_layers=1"], r"model.feature_layers needs a classification head on "
                                                          r"a neural preset, not preset 'tfidf-lr'"),
    (["model.preset=tiny-decoder", "model.finetune=generate", "model.feature_layers=1"],
     r"not model.finetune=generate"),
])
def test_bad_feature_layers_are_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.preset=tiny-encoder", *extra])


def test_a_head_started_from_another_width_is_refused_naming_the_setting():
    model, _, _ = built("tiny-encoder")
    cfg = load_config(None, ["model.preset=tiny-encoder", "model.feature_layers=1,2", "model.feature_combine=concat"])
    head = {k: v.clone() for k, v in model.head.state_dict().items()}  # reads 32 features; this config 64
    with pytest.raises(ConfigError, match=r"head reads 32 features and this run's 64 \(another model.feature_layers"):
        classifier_from_backbone(model.backbone, settings(cfg.model), 3, 0.1, head)


@pytest.mark.parametrize("finetune", ["head", "full"])
def test_the_dry_run_plans_every_hidden_state_a_no_grad_forward_keeps(finetune):
    from pipeline import plan

    base = load_config(None, ["model.preset=tiny-encoder", f"model.finetune={finetune}"])
    wide = load_config(None, ["model.preset=tiny-encoder", f"model.finetune={finetune}", "model.feature_layers=0-2",
                              "model.feature_combine=concat"])
    a, b = plan.estimate_memory(base, "cpu"), plan.estimate_memory(wide, "cpu")
    # what the forward holds when it returns: the hidden states it hands back, measured on the built model
    model, ids, mask = built("tiny-encoder", "model.feature_layers=0-2")
    with torch.no_grad():
        states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    per_token = sum(h.numel() * h.element_size() for h in states) // ids.numel()
    assert per_token == 3 * 32 * 4  # hidden states 0-2 of a 2-block, 32-wide fp32 model
    if finetune == "head":  # the features pass is the head run's only forward: its workspace grows by them
        assert b.workspace - a.workspace == a.batch_size * a.max_length * per_token
    else:  # training keeps them for backward anyway; the prediction pass now holds them all
        assert (b.activations, b.workspace) == (a.activations, a.workspace)
        assert b.prediction - a.prediction == a.eval_batch_size * a.max_length * per_token
    assert b.trainable_weights - a.trainable_weights == 4 * (3 - 1) * 32 * 11  # the concat head: 3 x 32 inputs
