"""What a preset's network holds, read without its weights: the backbone built on the meta device from the
preset's config facts (no download, no memory), its architecture facts and its parameter counts.

The memory planner (pipeline/plan.py) turns these into bytes; the run-cost estimate (pipeline/run_cost.py) into
FLOPs.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

# BERT-style encoders normalise after attention and MLP; every other family before
POST_NORM_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "xlm-roberta", "electra", "mpnet"}


@dataclass(frozen=True)
class ArchFacts:
    """What the memory formulas need from an architecture (read from the config and one block's modules)."""
    model_type: str
    family: str  # 'gated' (Llama, Qwen2, Mistral, Gemma: RMSNorm, SiLU/GELU gate) or 'classic' (GPT-2, BERT)
    pre_norm: bool  # norm before attention/MLP (decoders) or after (BERT-style encoders)
    hidden: int  # h, residual width
    intermediate: int  # i, MLP width
    layers: int  # L, transformer blocks
    heads: int  # a, query heads
    kv_heads: int  # key/value heads (GQA when fewer than heads)
    head_dim: int  # d, so a query is a*d wide
    vocab: int  # token embedding rows
    norm_widths: tuple  # elements per token each norm of one block normalises (h, or a*d for q_norm)
    norm_rows: int  # normalised rows per token over a block's norms (1 per norm; a for a per-head q_norm)
    layer_norm: bool  # LayerNorm (keeps mean and rstd) rather than RMSNorm (keeps rsqrt)
    act_saved: int  # i-wide tensors the MLP activation keeps for backward (1; 4 for GPT-2's tanh formula)
    hidden_dropout: float  # dropout on the residual branches (probability)
    attention_dropout: float  # dropout on attention probabilities (probability)
    sdpa: bool  # attention through torch SDPA (no T x T matrix kept); False = eager softmax kept
    block_linears: tuple  # (name, in_features, out_features) of one block's linear layers


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (numbers of scalars, not bytes) of the classifier a config builds."""
    backbone: int  # AutoModel (no LM head): what the classifier wraps
    published: int  # causal-LM total with tied embeddings counted once (decoders); the backbone for encoders
    head: int  # classification head, hidden * n_labels + n_labels
    lora: int  # LoRA A and B: r * (in + out) for each adapted linear layer
    lora_layers: int  # linear layers that get adapters
    trainable: int  # what the optimizer updates for the configured finetune mode
    quantizable: int  # weights of the backbone's nn.Linear/Conv1D layers (what NF4 replaces in 4-bit)
    embeddings: int  # token embedding matrix, vocab * hidden
    largest_linear: int  # biggest single linear weight (the 4-bit dequantization scratch)
    causal_lm: bool = False  # generate mode: the run's model is the published causal LM, not the backbone + head

    @property
    def total(self) -> int:
        """Every parameter of the run's model: backbone, adapters and head (generate: causal LM and adapters)."""
        return (self.published if self.causal_lm else self.backbone) + self.lora + self.head


def skeleton_config(preset):
    """The transformers config of a preset, from its `arch` facts or `tiny` config (no download)."""
    from transformers import AutoConfig

    if preset.arch is not None:
        return AutoConfig.for_model(**preset.arch)
    if preset.tiny is not None:
        # the tiny test models borrow MiniLM's tokenizer, whose 30522 tokens size their embedding
        return AutoConfig.for_model(**{"vocab_size": 30522, **preset.tiny})
    raise ValueError(f"preset '{preset.name}' of kind '{preset.kind}' has no architecture to plan")


@functools.lru_cache(maxsize=None)
def skeletons(preset_name: str):
    """(backbone, published model) of a preset on the meta device: shapes only, no memory, no download."""
    import logging

    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForCausalLM

    from pipeline import presets

    preset = presets.get_preset(preset_name)
    config = skeleton_config(preset)
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with init_empty_weights():
            backbone = AutoModel.from_config(config)
            published = AutoModelForCausalLM.from_config(config) if preset.kind == "decoder" else backbone
        # shares lm_head with the embedding when the config ties them; outside the context, whose patched
        # register_parameter would give lm_head a fresh meta copy instead
        published.tie_weights()
    finally:
        quiet.setLevel(level)
    return backbone, published


def _is_linear(module) -> bool:
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _linear_shape(module) -> tuple:
    """(in_features, out_features); GPT-2's Conv1D stores its weight transposed, as (in, out)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def matches_target(name: str, targets, layers=()) -> bool:
    """peft's rule for a string list of target_modules: the qualified name equals or ends with '.target'; with
    `layers` (model.lora_layers) also inside one of those blocks, found as peft finds them: the number after the
    last '.<list name>.' in the name."""
    if not any(name == t or name.endswith("." + t) for t in targets):
        return False
    if not layers:
        return True
    block = re.match(r".*\.[^.]*\.(\d+)\.", "." + name)
    return block is not None and int(block.group(1)) in layers


def blocks(backbone, n_layers: int):
    """The ModuleList of transformer blocks (the first one with `n_layers` entries)."""
    from torch import nn

    for _, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(backbone).__name__} has no list of {n_layers} blocks")


def arch_facts(backbone, backbone_dropout: Optional[float] = None) -> ArchFacts:
    """Read the numbers the activation formulas need from a (meta) backbone; see ArchFacts."""
    from torch import nn

    c = backbone.config
    h = c.hidden_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    inter = (getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None)
             or getattr(c, "hidden_dim", None) or 4 * h)
    block = blocks(backbone, c.num_hidden_layers)[0]
    linears = tuple((name, *_linear_shape(m)) for name, m in block.named_modules() if _is_linear(m))
    norm_widths, norm_rows, layer_norm = [], 0, False
    for name, module in block.named_modules():
        if "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
            # per-head q/k norms (Gemma 3, Qwen 3) normalise every head's d-wide slice
            rows = {"q_norm": heads, "k_norm": kv_heads}.get(name.rsplit(".", 1)[-1], 1)
            norm_widths.append(rows * module.weight.shape[-1])
            norm_rows += rows
            layer_norm = layer_norm or isinstance(module, nn.LayerNorm)
    act = (getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", None)
           or getattr(c, "activation_function", None) or getattr(c, "activation", None) or "gelu")
    gated = any(name.rsplit(".", 1)[-1] in ("gate_proj", "gate_up_proj") for name, _, _ in linears)

    def first(*keys):
        for key in keys:
            value = getattr(c, key, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return 0.0

    hidden_dropout = first("hidden_dropout_prob", "resid_pdrop", "dropout", "hidden_dropout")
    attention_dropout = first("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")
    if backbone_dropout is not None:
        hidden_dropout = attention_dropout = float(backbone_dropout)
    return ArchFacts(
        model_type=c.model_type, family="gated" if gated else "classic",
        pre_norm=c.model_type not in POST_NORM_TYPES, hidden=h, intermediate=inter,
        layers=c.num_hidden_layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=c.vocab_size,
        norm_widths=tuple(norm_widths), norm_rows=norm_rows, layer_norm=layer_norm,
        # transformers' gelu_new is a Python tanh formula: pow input, tanh output, 0.5*x and 1+tanh are kept
        act_saved=4 if act in ("gelu_new", "gelu_fast", "gelu_python_tanh") else 1,
        hidden_dropout=hidden_dropout, attention_dropout=attention_dropout,
        sdpa=getattr(c, "_attn_implementation", "eager") in ("sdpa", "flash_attention_2", "flash_attention_3"),
        block_linears=linears)


def count_parameters(settings, n_labels: int = 11) -> ParamCounts:
    """Counts for `settings` (a pipeline.presets.ModelSettings), from meta skeletons; see ParamCounts."""
    backbone, published = skeletons(settings.preset.name)
    return count_from(backbone, published, settings, n_labels)


def count_from(backbone, published, settings, n_labels: int) -> ParamCounts:
    """Counts for `settings` from a (backbone, published model) pair already built, meta or real."""
    n_backbone = sum(p.numel() for p in backbone.parameters())
    n_published = sum(p.numel() for p in published.parameters())
    hidden = backbone.config.hidden_size
    # generate mode has no classification head: the causal LM's own head writes the labels
    # model.feature_combine=concat widens the head to every listed layer's pooled vector
    head = 0 if settings.finetune == "generate" else hidden * settings.pooled_vectors * n_labels + n_labels
    adapted = settings.finetune in ("lora", "generate")
    lora = lora_layers = quantizable = largest = 0
    for name, module in backbone.named_modules():
        if not _is_linear(module):
            continue
        quantizable += module.weight.numel()
        largest = max(largest, module.weight.numel())
        if adapted and matches_target(name, settings.lora_targets, settings.lora_layers):
            n_in, n_out = _linear_shape(module)
            lora += settings.lora_r * (n_in + n_out)
            lora_layers += 1
    embeddings = backbone.get_input_embeddings().weight.numel()
    if settings.finetune == "full":
        frozen = embeddings if settings.freeze_embeddings else 0
        trainable = n_backbone - frozen + head
    elif adapted:
        trainable = lora + head
    else:
        trainable = head
    return ParamCounts(backbone=n_backbone, published=n_published, head=head, lora=lora, lora_layers=lora_layers,
                       trainable=trainable, quantizable=quantizable, embeddings=embeddings,
                       largest_linear=largest,
                       causal_lm=settings.finetune == "generate")
