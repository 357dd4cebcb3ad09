"""Seeded generation requests: which label(s) to ask for, the prompt's attributes, in-context examples,
the chat messages and the JSON schema the answer must match.

Request i draws everything from `numpy.random.default_rng([seed, i])`, so a request does not depend on
how many came before it or on a resumed run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

# prompt attributes, varied per request so that the texts do not all sound alike
STYLES = ("casual tweet", "diary-style post", "text message to a friend", "status update", "forum comment",
          "reply to someone's post")
# no "long": a small model asked for 40 words rambles past max_new_tokens and the cut-off answer is wasted
LENGTHS = {"short": "under 15 words", "medium": "15 to 30 words"}
TOPICS = ("work", "school", "family", "a friend", "a partner", "money", "health", "the weather", "travel", "food",
          "sports", "music", "a pet", "the news", "moving house", "a hobby", "social media", "a phone call",
          "a holiday", "shopping", "the commute", "sleep", "a birthday", "a neighbour")
EXPLICITNESS = {"explicit": "say the feeling plainly", "implicit": "show the feeling without naming it"}
EXAMPLE_WORDS = 40  # in-context examples are cut to this many words, to keep prompts short

SYSTEM = ("You write realistic, varied social-media posts for an emotion-classification dataset. "
          "Reply with one JSON object and nothing else.")


@dataclass(frozen=True)
class Request:
    index: int  # 0-based request number; the row id is syn-<index>
    labels: tuple  # label names asked for, in the competition's order
    attributes: dict  # style, length, topic, explicitness
    example_ids: tuple = ()  # ids of the real training rows shown as in-context examples
    messages: list = field(default_factory=list)  # chat messages (system, user)
    schema: dict = field(default_factory=dict)  # JSON schema of the answer


def answer_schema(label_names: list, multilabel: bool) -> dict:
    """The JSON schema an answer must match: the text, then its label (multiclass) or labels (multilabel),
    label names as an enum."""
    enum = {"type": "string", "enum": list(label_names)}
    label = ({"labels": {"type": "array", "items": enum, "minItems": 1, "maxItems": len(label_names)}}
             if multilabel else {"label": enum})
    return {"type": "object", "properties": {"text": {"type": "string"}, **label},
            "required": ["text", *label], "additionalProperties": False}


class Planner:
    """Builds requests for one competition. label_names: every label or class in output order;
    labels: (n_train, n_labels) 0/1 of the training rows the folds train on, with their ids and texts."""

    def __init__(self, label_names: list, multilabel: bool, train_ids: list, train_texts: list, labels: np.ndarray,
                 seed: int, n_examples: int = 0, labels_per_example: tuple = (1, 1)):
        self.label_names, self.multilabel, self.seed = list(label_names), multilabel, seed
        self.n_examples, self.labels_per_example = n_examples, labels_per_example
        self.train_ids, self.train_texts = list(train_ids), list(train_texts)
        labels = np.asarray(labels, dtype=np.int64)
        self.pools = {name: np.flatnonzero(labels[:, j]) for j, name in enumerate(self.label_names)}
        self.pair_counts = labels.T @ labels  # (n_labels, n_labels): rows carrying both labels
        self.schema = answer_schema(self.label_names, multilabel)

    def _co_labels(self, primary: str, rng: np.random.Generator) -> list:
        """Labels asked together with `primary`: k - 1 more, k drawn from labels_per_example; a partner
        is likelier the rarer its combination with `primary` is in the training data (combinations
        never seen there are not asked, unless the primary label co-occurs with nothing)."""
        lo, hi = self.labels_per_example
        k = int(rng.integers(lo, hi + 1))
        a = self.label_names.index(primary)
        others = [j for j in range(len(self.label_names)) if j != a]
        counts = self.pair_counts[a, others].astype(float)
        weights = np.where(counts > 0, 1.0 / (1.0 + counts), 0.0)
        if weights.sum() == 0:
            weights = np.ones(len(others))
        k = min(k - 1, int((weights > 0).sum()))
        if k <= 0:
            return []
        picked = rng.choice(others, size=k, replace=False, p=weights / weights.sum())
        return [self.label_names[j] for j in picked]

    def request(self, index: int, primary: str) -> Request:
        """Request `index`, asking for `primary` (and, multilabel, the drawn partners)."""
        rng = np.random.default_rng([self.seed, index])
        attributes = {"style": STYLES[rng.integers(len(STYLES))], "length": list(LENGTHS)[rng.integers(len(LENGTHS))],
                      "topic": TOPICS[rng.integers(len(TOPICS))],
                      "explicitness": list(EXPLICITNESS)[rng.integers(len(EXPLICITNESS))]}
        asked = {primary, *(self._co_labels(primary, rng) if self.multilabel else [])}
        labels = tuple(n for n in self.label_names if n in asked)
        pool = self.pools[primary]
        rows = rng.choice(pool, size=min(self.n_examples, len(pool)), replace=False) if self.n_examples else []
        example_ids = tuple(self.train_ids[r] for r in rows)
        examples = [" ".join(self.train_texts[r].split()[:EXAMPLE_WORDS]) for r in rows]
        return Request(index, labels, attributes, example_ids, self.messages(labels, attributes, primary, examples),
                       self.schema)

    def messages(self, labels: tuple, attributes: dict, primary: str, examples: list) -> list:
        feeling = " and ".join(labels)
        lines = [f"Write a {attributes['length']} {attributes['style']} ({LENGTHS[attributes['length']]}) about "
                 f"{attributes['topic']}. The writer feels {feeling}; {EXPLICITNESS[attributes['explicitness']]}."]
        if examples:
            lines.append(f"Real posts labelled {primary}, for the tone (do not copy them):")
            lines += [f"- {text}" for text in examples]
        # the reply's shape with the asked label(s) filled in: a small model copies a concrete example far
        # more reliably than it follows a description of the schema ("..." echoed back is rejected and retried)
        shape = {"text": "...", "labels": list(labels)} if self.multilabel else {"text": "...", "label": labels[0]}
        lines.append(f"Reply in JSON: {json.dumps(shape)}")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
