"""Tests of pipeline/generative/scoring.py and decode.py: label scores by the answer lattice (probabilities, the
same alone and in a padded batch, equal to brute force where the lattice is exact, through peft), constrained
generation only yields canonical answers, and parse_answer reads exactly those."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.generative.answers import AnswerFormat
from pipeline.generative.decode import generate_labels, parse_answer
from pipeline.generative.scoring import label_scores, lattice_of

WORDS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness", "surprise",
         "trust"]
VOCAB = 64  # hand-picked formats use ids below this


def tiny_lm(vocab_size: int, model_type: str = "qwen2", seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type=model_type, vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, pad_token_id=0)
    lm = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharper than the default init, so answers and scores differ between prompts
        lm.get_output_embeddings().weight.normal_(0, 1.0)
    return lm.eval()


def hand_format(n_labels: int) -> AnswerFormat:
    """Labels 0 and 1 share their first id (30), every `after` starts with the separator 5, `end` has two ids."""
    first = [(30, 31), (30, 32)] + [(33 + k,) for k in range(n_labels - 2)]
    return AnswerFormat(columns=tuple(f"c{k}" for k in range(n_labels)), words=tuple(f"w{k}" for k in range(n_labels)),
                        first=tuple(first[:n_labels]), after=tuple((5,) + f for f in first[:n_labels]), none=(20,),
                        end=(7, 8))


def tokenizer_format():
    """The emotion words through the tiny presets' (MiniLM) tokenizer: every `after` starts with ','; 'pessimism'
    is three ids. `end` is [SEP] and '.'."""
    from pipeline.config import ModelConfig
    from pipeline.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(preset="tiny-qwen2"))

    def ids(text):
        return tuple(tok(text, add_special_tokens=False).input_ids)

    fmt = AnswerFormat(columns=tuple(WORDS), words=tuple(WORDS), first=tuple(ids(w) for w in WORDS),
                       after=tuple(ids(", " + w) for w in WORDS), none=ids("none"),
                       end=(tok.sep_token_id,) + ids("."))
    return fmt, len(tok)


def random_prompts(n: int, vocab: int, seed: int = 0, low: int = 3, high: int = 14) -> list:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, vocab, rng.integers(low, high))] for _ in range(n)]


def answer_ids(fmt: AnswerFormat, labels) -> tuple:
    """The canonical answer of a set of label indices."""
    labels = sorted(labels)
    if not labels:
        return fmt.none + fmt.end
    return fmt.first[labels[0]] + sum((fmt.after[k] for k in labels[1:]), ()) + fmt.end


def next_logits(lm, ids) -> torch.Tensor:
    """Next-token logits after `ids`: a full forward, no cache, no padding."""
    with torch.no_grad():
        return lm(input_ids=torch.tensor([list(ids)])).logits[0, -1].double()


def renormalized_path(lm, context, candidates) -> list:
    """Probabilities of token sequences `candidates` after `context`: at each position where the candidates
    still agreeing so far continue with >= 2 different ids, the model's distribution renormalized over them."""
    out = []
    for cand in candidates:
        p = 1.0
        for i in range(len(cand)):
            options = sorted({c[i] for c in candidates if len(c) > i and c[:i] == cand[:i]})
            if len(options) >= 2:
                logits = next_logits(lm, tuple(context) + cand[:i])
                p *= float(torch.softmax(logits[options], 0)[options.index(cand[i])])
        out.append(p)
    return out


def brute_force_answers(lm, fmt: AnswerFormat, prompt) -> np.ndarray:
    """Exact P(label in answer) over all 2^L canonical answers, each scored with full forwards."""
    n = len(fmt.columns)
    subsets = [s for r in range(n + 1) for s in itertools.combinations(range(n), r)]
    probs = renormalized_path(lm, prompt, [answer_ids(fmt, s) for s in subsets])
    assert abs(sum(probs) - 1) < 1e-9
    return np.array([sum(p for s, p in zip(subsets, probs) if k in s) for k in range(n)])


