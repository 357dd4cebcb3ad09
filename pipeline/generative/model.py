"""`LabelGenerator`: a causal LM with LoRA adapters (QLoRA with model.load_in_4bit) that learns to write the
canonical answer. Given `lm_labels` its forward returns the mean cross-entropy over the answer tokens (the loop's
loss); without, per-label logits: the log-odds of the answer lattice's probabilities (scoring.py), so prediction,
OOF files, thresholds and ensembles treat it as any classifier. Also builds, saves and reloads a fold's model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from pipeline.generative.answers import AnswerFormat

FORMAT_FILE = "answer_format.json"  # beside a kept fold's adapter: the token ids it was trained to write
_CLIP = 1e-6  # probabilities are kept in [1e-6, 1 - 1e-6] so that their log-odds stay finite


class LabelGenerator(nn.Module):
    def __init__(self, lm: nn.Module, fmt: AnswerFormat, label_cols: list):
        super().__init__()
        self.lm = lm
        self.fmt = fmt
        self.label_cols = list(label_cols)
        # the lattice gives labels in answer order; outputs follow the run's label columns
        self.to_run = [fmt.columns.index(c) for c in self.label_cols]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: Optional[torch.Tensor] = None,
                prefix_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids, attention_mask, lm_labels: (batch, seq), each row after the shared `prefix_ids` (1, p) when
        given. With lm_labels: the scalar mean cross-entropy over the answer tokens (lm_labels != -100). Without:
        (batch, n_labels) float32 logits, log(p / (1 - p))."""
        if lm_labels is None:
            return self.label_logits(input_ids, attention_mask, prefix_ids)
        return self.answer_loss(input_ids, attention_mask, lm_labels, prefix_ids)

    def _prefix_cache(self, prefix_ids: torch.Tensor, rows: int):
        """The KV cache of the shared prefix, run once, with one entry per row (gradients reach the prefix's
        adapters through it in training)."""
        from pipeline.generative.scoring import select_cache

        cache = self.lm(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).cache
        return select_cache(cache, torch.zeros(rows, dtype=torch.long, device=prefix_ids.device))

    def answer_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor,
                    prefix_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        answer = lm_labels != -100
        assert bool(answer.any(1).all()), "every training row has answer tokens (answers.build_format checks)"
        cache, rows = None, len(input_ids)
        if prefix_ids is not None:
            if getattr(self.lm, "is_gradient_checkpointing", False):
                # checkpointed blocks are run again in backward and would write the cache twice: the prefix goes in
                # front of every row instead (the pads between them are masked; positions follow the mask)
                input_ids = torch.cat([prefix_ids.expand(rows, -1), input_ids], 1)
                lm_labels = torch.cat([lm_labels.new_full((rows, prefix_ids.shape[1]), -100), lm_labels], 1)
                attention_mask = torch.cat([torch.ones_like(prefix_ids).expand(rows, -1), attention_mask], 1)
                answer = lm_labels != -100
            else:
                cache = self._prefix_cache(prefix_ids, rows)
        offset = 0 if cache is None else prefix_ids.shape[1]
        full_mask = attention_mask if cache is None else torch.cat(
            [torch.ones_like(prefix_ids).expand(rows, -1), attention_mask], 1)
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0) + offset
        # the LM head (vocabulary-wide) runs only from the first position that predicts an answer token on: with
        # left padding the answers end every row, so that is a few positions instead of the whole chat
        start = int(answer.long().argmax(1).min()) - 1
        keep = input_ids.shape[1] - start
        logits = self.lm(input_ids=input_ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                         use_cache=cache is not None, logits_to_keep=keep).logits  # (batch, keep, vocab)
        targets = torch.cat([lm_labels[:, start + 1:], lm_labels.new_full((len(lm_labels), 1), -100)], 1)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    @staticmethod
    def _prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list:
        return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]

    def label_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     prefix_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Padded prompts (batch, seq), after the shared prefix_ids (1, p) when given -> (batch, n_labels) log-odds
        of P(label in the answer)."""
        from pipeline.generative.scoring import label_scores

        prompts = self._prompts(input_ids, attention_mask)
        prefix = () if prefix_ids is None else tuple(prefix_ids[0].tolist())
        probs = label_scores(self.lm, self.fmt, prompts, len(prompts), prefix=prefix)[:, self.to_run]
        probs = np.clip(probs, _CLIP, 1 - _CLIP)
        return torch.as_tensor(np.log(probs) - np.log1p(-probs), dtype=torch.float32, device=input_ids.device)

    def generated_labels(self, prompts: list, batch_size: int, prefix: tuple = ()) -> np.ndarray:
        """prompts: lists of prompt ids (unpadded; each after the shared `prefix` ids when given). Returns
        (n, n_labels) int8 0/1: the labels of the answer that greedy generation constrained to canonical answers
        writes (decode.py), in the run's label order."""
        from pipeline.generative.decode import generate_labels

        labels = generate_labels(self.lm, self.fmt, prompts, batch_size, prefix=prefix)
        return np.asarray(labels, dtype=np.int8)[:, self.to_run]

    def save(self, folder: Path) -> None:
        """The adapter (peft `save_pretrained`) and the answer format into `folder`."""
        self.lm.save_pretrained(str(folder))
        fmt = {name: getattr(self.fmt, name) for name in AnswerFormat.__dataclass_fields__}
        (Path(folder) / FORMAT_FILE).write_text(json.dumps({**fmt, "label_cols": self.label_cols}))


