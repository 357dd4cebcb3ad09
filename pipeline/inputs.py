"""The loop's inputs, computed once per run: token ids of the (prompted) texts (`Encoded`) or a frozen backbone's
pooled features (`Features`), each giving datasets of rows, their lengths for batching and a collate function.
(model.finetune='generate' has its own: pipeline/generative/inputs.py's `Conversations`.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import ConfigError


@dataclass
class Encoded:
    """Token ids of every text, computed once per run (no padding)."""
    train: list  # list of lists of token ids, in train.csv order
    test: list
    pad_id: int
    padding_side: str

    def split(self, name: str) -> list:
        return self.train if name == "train" else self.test

    def lengths(self, name: str, index: np.ndarray) -> np.ndarray:
        rows = self.split(name)
        return np.array([len(rows[i]) for i in index])

    def dataset(self, name: str, index: np.ndarray, labels: Optional[np.ndarray]) -> Dataset:
        return _Rows(self.split(name), index, labels, "input_ids")

    def collate(self):
        return _Collate(self.pad_id, self.padding_side)


@dataclass
class Features:
    """Pooled backbone vectors of every text, computed once per run (finetune='head')."""
    train: np.ndarray  # (n_train, hidden) float32
    test: np.ndarray  # (n_test, hidden) float32

    def split(self, name: str) -> np.ndarray:
        return self.train if name == "train" else self.test

    def lengths(self, name: str, index: np.ndarray) -> np.ndarray:
        return np.ones(len(index), dtype=np.int64)  # equal cost per row: nothing to group

    def dataset(self, name: str, index: np.ndarray, labels: Optional[np.ndarray]) -> Dataset:
        return _Rows(self.split(name), index, labels, "features")

    def collate(self):
        return _stack_features


def format_texts(texts: list, prompt: Optional[str]) -> list:
    """Each text put into the prompt template at {text} (the raw text when there is no template)."""
    if prompt is None:
        return list(texts)
    return [prompt.replace("{text}", t) for t in texts]


def tokenize(tokenizer, texts: list, max_length: int, append_eos: bool = False) -> list:
    """Token ids per text, truncated to max_length tokens, unpadded; with `append_eos` every text
    ends with the eos token (kept inside max_length)."""
    if not append_eos:
        return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model.append_eos is set but the tokenizer has no eos token")
    ids = tokenizer(list(texts), truncation=True, max_length=max_length - 1)["input_ids"]
    return [row if row and row[-1] == eos else row + [eos] for row in ids]


class _Rows(Dataset):
    def __init__(self, inputs, index: np.ndarray, labels: Optional[np.ndarray], key: str):
        self.inputs, self.index, self.labels, self.key = inputs, index, labels, key

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        row = int(self.index[i])
        item = {"row": row, self.key: self.inputs[row]}
        if self.labels is not None:
            item["labels"] = self.labels[row]
        return item


def _rows_and_labels(items, batch: dict) -> dict:
    out = {"row": torch.tensor([it["row"] for it in items]), "inputs": batch}
    if "labels" in items[0]:
        out["labels"] = torch.tensor(np.stack([it["labels"] for it in items]), dtype=torch.float32)
    return out


def _stack_features(items) -> dict:
    return _rows_and_labels(items, {"features": torch.from_numpy(np.stack([it["features"] for it in items]))})


class _Collate:
    """Pads a batch to its longest text (dynamic padding) on the tokenizer's side."""

    def __init__(self, pad_id: int, padding_side: str):
        self.pad_id, self.left = pad_id, padding_side == "left"

    def __call__(self, items):
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            cols = slice(width - n, width) if self.left else slice(0, n)
            ids[i, cols] = torch.tensor(it["input_ids"], dtype=torch.long)
            mask[i, cols] = 1
        return _rows_and_labels(items, {"input_ids": ids, "attention_mask": mask})
