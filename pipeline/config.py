"""The run configuration: one `RunConfig` of nested dataclasses.

Loads YAML, applies dotted `--set key=value` overrides, validates every field in one
place (collecting all problems before raising once) and saves the resolved config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline import presets
from pipeline.errors import ConfigError


@dataclass
class DataConfig:
    competition: str = "emotion-detection-fall-2024"  # name of a module in competition/
    data_dir: Optional[str] = None  # folder holding the competition CSVs; None = data/<competition>
    max_rows: Optional[int] = None  # rows of train.csv kept (stratified subset); None = all
    fit_filter: str = "none"  # 'none' or 'clean': training rows a fold may fit on (validation keeps every row)
    extra_train: Optional[list] = None  # CSVs of extra rows (e.g. generate_data.py's) every fold trains on; never validated
    pseudo_label_from: Optional[list] = None  # finished runs whose fold-k models label the test texts fold k trains on


DEFAULT_SYSTEM_PROMPT = ("Which emotions does the tweet express? Answer with the matching labels from this list, in "
                         "this order, separated by commas, or 'none': {labels}.")


@dataclass
class ModelConfig:
    preset: str = "minilm-l6"  # name in the preset registry (pipeline/presets.py)
    max_length: Optional[int] = None  # tokens per text after truncation; None = preset's
    path: Optional[str] = None  # local folder or hub id overriding the preset's weights
    dropout: float = 0.1  # dropout before the classification head (probability)
    backbone_dropout: Optional[float] = None  # dropout inside the backbone; None = preset's
    freeze_embeddings: Optional[bool] = None  # keep the token embedding matrix fixed; None = preset's
    finetune: Optional[str] = None  # 'full', 'lora' (adapters + head), 'head' (frozen), 'generate'; None = preset's
    lora_r: Optional[int] = None  # LoRA rank; None = preset's
    lora_alpha: Optional[float] = None  # LoRA scale numerator (scale = alpha / r); None = preset's
    lora_dropout: Optional[float] = None  # dropout on the LoRA input (probability); None = preset's
    lora_targets: Optional[list] = None  # module-name suffixes given adapters, e.g. [q_proj, v_proj]; None = preset's
    # blocks whose targets get adapters (peft's layers_to_transform), e.g. '15-29' or '0,2,4'; None = every block.
    # Backward stops at the lowest one: SmolLM2's top 15 of 30 trained 1.36x faster (docs/BENCHMARKS.md)
    lora_layers: Optional[str] = None
    # hidden states pooled into the vector the head reads, numbered as block outputs 1-n (0 = the embeddings), e.g.
    # '1-12' or '6,9,12'; None = the last block's only. Frozen MPNet's mean of all 12: +0.022 (docs/BENCHMARKS.md)
    feature_layers: Optional[str] = None
    feature_combine: str = "mean"  # several feature_layers: 'mean' of their pooled vectors, or 'concat' (wider head)
    pooling: Optional[str] = None  # a hidden state's vector: 'mean' over tokens, 'cls' (first), 'last'; None = preset's
    load_in_4bit: Optional[bool] = None  # QLoRA: NF4 4-bit weights, double quantization; None = preset's
    gradient_checkpointing: Optional[bool] = None  # recompute activations in backward; None = preset's
    padding_side: Optional[str] = None  # 'left' or 'right'; None = preset's
    append_eos: Optional[bool] = None  # end every text with the eos token; None = preset's
    prompt: Optional[str] = None  # template around each text, with {text} where it goes; None = the raw text
    # finetune='generate' (a decoder writes its labels, LoRA adapters): the chat's system message and the answers
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # system message, with {labels} (label words joined by ', ')
    label_words: Optional[dict] = None  # label column -> word written in answers; None = the column names
    label_order: Optional[list] = None  # label columns in answer order; None = the competition's order
    answer_sep: str = ", "  # text between two labels of an answer
    none_answer: str = "none"  # the answer when no label applies
    init_from: Optional[str] = None  # finished run whose fold model the weights start from; None = the preset's
    init_fold: int = 0  # which of init_from's fold models (0-based fold number)
    init_head: Optional[bool] = None  # start from init_from's head too; None = when its label columns equal this run's
    init_max_overlap: int = 0  # init_from's training texts allowed to equal this run's train/test texts (count)


@dataclass
class TrainConfig:
    lr: Optional[float] = None  # peak learning rate; None = preset's
    head_lr: Optional[float] = None  # learning rate of the classification head; None = lr
    batch_size: Optional[int] = None  # examples per forward pass; None = preset's
    eval_batch_size: int = 128  # examples per forward pass when predicting
    grad_accum_steps: int = 1  # forward passes per optimizer step
    epochs: int = 3  # passes over the training fold
    max_steps: int = 0  # cap on optimizer steps per fold (0 = no cap); for smoke tests
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases/norms)
    warmup_ratio: float = 0.1  # share of optimizer steps with linear warmup, in [0, 1)
    max_grad_norm: float = 1.0  # gradient clipping norm (0 = off)
    patience: int = 1  # epochs without improvement before early stopping (0 = off)
    pos_weight: str = "full"  # per-class BCE positive weight: 'full', 'sqrt' or 'none'
    mixed_precision: str = "auto"  # 'auto' (bf16/fp16 GPU, fp32 CPU), 'no', 'fp16', 'bf16' (GPU; CPU: AMX, avx512_bf16)
    length_grouped: bool = True  # batch texts of similar length together (less padding)
    num_workers: int = 0  # DataLoader worker processes
    save_models: Optional[bool] = True  # keep each fold's trained model in folds/fold_<k>/model/ (for predict.py)
    log_with: Optional[str] = None  # tracker per fold (accelerate): 'tensorboard', 'wandb', 'mlflow', ...; None = off
    checkpoint_every: int = 0  # save a resumable checkpoint every N optimizer steps (0 = only finished folds)
    seed: Optional[int] = None  # seed of initialisation and shuffling; None = cv.seed. Another value on the same
    # folds (cv.seed unchanged) gives another ensemble member of the same config (a seed ensemble)


@dataclass
class CVConfig:
    n_folds: int = 5  # folds of MultilabelStratifiedKFold, 2..20
    seed: int = 42  # seed for folds, subsetting, initialisation and shuffling


@dataclass
class ThresholdsConfig:
    method: str = "optuna"  # 'optuna' (seeded TPE), 'exact' (full sweep) or 'fixed' (0.5)
    n_trials: int = 100  # Optuna trials per label
    low: float = 0.02  # smallest threshold searched (probability)
    high: float = 0.98  # largest threshold searched (probability)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    name: Optional[str] = None  # run directory name under runs/; None = from preset, seed, hash

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The fields that decide the results (not where files live): used for identity."""
        d = self.to_dict()
        d.pop("name")
        d["data"].pop("data_dir")
        d["train"].pop("checkpoint_every")  # resuming from a checkpoint gives identical results
        d["train"].pop("save_models")  # keeping the fold models or not changes no prediction
        d["train"].pop("log_with")  # tracking what happens changes none of it
        d["model"].pop("init_max_overlap")  # a leak-check allowance: the weights and predictions are the same
        return d

    def short_hash(self) -> str:
        """8 hex digits identifying the settings that differ from the defaults, so a release that
        adds a config field (with a default that changes nothing) keeps every run's name and hash."""
        default = _flatten(RunConfig().result_dict())
        changed = {k: v for k, v in _flatten(self.result_dict()).items() if default.get(k, object()) != v}
        blob = json.dumps(changed, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    @property
    def train_seed(self) -> int:
        """The seed of initialisation and shuffling: train.seed, else cv.seed (which also makes the folds)."""
        return self.cv.seed if self.train.seed is None else self.train.seed

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.model.preset}-f{self.cv.n_folds}-s{self.cv.seed}-{self.short_hash()}"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "cv": CVConfig,
            "thresholds": ThresholdsConfig}

