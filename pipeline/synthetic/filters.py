"""Text normalisation, exact and near-duplicate detection (MinHash LSH) and diversity figures.

Synthetic texts are normalised to look like the competition's own texts (e.g. dair-emotion's are all
lower case without punctuation), deduplicated on a looser key, and dropped when they are a near-duplicate
of an earlier synthetic text or of any real train or test text.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]|_")
_LEAD = re.compile(r"^\s*(tweet|post|text|message|sentence|example)\s*\d*\s*:\s*", re.I)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


@dataclass(frozen=True)
class TextStyle:
    """How the competition's training texts are written: the normalisation synthetic texts get."""
    lowercase: bool = False  # every real text is lower case
    no_punctuation: bool = False  # no real text has punctuation

    @classmethod
    def of(cls, texts: list, share: float = 0.99) -> "TextStyle":
        """Measured on real texts: a property holds when at least `share` of them have it."""
        if not texts:
            return cls()
        lower = np.mean([t == t.lower() for t in texts])
        plain = np.mean([not _PUNCT.search(t) for t in texts])
        return cls(bool(lower >= share), bool(plain >= share))


def normalise(text: str, style: TextStyle = TextStyle()) -> str:
    """The text as stored: NFKC, one space between words, no wrapping quotes or 'Tweet:' lead-in,
    then the competition's casing and punctuation (`style`)."""
    text = unicodedata.normalize("NFKC", text)
    text = _SPACE.sub(" ", text).strip()
    before = None
    while text != before:  # '"Tweet: ..."' and 'Tweet: "..."' both end as the bare text
        before = text
        text = _LEAD.sub("", text)
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    if style.lowercase:
        text = text.lower()
    if style.no_punctuation:
        # apostrophes vanish inside words ("didn't" -> "didnt", as dair-emotion writes it); other marks split words
        text = re.sub(r"(?<=\w)['\u2019](?=\w)", "", text)
        text = _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()
    return text


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case, punctuation and spacing ignored."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())).strip()


def shingles(text: str, n: int = 5) -> list:
    """Character n-grams of the dedup key (as bytes, for MinHash); a text shorter than n is one shingle."""
    key = dedup_key(text)
    if len(key) <= n:
        return [key.encode("utf-8")]
    return sorted({key[i:i + n].encode("utf-8") for i in range(len(key) - n + 1)})


class NearDupIndex:
    """MinHash LSH over character 5-grams. `find(text)` names the first indexed text whose estimated
    Jaccard similarity reaches `threshold`; candidates from LSH are checked against the estimate, so
    LSH's false positives do not count. Deterministic: fixed permutation seed, sorted candidates."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, ngram: int = 5):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.ngram = threshold, num_perm, ngram
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.hashes: dict = {}
        self.order: dict = {}

    def _minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch(shingles(text, self.ngram))
        return m

    def add_many(self, keys: list, texts: list) -> None:
        """Index many texts at once (the real train and test texts)."""
        from datasketch import MinHash

        mins = MinHash.bulk([shingles(t, self.ngram) for t in texts], num_perm=self.num_perm, seed=1)
        with self.lsh.insertion_session() as session:
            for key, m in zip(keys, mins):
                if key in self.hashes:
                    continue
                session.insert(key, m)
                self.hashes[key] = m
                self.order[key] = len(self.order)

    def add(self, key: str, text: str) -> None:
        m = self._minhash(text)
        self.lsh.insert(key, m)
        self.hashes[key] = m
        self.order[key] = len(self.order)

    def find(self, text: str) -> Optional[tuple]:
        """(key, similarity) of the earliest indexed near-duplicate of `text`, or None."""
        m = self._minhash(text)
        hits = []
        for key in self.lsh.query(m):
            sim = float(m.jaccard(self.hashes[key]))
            if sim >= self.threshold:
                hits.append((self.order[key], key, sim))
        if not hits:
            return None
        _, key, sim = min(hits)
        return key, sim


def _ngrams(words: list, n: int) -> list:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list, n: int) -> float:
    """Distinct n-grams over all n-grams of the corpus (Li et al. 2016); 0 for an empty corpus."""
    grams = [g for t in texts for g in _ngrams(dedup_key(t).split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list, max_n: int = 4) -> float:
    """Mean sentence BLEU-4 of each text against all the others as references (Zhu et al. 2018's Self-BLEU;
    higher = more repetitive). Exact and linear in the corpus size: each n-gram keeps its two largest
    per-text counts, so the clipping count "over every other text" is one lookup. Smoothing: add-one
    on n-gram orders with no match (Lin and Och 2004), so short texts do not all score 0."""
    docs = [dedup_key(t).split() for t in texts]
    if len(docs) < 2:
        return 0.0
    top2: list = [dict() for _ in range(max_n)]
    for i, words in enumerate(docs):
        for n in range(1, max_n + 1):
            for gram, count in Counter(_ngrams(words, n)).items():
                best = top2[n - 1].setdefault(gram, [(0, -1), (0, -1)])
                if count > best[0][0]:
                    best[1], best[0] = best[0], (count, i)
                elif count > best[1][0]:
                    best[1] = (count, i)
    lengths = sorted(len(d) for d in docs)
    scores = []
    for i, words in enumerate(docs):
        if not words:
            continue
        logs = []
        for n in range(1, max_n + 1):
            grams = Counter(_ngrams(words, n))
            total = sum(grams.values())
            if not total:  # a text shorter than n words: its BLEU uses the orders it has
                continue
            matched = 0
            for gram, count in grams.items():
                (c1, d1), (c2, _) = top2[n - 1][gram]
                matched += min(count, c2 if d1 == i else c1)
            if n == 1 and not matched:
                break
            logs.append(math.log(matched / total) if n == 1 else math.log((matched + 1) / (total + 1)))
        if not logs:
            scores.append(0.0)
            continue
        # brevity penalty against the closest other length (ties: the shorter)
        others = lengths.copy()
        others.remove(len(words))
        ref = min(others, key=lambda r: (abs(r - len(words)), r))
        bp = 1.0 if len(words) >= ref else math.exp(1 - ref / len(words))
        scores.append(bp * math.exp(sum(logs) / len(logs)))
    return float(np.mean(scores)) if scores else 0.0


def diversity(texts: list, sample: int = 1000, seed: int = 0) -> dict:
    """distinct-1, distinct-2, self-BLEU-4 and mean words of a corpus (a seeded sample of `sample` texts
    when larger, since distinct-n falls as a corpus grows: compare corpora at the same size)."""
    texts = list(texts)
    if len(texts) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), sample, replace=False))
        texts = [texts[i] for i in pick]
    return {"rows": len(texts), "distinct_1": round(distinct_n(texts, 1), 4),
            "distinct_2": round(distinct_n(texts, 2), 4),
            "self_bleu_4": round(self_bleu(texts), 4),
            "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 2) if texts else 0.0}
