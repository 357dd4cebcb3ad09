"""Per-label probabilities read from a causal LM by the answer lattice: states "nothing written yet" and "the
last label written was j"; each state's next items (labels later in the canonical order, `none`, the end)
form a trie of token ids, scored at its branching nodes with the model's next-token distribution renormalized
over the branches; P(label k in the answer) is the forward probability of reaching state k.

Cost per batch: the shared prompt prefix once, one prefill of each row's rest of the prompt, then one forward of
the continuation sequences (a label's first ids, maybe plus the shared start of the next items: 10 sequences of
2-4 tokens, 30 tokens, for the emotion labels through SmolLM2's tokenizer) packed into one sequence per row over
that row's own KV cache, with a block-diagonal causal mask so each sequence sees the prompt and only itself. No
cache is copied per sequence: the batch's cache grows by the packed tokens (SmolLM2-135M: 46 KB per token in fp32).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.generative.answers import AnswerFormat

START = -1  # the state before the first item
DONE = -2  # the target of `none + end` and of `end`: the answer is complete


@dataclass
class Node:
    """A trie node: `children` maps the next token id to a node; `target` is set where a candidate ends (the
    state it leads to: a label index or DONE)."""
    children: dict = field(default_factory=dict)
    target: Optional[int] = None
    rest: int = 0  # fewest tokens from here to a complete answer (this candidate's rest + the target's)


@dataclass
class Lattice:
    """The tries of the answer lattice of one AnswerFormat: `roots[state]` for START and each label."""
    n_labels: int
    roots: dict
    context: dict  # state -> token ids after the prompt that form its Markov context (first[j] for label j)
    longest: int  # tokens in the longest canonical answer
    tokens: frozenset  # every token id an answer may contain


def _candidates(fmt: AnswerFormat, state: int) -> list:
    """(token ids, target) of the items that may follow `state`."""
    n = len(fmt.columns)
    if state == START:
        return [(tuple(fmt.first[k]), k) for k in range(n)] + [(tuple(fmt.none) + tuple(fmt.end), DONE)]
    return [(tuple(fmt.after[k]), k) for k in range(state + 1, n)] + [(tuple(fmt.end), DONE)]


def _describe(fmt: AnswerFormat, state: int, target: int) -> str:
    if target == DONE:
        return "'none' + end" if state == START else "end"
    return f"'{fmt.words[target]}'"


def _build_trie(fmt: AnswerFormat, state: int) -> Node:
    """The trie of a state's candidates; refuses an empty candidate or one that is a prefix of another (the
    answer could not be read back unambiguously)."""
    root = Node()
    ends = {}  # candidate ids -> its description, to name both sides of a clash
    for ids, target in _candidates(fmt, state):
        what = _describe(fmt, state, target)
        if not ids:
            raise ConfigError(f"answer format: the item {what} has no token ids (label words {list(fmt.words)})")
        node = root
        for token in ids:
            if node.target is not None:
                break
            node = node.children.setdefault(int(token), Node())
        if node.target is not None or node.children:
            clash = next(v for k, v in ends.items() if k[:len(ids)] == ids or ids[:len(k)] == k)
            raise ConfigError(f"answer format: the token ids of {what} {list(ids)} and of {clash} start the same "
                              f"way, one a prefix of the other, so answers cannot be read back; change "
                              f"model.label_words, model.answer_sep or model.none_answer")
        node.target = target
        ends[ids] = what
    return root


def _set_rest(node: Node, finish: dict) -> int:
    """Fill `rest` bottom-up: `finish[state]` = fewest tokens from that state to a complete answer."""
    if node.target is not None:
        node.rest = finish[node.target]
    else:
        node.rest = 1 + min(_set_rest(child, finish) for child in node.children.values())
    return node.rest


@functools.lru_cache(maxsize=8)
def lattice_of(fmt: AnswerFormat) -> Lattice:
    """The answer lattice of `fmt` (cached: an AnswerFormat is frozen and hashable)."""
    n = len(fmt.columns)
    if not (len(fmt.words) == len(fmt.first) == len(fmt.after) == n) or n == 0:
        raise ConfigError(f"answer format: {n} columns but {len(fmt.words)} words, {len(fmt.first)} first and "
                          f"{len(fmt.after)} after id tuples")
    states = [START] + list(range(n))
    roots = {state: _build_trie(fmt, state) for state in states}
    # fewest and most tokens from each state to the end: labels are visited in increasing order, so go backwards
    finish, longest = {DONE: 0}, {DONE: 0}
    for state in reversed(states):
        cands = _candidates(fmt, state)
        finish[state] = min(len(ids) + finish[target] for ids, target in cands)
        longest[state] = max(len(ids) + longest[target] for ids, target in cands)
    for root in roots.values():
        _set_rest(root, finish)
    context = {START: ()} | {j: tuple(int(t) for t in fmt.first[j]) for j in range(n)}
    tokens = frozenset(t for state in states for ids, _ in _candidates(fmt, state) for t in ids)
    return Lattice(n, roots, context, longest[START], tokens)


@dataclass
class _Query:
    """A branching node: the distribution after context + `prefix`, restricted to `tokens`."""
    state: int
    prefix: tuple  # token ids after the prompt (the state's context, then the node's path)
    tokens: tuple  # the children's token ids
    nodes: tuple  # the children


def _queries(lattice: Lattice) -> list:
    """Every node with >= 2 children, in every state's trie (a single child has probability 1)."""
    out = []

    def walk(state, node, prefix):
        if len(node.children) >= 2:
            out.append(_Query(state, prefix, tuple(node.children), tuple(node.children.values())))
        for token, child in node.children.items():
            walk(state, child, prefix + (token,))

    for state, root in lattice.roots.items():
        walk(state, root, lattice.context[state])
    return out