CHOICES = {
    "train.pos_weight": ("full", "sqrt", "none"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "thresholds.method": ("optuna", "exact", "fixed"),
    "data.fit_filter": ("none", "clean"),
}

# accelerate's trackers (its LoggerType, less 'all'); train.log_with picks one, or None for none
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")


def _parse_scalar(text: str) -> Any:
    """A command-line value read as YAML, so `3e-5`, `true`, `null` and `[q, v]` work."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and value.strip():
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _coerce(key: str, value: Any, annotation: Any, problems: list[str]) -> Any:
    """Convert a YAML value to the field's type, recording a problem when it cannot be."""
    origin = get_origin(annotation)
    if origin is Union:
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        annotation = options[0]
    elif value is None:
        problems.append(f"{key} must be {annotation.__name__}, got null")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key} must be true or false, got {value!r}")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key} must be an integer, got {value!r}")
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{key} must be a number, got {value!r}")
    elif annotation is str:
        if isinstance(value, str):
            return value
        if key.endswith(("lora_layers", "feature_layers")) and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # one block: `lora_layers: 29`
        problems.append(f"{key} must be a string, got {value!r}")
    elif annotation is list:
        if isinstance(value, str):  # `--set model.lora_targets=q_proj,v_proj`
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        problems.append(f"{key} must be a non-empty list of names, got {value!r}")
    else:
        return value
    return value


