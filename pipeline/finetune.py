"""What differs between the ways a neural preset fine-tunes (model.finetune), behind one small interface chosen in
one place (`finetune_mode`): the inputs computed once per run, a fold's new model, its training loss, what a fold
writes beside its logits, and how a fold's trained model is saved and rebuilt. The loop (train.py), the K-fold
driver (cv.py) and prediction from kept models (predict.py) only call these methods.

- 'full': every weight of a `SequenceClassifier` trains; saved as one safetensors file.
- 'lora': peft adapters on model.lora_targets, the head trained and saved with them.
- 'head': the frozen backbone's pooled features are computed once per run (`frozen_features`) and each fold trains
  a `HeadClassifier` on them; only the head is saved.
- 'generate': LoRA on the causal LM, which learns to write the labels (pipeline/generative/); per-label scores as
  logits, and each fold also writes its constrained free answers.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import nn

from pipeline.inputs import Encoded, format_texts, tokenize
from pipeline.presets import settings

log = logging.getLogger("pipeline")


class FinetuneMode:
    """model.finetune='full', and the defaults the other modes share: token ids in, the task's loss on the logits."""
    name = "full"
    frozen_features = False  # True: the loop trains on `Features` of a frozen backbone, computed once per run
    extra_phase: Optional[str] = None  # the status phase while `extra_outputs` runs, when it does anything

    def inputs(self, tokenizer, model_cfg, train_texts: list, test_texts: list, label_cols: Optional[list] = None,
               kept: Optional[Path] = None):
        """The token inputs of a run's texts, computed once: `Encoded` ids of the (prompted) texts. kept: a kept
        fold model's folder, for modes whose inputs depend on what was trained."""
        st = settings(model_cfg)
        start = time.perf_counter()

        def encode(texts: list) -> list:
            if not len(texts):  # e.g. predict.py's inputs have no training rows
                return []
            return tokenize(tokenizer, format_texts(texts, model_cfg.prompt), st.max_length, st.append_eos)

        inputs = Encoded(encode(train_texts), encode(test_texts), tokenizer.pad_token_id, tokenizer.padding_side)
        cut = sum(len(ids) >= st.max_length for ids in inputs.train + inputs.test)
        log.info("tokenized %d train + %d test texts in %.1f s (max_length %d; %d texts reach it and are cut)",
                 len(train_texts), len(test_texts), time.perf_counter() - start, st.max_length, cut)
        return inputs

    def fold_model(self, cfg, inputs, n_labels: int, tokenizer, device) -> nn.Module:
        """A fold's fresh model to train (seed torch first)."""
        from pipeline.models import build_model

        return build_model(cfg.model, n_labels, tokenizer, device=device)[0]

    def loss(self, cfg, task, labels: np.ndarray, device) -> Callable:
        """The training loss of a batch, `(model, batch) -> scalar tensor`: the task's loss (class weights from
        labels: (n_fit, n_labels) 0/1, the fold's training rows) on the model's logits."""
        loss_fn = task.loss(labels, cfg.train.pos_weight).to(device)
        return lambda model, batch: loss_fn(model(**batch["inputs"]).float(), batch["labels"])

    def extra_outputs(self, model: nn.Module, inputs, val_idx: np.ndarray, batch_size: int) -> dict:
        """FoldResult fields a fold fills beyond its logits, from its best model."""
        return {}

    def write(self, model: nn.Module, folder: Path) -> None:
        """Every weight, as safetensors."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))

    def read(self, cfg, n_labels: int, folder: Path, tokenizer, device) -> tuple:
        """(model, tokenizer) rebuilt from `write`'s folder; torch is already seeded as the fold was."""
        from safetensors.torch import load_file

        from pipeline.models import build_model

        # the file holds every weight: the model.init_from run it started from is not needed
        model_cfg = dataclasses.replace(cfg.model, init_from=None, init_fold=0, init_head=None)
        model, tokenizer = build_model(model_cfg, n_labels, tokenizer, device)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model, tokenizer