def read_format(folder: Path) -> tuple:
    """(AnswerFormat, the run's label columns) saved by `LabelGenerator.save`."""
    saved = json.loads((Path(folder) / FORMAT_FILE).read_text())
    as_ids = lambda seq: tuple(int(i) for i in seq)  # noqa: E731
    fmt = AnswerFormat(tuple(saved["columns"]), tuple(saved["words"]), tuple(as_ids(s) for s in saved["first"]),
                       tuple(as_ids(s) for s in saved["after"]), as_ids(saved["none"]), as_ids(saved["end"]))
    return fmt, list(saved["label_cols"])


def _causal_lm(model_cfg, tokenizer, device):
    """The preset's frozen causal LM (models.load_backbone, with its LM head), ready for adapters."""
    from pipeline.models import load_backbone
    from pipeline.presets import settings

    st = settings(model_cfg)
    lm = load_backbone(model_cfg, st, tokenizer, device, causal=True)
    lm.config.pad_token_id = tokenizer.pad_token_id  # the model config must agree with the tokenizer
    lm.requires_grad_(False)
    return lm, st


def build_generator(model_cfg, fmt: AnswerFormat, label_cols: list, tokenizer, device=None) -> LabelGenerator:
    """A fold's model to train: the preset's causal LM with fresh LoRA adapters on model.lora_targets (k-bit
    preparation under model.load_in_4bit, non-reentrant gradient checkpointing when set). Seed torch first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from pipeline.models import lora_config

    lm, st = _causal_lm(model_cfg, tokenizer, device)
    if st.load_in_4bit:
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=st.gradient_checkpointing,
                                             gradient_checkpointing_kwargs={"use_reentrant": False})
    elif st.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = get_peft_model(lm, lora_config(st, lm, task_type="CAUSAL_LM"))
    return LabelGenerator(lm, fmt, label_cols)


def load_generator(model_cfg, folder: Path, tokenizer=None, device=None) -> tuple:
    """A kept fold's LabelGenerator (its base rebuilt as in training: seed torch as the fold did) in eval mode,
    with its saved answer format. Returns (model, tokenizer)."""
    from peft import PeftModel

    from pipeline.models import load_tokenizer

    tokenizer = tokenizer or load_tokenizer(model_cfg)
    lm, _ = _causal_lm(model_cfg, tokenizer, device)
    fmt, label_cols = read_format(folder)
    model = LabelGenerator(PeftModel.from_pretrained(lm, str(folder)), fmt, label_cols)
    model.eval()
    return model, tokenizer


def generated_preds(model: LabelGenerator, inputs, split: str, index: np.ndarray, batch_size: int) -> np.ndarray:
    """(len(index), n_labels) int8 0/1 constrained-generation labels of rows `index` of `inputs` (Conversations)."""
    prompts, n = inputs.split(split), len(inputs.prefix)
    model.eval()
    with torch.no_grad():
        return model.generated_labels([prompts[i][n:] for i in index], batch_size, prefix=inputs.prefix)