def _carriers(queries: list) -> tuple:
    """The fewest continuation sequences whose positions hold every non-empty query prefix: a prefix that is
    the start of a longer one is read inside it. Returns (carriers, where) with where[i] = (carrier, position)
    or None for an empty prefix (read from the prompt's last token)."""
    carriers = []
    for prefix in sorted({q.prefix for q in queries if q.prefix}, key=len, reverse=True):
        if not any(c[:len(prefix)] == prefix for c in carriers):
            carriers.append(prefix)
    where = []
    for q in queries:
        if not q.prefix:
            where.append(None)
        else:
            c = next(i for i, c in enumerate(carriers) if c[:len(q.prefix)] == q.prefix)
            where.append((c, len(q.prefix) - 1))
    return carriers, where


def lm_device(lm) -> torch.device:
    return next(lm.parameters()).device


def left_pad(prompts: list, pad_id: int, device) -> tuple:
    """prompts: list of token id lists -> input_ids, attention_mask (rows, width) left-padded, and
    position_ids counted from each row's first real token (so padding does not shift positions)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def pad_id_of(lm) -> int:
    """Any id works for masked positions; prefer the model's pad id, else 0."""
    pad = getattr(lm.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _check_prompts(prompts: list) -> None:
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"{len(empty)} prompts have no token ids (first rows: {empty[:5]})")


def select_cache(cache, rows: torch.Tensor):
    """A cache holding `cache`'s batch entries `rows` (repeats allowed); the original is left untouched
    (layers are copied shallowly; selecting builds new tensors)."""
    import copy

    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


def _branch_logits(lm, lattice: Lattice, prompts: list, vocab_keep: torch.Tensor, carriers: list,
                   prefix_cache=None) -> tuple:
    """One batch: the prompt's last-token logits (rows, |keep|) and each carrier's logits at every position
    (rows, n_carriers, width, |keep|), both restricted to the token ids `vocab_keep`, as float64. prefix_cache:
    the KV cache (one entry) of the ids every prompt follows, or None."""
    device = lm_device(lm)
    ids, mask, positions = left_pad(prompts, pad_id_of(lm), device)
    keep = vocab_keep.to(device)
    cache = None
    if prefix_cache is not None:  # rows continue the shared prefix: positions and mask count it
        n = prefix_cache.get_seq_length()
        cache = select_cache(prefix_cache, torch.zeros(len(prompts), dtype=torch.long, device=device))
        mask = torch.cat([torch.ones((len(prompts), n), dtype=torch.long, device=device), mask], 1)
        positions = positions + n
    out = lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
             logits_to_keep=1)
    last = out.logits[:, -1, :].index_select(-1, keep).double().cpu()
    rows = len(prompts)
    if not carriers:
        return last, None
    width = max(len(c) for c in carriers)
    # every carrier of a row in one packed sequence over the row's own prompt cache: each carrier token sees the
    # prompt and its own carrier's earlier tokens (a block-diagonal causal mask), at the positions it would have
    # right after the prompt, so no prompt cache is ever copied per carrier
    packed = [t for c in carriers for t in c]
    starts = np.cumsum([0] + [len(c) for c in carriers])[:-1]
    carrier_of = np.repeat(np.arange(len(carriers)), [len(c) for c in carriers])
    offset = torch.as_tensor(np.concatenate([np.arange(len(c)) for c in carriers]), device=device)
    same = torch.as_tensor(carrier_of[:, None] == carrier_of[None, :], device=device)
    own = same & (offset[:, None] >= offset[None, :])  # (C, C): same carrier, not later
    seen = torch.cat([mask.bool()[:, None, :].expand(rows, len(packed), -1),
                      own[None].expand(rows, -1, -1)], 2)  # (rows, C, prompt width + C)
    dtype = lm.get_input_embeddings().weight.dtype  # the compute dtype the mask is added in
    additive = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)
    step = lm(input_ids=torch.as_tensor([packed], device=device).expand(rows, -1), attention_mask=additive[:, None],
              position_ids=mask.sum(1)[:, None] + offset[None], cache=out.cache, use_cache=True)
    logits = step.logits.index_select(-1, keep).double().cpu()  # (rows, C, |keep|)
    found = torch.zeros((rows, len(carriers), width, len(keep)), dtype=torch.float64)
    for i, c in enumerate(carriers):
        found[:, i, :len(c)] = logits[:, starts[i]:starts[i] + len(c)]
    return last, found


