"""Greedy generation constrained to canonical answers (the answer lattice's tries, as in scoring.py) with
`transformers`' `generate`, and `parse_answer`, which reads an answer's token ids back into 0/1 labels exactly
(no substring matching: anything but a canonical answer is a ValueError)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.generative.answers import AnswerFormat
from pipeline.generative.scoring import (DONE, START, Lattice, _check_prompts, lattice_of, left_pad, lm_device,
                                         pad_id_of, select_cache)


def _walk(lattice: Lattice, ids) -> tuple:
    """Follow token ids through the lattice from START. Returns (labels seen, state, node, used): the walk stops
    at DONE (used = tokens consumed up to and including the end) or at the first id with no edge (node None)."""
    labels, state, node = [], START, lattice.roots[START]
    for used, token in enumerate(ids):
        node = node.children.get(int(token))
        if node is None:
            return labels, state, None, used
        if node.target is not None:
            if node.target == DONE:
                return labels, DONE, node, used + 1
            labels.append(node.target)
            state, node = node.target, lattice.roots[node.target]
    return labels, state, node, len(ids)


def parse_answer(fmt: AnswerFormat, ids) -> np.ndarray:
    """The labels of a canonical answer. ids: the answer's token ids (first label ... end), nothing after.
    Returns (L,) int8 0/1 in fmt.columns order; raises ValueError for anything that is not a canonical answer
    (labels out of order or repeated, unknown tokens, 'none' with a label, a missing or partial end, extra ids)."""
    lattice = lattice_of(fmt)
    ids = [int(t) for t in ids]
    labels, state, node, used = _walk(lattice, ids)
    if node is None:
        raise ValueError(f"not a canonical answer: token {ids[used]} at position {used} of {ids} does not continue "
                         f"any answer after labels {[fmt.words[k] for k in labels]}")
    if state != DONE:
        raise ValueError(f"not a canonical answer: {ids} stops before the end of the answer")
    if used != len(ids):
        raise ValueError(f"not a canonical answer: {ids} goes on after the end ({ids[used:]})")
    out = np.zeros(len(fmt.columns), dtype=np.int8)
    out[labels] = 1
    return out


class _Constrain:
    """LogitsProcessor: each row may only continue a canonical answer that still fits the remaining budget of
    new tokens; a finished row may only write `stop_id` (generate pads finished rows anyway)."""

    def __init__(self, lattice: Lattice, prompt_width: int, max_new_tokens: int, stop_id: int):
        self.lattice, self.width, self.max_new, self.stop_id = lattice, prompt_width, max_new_tokens, stop_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        written = input_ids[:, self.width:].tolist()
        budget = self.max_new - (input_ids.shape[1] - self.width)
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, ids in enumerate(written):
            _, state, node, _ = _walk(self.lattice, ids)
            if state == DONE:
                allowed[row, self.stop_id] = True
                continue
            assert node is not None, f"constrained generation left the lattice: {ids}"
            tokens = [t for t, child in node.children.items() if 1 + child.rest <= budget]
            allowed[row, tokens] = True
        return scores.masked_fill(~allowed, float("-inf"))


class _Finished:
    """StoppingCriteria: a row stops once its answer is complete (the end ids may be several tokens)."""

    def __init__(self, lattice: Lattice, prompt_width: int):
        self.lattice, self.width = lattice, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [_walk(self.lattice, ids)[1] == DONE for ids in input_ids[:, self.width:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_labels(lm, fmt: AnswerFormat, prompts: list, batch_size: int,
                    max_new_tokens: Optional[int] = None, prefix: tuple = ()) -> np.ndarray:
    """Greedy answers constrained to canonical ones, parsed back to labels.

    lm: a causal LM (or a peft model around one) in eval mode; prompts: n lists of prompt token ids
    (unpadded); batch_size: rows per generate call; max_new_tokens: cap on answer tokens (default: the
    longest canonical answer, so no answer is cut; a smaller cap steers rows to answers that fit); prefix: token
    ids shared by every prompt and not repeated in `prompts`, run once (its KV cache is reused by every batch).
    Returns (n, L) int8 0/1 in fmt.columns order.
    """
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    lattice = lattice_of(fmt)
    if not prompts:
        return np.zeros((0, lattice.n_labels), dtype=np.int8)
    _check_prompts(prompts)
    shortest = lattice.roots[START].rest
    max_new = lattice.longest if max_new_tokens is None else int(max_new_tokens)
    if max_new < shortest:
        raise ValueError(f"max_new_tokens={max_new} is shorter than the shortest canonical answer ({shortest} tokens)")
    pad_id = pad_id_of(lm)
    # the model's own generation config may sample (temperature, top_p) and its eos may be an id inside `end`
    # (ChatML's <|im_end|>), which would stop rows before their end is complete: greedy, and an eos that no
    # answer contains (rows stop through _Finished as soon as their answer is complete)
    stop_id = next(t for t in range(len(lattice.tokens) + 1) if t not in lattice.tokens)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new, pad_token_id=pad_id,
                              eos_token_id=stop_id)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    preds = np.zeros((len(prompts), lattice.n_labels), dtype=np.int8)
    device = lm_device(lm)
    with torch.inference_mode():
        prefix_ids = torch.as_tensor([list(prefix)], dtype=torch.long, device=device)
        prefix_cache = lm(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).cache if prefix else None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, _ = left_pad([list(prompts[i]) for i in idx], pad_id, device)
            cache = None
            if prefix:  # the prefix's cache per row; generate runs the rest (pads between them are masked)
                cache = select_cache(prefix_cache, torch.zeros(len(idx), dtype=torch.long, device=device))
                ids = torch.cat([prefix_ids.expand(len(idx), -1), ids], 1)
                mask = torch.cat([torch.ones_like(prefix_ids).expand(len(idx), -1), mask], 1)
            width = ids.shape[1]
            out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=config, cache=cache,
                              logits_processor=LogitsProcessorList([_Constrain(lattice, width, max_new, stop_id)]),
                              stopping_criteria=StoppingCriteriaList([_Finished(lattice, width)]))
            for i, row in zip(idx, out[:, width:].tolist()):
                _, state, _, used = _walk(lattice, row)
                preds[i] = parse_answer(fmt, row[:used])
    return preds
