"""The inputs of model.finetune='generate': every text's chat prompt ids (system message with the label words, user
message with the text cut to model.max_length tokens, generation prompt), computed once per run. Training rows add
their canonical answer ids, and only those are learned (lm_labels = -100 on the prompt and on padding).

The chat's start (system message with the label words, the user turn's header) is the same token ids for every
text: batches carry it once as `prefix_ids` and each row only its own remainder, and the model runs the shared
prefix once per batch (LabelGenerator), which halves the tokens a row costs with SmolLM2's template."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.generative.answers import AnswerFormat, answer_ids, build_format, chat_text, system_message

log = logging.getLogger("pipeline")

IGNORE = -100  # the label id cross-entropy skips (torch's and transformers' default ignore_index)


@dataclass
class Conversations:
    """Prompt token ids of every text (no padding), with the answer format; the `Encoded` interface of train.py."""
    train: list  # list of lists of prompt token ids, in train.csv order
    test: list
    fmt: AnswerFormat
    label_cols: list  # the run's label columns (order of the label matrix and of every output)
    pad_id: int
    padding_side: str
    prefix: tuple = ()  # the token ids every prompt starts with (shared_prefix), sent once per batch

    def split(self, name: str) -> list:
        return self.train if name == "train" else self.test

    def lengths(self, name: str, index: np.ndarray) -> np.ndarray:
        rows = self.split(name)
        return np.array([len(rows[i]) for i in index])

    def answer_order(self) -> np.ndarray:
        """(L,) the run's label column of each answer label: labels[:, answer_order()] is in fmt.columns order."""
        return np.array([self.label_cols.index(c) for c in self.fmt.columns])

    def dataset(self, name: str, index: np.ndarray, labels: Optional[np.ndarray]) -> Dataset:
        """Rows `index` of split `name`: prompt + canonical answer when `labels` (n_train, L) are given
        (training), else the prompt alone (prediction: the model scores or writes the answer)."""
        return _Chats(self.split(name), index, labels, self.fmt, self.answer_order())

    def collate(self):
        return _ChatCollate(self.pad_id, self.padding_side, self.prefix)


class _Chats(Dataset):
    def __init__(self, prompts: list, index: np.ndarray, labels: Optional[np.ndarray], fmt: AnswerFormat,
                 order: np.ndarray):
        self.prompts, self.index, self.labels, self.fmt, self.order = prompts, index, labels, fmt, order

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        row = int(self.index[i])
        prompt = self.prompts[row]
        if self.labels is None:
            return {"row": row, "input_ids": prompt}
        answer = answer_ids(self.fmt, self.labels[row][self.order])
        return {"row": row, "input_ids": prompt + answer, "n_prompt": len(prompt), "labels": self.labels[row]}


class _ChatCollate:
    """Pads a batch to its longest conversation on the tokenizer's side, after taking the shared `prefix` off every
    row (the batch carries it once as `prefix_ids`, (1, len(prefix))); training batches also get `lm_labels`: the
    ids of the answer tokens, IGNORE on the prompt and on padding."""

    def __init__(self, pad_id: int, padding_side: str, prefix: tuple = ()):
        self.pad_id, self.left, self.prefix = pad_id, padding_side == "left", tuple(prefix)

    def _strip(self, items) -> list:
        n = len(self.prefix)
        if not n:
            return items
        for it in items:
            assert tuple(it["input_ids"][:n]) == self.prefix, "every prompt starts with the shared prefix"
        return [{**it, "input_ids": it["input_ids"][n:], **({"n_prompt": it["n_prompt"] - n} if "n_prompt" in it
                                                            else {})} for it in items]

    def __call__(self, items) -> dict:
        items = self._strip(items)
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        train = "n_prompt" in items[0]
        lm_labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            start = width - n if self.left else 0
            ids[i, start:start + n] = torch.tensor(it["input_ids"], dtype=torch.long)
            mask[i, start:start + n] = 1
            if train:
                lm_labels[i, start + it["n_prompt"]:start + n] = ids[i, start + it["n_prompt"]:start + n]
        batch = {"input_ids": ids, "attention_mask": mask}
        if train:
            batch["lm_labels"] = lm_labels
        if self.prefix:
            batch["prefix_ids"] = torch.tensor([self.prefix], dtype=torch.long)
        out = {"row": torch.tensor([it["row"] for it in items]), "inputs": batch}
        if "labels" in items[0]:
            out["labels"] = torch.tensor(np.stack([it["labels"] for it in items]), dtype=torch.float32)
        return out


def shared_prefix(prompts: list) -> tuple:
    """The token ids every prompt starts with, up to one short of the shortest prompt (so every row keeps a token
    of its own); () for fewer than two prompts, where nothing is shared."""
    if len(prompts) < 2:
        return ()
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        while n and p[:n] != first[:n]:
            n -= 1
    return tuple(first[:n])


def cut_texts(tokenizer, texts: list, max_length: int) -> tuple:
    """Each text cut after its first `max_length` tokens (at the character where that token ends), so the
    prompt around it and the answer after it are never truncated. Returns (texts, number cut)."""
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], 0
    for text, offsets in zip(texts, enc["offset_mapping"]):
        if len(offsets) > max_length:
            text, cut = text[:offsets[max_length - 1][1]], cut + 1
        out.append(text)
    return out, cut


def prompts_for(tokenizer, texts: list, model_cfg, fmt: AnswerFormat) -> tuple:
    """Prompt ids (list of lists of int) of `texts` as a run builds them. Returns (prompts, number of texts cut)."""
    from pipeline.presets import settings
    from pipeline.inputs import format_texts

    cut_to, n_cut = cut_texts(tokenizer, texts, settings(model_cfg).max_length)
    system = system_message(model_cfg, fmt.words)
    chats = [chat_text(tokenizer, system, user) for user in format_texts(cut_to, model_cfg.prompt)]
    return tokenizer(chats, add_special_tokens=False)["input_ids"], n_cut


def build_conversations(tokenizer, train_texts: list, test_texts: list, label_cols: list, model_cfg,
                        fmt: Optional[AnswerFormat] = None) -> Conversations:
    """The Conversations of a run: the answer format (built from the tokenizer and model_cfg unless given,
    e.g. a kept fold's) and the prompt ids of every train and test text."""
    from pipeline.presets import settings

    st = settings(model_cfg)
    start = time.perf_counter()
    fmt = fmt or build_format(tokenizer, list(label_cols), model_cfg, st.preset.name)
    train, cut_train = prompts_for(tokenizer, train_texts, model_cfg, fmt) if len(train_texts) else ([], 0)
    test, cut_test = prompts_for(tokenizer, test_texts, model_cfg, fmt) if len(test_texts) else ([], 0)
    longest = max((len(p) for p in train + test), default=0)
    log.info("chat prompts of %d train + %d test texts in %.1f s (texts cut to %d tokens: %d; longest prompt %d "
             "tokens; answers of %d labels in the order %s)", len(train), len(test), time.perf_counter() - start,
             st.max_length, cut_train + cut_test, longest, len(fmt.columns), ", ".join(fmt.words))
    prefix = shared_prefix(train + test)
    log.info("shared chat prefix: %d tokens, run once per batch", len(prefix))
    return Conversations(train, test, fmt, list(label_cols), tokenizer.pad_token_id, tokenizer.padding_side, prefix)
