"""pipeline/synthetic/parse.py: JSON extraction from messy answers and validation against the asked labels."""
from __future__ import annotations

import pytest

from pipeline.synthetic.filters import TextStyle, normalise
from pipeline.synthetic.parse import extract_json, validate

CLASSES = ["sadness", "joy", "love", "anger", "fear", "surprise"]


@pytest.mark.parametrize("answer, expected", [
    ('{"text": "a b c", "label": "joy"}', {"text": "a b c", "label": "joy"}),
    ('Sure! Here you go:\n{"text": "a b c", "label": "joy"}\nEnjoy.', {"text": "a b c", "label": "joy"}),
    ('```json\n{"text": "a b c", "label": "joy"}\n```', {"text": "a b c", "label": "joy"}),
    # several blocks: the last valid one wins (models often correct themselves)
    ('{"text": "first", "label": "fear"} no wait: {"text": "second", "label": "joy"}',
     {"text": "second", "label": "joy"}),
    ('{"text": "ok", "label": "joy"} then {"text": "broken", "label": }', {"text": "ok", "label": "joy"}),
    ('{"text": "a, b", "label": "joy",}', {"text": "a, b", "label": "joy"}),  # trailing comma
    ('{"text": "x", "labels": ["joy", "fear",],}', {"text": "x", "labels": ["joy", "fear"]}),
    ('{"text": "braces } and {", "label": "joy"}', {"text": "braces } and {", "label": "joy"}),
    ('{"outer": {"text": "inner", "label": "joy"}}', {"outer": {"text": "inner", "label": "joy"}}),  # outermost block
])
def test_extract_json_finds_the_last_valid_block(answer, expected):
    assert extract_json(answer) == (expected, None)


@pytest.mark.parametrize("answer, reason", [
    ('{"text": "i was so scared when the', "truncated"),
    ('Here it is: {"text": "cut off", "label": "jo', "truncated"),
    ("I cannot help with that.", "no_json"),
    ("{'text': 'single quotes', 'label': 'joy'}", "no_json"),  # not JSON; never eval'd
    ('["a list", "not an object"]', "no_json"),
    ("", "no_json"),
])
def test_extract_json_names_why_nothing_was_found(answer, reason):
    assert extract_json(answer) == (None, reason)


def check(obj, asked=("joy",), multilabel=False, style=TextStyle()):
    return validate(obj, asked, CLASSES, multilabel, lambda t: normalise(t, style), min_words=3, max_words=20)


def test_validate_accepts_and_normalises():
    p = check({"text": '  "Tweet: I didn\'t   expect THIS, honestly!"  ', "label": "joy"},
              style=TextStyle(lowercase=True, no_punctuation=True))
    assert p.reason is None and p.text == "i didnt expect this honestly" and p.labels == ("joy",)


@pytest.mark.parametrize("obj, reason", [
    ({"label": "joy"}, "schema"),
    ({"text": 5, "label": "joy"}, "schema"),
    ({"text": "a fine post here", "label": ["joy"]}, "schema"),
    ({"text": "a fine post here", "label": "happiness"}, "unknown_label"),
    ({"text": "a fine post here", "label": "fear"}, "label_mismatch"),
    ({"text": "<the post>", "label": "joy"}, "placeholder"),
    ({"text": "...", "label": "joy"}, "placeholder"),
    ({"text": 'so {"text": "x"', "label": "joy"}, "placeholder"),
    ({"text": "too short", "label": "joy"}, "too_short"),
    ({"text": " ".join(["word"] * 21), "label": "joy"}, "too_long"),
])
def test_validate_rejects_with_a_reason(obj, reason):
    assert check(obj).reason == reason


def test_validate_multilabel_compares_sets_and_orders_labels():
    ok = check({"text": "what a day this was", "labels": ["fear", "joy"]}, asked=("joy", "fear"), multilabel=True)
    assert ok.reason is None and ok.labels == ("joy", "fear")  # the competition's order
    assert check({"text": "what a day this was", "labels": ["joy"]}, asked=("joy", "fear"),
                 multilabel=True).reason == "label_mismatch"
    assert check({"text": "what a day this was", "labels": []}, asked=("joy",), multilabel=True).reason == "schema"
    assert check({"text": "what a day this was", "labels": "joy"}, asked=("joy",), multilabel=True).reason is None