def _close(name: str, options) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def from_dict(raw: dict, source: str = "config") -> RunConfig:
    """Build a RunConfig from a nested dict (YAML), rejecting unknown keys and wrong types."""
    problems: list[str] = []
    cfg = RunConfig()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if section == "name":
            cfg.name = _coerce("name", values, Optional[str], problems)
            continue
        if section not in SECTIONS:
            problems.append(f"unknown config section '{section}'{_close(section, list(SECTIONS) + ['name'])}")
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"{section} must be a mapping, got {values!r}")
            continue
        sub = getattr(cfg, section)
        hints = get_type_hints(type(sub))
        for key, value in values.items():
            if key not in hints:
                problems.append(f"unknown config key '{section}.{key}'"
                                f"{_close(key, hints)}; valid keys: {', '.join(hints)}")
                continue
            setattr(sub, key, _coerce(f"{section}.{key}", value, hints[key], problems))
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (values parsed as YAML)."""
    raw = json.loads(json.dumps(raw or {}))
    problems = []
    for item in overrides or []:
        if "=" not in item:
            problems.append(f"--set expects KEY=VALUE, got '{item}'")
            continue
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            raw["name"] = _parse_scalar(text)
            continue
        if len(parts) != 2:
            problems.append(f"--set key must look like section.key (e.g. train.lr), got '{key}'")
            continue
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            problems.append(f"--set {key}: '{parts[0]}' is not a section")
            continue
        section[parts[1]] = _parse_scalar(text)
    if problems:
        raise ConfigError("; ".join(problems))
    return raw


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and choices; collect every problem and raise once."""
    p: list[str] = []
    t, c, th, d, m = cfg.train, cfg.cv, cfg.thresholds, cfg.data, cfg.model
    if not 2 <= c.n_folds <= 20:
        p.append(f"cv.n_folds must be in [2, 20], got {c.n_folds}")
    if d.max_rows is not None and d.max_rows < 2 * c.n_folds:
        p.append(f"data.max_rows must be at least 2 * cv.n_folds = {2 * c.n_folds}, got {d.max_rows}")
    if m.preset not in presets.PRESETS:
        p.append(presets.unknown_preset_message(m.preset))
    if m.max_length is not None and m.max_length < 4:
        p.append(f"model.max_length must be >= 4 tokens, got {m.max_length}")
    if m.finetune is not None and m.finetune not in ("full", "lora", "head", "generate"):
        p.append(f"model.finetune must be one of full, lora, head, generate, got {m.finetune!r}")
    p += _generate_problems(m)
    if m.padding_side is not None and m.padding_side not in ("left", "right"):
        p.append(f"model.padding_side must be left or right, got {m.padding_side!r}")
    if m.lora_r is not None and m.lora_r < 1:
        p.append(f"model.lora_r must be >= 1, got {m.lora_r}")
    if m.lora_alpha is not None and m.lora_alpha <= 0:
        p.append(f"model.lora_alpha must be > 0, got {m.lora_alpha}")
    p += _lora_layers_problems(m)
    p += _feature_layers_problems(m)
    if m.prompt is not None and "{text}" not in m.prompt:
        p.append(f"model.prompt must contain {{text}} where the text goes, got {m.prompt!r}")
    for key in ("init_fold", "init_max_overlap"):
        if getattr(m, key) < 0:
            p.append(f"model.{key} must be >= 0, got {getattr(m, key)}")
    if m.init_from is not None and not m.init_from.strip():
        p.append("model.init_from must be a run directory, got ''")
    if not m.init_from and (m.init_fold or m.init_head is not None):
        p.append(f"model.init_fold and model.init_head need model.init_from (a finished run directory), got "
                 f"init_fold={m.init_fold}, init_head={m.init_head}")
    if m.preset in presets.PRESETS:
        preset = presets.PRESETS[m.preset]
        finetune = m.finetune or preset.finetune
        if preset.kind == "tfidf" and (m.finetune or m.load_in_4bit or m.lora_targets or m.prompt):
            p.append(f"preset '{m.preset}' has no neural network: model.finetune, load_in_4bit, lora_* and "
                     f"prompt do not apply")
        if finetune in ("lora", "generate") and preset.kind != "tfidf" and not (m.lora_targets or preset.lora_targets):
            p.append(f"model.finetune={finetune} needs model.lora_targets for preset '{m.preset}'")
        if finetune == "generate" and preset.kind != "decoder":
            p.append(f"model.finetune=generate needs a decoder preset; '{m.preset}' is an {preset.kind}")
        if finetune == "generate" and m.init_from:
            p.append("model.init_from does not apply to model.finetune=generate (it starts from the preset's "
                     "language model)")
        if (m.load_in_4bit if m.load_in_4bit is not None else preset.load_in_4bit) and finetune == "full":
            p.append("model.load_in_4bit needs model.finetune=lora, head or generate: 4-bit weights cannot be "
                     "trained directly")
        if m.init_from and preset.kind == "tfidf":
            p.append(f"model.init_from needs a neural preset; '{m.preset}' has no weights to start from")
        if m.init_from and (m.load_in_4bit if m.load_in_4bit is not None else preset.load_in_4bit):
            p.append("model.init_from cannot load fine-tuned weights into a 4-bit base (model.load_in_4bit); "
                     "set model.load_in_4bit=false")
    for key in ("dropout", "backbone_dropout", "lora_dropout"):
        value = getattr(m, key)
        if value is not None and not 0 <= value < 1:
            p.append(f"model.{key} must be in [0, 1), got {value}")
    for key in ("lr", "head_lr"):
        value = getattr(t, key)
        if value is not None and not 0 < value < 1:
            p.append(f"train.{key} must be in (0, 1), got {value}")
    for key in ("batch_size",):
        value = getattr(t, key)
        if value is not None and value < 1:
            p.append(f"train.{key} must be >= 1, got {value}")
    for key in ("eval_batch_size", "grad_accum_steps", "epochs"):
        if getattr(t, key) < 1:
            p.append(f"train.{key} must be >= 1, got {getattr(t, key)}")
    for key in ("max_steps", "patience", "num_workers", "checkpoint_every"):
        if getattr(t, key) < 0:
            p.append(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    for key, value in (("cv.seed", c.seed), ("train.seed", t.seed)):  # numpy takes seeds (+ fold) below 2**32
        if value is not None and not 0 <= value < 2 ** 31:
            p.append(f"{key} must be in [0, 2**31), got {value}")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.max_grad_norm < 0:
        p.append(f"train.max_grad_norm must be >= 0, got {t.max_grad_norm}")
    if th.n_trials < 1:
        p.append(f"thresholds.n_trials must be >= 1, got {th.n_trials}")
    if not 0 < th.low < th.high < 1:
        p.append(f"thresholds.low and thresholds.high must satisfy 0 < low < high < 1, got {th.low}, {th.high}")
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in options:
            p.append(f"{key} must be one of {', '.join(options)}, got {value!r}")
    if t.log_with is not None and t.log_with not in TRACKERS:
        p.append(f"train.log_with must be one of {', '.join(TRACKERS)} (or null for none), got {t.log_with!r}"
                 f"{_close(str(t.log_with), TRACKERS)}")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name or cfg.name.startswith(".")):
        p.append(f"name must be a plain folder name, got {cfg.name!r}")
    from competition import COMPETITIONS

    if d.competition not in COMPETITIONS:
        p.append(f"data.competition '{d.competition}' is unknown{_close(d.competition, COMPETITIONS)}; "
                 f"available: {', '.join(sorted(COMPETITIONS))}")
    elif m.finetune == "generate" and COMPETITIONS[d.competition].task != "multilabel":
        p.append(f"model.finetune=generate needs a multilabel competition; '{d.competition}' is "
                 f"{COMPETITIONS[d.competition].task}")
    if p:
        raise ConfigError("invalid config: " + "; ".join(p))
    return cfg