class LoraMode(FinetuneMode):
    name = "lora"

    def write(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(str(folder))  # peft: the adapters and the head (modules_to_save)

    def read(self, cfg, n_labels: int, folder: Path, tokenizer, device) -> tuple:
        from peft import PeftModel

        from pipeline.models import build_model

        base_cfg = copy.deepcopy(cfg.model)
        base_cfg.finetune = "head"  # the frozen base, without adapters; PeftModel adds the saved ones
        base, tokenizer = build_model(base_cfg, n_labels, tokenizer, device)
        return PeftModel.from_pretrained(base, str(folder)), tokenizer


class HeadMode(FinetuneMode):
    name = "head"
    frozen_features = True

    def fold_model(self, cfg, inputs, n_labels: int, tokenizer, device) -> nn.Module:
        from pipeline.models import HeadClassifier

        return HeadClassifier(inputs.train.shape[1], n_labels, cfg.model.dropout)

    def read(self, cfg, n_labels: int, folder: Path, tokenizer, device) -> tuple:
        """The full `SequenceClassifier` (frozen backbone + the saved head), so it predicts from text directly."""
        from safetensors.torch import load_file

        from pipeline.models import build_model

        model, tokenizer = build_model(cfg.model, n_labels, tokenizer, device)
        weights = load_file(str(folder / "model.safetensors"))
        model.head.load_state_dict({k.split("head.", 1)[1]: v for k, v in weights.items() if k.startswith("head.")})
        return model, tokenizer

    def read_head(self, cfg, n_labels: int, folder: Path, n_features: int) -> nn.Module:
        """Only the saved head, to run on features computed once for every fold."""
        from safetensors.torch import load_file

        from pipeline.models import HeadClassifier

        head = HeadClassifier(n_features, n_labels, cfg.model.dropout)
        head.load_state_dict(load_file(str(folder / "model.safetensors")))
        return head


class GenerateMode(FinetuneMode):
    name = "generate"
    extra_phase = "generate"

    def inputs(self, tokenizer, model_cfg, train_texts: list, test_texts: list, label_cols: Optional[list] = None,
               kept: Optional[Path] = None):
        """The `Conversations`: chat prompts with the run's label columns (kept: a kept fold model's folder, whose
        answer format and label columns are used instead of building them)."""
        from pipeline.generative.inputs import build_conversations
        from pipeline.generative.model import read_format

        fmt = None
        if kept is not None:
            fmt, label_cols = read_format(kept)
        return build_conversations(tokenizer, train_texts, test_texts, label_cols, model_cfg, fmt)

    def fold_model(self, cfg, inputs, n_labels: int, tokenizer, device) -> nn.Module:
        from pipeline.generative.model import build_generator

        return build_generator(cfg.model, inputs.fmt, inputs.label_cols, tokenizer, device=device)

    def loss(self, cfg, task, labels: np.ndarray, device) -> Callable:
        """The model's own mean cross-entropy over the answer tokens (its batches carry `lm_labels`)."""
        return lambda model, batch: model(**batch["inputs"])

    def extra_outputs(self, model: nn.Module, inputs, val_idx: np.ndarray, batch_size: int) -> dict:
        """The labels its free answers name (greedy, constrained to canonical answers), validation and test."""
        from pipeline.generative.model import generated_preds

        start = time.perf_counter()
        test = generated_preds(model, inputs, "test", np.arange(len(inputs.test)), batch_size) \
            if len(inputs.test) else np.zeros((0, len(model.label_cols)), dtype=np.int8)
        return {"val_generated": generated_preds(model, inputs, "train", val_idx, batch_size),
                "test_generated": test, "generate_seconds": time.perf_counter() - start}

    def write(self, model: nn.Module, folder: Path) -> None:
        model.save(folder)  # its adapter and answer format (pipeline/generative/model.py)

    def read(self, cfg, n_labels: int, folder: Path, tokenizer, device) -> tuple:
        from pipeline.generative.model import load_generator

        return load_generator(cfg.model, folder, tokenizer, device)


MODES = {mode.name: mode for mode in (FinetuneMode(), LoraMode(), HeadMode(), GenerateMode())}


def finetune_mode(model_cfg) -> FinetuneMode:
    """The mode of a model config (its preset's default unless model.finetune is set)."""
    return MODES[settings(model_cfg).finetune]


def save_fold_model(model: nn.Module, folder: Path, cfg, fold: int) -> None:
    """Save what a fold trained (its mode's `write`) with fold.json, unless train.save_models is false."""
    from pipeline.io import atomic_write_folder

    st, mode = settings(cfg.model), finetune_mode(cfg.model)
    if cfg.train.save_models is False:  # None (configs written before it defaulted to true) keeps them too
        return
    # the seed the base was built from: per fold, except a frozen backbone for features, built once per run
    init_seed = cfg.train_seed if mode.frozen_features else cfg.train_seed + fold

    def write(tmp: Path) -> None:
        mode.write(model, tmp)
        (tmp / "fold.json").write_text(json.dumps({"fold": fold, "preset": st.preset.name, "finetune": st.finetune,
                                                   "init_seed": init_seed}))

    atomic_write_folder(Path(folder), write)


def load_fold_model(cfg, n_labels: int, folder: Path, tokenizer=None, device=None) -> tuple:
    """Rebuild a fold's trained model from `save_fold_model`'s folder, in eval mode. Returns (model, tokenizer).
    For a head over frozen features this is the full `SequenceClassifier` (backbone + head)."""
    from accelerate.utils import set_seed

    folder = Path(folder)
    meta = json.loads((folder / "fold.json").read_text())
    set_seed(meta["init_seed"])  # tiny random backbones are rebuilt from the same generator state
    model, tokenizer = finetune_mode(cfg.model).read(cfg, n_labels, folder, tokenizer, device)
    model.eval()
    return model, tokenizer

