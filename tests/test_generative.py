"""model.finetune='generate' (pipeline/generative/answers.py, inputs.py, model.py and their wiring): canonical answer
ids, the answer-only loss mask on both padding sides, the loss computed as the LM's own, config checks, a 2-fold run
with every output and a valid submission, and kept adapters reproducing the run's scores."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate.utils import set_seed

from conftest import LABELS
from pipeline.config import ModelConfig, load_config
from pipeline.cv import run_cv
from pipeline.errors import ConfigError
from pipeline.generative.answers import answer_ids, build_format, prompt_ids, system_message
from pipeline.generative.inputs import IGNORE, build_conversations, cut_texts, shared_prefix
from pipeline.generative.model import build_generator
from pipeline.models import load_tokenizer

PRESET = "tiny-qwen2"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(preset=PRESET))


def model_cfg(**changes) -> ModelConfig:
    return dataclasses.replace(ModelConfig(preset=PRESET, finetune="generate"), **changes)


def ids(tokenizer, text: str) -> list:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_canonical_answers_list_the_true_labels_in_order_then_the_end(tokenizer):
    cfg = model_cfg(label_order=["trust", "joy", "fear", "anger"], label_words={"trust": "faith"})
    fmt = build_format(tokenizer, LABELS, cfg, PRESET)
    assert fmt.columns == ("trust", "joy", "fear", "anger") and fmt.words == ("faith", "joy", "fear", "anger")
    end = ids(tokenizer, "<|im_end|>\n")  # what the tiny presets' ChatML writes after an answer
    assert list(fmt.end) == end
    # labels_row in fmt.columns order: faith and fear -> "faith, fear"
    assert answer_ids(fmt, [1, 0, 1, 0]) == ids(tokenizer, "faith") + ids(tokenizer, ", fear") + end
    assert answer_ids(fmt, [0, 0, 0, 0]) == ids(tokenizer, "none") + end
    assert answer_ids(fmt, [0, 0, 0, 1]) == ids(tokenizer, "anger") + end
    # the prompt is the chat up to the assistant's turn, with every label word in the system message
    prompt = tokenizer.decode(prompt_ids(tokenizer, system_message(cfg, fmt.words), "so happy"))
    assert "faith, joy, fear, anger" in prompt and prompt.endswith("assistant") and "so happy" in prompt


def test_answer_formats_that_would_not_parse_back_are_refused(tokenizer):
    with pytest.raises(ConfigError, match="label_order must list each label column once"):
        build_format(tokenizer, LABELS, model_cfg(label_order=["anger", "fear", "joy"]), PRESET)
    with pytest.raises(ConfigError, match="label_words names unknown label columns"):
        build_format(tokenizer, LABELS, model_cfg(label_words={"angry": "rage"}), PRESET)
    with pytest.raises(ConfigError, match="'happy' .* begin those of 'happy day'"):
        build_format(tokenizer, LABELS, model_cfg(label_words={"joy": "happy", "fear": "happy day"}), PRESET)
    with pytest.raises(ConfigError, match="'none \\+ end'"):  # "none" as a label is the no-label answer's start
        build_format(tokenizer, LABELS, model_cfg(label_words={"joy": "none"}), PRESET)
    bare = load_tokenizer(ModelConfig(preset=PRESET))
    bare.chat_template = None
    with pytest.raises(ConfigError, match="tokenizer of preset 'tiny-qwen2' has none"):
        build_format(bare, LABELS, model_cfg(), PRESET)
    bare.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no generation prompt, no end
    with pytest.raises(ConfigError, match="writes nothing after the assistant answer"):
        build_format(bare, LABELS, model_cfg(), PRESET)
    bare.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | upper }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant]{% endif %}")
    with pytest.raises(ConfigError, match="does not render the assistant answer right after its generation prompt"):
        build_format(bare, LABELS, model_cfg(), PRESET)


def test_texts_are_cut_inside_the_user_message_never_the_answer(tokenizer):
    texts = ["one two three four five six seven", "short"]
    cut, n_cut = cut_texts(tokenizer, texts, 3)
    assert cut == ["one two three", "short"] and n_cut == 1
    conv = build_conversations(tokenizer, texts, [], LABELS, model_cfg(max_length=3))
    assert "one two three" in tokenizer.decode(conv.train[0]) and "four" not in tokenizer.decode(conv.train[0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_loss_mask_keeps_exactly_the_answer_tokens(tokenizer, side):
    texts = ["happy smile", "a much longer text about a furious and scared day", "hate"]
    labels = np.array([[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.int8)
    tok = load_tokenizer(model_cfg(padding_side=side))
    conv = build_conversations(tok, texts, [], LABELS, model_cfg(padding_side=side))
    assert conv.padding_side == side
    batch = conv.collate()([conv.dataset("train", np.arange(3), labels)[i] for i in range(3)])
    ids_, mask, lm_labels = (batch["inputs"][k] for k in ("input_ids", "attention_mask", "lm_labels"))
    n = len(conv.prefix)  # the chat's shared start goes once per batch
    assert n > 10 and batch["inputs"]["prefix_ids"].tolist() == [list(conv.prefix)]
    for i in range(3):
        real = mask[i].bool()
        answer = answer_ids(conv.fmt, labels[i][conv.answer_order()])
        assert lm_labels[i][lm_labels[i] != IGNORE].tolist() == answer  # every answer token, and nothing else
        assert conv.train[i][:n] == list(conv.prefix)
        assert ids_[i][real].tolist() == conv.train[i][n:] + answer  # the prompt's rest then the answer, no gap
        assert (lm_labels[i][~real] == IGNORE).all()
        n_pad = int((~real).sum())
        assert (real[:n_pad] == 0).all() if side == "left" and n_pad else (real[len(real) - n_pad:] == 0).all()
    # prediction batches carry the prompt alone, and no lm_labels
    pred = conv.collate()([conv.dataset("train", np.arange(3), None)[i] for i in range(3)])
    assert "lm_labels" not in pred["inputs"]
    assert pred["inputs"]["attention_mask"].sum(1).tolist() == [len(p) - n for p in conv.train]


def test_the_shared_prefix_is_the_longest_common_start_leaving_every_row_a_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7]]) == (1, 2)
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == (1, 2)  # never a whole prompt
    assert shared_prefix([[5, 6]]) == () and shared_prefix([[1, 2], [3, 4]]) == ()


def _full_rows(batch: dict) -> dict:
    """The batch's rows with the shared prefix put back in front of each (pads, if left, sit between them)."""
    prefix, rows = batch["prefix_ids"], len(batch["input_ids"])
    out = {"input_ids": torch.cat([prefix.expand(rows, -1), batch["input_ids"]], 1),
           "attention_mask": torch.cat([torch.ones_like(prefix).expand(rows, -1), batch["attention_mask"]], 1)}
    if "lm_labels" in batch:
        out["lm_labels"] = torch.cat([torch.full_like(prefix, IGNORE).expand(rows, -1), batch["lm_labels"]], 1)
    return out


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_answer_loss_equals_the_language_models_own_cross_entropy(tokenizer, side):
    """The loss computes the LM head only from the first answer-predicting position on: still exactly the mean
    token cross-entropy over the answer tokens that transformers computes from every position."""
    cfg = model_cfg(padding_side=side)
    tok = load_tokenizer(cfg)
    texts = ["happy smile", "a much longer text about a furious and scared day", "hate"]
    labels = np.array([[0, 0, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=np.int8)
    conv = build_conversations(tok, texts, [], LABELS, cfg)
    set_seed(0)
    model = build_generator(cfg, conv.fmt, LABELS, tok)
    model.eval()
    batch = conv.collate()([conv.dataset("train", np.arange(3), labels)[i] for i in range(3)])["inputs"]
    full = _full_rows(batch)
    with torch.no_grad():
        loss = model(**batch)
        positions = (full["attention_mask"].cumsum(1) - 1).clamp(min=0)
        reference = model.lm(input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                             position_ids=positions, labels=full["lm_labels"]).loss
        without_prefix = model(**full)  # the same rows whole: no cache
    assert loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(without_prefix, reference, rtol=1e-5, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # adapters only: the base and its LM head stay


def test_lora_layers_adapt_only_those_blocks_of_the_language_model(tokenizer):
    cfg = model_cfg(lora_layers="1")
    conv = build_conversations(load_tokenizer(cfg), ["happy smile"], [], LABELS, cfg)
    model = build_generator(cfg, conv.fmt, LABELS, load_tokenizer(cfg))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".layers.1." in n for n in trainable)


def _adapter_grads(model, batch: dict) -> dict:
    model.zero_grad()
    model(**batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_shared_prefix_run_once_gives_the_gradients_of_whole_rows(tokenizer, side):
    """Training on the prefix's KV cache (run once per batch, expanded per row) gives the adapters the gradients
    of the whole rows, including through the prefix; with gradient checkpointing the prefix goes in front of
    every row instead, with the same gradients."""
    cfg = model_cfg(padding_side=side, lora_dropout=0.0)
    tok = load_tokenizer(cfg)
    labels = np.array([[0, 0, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=np.int8)
    conv = build_conversations(tok, ["happy smile", "a longer text about a furious and scared day", "hate"], [],
                               LABELS, cfg)
    set_seed(0)
    model = build_generator(cfg, conv.fmt, LABELS, tok)
    model.train()
    for name, p in model.named_parameters():  # lora_B starts at zero: give every adapter a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = conv.collate()([conv.dataset("train", np.arange(3), labels)[i] for i in range(3)])["inputs"]
    cached, whole = _adapter_grads(model, batch), _adapter_grads(model, _full_rows(batch))
    assert any("layers.0." in n and g.abs().sum() > 0 for n, g in cached.items())
    for name in whole:
        torch.testing.assert_close(cached[name], whole[name], rtol=1e-4, atol=1e-6)
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _adapter_grads(model, batch)
    for name in whole:
        torch.testing.assert_close(checkpointed[name], whole[name], rtol=1e-4, atol=1e-6)


def test_scores_with_the_prefix_run_once_equal_scores_of_whole_prompts(tokenizer):
    from pipeline.generative.scoring import label_scores

    cfg = model_cfg(padding_side="left")
    conv = build_conversations(tokenizer, ["happy smile", "a longer text about a furious day", "hate"], [],
                               LABELS, cfg)
    set_seed(0)
    model = build_generator(cfg, conv.fmt, LABELS, tokenizer)
    model.eval()
    n = len(conv.prefix)
    whole = label_scores(model.lm, conv.fmt, conv.train, 2)
    shared = label_scores(model.lm, conv.fmt, [p[n:] for p in conv.train], 2, prefix=conv.prefix)
    np.testing.assert_allclose(shared, whole, rtol=0, atol=1e-6)
    batch = conv.collate()([conv.dataset("train", np.arange(3), None)[i] for i in range(3)])["inputs"]
    with torch.no_grad():
        logits = model(**batch).numpy()
    expected = np.log(whole) - np.log1p(-whole)
    np.testing.assert_allclose(logits, expected[:, [conv.fmt.columns.index(c) for c in LABELS]], atol=1e-4)


def test_config_checks_for_generate():
    base = ["model.finetune=generate", f"model.preset={PRESET}"]
    assert load_config(None, base).model.finetune == "generate"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.finetune=generate", "model.preset=tiny-encoder", "model.system_prompt=Label it",
                           "model.answer_sep=' '", "model.label_order=[joy, joy]"])
    text = str(err.value)
    for part in ("model.finetune=generate needs a decoder preset; 'tiny-encoder' is an encoder",
                 "model.system_prompt must contain {labels}", "model.answer_sep must contain a visible character",
                 "model.label_order must name each label column once"):
        assert part in text
    with pytest.raises(ConfigError, match="model.label_words must give every label its own word"):
        load_config(None, base + ["model.label_words={joy: glad, trust: glad}"])
    with pytest.raises(ConfigError, match="model.label_words must map label columns to non-empty words"):
        load_config(None, base + ["model.label_words=[joy]"])
    with pytest.raises(ConfigError, match="needs a multilabel competition; 'dair-emotion' is multiclass"):
        load_config(None, base + ["data.competition=dair-emotion"])
    with pytest.raises(ConfigError, match="model.finetune must be one of full, lora, head, generate"):
        load_config(None, ["model.finetune=generative"])


@pytest.mark.slow
def test_two_fold_generate_run_writes_every_output_and_its_adapters_reproduce_it(tmp_path, comp_dir, frames):
    from pipeline.predict import run_probs
    from pipeline.submit import make_submission
    from test_cv import check_run, check_submission

    train, test, _ = frames
    cfg = load_config(None, [f"data.data_dir={comp_dir}", "cv.n_folds=2", "train.epochs=2", "train.max_steps=6",
                             "thresholds.n_trials=10", f"model.preset={PRESET}", "model.finetune=generate",
                             "model.padding_side=left", "train.eval_batch_size=16"])
    run = run_cv(cfg, tmp_path / "run", quiet=True)
    report = check_run(run, train, test)
    for k in range(2):
        fold = run / "folds" / f"fold_{k}"
        assert (fold / "model" / "adapter_model.safetensors").is_file()
        assert (fold / "model" / "answer_format.json").is_file()
        gen = pd.read_csv(fold / "test_generated.csv", dtype={"id": str})
        assert gen["id"].tolist() == test["ID"].tolist() and set(np.unique(gen[LABELS])) <= {0, 1}
        assert json.loads((fold / "result.json").read_text())["generate_seconds"] > 0
    oof = pd.read_csv(run / "oof.csv")
    probs = oof[LABELS].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    generated = pd.read_csv(run / "oof_generated.csv", dtype={"id": str})
    assert generated["id"].tolist() == train["ID"].tolist() and list(generated.columns) == ["id", "fold"] + LABELS
    assert (generated["fold"].to_numpy() == oof["fold"].to_numpy()).all()
    from pipeline.metrics import macro_f1

    entry = report["generated_labels"]
    assert entry["macro_f1"] == pytest.approx(macro_f1(train[LABELS].to_numpy(), generated[LABELS].to_numpy()))
    assert "## Generated labels (OOF)" in (run / "report.md").read_text()
    out = tmp_path / "sub.csv"
    make_submission([run], out)
    check_submission(out, comp_dir / "sample_submission.csv")
    # the kept adapters, rebuilt on a fresh base, give the run's test probabilities again
    again = run_probs(run, test["Tweet"].tolist())
    expected = pd.read_csv(run / "test_probs.csv")[LABELS].to_numpy()
    np.testing.assert_allclose(again, expected, rtol=0, atol=1e-5)
    # benchmarks/scoring_methods.py reads three scores from the kept adapters' lattices: its marginal is oof.csv's
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scoring_methods.py"
    spec = importlib.util.spec_from_file_location("scoring_methods", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--run", str(run), "--out", str(tmp_path / "methods.json")]) == 0
    assert torch.is_grad_enabled()  # it ran in this process: later tests train in it
    methods = json.loads((tmp_path / "methods.json").read_text())
    assert methods["folds"] == [0, 1] and max(methods["marginal_vs_oof_max_abs_diff"].values()) < 1e-5
    assert set(methods["methods"]) == {"marginal", "first", "alone"}
    for figures in methods["methods"].values():
        assert 0 <= figures["macro_f1_cross_validated"] <= 1 and 0 < figures["macro_average_precision"] <= 1
