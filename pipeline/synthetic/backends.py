"""Generation backends, chosen by the model preset: a GGUF file through llama-cpp-python on CPU (JSON-schema
grammar, so every answer is JSON of the schema's shape) or a hub model through transformers (4-bit on a GPU
when the preset says so; unconstrained, so the last valid JSON block of the answer is taken).

A backend has `name`, `model`, `constrained` and `generate(messages, schema, seed, temperature, top_p,
max_new_tokens) -> Answer`. Tests hand in a scripted stand-in with the same attributes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ConfigError
from pipeline.presets import get_preset, weights_source

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Answer:
    text: str  # what the model wrote, as it wrote it
    finish_reason: str = "stop"  # 'stop', or 'length' when max_new_tokens cut it off


@dataclass(frozen=True)
class Generator:
    backend: str  # 'llama-cpp' or 'transformers'
    hf_id: Optional[str] = None  # the instruction-tuned model to load, when it is not the preset's own hub id


# Which presets can write examples, and how. Mistral-7B's preset is the base model (for classification);
# generation needs its instruction-tuned sibling, as the reference notebook used.
GENERATORS = {
    "smollm2-135m": Generator("llama-cpp"),
    "qwen2.5-7b-instruct": Generator("transformers"),
    "mistral-7b": Generator("transformers", hf_id="mistralai/Mistral-7B-Instruct-v0.2"),
    "qwen14b": Generator("transformers"),
    "llama-3.2-3b-instruct": Generator("transformers"),
    "gemma-3-1b": Generator("transformers"),
    "tinyllama-1.1b": Generator("transformers"),
}


def generator_for(preset_name: str) -> Generator:
    get_preset(preset_name)  # an unknown name gets the registry's "did you mean" message
    if preset_name not in GENERATORS:
        raise ConfigError(f"model preset '{preset_name}' cannot generate text (it is not instruction-tuned or has "
                          f"no generation backend); generators: {', '.join(GENERATORS)}")
    return GENERATORS[preset_name]


class LlamaCppBackend:
    """A GGUF chat model through llama-cpp-python, decoding under the answer schema's grammar."""
    name, constrained = "llama-cpp", True

    def __init__(self, gguf_path: Path, n_threads: int = 0, n_ctx: int = 2048):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError("the llama-cpp backend needs llama-cpp-python (pip install -e \".[smollm2]\")") from exc
        if not Path(gguf_path).is_file():
            raise ConfigError(f"GGUF file {gguf_path} does not exist")
        self.model = Path(gguf_path).name
        self.n_threads = n_threads or os.cpu_count() or 1
        self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=self.n_threads, seed=0, verbose=False)
        self._grammars: dict = {}

    def _grammar(self, schema: dict):
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self._grammars[key]

    def generate(self, messages: list, schema: dict, seed: int, temperature: float, top_p: float,
                 max_new_tokens: int) -> Answer:
        # an empty cache for every answer: reusing a prefix evaluated in another batch shape could change the
        # logits in the last bits, and an answer must not depend on which answers came before it (resume)
        self.llm.reset()
        out = self.llm.create_chat_completion(messages=messages, grammar=self._grammar(schema), seed=seed,
                                              temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
        choice = out["choices"][0]
        return Answer(choice["message"].get("content") or "", choice.get("finish_reason") or "stop")


class TransformersBackend:
    """A chat model through transformers' `generate`, sampling with torch's RNG seeded per answer."""
    name, constrained = "transformers", False

    def __init__(self, source: str, load_in_4bit: bool = False, gguf_file: Optional[str] = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = source if not gguf_file else f"{source}/{gguf_file}"
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        kwargs: dict = {}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            kwargs["torch_dtype"] = torch.bfloat16
            if load_in_4bit:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)
        elif load_in_4bit:
            log.warning("no GPU: loading %s unquantized in fp32 on the CPU (4-bit needs a GPU here); slow",
                        source)
        self.net = AutoModelForCausalLM.from_pretrained(source, **extra, **kwargs)
        if "quantization_config" not in kwargs:
            self.net.to(self.device)
        self.net.eval()

    def _prompt_ids(self, messages: list):
        def encode(chat):
            return self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)["input_ids"]
        try:
            return encode(messages)
        except Exception:  # noqa: BLE001 - templates without a system role (Mistral) raise jinja's TemplateError
            return encode([{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}])

    def generate(self, messages: list, schema: dict, seed: int, temperature: float, top_p: float,
                 max_new_tokens: int) -> Answer:
        import torch

        ids = self._prompt_ids(messages).to(self.device)
        torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.net.generate(ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                                    temperature=temperature if temperature > 0 else None,
                                    top_p=top_p if temperature > 0 else None, max_new_tokens=max_new_tokens,
                                    pad_token_id=pad)
        new = out[0, ids.shape[1]:]
        ended = self.tokenizer.eos_token_id is not None and bool((new == self.tokenizer.eos_token_id).any())
        finish = "length" if len(new) >= max_new_tokens and not ended else "stop"
        return Answer(self.tokenizer.decode(new, skip_special_tokens=True), finish)


def make_backend(preset_name: str, model_path: Optional[str] = None, n_threads: int = 0):
    """The backend that `preset_name`'s generator entry names. model_path: a GGUF file (llama-cpp) or a
    model folder (transformers) instead of the preset's packaged or hub weights."""
    from pipeline.config import ModelConfig

    spec = generator_for(preset_name)
    preset = get_preset(preset_name)
    if spec.backend == "llama-cpp":
        folder = Path(weights_source(ModelConfig(preset=preset_name)))
        path = Path(model_path) if model_path else folder / preset.gguf_file
        return LlamaCppBackend(path, n_threads=n_threads)
    if n_threads:
        import torch

        torch.set_num_threads(n_threads)
    source = model_path or spec.hf_id or preset.hf_id
    return TransformersBackend(source, load_in_4bit=preset.load_in_4bit)