def _lora_layers_problems(m: ModelConfig) -> list:
    """model.lora_layers: a block list the preset has, on a mode with adapters."""
    if m.lora_layers is None:
        return []
    try:
        blocks = presets.parse_layers(m.lora_layers)
    except ValueError as exc:
        return [f"model.lora_layers {exc}"]
    if m.preset not in presets.PRESETS:
        return []
    preset = presets.PRESETS[m.preset]
    if (m.finetune or preset.finetune) not in ("lora", "generate"):
        return [f"model.lora_layers needs model.finetune=lora or generate (adapters), got "
                f"{m.finetune or preset.finetune}"]
    n = presets.block_count(preset)
    if n is not None and blocks[-1] >= n:
        return [f"model.lora_layers {m.lora_layers!r}: preset '{m.preset}' has {n} blocks, numbered 0-{n - 1}"]
    return []


def _feature_layers_problems(m: ModelConfig) -> list:
    """model.feature_layers: hidden states the preset has (0 to its block count), pooled (model.pooling) by a
    classification head."""
    p = []
    if m.feature_combine not in ("mean", "concat"):
        p.append(f"model.feature_combine must be mean or concat, got {m.feature_combine!r}")
    if m.pooling is not None:
        if m.pooling not in presets.POOLINGS:
            p.append(f"model.pooling must be one of {', '.join(presets.POOLINGS)}, got {m.pooling!r}")
        p += _no_head_problem(m, "model.pooling")
    if m.feature_layers is None:
        return p
    try:
        layers = presets.parse_layers(m.feature_layers, "layer")
    except ValueError as exc:
        return p + [f"model.feature_layers {exc}"]
    if m.preset not in presets.PRESETS:
        return p
    no_head = _no_head_problem(m, "model.feature_layers")
    if no_head:
        return p + no_head
    n = presets.block_count(presets.PRESETS[m.preset])
    if n is not None and layers[-1] > n:
        p.append(f"model.feature_layers {m.feature_layers!r}: preset '{m.preset}' has hidden states 0-{n} "
                 f"(0 = the embeddings, {n} = the last block's output)")
    return p


