"""Task-adaptive pretraining (`pretrain.py`; Gururangan et al., "Don't Stop Pretraining", ACL 2020): continue a
preset's own language-model objective on the competition's unlabelled texts (train and test; labels unused), then
save the backbone where a K-fold run starts from it with `--set model.path=FOLDER`.

Encoders: masked LM (BERT's 15% of tokens, 80/10/10) through a freshly initialised MLM head tied to the input
embeddings. Decoders: causal LM through their pretrained LM head, LoRA adapters (merged into the weights before
saving) or every weight, as model.finetune says. Output folder: the backbone as `save_pretrained` writes it (no LM
head, so a run loads exactly its own weights), the tokenizer, and pretrain.json (settings, texts, held-out
perplexity before and after, wall time, tokens/s); written whole or not at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipeline.cli import _guard, _setup_logging
from pipeline.config import RunConfig, diff_configs, load_config
from pipeline.errors import ConfigError
from pipeline.presets import get_preset, settings, train_settings

log = logging.getLogger("pipeline")

MLM_PROBABILITY = 0.15  # share of tokens an encoder predicts per text (BERT, Devlin et al. 2019)
HELDOUT_SHARE = 0.05  # share of the texts kept out of training to measure perplexity on
HELDOUT_MAX = 1000  # at most this many held-out texts (texts), so the two evaluations stay short
RECORD = "pretrain.json"  # written into the output folder with the weights


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The unlabelled texts pretraining reads: the competition's train texts, then its test texts."""
    texts: list  # train texts then test texts, in file order
    n_train: int  # how many of them come from the training file(s)
    n_test: int  # how many from the test file


def load_corpus(cfg: RunConfig) -> Corpus:
    """The competition's train and test texts, read and checked as a run reads them (labels are not used)."""
    from pipeline.data import load_competition_data

    data = load_competition_data(cfg.data)
    return Corpus(data.train_texts + data.test_texts, len(data.train), len(data.test))


def check_pretrainable(cfg: RunConfig) -> None:
    """One ConfigError naming every setting that pretraining cannot honour."""
    preset = get_preset(cfg.model.preset)
    if preset.kind not in ("encoder", "decoder"):
        raise ConfigError(f"preset '{preset.name}' ({preset.kind}) has no language model to pretrain; pretrain.py "
                          f"takes an encoder or decoder preset (see run_cv.py --list-models)")
    st = settings(cfg.model)
    problems = []
    if st.finetune == "head":
        problems.append("model.finetune=head trains no backbone weight, so pretraining would change nothing; "
                        "use full or lora")
    if st.load_in_4bit:
        problems.append("model.load_in_4bit: adapters cannot be merged into 4-bit weights without losing precision; "
                        "set model.load_in_4bit=false to pretrain (the run may load the result in 4-bit)")
    if cfg.model.init_from:
        problems.append("model.init_from starts from a fine-tuned run; pretraining starts from a preset's weights or "
                        "model.path")
    if problems:
        raise ConfigError(f"cannot pretrain preset '{preset.name}': " + "; ".join(problems))


