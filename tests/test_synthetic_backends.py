"""pipeline/synthetic/backends.py: the preset picks the backend; the real SmolLM2 GGUF (slow) writes valid,
reproducible rows through llama-cpp-python, and the transformers backend runs on the same weights."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import DataConfig, ModelConfig
from pipeline.data import load_competition_data
from pipeline.errors import ConfigError
from pipeline.presets import PRESETS, get_preset, weights_source
from pipeline.synthetic.backends import GENERATORS, generator_for
from pipeline.synthetic.files import read_extra_train


def test_every_generator_is_a_preset_and_the_preset_picks_the_backend():
    assert set(GENERATORS) <= set(PRESETS)
    assert generator_for("smollm2-135m").backend == "llama-cpp" and get_preset("smollm2-135m").gguf_file
    assert generator_for("qwen2.5-7b-instruct").backend == "transformers"
    assert generator_for("mistral-7b").hf_id.startswith("mistralai/Mistral-7B-Instruct")  # not the base model
    with pytest.raises(ConfigError, match="'tfidf-lr' cannot generate text"):
        generator_for("tfidf-lr")


@pytest.mark.slow
def test_real_smollm2_writes_valid_rows_and_the_same_file_twice(tmp_path, dair_dir):
    from pipeline.synthetic.generate import GenerateConfig, generate

    def once(name):
        cfg = GenerateConfig(out=str(tmp_path / name), competition="dair-emotion", data_dir=str(dair_dir),
                             per_label=1, labels=("joy", "fear"), seed=7, max_requests=12)
        return generate(cfg), pd.read_csv(cfg.out, dtype=str, keep_default_na=False)

    sidecar, frame = once("a.csv")
    c = sidecar["counts"]
    assert sidecar["backend"]["backend"] == "llama-cpp" and sidecar["backend"]["constrained"]
    assert c["answers"] == c["parsed"] + c["invalid"] and c["kept"] == len(frame) >= 1
    assert set(frame["gen_model"]) == {"SmolLM2-135M-Instruct.Q4_1.gguf"}
    data = load_competition_data(DataConfig(competition="dair-emotion", data_dir=str(dair_dir)))
    read_extra_train(tmp_path / "a.csv", data)
    assert (frame["text"] == frame["text"].str.lower()).all()  # the fixture's texts are lower case too
    _, again = once("b.csv")
    assert again.equals(frame)  # same seed and backend, same file on CPU


@pytest.mark.slow
def test_transformers_backend_answers_on_the_smollm2_weights():
    from pipeline.synthetic.backends import TransformersBackend
    from pipeline.synthetic.parse import extract_json
    from pipeline.synthetic.prompts import answer_schema

    preset = get_preset("smollm2-135m")
    backend = TransformersBackend(weights_source(ModelConfig(preset="smollm2-135m")), gguf_file=preset.gguf_file)
    messages = [{"role": "system", "content": "Reply with one JSON object."},
                {"role": "user", "content": 'Write a short happy post about rain. Reply in JSON: {"text": "...", '
                                            '"label": "joy"}'}]
    first = backend.generate(messages, answer_schema(["joy", "fear"], False), 3, 0.9, 0.95, 60)
    assert first == backend.generate(messages, answer_schema(["joy", "fear"], False), 3, 0.9, 0.95, 60)
    obj, reason = extract_json(first.text)
    assert (obj is None) == (reason is not None) and first.finish_reason in ("stop", "length")