def _no_head_problem(m: ModelConfig, key: str) -> list:
    """A key that shapes a classification head's input, set where there is none (TF-IDF, generate mode)."""
    preset = presets.PRESETS.get(m.preset)
    if preset is None or not (preset.kind == "tfidf" or (m.finetune or preset.finetune) == "generate"):
        return []
    return [f"{key} needs a classification head on a neural preset, not "
            f"{'preset ' + repr(m.preset) if preset.kind == 'tfidf' else 'model.finetune=generate'}"]


def _generate_problems(m: ModelConfig) -> list:
    """The answer-format keys of model.finetune=generate (checked whatever the finetune, as they are saved)."""
    p = []
    if "{labels}" not in m.system_prompt:
        p.append(f"model.system_prompt must contain {{labels}} where the label words go, got {m.system_prompt!r}")
    if m.label_words is not None and (not isinstance(m.label_words, dict) or not m.label_words or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in m.label_words.items())):
        p.append(f"model.label_words must map label columns to non-empty words, got {m.label_words!r}")
    elif m.label_words and len(set(m.label_words.values())) != len(m.label_words):
        p.append(f"model.label_words must give every label its own word, got {m.label_words!r}")
    if m.label_order is not None and len(set(m.label_order)) != len(m.label_order):
        p.append(f"model.label_order must name each label column once, got {m.label_order!r}")
    if not m.answer_sep.strip():
        p.append(f"model.answer_sep must contain a visible character, got {m.answer_sep!r}")
    if not m.none_answer.strip():
        p.append(f"model.none_answer must be a word, got {m.none_answer!r}")
    return p


def read_yaml(path: str, what: str):
    """The parsed YAML file at `path` ({} when empty); a missing file or bad YAML is a one-line ConfigError
    naming `what` and the path."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Read a YAML file (optional), apply overrides, validate. Returns the resolved config."""
    raw: dict = {}
    source = "config"
    if path is not None:
        raw, source = read_yaml(path, "config file"), str(path)
    raw = apply_overrides(raw, overrides or [])
    return validate(from_dict(raw, source))


def save_config(cfg: RunConfig, path: Path, runtime: Optional[dict] = None) -> None:
    """Write the resolved config; `runtime` records changes made while running (e.g. after OOM)."""
    from pipeline.io import atomic_write_text

    data = cfg.to_dict()
    data["preset_values"] = preset_values(cfg)
    if runtime:
        data["runtime"] = runtime
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def preset_values(cfg: RunConfig) -> dict:
    """What the config's `null` (= the preset's) fields came to, for a reader of config.yaml."""
    preset = presets.get_preset(cfg.model.preset)
    if preset.kind == "tfidf":
        return {}
    st = presets.settings(cfg.model)
    values = {f.name: getattr(st, f.name) for f in dataclasses.fields(st) if f.name != "preset"}
    values["lora_targets"] = list(values["lora_targets"])
    lr, batch_size = presets.train_settings(cfg)
    return {"model": values, "train": {"lr": lr, "batch_size": batch_size}}


def read_saved_config(path: Path) -> RunConfig:
    """The config a run was started with (the `preset_values` and `runtime` sections are left out)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw.pop("runtime", None)
    raw.pop("preset_values", None)
    return from_dict(raw, str(path))


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as 'key: a -> b'."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out
