"""pipeline/synthetic/filters.py: normalisation, dedup keys, MinHash near-duplicates, diversity figures."""
from __future__ import annotations

import pytest

from pipeline.synthetic.filters import NearDupIndex, TextStyle, dedup_key, diversity, distinct_n, normalise, self_bleu


def test_style_is_measured_on_real_texts():
    assert TextStyle.of(["i feel fine", "im so tired"]) == TextStyle(lowercase=True, no_punctuation=True)
    assert TextStyle.of(["Hello there!", "i feel fine"]) == TextStyle(lowercase=False, no_punctuation=False)


def test_normalise_strips_wrappers_and_applies_the_style():
    assert normalise('Post: "I can\'t  believe\nit!"') == "I can't believe it!"
    assert normalise("\u201cQuoted\u201d") == "Quoted"
    assert normalise("Don't STOP - now!", TextStyle(True, True)) == "dont stop now"


def test_dedup_key_ignores_case_punctuation_and_spacing():
    assert dedup_key("I feel  GREAT, today!") == dedup_key("i feel great today")


def test_near_duplicates_keep_the_first_copy_and_ignore_unrelated_texts():
    index = NearDupIndex(threshold=0.7)
    index.add_many(["real:1", "real:2"], ["i feel so happy to see my family again this weekend",
                                          "the storm kept me awake all night and i was terrified"])
    assert index.find("i feel so happy to see my family again this weekend!!") == ("real:1", pytest.approx(1.0))
    hit = index.find("i feel so happy to see my famly again this weekend")
    assert hit is not None and hit[0] == "real:1" and hit[1] >= 0.7
    assert index.find("my boss shouted at me in the meeting and i am furious") is None
    index.add("syn-1", "my boss shouted at me in the meeting and i am furious")
    index.add("syn-2", "my boss shouted at me in the meeting and i am furious!")  # added anyway: find() decides
    assert index.find("my boss shouted at me in the meeting and i am so furious")[0] == "syn-1"  # the earliest


def test_diversity_figures():
    same = ["a b c d e f"] * 4
    varied = ["a b c d", "e f g h", "i j k l", "m n o p"]
    assert distinct_n(same, 1) == pytest.approx(6 / 24) and distinct_n(varied, 2) == 1.0
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(varied) == 0.0
    assert 0 < self_bleu(["the cat sat on the mat", "the cat sat on a hat", "dogs run fast in parks"]) < 1
    figures = diversity(varied)
    assert figures["rows"] == 4 and figures["distinct_1"] == 1.0 and figures["mean_words"] == 4
