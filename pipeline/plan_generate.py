"""The memory terms model.finetune='generate' adds to the dry-run plan (pipeline/plan.py): tokens per row of the
chat prompt and answer, the full-vocabulary logits of training, and the prompt KV cache label scoring continues.

The plan has no tokenizer, so fixed texts (system message, user template, label words) are counted at
CHARS_PER_TOKEN characters a token: about half the ~4 characters a token of English under the BPE vocabularies
of the presets (SmolLM2's tokenizer: 227 characters of the default system message are 51 tokens), so a bound,
checked against SmolLM2's tokenizer in tests/test_plan.py. Only the text itself is counted in real tokens
(model.max_length).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

CHARS_PER_TOKEN = 2
# The chat template's own tokens (role markers, turn ends, fixed headers) around a system, a user and an assistant
# message. SmolLM2's and Qwen2.5's ChatML: 14 (measured in tests/test_plan.py); Llama 3.x also writes a knowledge
# cutoff and today's date into the system header, ~36 counted from its template text; 48 bounds both.
TEMPLATE_TOKENS = 48
# Label words are known only when the competition declares its classes or model.label_words names them all;
# otherwise each is taken this long: 'disappointment' (GoEmotions), the longest label of the bundled competitions.
UNKNOWN_LABEL_CHARS = 14


def tokens_of(chars: int) -> int:
    """The planning bound for `chars` characters of fixed English text, in tokens."""
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class PromptTokens:
    """Tokens of one training row in generate mode, by part (bounds; see the module docstring)."""
    template: int  # chat-template tokens around the three messages (TEMPLATE_TOKENS)
    system: int  # the system message with the label words filled in
    user: int  # the user template around {text} (0 without model.prompt)
    text: int  # the text itself: model.max_length
    answer: int  # the longest answer: every label word and separator (the chat template's end is in `template`)
    label: int  # the longest label word, as the answer's first item or after a separator
    n_labels: int  # L: labels in the answer lattice
    words_known: bool  # label words read from the config/competition (False: UNKNOWN_LABEL_CHARS each)

    @property
    def prompt(self) -> int:
        """Tokens a prediction prefills: everything but the answer."""
        return self.template + self.system + self.user + self.text

    @property
    def row(self) -> int:
        """Tokens a training row is padded to: prompt and the longest answer."""
        return self.prompt + self.answer


def prompt_tokens(system_prompt: str, user_prompt: Optional[str], words: Optional[Sequence[str]], n_labels: int,
                  answer_sep: str, max_length: int) -> PromptTokens:
    """Tokens per row for a system template with {labels}, a user template with {text} (None = the raw text),
    the label words in answer order (None = unknown: n_labels words of UNKNOWN_LABEL_CHARS), the answer's
    separator and the text's max_length (tokens)."""
    known = words is not None
    lengths = [len(w) for w in words] if known else [UNKNOWN_LABEL_CHARS] * n_labels
    listed = sum(lengths) + len(answer_sep) * (len(lengths) - 1)  # "w1, w2, ..." in the system message and answer
    system = tokens_of(len(system_prompt) - (len("{labels}") - listed if "{labels}" in system_prompt else 0))
    user = tokens_of(len(user_prompt) - len("{text}")) if user_prompt else 0
    longest = max(lengths, default=0)
    return PromptTokens(template=TEMPLATE_TOKENS, system=system, user=user, text=max_length,
                        answer=tokens_of(listed), label=tokens_of(longest + len(answer_sep)),
                        n_labels=len(lengths), words_known=known)


def config_prompt_tokens(cfg, n_labels: int, max_length: int) -> PromptTokens:
    """PromptTokens of a RunConfig in generate mode: its system and user prompts, and its label words in answer
    order (model.label_words over model.label_order or the competition's declared classes; when neither names
    the columns, n_labels words of unknown length)."""
    from competition import get_competition

    m = cfg.model
    columns = list(m.label_order or get_competition(cfg.data.competition).classes)
    words = [(m.label_words or {}).get(c, c) for c in columns] if columns else None
    return prompt_tokens(m.system_prompt, m.prompt, words, n_labels, m.answer_sep, max_length)