def reference_lattice(lm, fmt: AnswerFormat, prompt) -> np.ndarray:
    """The lattice as the design states it, with full forwards and no shared work: transitions from each state
    with its Markov context (prompt, or prompt + first[j]), then the forward recursion."""
    n = len(fmt.columns)
    start = renormalized_path(lm, prompt, [fmt.first[k] for k in range(n)] + [fmt.none + fmt.end])
    alpha = []
    trans = {}
    for j in range(n - 1):
        cands = [fmt.after[k] for k in range(j + 1, n)] + [fmt.end]
        trans[j] = renormalized_path(lm, tuple(prompt) + fmt.first[j], cands)
    for k in range(n):
        alpha.append(start[k] + sum(alpha[j] * trans[j][k - j - 1] for j in range(k)))
    return np.array(alpha)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_scores_are_probabilities_in_columns_order(model_type):
    fmt, vocab = tokenizer_format()
    lm = tiny_lm(vocab, model_type)
    scores = label_scores(lm, fmt, random_prompts(9, vocab), batch_size=4)
    assert scores.shape == (9, len(WORDS)) and scores.dtype == np.float64
    assert np.isfinite(scores).all() and (scores > 0).all() and (scores < 1).all()
    assert len({tuple(np.round(row, 6)) for row in scores}) == 9  # the prompt matters
    assert label_scores(lm, fmt, [], batch_size=4).shape == (0, len(WORDS))


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_row_alone_equals_row_in_padded_batch(model_type):
    fmt, vocab = tokenizer_format()
    lm = tiny_lm(vocab, model_type)
    prompts = random_prompts(7, vocab, low=2, high=20)
    batch = label_scores(lm, fmt, prompts, batch_size=7)
    split = label_scores(lm, fmt, prompts, batch_size=3)  # rows split across batches
    alone = np.stack([label_scores(lm, fmt, [p], batch_size=1)[0] for p in prompts])
    np.testing.assert_allclose(batch, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(split, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("none", [(20,), (30, 40)])  # (30, 40): 'none' shares its first id with labels 0 and 1
def test_lattice_equals_brute_force_where_markov_context_is_exact(model_type, none):
    """With two labels the only context the lattice approximates (state 0 = prompt + first[0]) is the exact one,
    so its scores equal the enumeration of none / {0} / {1} / {0, 1} with direct forwards."""
    fmt = hand_format(2)
    fmt = AnswerFormat(fmt.columns, fmt.words, fmt.first, fmt.after, none, fmt.end)
    lm = tiny_lm(VOCAB, model_type, seed=1)
    prompts = random_prompts(4, VOCAB, seed=2, low=2, high=12)
    scores = label_scores(lm, fmt, prompts, batch_size=4)  # rows of different lengths in one padded batch
    for row, prompt in zip(scores, prompts):
        np.testing.assert_allclose(row, brute_force_answers(lm, fmt, prompt), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fmt_kind", ["hand", "tokenizer"])
def test_lattice_equals_reference_with_shared_first_ids(fmt_kind):
    """More labels (the Markov approximation in play): the cached, deduplicated, packed computation equals the
    lattice computed directly from full forwards; candidates share first ids (',' before every later label,
    labels 0 and 1 both starting with id 30 in the hand format)."""
    fmt, vocab = (hand_format(4), VOCAB) if fmt_kind == "hand" else tokenizer_format()
    lm = tiny_lm(vocab, seed=3)
    prompts = random_prompts(3, vocab, seed=4)
    scores = label_scores(lm, fmt, prompts, batch_size=2)
    for row, prompt in zip(scores, prompts):
        np.testing.assert_allclose(row, reference_lattice(lm, fmt, prompt), atol=1e-6, rtol=0)


def test_candidates_that_are_prefixes_of_others_are_refused():
    fmt = hand_format(3)
    clash = AnswerFormat(fmt.columns, fmt.words, ((30,), (30, 32), (33,)), fmt.after, fmt.none, fmt.end)
    with pytest.raises(ConfigError, match="'w0'.*'w1'|'w1'.*'w0'"):
        lattice_of(clash)
    same = AnswerFormat(fmt.columns, fmt.words, fmt.first, fmt.after, (33,), fmt.end)
    with pytest.raises(ConfigError, match="none"):  # 'none' + end = (33, 7, 8) vs w2 = (33,)
        lattice_of(same)
    with pytest.raises(ConfigError, match="no token ids"):
        lattice_of(AnswerFormat(fmt.columns, fmt.words, fmt.first, fmt.after, fmt.none, ()))


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", None])
def test_scores_and_generation_through_peft(task_type):
    from peft import LoraConfig, get_peft_model

    fmt = hand_format(3)
    base = tiny_lm(VOCAB, seed=5)
    prompts = random_prompts(5, VOCAB, seed=6)
    before = label_scores(base, fmt, prompts, batch_size=5)
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=False, task_type=task_type)).eval()
    scores = label_scores(lm, fmt, prompts, batch_size=5)
    assert np.abs(scores - before).max() > 1e-4  # the adapter is in the computation
    alone = np.stack([label_scores(lm, fmt, [p], batch_size=1)[0] for p in prompts])
    np.testing.assert_allclose(scores, alone, atol=1e-5, rtol=0)
    for row, prompt in zip(scores, prompts):
        np.testing.assert_allclose(row, reference_lattice(lm, fmt, prompt), atol=1e-6, rtol=0)
    preds = generate_labels(lm, fmt, prompts, batch_size=2)
    assert preds.shape == (5, 3) and set(np.unique(preds)) <= {0, 1}


def greedy_reference(lm, fmt: AnswerFormat, prompt) -> tuple:
    """Constrained greedy decoding by hand: full forwards, the next id = the best id that continues some
    canonical answer."""
    n = len(fmt.columns)
    answers = [answer_ids(fmt, s) for r in range(n + 1) for s in itertools.combinations(range(n), r)]
    out = ()
    while out not in answers:
        options = sorted({a[len(out)] for a in answers if a[:len(out)] == out and len(a) > len(out)})
        logits = next_logits(lm, tuple(prompt) + out)
        out += (options[int(torch.argmax(logits[options]))],)
    return out


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_constrained_generation_yields_canonical_answers_only(model_type):
    fmt, vocab = tokenizer_format()
    lm = tiny_lm(vocab, model_type, seed=7)
    prompts = random_prompts(120, vocab, seed=8, low=2, high=16)
    preds = generate_labels(lm, fmt, prompts, batch_size=16)  # each row is parsed by parse_answer inside
    assert preds.shape == (120, len(WORDS)) and preds.dtype == np.int8
    assert len({tuple(row) for row in preds}) >= 4  # a variety of answers, not one forced string
    assert preds.sum(1).max() >= 2  # multi-label answers occur
    alone = np.stack([generate_labels(lm, fmt, [p], batch_size=1)[0] for p in prompts[:10]])
    np.testing.assert_array_equal(preds[:10], alone)


def test_generation_follows_greedy_over_canonical_answers():
    fmt = hand_format(3)
    lm = tiny_lm(VOCAB, seed=9)
    prompts = random_prompts(12, VOCAB, seed=10)
    preds = generate_labels(lm, fmt, prompts, batch_size=5)
    for row, prompt in zip(preds, prompts):
        np.testing.assert_array_equal(row, parse_answer(fmt, greedy_reference(lm, fmt, prompt)))


def test_max_new_tokens_caps_answers_to_ones_that_fit():
    fmt = hand_format(4)
    lm = tiny_lm(VOCAB, seed=11)
    prompts = random_prompts(30, VOCAB, seed=12)
    shortest = len(fmt.none + fmt.end)  # 3, also w2 + end and w3 + end
    preds = generate_labels(lm, fmt, prompts, batch_size=8, max_new_tokens=shortest)
    assert (preds[:, :2] == 0).all() and (preds.sum(1) <= 1).all()  # w0 / w1 + end need 4 tokens
    with pytest.raises(ValueError, match="max_new_tokens=2"):
        generate_labels(lm, fmt, prompts, batch_size=8, max_new_tokens=2)


def test_parse_answer_round_trips_every_canonical_answer():
    for fmt in (hand_format(4), tokenizer_format()[0]):
        n = len(fmt.columns)
        subsets = [s for r in range(n + 1) for s in itertools.combinations(range(n), r)]
        if len(subsets) > 300:
            subsets = subsets[:150] + subsets[-150:]
        for s in subsets:
            expected = np.zeros(n, dtype=np.int8)
            expected[list(s)] = 1
            got = parse_answer(fmt, answer_ids(fmt, s))
            assert got.dtype == np.int8
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name, ids", [
    ("wrong order", (30, 32, 5, 30, 31, 7, 8)),  # w1, w0
    ("repeat", (30, 31, 5, 30, 31, 7, 8)),  # w0, w0
    ("unknown token", (30, 31, 9, 7, 8)),
    ("separator then nothing", (30, 31, 5, 7, 8)),
    ("none with a label", (20, 5, 33, 7, 8)),
    ("label then none", (33, 20, 7, 8)),
    ("none after the end", (33, 7, 8, 20, 7, 8)),
    ("missing end", (30, 31, 5, 33)),
    ("half an end", (33, 7)),
    ("half a label", (30, 7, 8)),
    ("empty", ()),
    ("end alone", (7, 8)),
])
def test_parse_answer_rejects_non_canonical(name, ids):
    with pytest.raises(ValueError, match="not a canonical answer"):
        parse_answer(hand_format(4), ids)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_a_shared_prefix_run_once_gives_the_scores_and_answers_of_whole_prompts(model_type):
    fmt, vocab = tokenizer_format()
    lm = tiny_lm(vocab, model_type, seed=5)
    prefix = tuple(random_prompts(1, vocab, seed=6, low=8, high=9)[0])
    rests = random_prompts(9, vocab, seed=7, low=1, high=12)
    whole = [list(prefix) + r for r in rests]
    np.testing.assert_allclose(label_scores(lm, fmt, rests, batch_size=4, prefix=prefix),
                               label_scores(lm, fmt, whole, batch_size=4), atol=1e-6, rtol=0)
    answers = generate_labels(lm, fmt, whole, batch_size=4)
    np.testing.assert_array_equal(generate_labels(lm, fmt, rests, batch_size=4, prefix=prefix), answers)
    assert len({tuple(a) for a in answers}) > 2  # rows write different answers
