"""The answer format of model.finetune='generate': which token ids spell each label as the answer's first item
and as a later one, the explicit no-label answer and the end of the assistant turn. Answers list the true labels
in one canonical order, so an answer is a path through the labels in that order; training, scoring and
constrained generation all use these same token ids (never re-tokenized answer strings)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class AnswerFormat:
    columns: tuple  # label columns in canonical answer order (the run's label columns, maybe reordered)
    words: tuple  # how each label is written in the answer, same order
    first: tuple  # per label: token ids (tuple of int) of the label as the answer's first item
    after: tuple  # per label: token ids of separator + label, as a later item (e.g. ", joy")
    none: tuple  # token ids of the answer when no label applies (e.g. "none")
    end: tuple  # token ids that close the assistant turn after the answer (from the chat template)


# marks where the assistant's content goes when the chat template is rendered to find what follows it
_MARKER = "Zq7AnswerMarker"


def _ids(tokenizer, text: str) -> tuple:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_columns(label_cols: list, model_cfg) -> list:
    """The label columns in canonical answer order: model.label_order, else the run's own order. A
    label_order that is not a permutation of `label_cols` is a ConfigError naming both."""
    order = list(model_cfg.label_order or label_cols)
    if sorted(order) != sorted(label_cols) or len(set(order)) != len(order):
        raise ConfigError(f"model.label_order must list each label column once, got {order}; the run's label "
                          f"columns are: {', '.join(label_cols)}")
    return order


def _chat_template(tokenizer, preset_name: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"model.finetune=generate needs a chat template, and the tokenizer of preset "
                          f"'{preset_name}' has none (and the preset gives none)")
    return tokenizer.chat_template


def _end_text(tokenizer, preset_name: str) -> str:
    """The template's text after the assistant's content: render a conversation with and without a marker
    answer; the generation prompt must be a prefix of the full rendering, and the marker must follow it."""
    _chat_template(tokenizer, preset_name)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _MARKER}], tokenize=False)
    if not full.startswith(prompt) or not full[len(prompt):].startswith(_MARKER):
        raise ConfigError(f"the chat template of preset '{preset_name}' does not render the assistant answer right "
                          f"after its generation prompt (prompt {prompt[-40:]!r}, full {full[len(prompt) - 40:]!r}); "
                          f"model.finetune=generate cannot train on its answers")
    end = full[len(prompt) + len(_MARKER):]
    if not end.strip():
        raise ConfigError(f"the chat template of preset '{preset_name}' writes nothing after the assistant answer, "
                          f"so the end of an answer cannot be learned (model.finetune=generate)")
    return end


def build_format(tokenizer, label_cols: list, model_cfg, preset_name: str) -> AnswerFormat:
    """The AnswerFormat of a run: label_cols (the run's label columns), model_cfg (ModelConfig: label_order,
    label_words, answer_sep, none_answer). Raises a ConfigError naming the preset or key when the answers
    could not be told apart token by token (a label's ids a prefix of another's, an empty spelling)."""
    columns = answer_columns(label_cols, model_cfg)
    words_by_col = dict(model_cfg.label_words or {})
    unknown = sorted(set(words_by_col) - set(columns))
    if unknown:
        raise ConfigError(f"model.label_words names unknown label columns {unknown}; label columns: "
                          f"{', '.join(columns)}")
    words = [str(words_by_col.get(col, col)) for col in columns]
    if len(set(words)) != len(words):
        raise ConfigError(f"model.label_words must give every label its own word, got {words}")
    fmt = AnswerFormat(tuple(columns), tuple(words), tuple(_ids(tokenizer, w) for w in words),
                       tuple(_ids(tokenizer, model_cfg.answer_sep + w) for w in words),
                       _ids(tokenizer, model_cfg.none_answer), _ids(tokenizer, _end_text(tokenizer, preset_name)))
    _check_unambiguous(fmt, preset_name)
    return fmt


def _check_unambiguous(fmt: AnswerFormat, preset_name: str) -> None:
    """Every state's candidates (see scoring.py) must be non-empty and none a prefix of another, so an
    answer's ids parse back one way only."""
    named = lambda seqs, names: list(zip(names, seqs))  # noqa: E731
    states = [named(fmt.first, fmt.words) + [("none + end", fmt.none + fmt.end)],
              named(fmt.after, [f"separator + {w}" for w in fmt.words]) + [("end", fmt.end)]]
    for candidates in states:
        for name, seq in candidates:
            if not seq:
                raise ConfigError(f"preset '{preset_name}': the answer part {name!r} has no tokens")
        for (a, sa) in candidates:
            for (b, sb) in candidates:
                if a != b and sb[:len(sa)] == sa:
                    raise ConfigError(f"preset '{preset_name}': the tokens of answer part {a!r} {list(sa)} begin "
                                      f"those of {b!r} {list(sb)}; choose other model.label_words, "
                                      f"model.answer_sep or model.none_answer")


def answer_ids(fmt: AnswerFormat, labels_row) -> list:
    """The canonical answer's token ids. labels_row: (L,) 0/1 in fmt.columns order."""
    on = [k for k, value in enumerate(labels_row) if value]
    if not on:
        return list(fmt.none + fmt.end)
    ids = list(fmt.first[on[0]])
    for k in on[1:]:
        ids += fmt.after[k]
    return ids + list(fmt.end)


def system_message(model_cfg, words) -> str:
    """model.system_prompt with {labels} replaced by the label words joined by ', '."""
    return model_cfg.system_prompt.replace("{labels}", ", ".join(words))


def chat_text(tokenizer, system: str, user: str) -> str:
    """The chat up to the assistant's answer: [system, user] rendered by the tokenizer's chat template with the
    generation prompt."""
    return tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, system: str, user: str) -> list:
    """Token ids of `chat_text`, tokenized without extra special tokens (the template writes its own)."""
    return list(_ids(tokenizer, chat_text(tokenizer, system, user)))