def heldout_split(n_texts: int, seed: int) -> tuple:
    """Seeded split of text positions: (train_index, heldout_index), both sorted int arrays. HELDOUT_SHARE of the
    texts (at least 1, at most HELDOUT_MAX) are held out; the rest (at least 1) train."""
    if n_texts < 2:
        raise ConfigError(f"pretraining needs at least 2 texts (one to train on, one held out), got {n_texts}")
    n_held = min(max(1, round(HELDOUT_SHARE * n_texts)), HELDOUT_MAX, n_texts - 1)
    order = np.random.default_rng([seed, 7]).permutation(n_texts)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def pretrain_settings(cfg: RunConfig, corpus: Corpus) -> dict:
    """Everything that decides the pretrained weights (not where files live): compared on a rerun."""
    st = settings(cfg.model)
    t = cfg.train
    lr, batch_size = train_settings(cfg)
    encoder = st.preset.kind == "encoder"
    digest = hashlib.sha256("\0".join(corpus.texts).encode("utf-8")).hexdigest()
    rate = st.preset.backbone_dropout if cfg.model.backbone_dropout is None else cfg.model.backbone_dropout
    out = {"preset": st.preset.name, "model_path": cfg.model.path, "competition": cfg.data.competition,
           "texts_sha256": digest, "n_texts": len(corpus.texts),
           "objective": "masked LM" if encoder else "causal LM",
           "mlm_probability": MLM_PROBABILITY if encoder else None,
           "heldout_share": HELDOUT_SHARE, "heldout_max": HELDOUT_MAX, "max_length": st.max_length,
           "finetune": st.finetune, "freeze_embeddings": st.freeze_embeddings, "backbone_dropout": rate,
           "lr": lr, "batch_size": batch_size, "grad_accum_steps": t.grad_accum_steps, "epochs": t.epochs,
           "max_steps": t.max_steps, "warmup_ratio": t.warmup_ratio, "weight_decay": t.weight_decay,
           "max_grad_norm": t.max_grad_norm, "length_grouped": t.length_grouped,
           "mixed_precision": t.mixed_precision, "seed": cfg.cv.seed}
    if st.finetune == "lora":
        out.update(lora_r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout,
                   lora_targets=list(st.lora_targets))
    return out


def existing_output(out: Path, wanted: dict) -> bool:
    """True when `out` already holds a pretraining with exactly these settings; False when it does not exist.
    Raises ConfigError when it holds something else (other settings, or not a pretrain output at all)."""
    out = Path(out)
    if not out.exists():
        return False
    record = out / RECORD
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{out} exists and is not a pretrain.py output (no readable {RECORD}); pass another "
                          f"--out or remove it") from exc
    changed = diff_configs(saved, wanted)
    if changed:
        raise ConfigError(f"{out} holds a pretraining with other settings ({'; '.join(changed)}); pass another "
                          f"--out or remove it to pretrain again")
    return True


def load_language_model(cfg: RunConfig, tokenizer):
    """The preset's backbone inside its language model, as training starts. Seed torch before calling (tiny
    presets and fresh heads are random). Returns (lm, fresh_head): a *ForMaskedLM (encoders) or *ForCausalLM
    (decoders) whose `base_model` is the backbone a run would load, and whether its LM head is newly initialised.

    Encoders: the backbone is loaded as `build_model` loads it (same dropout, same embedding freeze) and put into
    a *ForMaskedLM built from its config; its decoder is tied to the input embeddings as BERT does. Decoders:
    *ForCausalLM from the preset's weights (GGUF dequantized) with their pretrained LM head, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from pipeline.models import build_model
    from pipeline.presets import weights_source

    st = settings(cfg.model)
    preset = st.preset
    if preset.kind == "decoder" and (preset.tiny is None or cfg.model.path):
        source = weights_source(cfg.model)
        gguf = {"gguf_file": preset.gguf_file} if preset.gguf_file and not cfg.model.path else {}
        try:
            lm, info = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                                            **gguf)
        except OSError as exc:
            raise ConfigError(f"cannot load the causal LM of preset '{preset.name}' from '{source}'; pass --set "
                              f"model.path=FOLDER with a downloaded copy") from exc
        lm.config.pad_token_id = tokenizer.pad_token_id
        if st.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if st.freeze_embeddings or st.finetune != "full":
            lm.get_input_embeddings().weight.requires_grad_(False)
        return lm, bool(info["missing_keys"])
    # the run's own loading (dropout, tiny random init, freeze, checkpointing); its classification head is dropped
    full = dataclasses.replace(cfg.model, finetune="full", load_in_4bit=False)
    backbone = build_model(full, 1, tokenizer)[0].backbone
    lm_class = AutoModelForMaskedLM if preset.kind == "encoder" else AutoModelForCausalLM
    lm = lm_class.from_config(backbone.config)
    setattr(lm, lm.base_model_prefix, backbone)
    if preset.kind == "encoder" or backbone.config.tie_word_embeddings:
        lm.get_output_embeddings().weight = backbone.get_input_embeddings().weight
    return lm, True


def _with_lora(lm, st, fresh_head: bool):
    """peft LoRA adapters on st.lora_targets; a freshly initialised LM head trains too (a random projection that
    stays random would hide what the backbone learns), except where it is tied to the frozen embeddings."""
    from peft import LoraConfig, get_peft_model

    prefix = lm.base_model_prefix + "."
    head = [p for n, p in lm.named_parameters() if not n.startswith(prefix)]  # tied weights are listed once
    names = [n for n, _ in lm.named_modules()]
    missing = [t for t in st.lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"model.lora_targets {missing} match no module of preset '{st.preset.name}'")
    gpt2 = lm.config.model_type == "gpt2"  # its Conv1D layers store weights transposed
    model = get_peft_model(lm, LoraConfig(r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout,
                                          target_modules=list(st.lora_targets), bias="none", fan_in_fan_out=gpt2))
    if fresh_head:
        for param in head:
            param.requires_grad_(True)
    return model


def _batches(ids: list, index: np.ndarray, collator, batch_size: int, seed: int) -> list:
    """Fixed evaluation batches of rows `index` (decreasing length, least padding), masked once under `seed` so
    the perplexity before and after training is measured on the very same masked tokens."""
    import torch

    order = index[np.argsort([-len(ids[i]) for i in index], kind="stable")]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [collator([{"input_ids": ids[i]} for i in order[k:k + batch_size]])
                for k in range(0, len(order), batch_size)]


def _predicted_tokens(labels, causal: bool) -> int:
    """How many label tokens a batch's mean loss averages over (causal LMs predict each token from the previous)."""
    return int((labels[:, 1:] != -100).sum() if causal else (labels != -100).sum())


