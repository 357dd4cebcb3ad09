"""TEST DOUBLE: a scripted stand-in for a generation backend (pipeline/synthetic/backends.py). It loads no
model; each answer comes from a script function of (messages, schema, seed) or a fixed list, in order."""
from __future__ import annotations

import json
import re

from pipeline.synthetic.backends import Answer


class ScriptedBackend:
    """Answers from `script`: a list of strings (consumed in order) or a function
    (call_number, messages, seed) -> str. Records every call in `calls`."""
    name, model, constrained = "stub", "scripted-test-double", False

    def __init__(self, script, fail_after=None):
        self.script, self.calls, self.fail_after = script, [], fail_after

    def generate(self, messages, schema, seed, temperature, top_p, max_new_tokens) -> Answer:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("scripted interruption")
        self.calls.append({"messages": messages, "seed": seed})
        n = len(self.calls) - 1
        text = self.script[n] if isinstance(self.script, list) else self.script(n, messages, seed)
        return Answer(text, "stop")


WORDS = ("morning", "train", "coffee", "garden", "letter", "window", "market", "river", "song", "bicycle", "kitchen",
         "meeting", "storm", "parcel", "ticket", "phone", "bridge", "lamp", "pencil", "jacket", "hill", "bakery")


def asked_shape(messages) -> dict:
    """The JSON example the prompt shows, with the asked label(s) filled in."""
    return json.loads(re.search(r"Reply in JSON: (\{.*\})", messages[-1]["content"]).group(1))


def asked_labels(messages) -> list:
    shape = asked_shape(messages)
    return shape["labels"] if "labels" in shape else [shape["label"]]


def seeded_post(seed: int, n_words: int = 8) -> str:
    """A distinct, deterministic text per seed (so dedup keeps it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words)) + f" number {seed % 100000}"


def good_answer(n, messages, seed) -> str:
    """A valid answer with the asked label(s), with prose around the JSON as chatty models write it."""
    body = {**asked_shape(messages), "text": seeded_post(seed)}
    return f"Sure! Here is the post:\n{json.dumps(body)}\nHope this helps."
