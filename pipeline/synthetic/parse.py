"""Turns a model's answer into a validated (text, labels) pair, or a named reason why not.

Answers are parsed with `json.loads` only (never eval). For unconstrained backends the last valid JSON
object in the answer is taken: prose around it, code fences and trailing commas are tolerated.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

# why an answer was rejected; every rejected answer is counted under exactly one of these
REASONS = ("no_json", "truncated", "schema", "unknown_label", "label_mismatch", "too_short", "too_long",
           "placeholder")

_TRAILING_COMMA = re.compile(r",\s*([}\]])")
# the schema echoed back instead of filled in: "<the post>", "...", a JSON key inside the text
_PLACEHOLDER = re.compile(r"<[^<>]{1,40}>|\"(text|labels?)\"\s*:|^\W*(\.\.\.|\u2026)\W*$")


def _block_end(answer: str, start: int) -> Optional[int]:
    """Index just past the object opened at `start`, matching braces outside strings; None if it never closes."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(answer)):
        ch = answer[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _loads(block: str):
    try:
        return json.loads(block)
    except json.JSONDecodeError:
        pass
    try:  # a trailing comma is the commonest slip of small models; nothing else is repaired
        return json.loads(_TRAILING_COMMA.sub(r"\1", block))
    except json.JSONDecodeError:
        return None


def extract_json(answer: str) -> tuple:
    """The last top-level JSON object in `answer`. Returns (dict, None) or (None, reason), reason being
    'truncated' when an object opens but never closes (the answer was cut off) and 'no_json' otherwise."""
    found, truncated, i = None, False, 0
    while True:
        start = answer.find("{", i)
        if start < 0:
            break
        end = _block_end(answer, start)
        if end is None:
            truncated = True
            i = start + 1
            continue
        obj = _loads(answer[start:end])
        if isinstance(obj, dict):
            found, truncated = obj, False
            i = end  # objects nested inside this one are not candidates
        else:
            i = start + 1
    if found is not None:
        return found, None
    return None, ("truncated" if truncated else "no_json")


@dataclass(frozen=True)
class Parsed:
    text: str = ""  # the normalised text
    labels: tuple = ()  # label names as the answer gave them, in the competition's order
    reason: Optional[str] = None  # one of REASONS when rejected
    detail: str = ""  # what exactly was wrong, for the journal and the sidecar's examples


def validate(obj: dict, asked: tuple, label_names: list, multilabel: bool, normalise, min_words: int,
             max_words: int) -> Parsed:
    """Check a parsed answer against the request's schema. obj: the JSON object; asked: the label names
    requested; normalise: str -> str (the text as it will be stored)."""
    key = "labels" if multilabel else "label"
    if not isinstance(obj.get("text"), str):
        return Parsed(reason="schema", detail=f"'text' must be a string, got {type(obj.get('text')).__name__}")
    raw = obj.get(key)
    if multilabel and isinstance(raw, str):
        raw = [raw]  # a lone label name where a list was asked is still unambiguous
    if multilabel:
        if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
            return Parsed(reason="schema", detail=f"'{key}' must be a non-empty list of label names, got {raw!r}")
        given = [v.strip() for v in raw]
    else:
        if not isinstance(raw, str):
            return Parsed(reason="schema", detail=f"'{key}' must be a label name, got {raw!r}")
        given = [raw.strip()]
    unknown = [v for v in given if v not in label_names]
    if unknown:
        return Parsed(reason="unknown_label", detail=f"unknown label names {unknown}")
    if set(given) != set(asked):
        return Parsed(reason="label_mismatch", detail=f"asked {list(asked)}, answered {given}")
    if _PLACEHOLDER.search(obj["text"]) or not re.search(r"[^\W\d_]", obj["text"]):
        return Parsed(reason="placeholder", detail=f"text looks like a template, not a post: {obj['text'][:80]!r}")
    text = normalise(obj["text"])
    words = len(text.split())
    if words < min_words:
        return Parsed(reason="too_short", detail=f"{words} words: {text!r}")
    if words > max_words:
        return Parsed(reason="too_long", detail=f"{words} words")
    ordered = tuple(name for name in label_names if name in set(given))
    return Parsed(text=text, labels=ordered)
