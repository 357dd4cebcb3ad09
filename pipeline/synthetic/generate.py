"""The generation driver: `generate(cfg)` asks the preset's backend for labelled examples until every target
label has `per_label` kept rows (or the request cap is reached) and writes the CSV, its sidecar and journal.

Every answer goes through the same stages, each counted per label: parsed or invalid (by reason; a
malformed answer is retried up to `max_retries` times, never dropped silently nor given a label),
exact duplicate, near-duplicate of an earlier synthetic text, near-duplicate of a real train or test
text, round-trip filter (optional), kept.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipeline.errors import ConfigError
from pipeline.synthetic.files import ID_PREFIX, Journal, journal_path, sidecar_path, synthetic_frame, write_outputs
from pipeline.synthetic.filters import NearDupIndex, TextStyle, dedup_key, diversity, normalise
from pipeline.synthetic.parse import REASONS, extract_json, validate

log = logging.getLogger("pipeline")

STAGES = ("asked", "answers", "parsed", "invalid", "failed", "duplicates", "near_duplicates", "near_real",
          "filtered", "kept")


@dataclass
class GenerateConfig:
    out: str = ""  # the synthetic CSV; <stem>.json (counts) and <stem>.answers.jsonl (journal) go beside it
    competition: str = "emotion-detection-fall-2024"  # competition definition in competition/
    data_dir: Optional[str] = None  # folder with the competition's files; None = data/<competition>
    model: str = "smollm2-135m"  # model preset; pipeline/synthetic/backends.py GENERATORS picks its backend
    model_path: Optional[str] = None  # a GGUF file (llama-cpp) or model folder (transformers) instead of the preset's
    per_label: int = 100  # kept rows wanted per target label (multilabel: per label asked first in a row)
    labels: tuple = ()  # target label names; () = every label or class of the competition
    labels_per_example: tuple = ()  # multilabel: (lo, hi), labels asked per row drawn uniformly; () = (1, 2)
    examples: int = 0  # real training rows of the target label shown in each prompt (in-context examples)
    seed: int = 42  # seeds every request's attributes, examples and sampling
    temperature: float = 0.9  # sampling temperature (0 = greedy)
    top_p: float = 0.95  # nucleus sampling mass
    max_new_tokens: int = 80  # tokens per answer; a longer answer is cut off and counted as truncated
    max_retries: int = 3  # further attempts at a request after a malformed answer
    max_requests: int = 0  # cap on requests; 0 = 3 x per_label x number of target labels
    min_words: int = 3  # shorter texts are rejected (words after normalisation)
    max_words: int = 60  # longer texts are rejected
    near_dup_threshold: float = 0.7  # estimated Jaccard similarity of character 5-grams that counts as a near-duplicate
    filter_run: Optional[str] = None  # a finished run whose fold models must agree with each row's label(s)
    checkpoint_every: int = 20  # new answers between journal writes
    threads: int = 0  # CPU threads for the backend; 0 = all

    def validate(self) -> None:
        """Every problem at once, each naming its key."""
        problems = []
        if not self.out:
            problems.append("out is required (the synthetic CSV to write)")
        elif not str(self.out).endswith(".csv"):
            problems.append(f"out must be a .csv file, got {self.out!r}")
        for key, lo in (("per_label", 1), ("max_new_tokens", 8), ("checkpoint_every", 1), ("min_words", 1)):
            if getattr(self, key) < lo:
                problems.append(f"{key} must be >= {lo}, got {getattr(self, key)}")
        for key in ("examples", "max_retries", "max_requests", "threads"):
            if getattr(self, key) < 0:
                problems.append(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.max_words < self.min_words:
            problems.append(f"max_words must be >= min_words ({self.min_words}), got {self.max_words}")
        if not 0 <= self.temperature <= 5:
            problems.append(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.near_dup_threshold <= 1:
            problems.append(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.labels_per_example and not (len(self.labels_per_example) == 2 and
                                            1 <= self.labels_per_example[0] <= self.labels_per_example[1]):
            problems.append(f"labels_per_example must be (LO, HI) with 1 <= LO <= HI, got {self.labels_per_example}")
        if problems:
            raise ConfigError("; ".join(problems))

    def fingerprint(self) -> dict:
        """The settings that decide what is asked and how it is sampled: a journal written with other ones is
        not replayed. Caps and filters may change between sessions, so a stopped run can be finished early or
        extended, and a finished one rerun with `--filter-run`: a journalled answer is replayed only if its
        prompt and seed match the request (a filter reopens labels, so later requests may differ; those are
        asked again), and journalled scores only for the same filter run."""
        d = asdict(self)
        for key in ("out", "checkpoint_every", "threads", "max_requests", "max_retries", "min_words", "max_words",
                    "near_dup_threshold", "filter_run"):
            d.pop(key)
        d["labels"], d["labels_per_example"] = list(self.labels), list(self.labels_per_example)
        return d


@dataclass
class Counts:
    """Stage counts, overall and per target label."""
    targets: list
    total: dict = field(default_factory=dict)
    per_label: dict = field(default_factory=dict)
    invalid: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)  # stage or reason -> a few {request, detail}

    def __post_init__(self):
        self.total = {s: 0 for s in STAGES}
        self.per_label = {name: {s: 0 for s in STAGES} for name in self.targets}
        self.invalid = {r: 0 for r in REASONS}

    def add(self, stage: str, label: str, n: int = 1) -> None:
        self.total[stage] += n
        self.per_label[label][stage] += n

    def note(self, what: str, request: int, detail: str) -> None:
        shown = self.examples.setdefault(what, [])
        if len(shown) < 3:
            shown.append({"request": request, "detail": detail[:200]})


def attempt_seed(seed: int, request: int, attempt: int) -> int:
    """The sampling seed of one attempt: independent of every other attempt, fits llama.cpp's uint32."""
    return int(np.random.SeedSequence([seed, request, attempt]).generate_state(1)[0] & 0x7FFFFFFF)


