"""`build_model(cfg, n_labels)`, the one place that switches on a preset's kind, with tokenizers, pooling and
LoRA; the presets themselves are in pipeline/presets.py, how each model.finetune saves and reloads a fold's model
in pipeline/finetune.py.

Encoders become `SequenceClassifier`: backbone, pooling over non-pad tokens, dropout, linear head.
"""
from __future__ import annotations

import copy
import functools
import logging
import shutil
import tempfile
from typing import Optional

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.init_from import load_into
from pipeline.presets import ModelSettings, Preset, get_preset, settings, weights_source

log = logging.getLogger("pipeline")


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
    if preset.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = preset.chat_template  # the tiny presets' borrowed tokenizer has none
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

    def __init__(self, backbone: nn.Module, n_labels: int, pooling: str, dropout: float, decoder: bool = False,
                 layers: tuple = (), combine: str = "mean", vectors: int = 1):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.decoder = decoder
        self.layers, self.combine = tuple(layers), combine  # model.feature_layers; () = the last hidden state
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size * vectors, n_labels)  # vectors: ModelSettings.pooled_vectors

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (batch, seq). Returns the pooled (batch, width) vectors: the last hidden
        state's, or those of `layers` (hidden-state numbers, 0 = the embeddings) averaged or concatenated."""
        extra = {}
        if self.decoder:
            extra = {"position_ids": (attention_mask.long().cumsum(1) - 1).clamp(min=0), "use_cache": False}
        if self.layers:
            extra["output_hidden_states"] = True
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if not self.layers:
            return pool(out.last_hidden_state, attention_mask, self.pooling)
        pooled = [pool(out.hidden_states[i], attention_mask, self.pooling) for i in self.layers]
        return torch.cat(pooled, -1) if self.combine == "concat" else torch.stack(pooled).mean(0)

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


def _auto_class(causal: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if causal else AutoModel


def _tiny_folder(preset: Preset, tokenizer, causal: bool = False) -> str:
    """A tiny random model saved to a temporary folder, so 4-bit loading (which needs files) works
    for test models too. Seed torch before calling: the weights come from its generator."""
    folder = tempfile.mkdtemp(prefix=f"{preset.name}-")
    _auto_class(causal).from_config(_tiny_config(preset, tokenizer)).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=1)
def _dequantized_gguf(source: str, gguf_file: str, causal: bool = False):
    """Dequantizing a GGUF file takes ~20 s: do it once per process and copy the result per fold."""
    return _auto_class(causal).from_pretrained(source, gguf_file=gguf_file)


_keep_dequantized = True  # False in a process that builds one model and exits


def one_model_per_process() -> None:
    """For a process that trains one fold and exits (a `--jobs` worker): a GGUF model is dequantized for that fold
    alone, not also kept in the per-process cache for folds that will not come (one copy less: a SmolLM2-135M fold's
    resident peak 3.0-3.2 GB instead of 3.4-3.7, docs/BENCHMARKS.md)."""
    global _keep_dequantized
    _keep_dequantized = False


def _gguf_model(source: str, gguf_file: str, causal: bool):
    """The dequantized GGUF model: a copy of the per-process cache's, or its own in a one-model process."""
    if _keep_dequantized:
        return copy.deepcopy(_dequantized_gguf(source, gguf_file, causal))
    return _dequantized_gguf.__wrapped__(source, gguf_file, causal)