def _transitions(lattice: Lattice, queries: list, where: list, keep_index: dict, last, found) -> dict:
    """T[state][target]: (rows,) probabilities of each candidate, the product of its branch probabilities."""
    branch = {}  # id(node) -> (rows,) probability of stepping into it from its branching parent
    for q, w in zip(queries, where):
        cols = [keep_index[t] for t in q.tokens]
        logits = last[:, cols] if w is None else found[:, w[0], w[1], cols]
        probs = torch.softmax(logits, dim=-1)
        for j, node in enumerate(q.nodes):
            branch[id(node)] = probs[:, j]
    rows = last.shape[0]
    trans = {}

    def walk(state, node, p):
        if node.target is not None:
            trans[state][node.target] = p
        for child in node.children.values():
            walk(state, child, p * branch[id(child)] if id(child) in branch else p)

    for state, root in lattice.roots.items():
        trans[state] = {}
        walk(state, root, torch.ones(rows, dtype=torch.float64))
    return trans


def lattice_transitions(lm, fmt: AnswerFormat, prompts: list, batch_size: int, prefix: tuple = ()):
    """Yields (row positions, T) per batch, T[state][target] the (rows,) probability of each step of the answer
    lattice (state START or a label index; target a label index or DONE), for `label_scores` and for comparing
    other scores read from the same passes (benchmarks/scoring_methods.py). Arguments as for label_scores."""
    lattice = lattice_of(fmt)
    _check_prompts(prompts)
    queries = _queries(lattice)
    carriers, where = _carriers(queries)
    keep_tokens = sorted({t for q in queries for t in q.tokens})
    keep_index = {t: i for i, t in enumerate(keep_tokens)}
    vocab_keep = torch.as_tensor(keep_tokens, dtype=torch.long)
    # rows sorted by length, so a batch pads little; callers put scores back in their rows
    order = np.argsort([len(p) for p in prompts], kind="stable")
    with torch.inference_mode():
        prefix_cache = None
        if prefix:
            prefix_cache = lm(input_ids=torch.as_tensor([list(prefix)], dtype=torch.long, device=lm_device(lm)),
                              use_cache=True, logits_to_keep=1).cache
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = [list(prompts[i]) for i in idx]
            last, found = _branch_logits(lm, lattice, rows, vocab_keep, carriers, prefix_cache)
            yield idx, _transitions(lattice, queries, where, keep_index, last, found)


def label_scores(lm, fmt: AnswerFormat, prompts: list, batch_size: int, prefix: tuple = ()) -> np.ndarray:
    """P(label in the answer) per row and label, from the answer lattice.

    lm: a causal LM (HF *ForCausalLM or a peft model around one) in eval mode; fmt: the AnswerFormat;
    prompts: n lists of prompt token ids (unpadded, each ending where the answer starts); batch_size: rows
    per forward; prefix: token ids shared by every prompt and not repeated in `prompts` (each prompt is then the
    rest of its row), run once. Returns (n, L) float64 in [0, 1], in fmt.columns order (strictly inside unless a
    branch's logit gap exceeds ~36, beyond float64).
    """
    scores = np.empty((len(prompts), len(fmt.columns)))
    if not prompts:
        return scores
    for idx, trans in lattice_transitions(lm, fmt, prompts, batch_size, prefix):
        scores[idx] = marginals(trans, len(fmt.columns))
    return scores


def marginals(trans: dict, n: int) -> np.ndarray:
    """(rows, n) P(label k in the answer) from one batch's lattice steps: the forward probability of reaching the
    state "label k was written"."""
    alpha = {}
    for k in range(n):
        alpha[k] = trans[START][k] + sum((alpha[j] * trans[j][k] for j in range(k)), torch.zeros_like(trans[START][k]))
    return torch.stack([alpha[k] for k in range(n)], 1).numpy()