def _target_labels(cfg: GenerateConfig, label_cols: list, comp_name: str) -> list:
    if not cfg.labels:
        return list(label_cols)
    unknown = [n for n in cfg.labels if n not in label_cols]
    if unknown:
        hints = [f"{n!r} -> {m[0]!r}" for n in unknown if (m := difflib.get_close_matches(n, label_cols, n=1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(f"unknown label names {unknown} for competition {comp_name}{hint}; its labels: "
                          f"{', '.join(label_cols)}")
    return [n for n in label_cols if n in set(cfg.labels)]


class RoundTrip:
    """The round-trip filter: a finished run's fold models, averaged, must predict each row's label(s)
    (multiclass: the decided class is the label; multilabel: every asked label is predicted positive),
    with the decision rule the run tuned (its thresholds or biases file), else the untuned one."""

    def __init__(self, run_dir: Path, comp_name: str, label_cols: list):
        import json

        from pipeline.config import read_saved_config
        from pipeline.predict import fold_model_dirs, run_label_cols
        from pipeline.tasks import task_for

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.yaml").is_file():
            raise ConfigError(f"--filter-run {self.run_dir} is not a run directory (no config.yaml)")
        cfg = read_saved_config(self.run_dir / "config.yaml")
        if cfg.data.competition != comp_name or run_label_cols(self.run_dir) != list(label_cols):
            raise ConfigError(f"--filter-run {self.run_dir} was trained on {cfg.data.competition}, not {comp_name}")
        fold_model_dirs(self.run_dir, cfg)  # refuses a run that kept no fold models, before anything is generated
        self.task, self.label_cols = task_for(comp_name), list(label_cols)
        rule = self.run_dir / self.task.decision_file
        self.decide = (self.task.decider_from_json(json.loads(rule.read_text()), self.label_cols).predict
                       if rule.is_file() else self.task.untuned_preds)

    def __call__(self, texts: list, asked: list) -> list:
        """(agree, probability) per text: asked[i] is the tuple of label names row i must get."""
        from pipeline.predict import run_probs

        probs = run_probs(self.run_dir, texts)
        preds = self.decide(probs)
        out = []
        for row_probs, row_preds, labels in zip(probs, preds, asked):
            cols = [self.label_cols.index(n) for n in labels]
            out.append((bool(all(row_preds[c] for c in cols)), float(min(row_probs[c] for c in cols))))
        return out


def generate(cfg: GenerateConfig, backend_factory: Optional[Callable] = None, progress: Optional[Callable] = None,
             scorer: Optional[Callable] = None) -> dict:
    """Generate, filter and write the synthetic CSV `cfg.out`, its sidecar and journal; returns the sidecar.

    backend_factory: () -> backend, called at the first answer the journal does not hold (default: the
    preset's backend); scorer: the round-trip filter, (texts, asked) -> [(agree, prob)] (default: built
    from cfg.filter_run); progress: a tqdm-like factory or None.
    """
    from pipeline.synthetic.backends import generator_for, make_backend

    cfg.validate()
    if backend_factory is None:
        generator_for(cfg.model)  # a preset that cannot generate is refused before the data is read
        backend_factory = lambda: make_backend(cfg.model, cfg.model_path, cfg.threads)  # noqa: E731
    return _Generation(cfg, backend_factory, scorer).run(progress)


class _KnownTexts:
    """The texts a new synthetic one is checked against: `real_keys`, the normalised real train and test
    texts (exact copies); `near`, a MinHash index of those and of every synthetic text kept so far."""

    def __init__(self, data, style: TextStyle, threshold: float):
        comp = data.competition
        self.near = NearDupIndex(threshold)
        self.real_keys: dict = {}
        for where, ids, texts in ((" + ".join(comp.train_files), data.train_ids, data.train_texts),
                                  (comp.test_file, data.test_ids, data.test_texts)):
            self.near.add_many([f"{where}:{i}" for i in ids], texts)
            for i, t in zip(ids, texts):
                self.real_keys.setdefault(dedup_key(normalise(t, style)), f"{where}:{i}")


class _Generation:
    """One generate() call: the request loop over the journal, every answer's stages, the filter, the sidecar."""

    def __init__(self, cfg: GenerateConfig, backend_factory: Callable, scorer: Optional[Callable]):
        from pipeline.config import DataConfig
        from pipeline.data import load_competition_data
        from pipeline.synthetic.prompts import Planner

        self.cfg, self.backend_factory, self.started = cfg, backend_factory, time.perf_counter()
        self.data = data = load_competition_data(DataConfig(competition=cfg.competition, data_dir=cfg.data_dir))
        comp = data.competition
        self.multilabel = comp.task == "multilabel"
        if not self.multilabel and tuple(cfg.labels_per_example) not in ((), (1, 1)):
            raise ConfigError(f"labels_per_example is for multilabel competitions; {comp.name} has one class per row")
        self.targets = _target_labels(cfg, data.label_cols, comp.name)
        if scorer is None and cfg.filter_run:
            scorer = RoundTrip(Path(cfg.filter_run), comp.name, data.label_cols)
        self.scorer = scorer
        # scores are journalled per filter: another --filter-run rescored, not replayed
        self.filter_key = str(Path(cfg.filter_run).resolve()) if cfg.filter_run else "scorer"
        self.out = Path(cfg.out)
        self.cap = cfg.max_requests or 3 * cfg.per_label * len(self.targets)
        self.style = TextStyle.of(data.train_texts)
        self.planner = Planner(data.label_cols, self.multilabel, data.train_ids, data.train_texts, data.labels,
                               cfg.seed, cfg.examples,
                               tuple(cfg.labels_per_example or (1, 2)) if self.multilabel else (1, 1))
        self.known = _KnownTexts(data, self.style, cfg.near_dup_threshold)
        self.journal = Journal(journal_path(self.out), cfg.fingerprint())
        self.resumed = len(self.journal.answers)
        if self.resumed:
            log.info("resuming from %s: %d answers and %d scores recorded", self.journal.path, self.resumed,
                     len(self.journal.scores))
        self.backend, self.backend_info = None, {}
        self.counts = Counts(self.targets)
        self.candidates = {n: 0 for n in self.targets}  # rows past dedup and not (yet) refused by the filter
        self.rows: list = []
        self.seen: dict = {}
        self.unscored: list = []
        self.reasked = 0  # journalled answers to another prompt (the run took another turn), asked again
        self.session_s = 0.0
        self.bar = None

    def run(self, progress: Optional[Callable]) -> dict:
        cfg = self.cfg
        self.bar = progress(total=cfg.per_label * len(self.targets), desc="kept rows") if progress else None
        try:
            self._loop()
        finally:
            if self.journal.dirty:
                self.journal.save(self.journal.elapsed_s + self.session_s)
            if self.bar:
                self.bar.close()
        if self.reasked:
            log.info("%d journalled answers were to other prompts (an earlier session without this filter took "
                     "another turn) and were asked again", self.reasked)
        kept = [r for r in self.rows if not r.get("dropped")]
        if not kept:
            c = self.counts
            raise ConfigError(f"no row survived generation ({c.total['answers']} answers, {c.total['invalid']} "
                              f"invalid: {', '.join(f'{k} {v}' for k, v in c.invalid.items() if v)}); "
                              f"see {self.journal.path}")
        frame = synthetic_frame(kept, self.data.competition, self.data.label_cols, self.scorer is not None)
        sidecar = self._sidecar(kept, frame)
        write_outputs(self.out, frame, sidecar)
        if sidecar["short_of_target"]:
            log.warning("request cap %d reached before every label had %d rows: %s (raise --max-requests)", self.cap,
                        cfg.per_label, ", ".join(f"{n} {k}" for n, k in sidecar["short_of_target"].items()))
        return sidecar

    def _loop(self) -> None:
        """Ask for the open label with the next turn until every label has its rows or the cap is reached;
        the filter scores the new rows whenever the rest looks done, which may reopen labels."""
        index, turn, targets = 0, -1, self.targets
        while True:
            open_labels = [n for n in targets if self.candidates[n] < self.cfg.per_label]
            if not open_labels or index >= self.cap:
                if self.scorer is not None and self.unscored:
                    self._run_filter()
                    continue
                return
            turn = next(k for k in range(turn + 1, turn + 1 + len(targets)) if targets[k % len(targets)] in open_labels)
            primary = targets[turn % len(targets)]
            request = self.planner.request(index, primary)
            self.counts.add("asked", primary)
            answer = self._valid_answer(request, primary)
            if answer is None:
                self.counts.add("failed", primary)
            else:
                self._place(*answer, request, primary)
            index += 1

    def _valid_answer(self, request, primary: str):
        """(parsed, record) of the first valid answer in 1 + max_retries attempts, else None; every invalid
        one is counted by reason."""
        cfg, counts = self.cfg, self.counts
        for attempt in range(cfg.max_retries + 1):
            rec = self._ask(request, attempt, attempt_seed(cfg.seed, request.index, attempt))
            counts.add("answers", primary)
            obj, reason = extract_json(rec["text"])
            if obj is not None:
                parsed = validate(obj, request.labels, self.data.label_cols, self.multilabel,
                                  lambda t: normalise(t, self.style), cfg.min_words, cfg.max_words)
                if parsed.reason is None:
                    return parsed, rec
                reason, detail = parsed.reason, parsed.detail
            else:
                detail = rec["text"][-120:]
            counts.add("invalid", primary)
            counts.invalid[reason] += 1
            counts.note(reason, request.index, detail)
        return None

    def _ask(self, request, attempt: int, seed: int) -> dict:
        """The journalled answer to this prompt and seed, else the model's (loaded at the first such call)."""
        rec = self.journal.answers.get((request.index, attempt))
        if rec is not None and rec.get("prompt_sha1") == _prompt_sha1(request.messages) and rec.get("seed") == seed:
            return rec
        if rec is not None:
            self.reasked += 1
        if self.backend is None:
            log.info("loading the %s generator", self.cfg.model)
            self.backend = backend = self.backend_factory()
            self.backend_info = {"backend": backend.name, "model": backend.model, "constrained": backend.constrained}
        cfg, t0 = self.cfg, time.perf_counter()
        answer = self.backend.generate(request.messages, request.schema, seed, cfg.temperature, cfg.top_p,
                                       cfg.max_new_tokens)
        self.session_s += time.perf_counter() - t0
        rec = {"request": request.index, "attempt": attempt, "seed": seed, "labels": list(request.labels),
               "prompt_sha1": _prompt_sha1(request.messages), "backend": self.backend.name,
               "model": self.backend.model, "text": answer.text, "finish": answer.finish_reason}
        self.journal.add_answer(rec)
        if self.journal.dirty >= cfg.checkpoint_every:
            self.journal.save(self.journal.elapsed_s + self.session_s)
        return rec

    def _place(self, parsed, rec: dict, request, primary: str) -> None:
        """Count a valid answer as an exact duplicate, a copy of a real text, a near-duplicate, or keep it."""
        counts, index, text = self.counts, request.index, parsed.text
        counts.add("parsed", primary)
        key = dedup_key(text)
        match = self.known.near.find(text)
        if key in self.seen:
            counts.add("duplicates", primary)
            counts.note("duplicates", index, f"{text!r} = {self.seen[key]}")
        elif key in self.known.real_keys or (match and not match[0].startswith(ID_PREFIX)):
            counts.add("near_real", primary)
            what = self.known.real_keys.get(key) or f"{match[0]} (similarity {match[1]:.2f})"
            counts.note("near_real", index, f"{text!r} ~ {what}")
        elif match:
            counts.add("near_duplicates", primary)
            counts.note("near_duplicates", index, f"{text!r} ~ {match[0]} (similarity {match[1]:.2f})")
        else:
            row_id = f"{ID_PREFIX}{index:06d}"
            row = {"id": row_id, "text": text, "labels": parsed.labels, "primary": primary,
                   "gen_backend": rec["backend"], "gen_model": rec["model"], "gen_seed": rec["seed"],
                   "gen_temperature": self.cfg.temperature, **{f"gen_{k}": v for k, v in request.attributes.items()},
                   "gen_examples": ";".join(request.example_ids), "gen_request": index,
                   "gen_attempt": rec["attempt"], "gen_filter_prob": None}
            self.known.near.add(row_id, text)
            self.rows.append(row)
            self.candidates[primary] += 1
            counts.add("kept", primary)
            if self.scorer is not None:
                self.unscored.append(row)
            if self.bar:
                t = counts.total
                self.bar.update(1)
                self.bar.set_postfix(answers=t["answers"], invalid=t["invalid"],
                                     dup=t["duplicates"] + t["near_duplicates"] + t["near_real"])
        self.seen.setdefault(key, f"request {index}")

    def _run_filter(self) -> None:
        """Score the rows kept since the last call (journalled scores of the same filter are replayed) and
        drop those the filter disagrees with."""
        journal, counts = self.journal, self.counts

        def recorded(row):
            rec = journal.scores.get(row["id"])
            return rec if rec is not None and rec.get("filter", "scorer") == self.filter_key else None

        batch = [r for r in self.unscored if recorded(r) is None]
        if batch:
            log.info("round-trip filter: scoring %d rows with %s", len(batch), self.cfg.filter_run)
            t0 = time.perf_counter()
            for row, (agree, prob) in zip(batch, self.scorer([r["text"] for r in batch], [r["labels"] for r in batch])):
                journal.add_score({"id": row["id"], "filter": self.filter_key, "agree": agree, "prob": round(prob, 6)})
            self.session_s += time.perf_counter() - t0
            journal.save(journal.elapsed_s + self.session_s)
        for row in self.unscored:
            score = recorded(row)
            row["gen_filter_prob"] = score["prob"]
            if not score["agree"]:
                counts.add("filtered", row["primary"])
                counts.add("kept", row["primary"], -1)
                self.candidates[row["primary"]] -= 1
                counts.note("filtered", row["gen_request"], f"{row['labels']}: {row['text']}")
                row["dropped"] = True
                if self.bar:
                    self.bar.update(-1)
        self.unscored.clear()

    def _sidecar(self, kept: list, frame) -> dict:
        cfg, data, counts, journal = self.cfg, self.data, self.counts, self.journal
        comp, targets = data.competition, self.targets
        generation_s = journal.elapsed_s + self.session_s
        short = {n: self.candidates[n] for n in targets if self.candidates[n] < cfg.per_label}
        texts = [r["text"] for r in kept]
        reference_rows = np.flatnonzero(data.labels[:, [data.label_cols.index(n) for n in targets]].any(1))
        reference = [data.train_texts[i] for i in reference_rows]
        return {
            "file": str(self.out), "competition": comp.name, "task": comp.task, "complete": not short,
            "short_of_target": short, "settings": {**cfg.fingerprint(), "filter_run": cfg.filter_run,
                                                   "threads": cfg.threads},
            "backend": self.backend_info or _recorded_backend(journal), "request_cap": self.cap,
            "normalisation": asdict(self.style),
            "counts": {**counts.total, "retries": counts.total["answers"] - counts.total["asked"],
                       "invalid_by_reason": {k: v for k, v in counts.invalid.items() if v},
                       "answers_asked_again": self.reasked},
            "per_label": counts.per_label,
            "label_positives": {n: int(frame[n].sum()) if not comp.label_col else
                                int((frame[comp.label_col] == n).sum()) for n in data.label_cols},
            "diversity": diversity(texts, seed=cfg.seed),
            "diversity_real": diversity(reference, sample=len(texts), seed=cfg.seed),
            "real_examples_shown": len({i for r in kept for i in r["gen_examples"].split(";") if i}),
            "generation_s": round(generation_s, 1), "wall_s_this_session": round(time.perf_counter() - self.started, 1),
            "answers_replayed_from_journal": self.resumed,
            "kept_rows_per_s": round(len(kept) / generation_s, 3) if generation_s else None,
            "rejected_examples": counts.examples, "journal": str(journal.path),
        }


def _prompt_sha1(messages: list) -> str:
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()


def _recorded_backend(journal: Journal) -> dict:
    """The backend named in the journal, for a run replayed without loading the model."""
    for rec in journal.answers.values():
        return {"backend": rec["backend"], "model": rec["model"]}
    return {}


def summary_lines(sidecar: dict) -> str:
    """The sidecar as a few printable lines."""
    c = sidecar["counts"]
    reasons = ", ".join(f"{k} {v}" for k, v in c["invalid_by_reason"].items()) or "none"
    lines = [f"wrote {sidecar['file']}: {c['kept']} rows ({sidecar_path(Path(sidecar['file']))} has the counts)",
             f"  asked {c['asked']}, answers {c['answers']} (retries {c['retries']}), parsed {c['parsed']}, "
             f"invalid {c['invalid']} ({reasons}), failed requests {c['failed']}",
             f"  duplicates {c['duplicates']}, near-duplicates {c['near_duplicates']}, near a real text "
             f"{c['near_real']}, filtered {c['filtered']}, kept {c['kept']}",
             "  kept per label: " + ", ".join(f"{n} {v['kept']}" for n, v in sidecar["per_label"].items()),
             f"  diversity: distinct-1 {sidecar['diversity']['distinct_1']}, distinct-2 "
             f"{sidecar['diversity']['distinct_2']}, self-BLEU-4 {sidecar['diversity']['self_bleu_4']} "
             f"(real texts, same "
             f"size: {sidecar['diversity_real']['distinct_1']}, {sidecar['diversity_real']['distinct_2']}, "
             f"{sidecar['diversity_real']['self_bleu_4']})",
             f"  generation {sidecar['generation_s']} s, {sidecar['kept_rows_per_s']} kept rows/s"]
    if sidecar["short_of_target"]:
        lines.append(f"  short of target: {sidecar['short_of_target']} (request cap {sidecar['request_cap']})")
    return "\n".join(lines)