def logits_memory(tokens: int, vocab: int) -> tuple:
    """(kept, workspace) bytes of the causal-LM loss over `tokens` positions (batch x seq) and `vocab` columns.

    transformers' ForCausalLMLoss upcasts the logits to fp32 and takes cross_entropy = log_softmax + nll_loss
    over every position (prompt positions are ignored only after the log-softmax): kept for backward are the
    fp32 log-softmax output (4 vocab bytes a token) and the int64 shifted labels. At the start of backward the
    fp32 gradient nll_loss hands back and the one log_softmax's backward makes are alive beside it (8 vocab
    bytes a token), which outgrows the forward's transient (compute-dtype logits + their fp32 upcast, <= 6 on
    a GPU, 0 extra on the fp32 CPU) and, for vocabularies of 30k+, every block's backward workspace."""
    return tokens * (4 * vocab + 8), tokens * 8 * vocab


def packed_tokens(p: PromptTokens) -> int:
    """Bound on the continuation tokens label scoring packs into one sequence per row (pipeline/generative/
    scoring.py): at most one carrier per label state (its label, then the separator's start) and one per inner
    node of the first item's trie, each at most a label's tokens plus one: 2L x (label + 1)."""
    return 2 * p.n_labels * (p.label + 1)


@dataclass(frozen=True)
class ScoringMemory:
    """Bytes of one eval batch of label scoring (no grad), by term."""
    prompt_cache: int  # the prompt's KV cache after the prefill
    kv_cache: int  # that cache grown by the packed continuation tokens
    prefill: int  # the prefill's transient: block workspace and the logits of every prompt position
    continuation: int  # the packed forward's transient: its 4-D mask, GQA-repeated K/V of one layer, logits

    @property
    def total(self) -> int:
        """Peak: the prefill or the packed continuation forward, whichever is larger."""
        return max(self.prompt_cache + self.prefill, self.kv_cache + self.continuation)


def scoring_memory(eval_batch: int, p: PromptTokens, vocab: int, layers: int, heads: int, kv_heads: int,
                   head_dim: int, cache_bytes: int, compute_bytes: int, workspace_per_token: float) -> ScoringMemory:
    """Peak bytes of scoring one eval batch of `eval_batch` rows: prefill the prompt (p.prompt tokens), then one
    forward of packed_tokens(p) continuation tokens per row over that row's own KV cache, with a block-diagonal
    additive mask (compute dtype, plus its boolean source). cache_bytes: bytes of one cached K or V element (what
    the k/v projections return); workspace_per_token: the inference workspace of one block per token
    (pipeline.plan._inference_workspace)."""
    packed = packed_tokens(p)
    per_token = 2 * layers * kv_heads * head_dim * cache_bytes  # K and V of every block
    prompt_cache = eval_batch * p.prompt * per_token
    kv = eval_batch * (p.prompt + packed) * per_token
    prefill = int(eval_batch * p.prompt * (workspace_per_token + vocab * compute_bytes))
    mask = eval_batch * packed * (p.prompt + packed) * (compute_bytes + 1)
    # with a mask, sdpa_attention_forward repeats one layer's K and V to every query head
    repeated = eval_batch * (p.prompt + packed) * 2 * heads * head_dim * compute_bytes if heads != kv_heads else 0
    logits = eval_batch * packed * vocab * compute_bytes  # every packed position
    continuation = int(mask + repeated + logits + eval_batch * packed * workspace_per_token)
    return ScoringMemory(prompt_cache=prompt_cache, kv_cache=kv, prefill=prefill, continuation=continuation)


def render_prompt(p: PromptTokens, eval_batch: int) -> list:
    """The dry run's lines for the tokens of a generate-mode row and the scoring pass's shape."""
    words = "" if p.words_known else f"; label words undeclared, {UNKNOWN_LABEL_CHARS} characters each assumed"
    lines = ["", f"Prompt tokens per row (estimated without a tokenizer: fixed text at {CHARS_PER_TOKEN} characters "
                 f"a token{words})"]
    for label, value in (("chat template (bound)", p.template), ("system message with the label list", p.system),
                         ("user template around the text", p.user), ("text (max_length)", p.text),
                         (f"longest answer (all {p.n_labels} labels)", p.answer), ("row (prompt + answer)", p.row)):
        lines.append(f"  {label:44s}{value:>10,}")
    lines.append(f"Scoring       eval batch {eval_batch} x <= {packed_tokens(p)} continuation tokens packed in one "
                 f"sequence a row, over its {p.prompt}-token prompt's KV cache")
    return lines