def load_backbone(cfg: ModelConfig, st: ModelSettings, tokenizer, device, causal: bool = False):
    """The preset's network as `build_model` loads it (tiny random, GGUF dequantized once, 4-bit or a frozen
    base in the compute dtype); `causal`: the *ForCausalLM with its LM head (model.finetune='generate')."""
    AutoModel = _auto_class(causal)
    preset = st.preset
    # dropout costs ~10% of a CPU step (random masks); MiniLM on CPU trains without it
    rate = preset.backbone_dropout if cfg.backbone_dropout is None else cfg.backbone_dropout
    dropout = {} if rate is None else {"hidden_dropout_prob": rate, "attention_probs_dropout_prob": rate}
    kwargs = dict(dropout)
    frozen_base = st.finetune in ("lora", "head", "generate")
    # a tiny random model is built in memory unless it loads as a real one would: 4-bit, or frozen in bf16
    # (on a GPU), which from_pretrained does from files
    as_real = st.load_in_4bit or (frozen_base and preset.kind == "decoder" and _compute_dtype() != torch.float32)
    random_tiny = preset.tiny is not None and not cfg.path  # model.path: a saved tiny model loads from its folder
    if random_tiny and not as_real:
        return AutoModel.from_config(_tiny_config(preset, tokenizer, **dropout))
    source = _tiny_folder(preset, tokenizer, causal) if random_tiny else weights_source(cfg)
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
            model = _gguf_model(source, preset.gguf_file, causal)
            if kwargs.get("dtype") not in (None, torch.float32):
                model = model.to(kwargs["dtype"])
            return model
        return AutoModel.from_pretrained(source, **_gguf(cfg), **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load weights of preset '{preset.name}' from '{source}'; "
                          f"pass --set model.path=FOLDER with a downloaded copy") from exc
    finally:
        if random_tiny:
            shutil.rmtree(source, ignore_errors=True)


def lora_config(st: ModelSettings, network: nn.Module, **extra):
    """peft's LoraConfig of the settings' adapters for `network` (extra: more LoraConfig fields); a target that
    matches none of its modules is a ConfigError listing its linear layers."""
    from peft import LoraConfig

    names = [n for n, _ in network.named_modules()]
    missing = [t for t in st.lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in network.named_modules()
                         if type(m).__name__ in ("Linear", "Conv1D", "Linear4bit")})
        raise ConfigError(f"model.lora_targets {missing} match no module of preset '{st.preset.name}'; "
                          f"its linear layers are: {', '.join(linear)}")
    if st.lora_layers:  # model.lora_layers: only these blocks' targets (peft finds the blocks' list by name)
        extra.setdefault("layers_to_transform", list(st.lora_layers))
    return LoraConfig(r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout,
                      target_modules=list(st.lora_targets), bias="none",
                      fan_in_fan_out=st.preset.tiny is not None and st.preset.tiny.get("model_type") == "gpt2"
                      or (st.preset.arch or {}).get("model_type") == "gpt2", **extra)


def _apply_lora(model: SequenceClassifier, st: ModelSettings):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(st, model.backbone, modules_to_save=["head"]))


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
    backbone = load_backbone(cfg, st, tokenizer, device)
    if preset.kind == "decoder":
        backbone.config.pad_token_id = tokenizer.pad_token_id  # the model config must agree with the tokenizer
    head = load_into(cfg, backbone, n_labels)  # model.init_from: another run's fine-tuned fold weights
    return classifier_from_backbone(backbone, st, n_labels, cfg.dropout, head), tokenizer


def classifier_from_backbone(backbone, st: ModelSettings, n_labels: int, dropout: float,
                             head: Optional[dict] = None) -> nn.Module:
    """What build_model makes of a loaded backbone: k-bit preparation or gradient checkpointing (non-
    reentrant), frozen embeddings unless fully fine-tuned, the SequenceClassifier head (starting from the
    state `head` when given), then LoRA adapters (finetune='lora') or everything frozen in eval mode
    (finetune='head')."""
    if st.load_in_4bit and st.finetune != "head":
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(
            backbone, use_gradient_checkpointing=st.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif st.gradient_checkpointing and st.finetune != "head":
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if st.freeze_embeddings or st.finetune != "full":
        backbone.get_input_embeddings().weight.requires_grad_(False)
    model = SequenceClassifier(backbone, n_labels, st.pooling, dropout, decoder=st.preset.kind == "decoder",
                               layers=st.feature_layers, combine=st.feature_combine, vectors=st.pooled_vectors)
    if head is not None:
        if head["weight"].shape[1] != model.head.in_features:
            raise ConfigError(f"model.init_from's head reads {head['weight'].shape[1]} features and this run's "
                              f"{model.head.in_features} (another model.feature_layers or feature_combine); set "
                              f"model.init_head=false for a fresh head")
        model.head.load_state_dict(head)
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