def lm_loss(model, batch: dict, causal: bool):
    """The batch's mean cross-entropy over its predicted tokens, as `model(**batch).loss`. For a masked LM the
    MLM head runs on the masked positions only (15% of the tokens) instead of every position: the head's
    vocabulary projection costs about as much as a small encoder's layers, so a step is much cheaper."""
    import torch

    if causal or hasattr(model, "module"):  # a DistributedDataParallel wrapper must run its own forward
        return model(**batch).loss
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the LM, adapters inside
    heads = [m for name, m in lm.named_children() if name != lm.base_model_prefix]
    if len(heads) != 1:  # not the one-backbone-one-head shape of *ForMaskedLM: let the model compute it
        return model(**batch).loss
    hidden = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    if not chosen.any():  # nothing masked in this batch: a zero that keeps the graph (HF's loss would be nan)
        return hidden.sum() * 0.0
    logits = heads[0](hidden[chosen])
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"][chosen])


def heldout_loss(model, batches: list, accelerator, causal: bool) -> float:
    """Mean cross-entropy (nats per predicted token) of `model` over the fixed held-out `batches`."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            n = _predicted_tokens(batch["labels"], causal)
            if n:
                total += float(lm_loss(model, batch, causal).float()) * n
                count += n
    model.train()
    return total / max(count, 1)


def _param_groups(model, weight_decay: float) -> list:
    """AdamW groups as in train.py: no decay on biases and norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def pretrain(cfg: RunConfig, out: Path, progress: Optional[Callable] = None) -> dict:
    """Pretrain cfg.model's backbone on the competition's train and test texts and save it to `out` (with its
    tokenizer and pretrain.json). Returns the record written to pretrain.json; when `out` already holds this very
    pretraining, returns its record with "reused": True and trains nothing.

    progress: a tqdm-like factory (iterable, total, desc) or None for quiet."""
    import torch
    from accelerate.utils import set_seed
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    from pipeline.cv import make_accelerator
    from pipeline.io import atomic_write_folder
    from pipeline.models import load_tokenizer
    from pipeline.inputs import tokenize
    from pipeline.precision import attention_for_training
    from pipeline.train import LengthGroupedBatches, adamw, release

    started = time.perf_counter()
    out = Path(out)
    check_pretrainable(cfg)
    corpus = load_corpus(cfg)
    wanted = pretrain_settings(cfg, corpus)
    if existing_output(out, wanted):
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
        return {**record, "reused": True}
    st = settings(cfg.model)
    causal = st.preset.kind == "decoder"
    lr, batch_size = train_settings(cfg)
    seed = cfg.cv.seed
    accelerator = make_accelerator(cfg)
    set_seed(seed)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "right"  # causal LMs count positions from the left edge: pad after the text
    ids = tokenize(tokenizer, corpus.texts, st.max_length)
    cut = sum(len(row) >= st.max_length for row in ids)
    train_idx, held_idx = heldout_split(len(ids), seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=not causal, mlm_probability=MLM_PROBABILITY)
    lm, fresh_head = load_language_model(cfg, tokenizer)
    backbone = lm.base_model
    pooler = getattr(backbone, "pooler", None)  # BERT's pooler plays no part in an LM loss: set aside, kept as is
    if pooler is not None:
        backbone.pooler = None
    if fresh_head:
        log.info("the %s head is freshly initialised (the weights of '%s' ship none)%s",
                 "MLM" if not causal else "LM", st.preset.name,
                 "; its decoder is tied to the input embeddings" if not causal else "")
    if st.freeze_embeddings and st.finetune == "full":
        log.info("token embeddings stay fixed (model.freeze_embeddings)%s",
                 ", and with them the tied MLM decoder" if not causal else "")
    model = _with_lora(lm, st, fresh_head) if st.finetune == "lora" else lm
    attention_for_training(model, accelerator)
    log.info("pretraining %s (%s, finetune=%s) on %d texts (%d train + %d test), %d held out; max_length %d, "
             "%d texts reach it and are cut", st.preset.name, wanted["objective"], st.finetune, len(train_idx),
             corpus.n_train, corpus.n_test, len(held_idx), st.max_length, cut)

    eval_batches = _batches(ids, held_idx, collator, batch_size, seed)
    lengths = np.array([len(ids[i]) for i in train_idx])
    sampler = LengthGroupedBatches(lengths, batch_size, seed, cfg.train.length_grouped)
    rows = [{"input_ids": ids[i]} for i in train_idx]
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler, collate_fn=collator,
                                         num_workers=cfg.train.num_workers,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = adamw(_param_groups(model, cfg.train.weight_decay), lr)
    accelerator.gradient_accumulation_steps = cfg.train.grad_accum_steps
    total_steps = math.ceil(len(sampler) / cfg.train.grad_accum_steps) * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    before = heldout_loss(model, eval_batches, accelerator, causal)
    log.info("held-out loss before: %.4f (perplexity %.2f)", before, math.exp(before))
    steps, tokens, running, train_seconds, epochs_done = 0, 0, None, 0.0, 0
    model.train()
    for epoch in range(1, cfg.train.epochs + 1):
        sampler.passes = epoch - 1  # an epoch's batch order depends only on (seed, epoch)
        start = time.perf_counter()
        batches = loader if progress is None else progress(loader, total=len(loader),
                                                           desc=f"pretrain epoch {epoch}/{cfg.train.epochs}")
        for batch in batches:
            with accelerator.accumulate(model):
                loss = lm_loss(model, batch, causal)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if accelerator.sync_gradients:
                steps += 1
            if cfg.train.max_steps and steps >= cfg.train.max_steps:
                break
        train_seconds += time.perf_counter() - start
        epochs_done = epoch
        log.info("epoch %d: %d optimizer steps so far, smoothed training loss %.4f", epoch, steps, running or 0.0)
        if cfg.train.max_steps and steps >= cfg.train.max_steps:
            break
    after = heldout_loss(model, eval_batches, accelerator, causal)
    log.info("held-out loss after: %.4f (perplexity %.2f); %d tokens in %.1f s (%.0f tokens/s)", after,
             math.exp(after), tokens, train_seconds, tokens / max(train_seconds, 1e-9))

    lm = accelerator.unwrap_model(model)
    if st.finetune == "lora":
        lm = lm.merge_and_unload()  # the adapters folded into the weights: a plain backbone a run can load
    backbone = lm.base_model
    if pooler is not None:
        backbone.pooler = pooler
    record = {
        "settings": wanted,
        "texts": {"train": corpus.n_train, "test": corpus.n_test, "pretrain": len(train_idx),
                  "heldout": len(held_idx), "cut_at_max_length": cut,
                  "pretrain_tokens_per_epoch": int(lengths.sum())},
        "lm_head": ("fresh (tied to the input embeddings)" if not causal else "fresh") if fresh_head else "pretrained",
        "saved": f"the backbone only ({type(backbone).__name__}); the LM head is not saved",
        "heldout": {"loss_before": round(before, 5), "loss_after": round(after, 5),
                    "perplexity_before": round(math.exp(before), 4), "perplexity_after": round(math.exp(after), 4),
                    "unit": "nats per predicted token" + (" (masked tokens only)" if not causal else "")},
        "optimizer_steps": steps, "epochs_done": epochs_done, "train_tokens": tokens,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens / max(train_seconds, 1e-9), 1),
        "device": str(accelerator.device), "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }

    def write(tmp: Path) -> None:
        backbone.save_pretrained(str(tmp))
        tokenizer.padding_side = st.padding_side
        tokenizer.save_pretrained(str(tmp))
        record["wall_seconds"] = round(time.perf_counter() - started, 2)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    if accelerator.is_main_process:
        atomic_write_folder(out, write)
    accelerator.wait_for_everyone()
    del model, optimizer, scheduler, loader
    release(accelerator)
    return record


def pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain.py", description="Task-adaptive pretraining: continue a preset's "
                                "language-model objective (masked LM for encoders, causal LM for decoders) on the "
                                "competition's train and test texts, then save the backbone for "
                                "`run_cv.py --set model.path=OUT`.")
    p.add_argument("--model", help="model preset (default: minilm-l6); see run_cv.py --list-models")
    p.add_argument("--competition", help="competition definition in competition/ (default: "
                   "emotion-detection-fall-2024)")
    p.add_argument("--data-dir", help="folder with the competition's files (default data/<competition>)")
    p.add_argument("--out", required=True, help="output folder (weights, tokenizer, pretrain.json); rerunning "
                   "with the same settings does nothing")
    p.add_argument("--epochs", type=int, help="passes over the texts (default 3)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: no cap)")
    p.add_argument("--seed", type=int, help="seed for the held-out split, masking, batches and fresh heads "
                   "(default 42)")
    p.add_argument("--config", help="YAML file with config sections (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return p


@_guard  # a PipelineError prints as one line `error: ...` with status 2
def pretrain_main(argv: Optional[list] = None) -> int:
    args = pretrain_parser().parse_args(argv)
    _setup_logging(args.quiet)
    flags = {"model.preset": args.model, "data.competition": args.competition, "data.data_dir": args.data_dir,
             "train.epochs": args.epochs, "train.max_steps": args.max_steps, "cv.seed": args.seed}
    cfg = load_config(args.config, [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides)
    progress = None
    if not args.quiet:
        from functools import partial

        from tqdm.auto import tqdm
        progress = partial(tqdm, leave=False, dynamic_ncols=True)
    record = pretrain(cfg, Path(args.out), progress)
    held = record["heldout"]
    if record.get("reused"):
        print(f"{args.out} already holds this pretraining (same settings): nothing to do")
    else:
        print(f"pretrained: {args.out} (held-out perplexity {held['perplexity_before']:.2f} -> "
              f"{held['perplexity_after']:.2f}, {record['tokens_per_second']:.0f} tokens/s)")
    print(f"start a run from it: python run_cv.py --model {cfg.model.preset} --set model.path={args.out}")
    return 0
