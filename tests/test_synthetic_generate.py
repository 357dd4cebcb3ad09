"""pipeline/synthetic/generate.py with a scripted backend (tests/stub_llm.py, a test double): output format,
retry accounting, dedup and near-dup, the round-trip filter, resume, determinism and bad flags."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import DAIR_CLASSES, LABELS
from pipeline.errors import ConfigError
from pipeline.synthetic.cli import generate_main
from pipeline.synthetic.files import GEN_COLS, journal_path
from pipeline.synthetic.generate import GenerateConfig, generate
from stub_llm import ScriptedBackend, asked_labels, asked_shape, good_answer, seeded_post


def run(tmp_path, data_dir, script, name="syn.csv", backend=None, **settings):
    settings = {"competition": "dair-emotion", "per_label": 2, **settings}
    cfg = GenerateConfig(out=str(tmp_path / "out" / name), data_dir=str(data_dir), **settings)
    backend = backend or ScriptedBackend(script)
    sidecar = generate(cfg, backend_factory=lambda: backend)
    frame = pd.read_csv(cfg.out, dtype=str, keep_default_na=False)
    return frame, sidecar, backend


def test_multiclass_rows_have_the_training_format_and_provenance(tmp_path, dair_dir):
    frame, sidecar, backend = run(tmp_path, dair_dir, good_answer)
    assert list(frame.columns) == ["id", "text", "label"] + GEN_COLS
    assert frame["label"].value_counts().to_dict() == {c: 2 for c in DAIR_CLASSES}
    assert frame["id"].str.startswith("syn-").all() and frame["id"].is_unique
    assert set(frame["gen_backend"]) == {"stub"} and set(frame["gen_temperature"]) == {"0.9"}
    assert frame["gen_style"].ne("").all() and frame["gen_topic"].ne("").all()
    # each row carries the label its request asked for
    for _, row in frame.iterrows():
        assert asked_labels(backend.calls[int(row["gen_request"])]["messages"]) == [row["label"]]
    c = sidecar["counts"]
    assert (c["asked"], c["answers"], c["parsed"], c["invalid"], c["kept"]) == (12, 12, 12, 0, 12)
    assert sidecar["complete"] and set(sidecar["per_label"]) == set(DAIR_CLASSES)
    assert set(sidecar["diversity"]) >= {"distinct_1", "distinct_2", "self_bleu_4"}
    assert json.loads((tmp_path / "out" / "syn.json").read_text())["counts"]["kept"] == 12


def test_malformed_answers_are_counted_retried_and_never_given_a_label(tmp_path, dair_dir):
    bad = ['{"text": "i was so scared when the', "no json at all", '{"text": "<the post>", "label": "sadness"}',
           '{"text": "a perfectly fine post", "label": "not-a-class"}']

    def script(n, messages, seed):
        if n < 4:  # the first request fails all 1 + 3 attempts
            return bad[n]
        if n == 4:  # the second request: one wrong label, then fine
            other = next(c for c in DAIR_CLASSES if c not in asked_labels(messages))
            return json.dumps({"text": "a post about something else", "label": other})
        return good_answer(n, messages, seed)

    frame, sidecar, backend = run(tmp_path, dair_dir, script, per_label=1)
    c = sidecar["counts"]
    assert c["failed"] == 1 and c["invalid"] == 5 and c["retries"] == c["answers"] - c["asked"] == 4
    assert c["invalid_by_reason"] == {"truncated": 1, "no_json": 1, "placeholder": 1, "unknown_label": 1,
                                      "label_mismatch": 1}
    assert sidecar["per_label"]["sadness"]["failed"] == 1
    assert frame["label"].value_counts().to_dict() == {cls: 1 for cls in DAIR_CLASSES}  # the failed one was re-asked
    assert "syn-000000" not in set(frame["id"])
    seeds = [call["seed"] for call in backend.calls[:4]]
    assert len(set(seeds)) == 4  # every retry samples afresh
    assert sidecar["rejected_examples"]["truncated"][0]["request"] == 0


def test_duplicates_near_duplicates_and_copies_of_real_texts_are_dropped(tmp_path, dair_dir):
    real = pd.read_csv(dair_dir / "test.csv")["text"][0]
    texts = {0: "walking home in the rain after a very long shift",
             1: "Walking home in the RAIN after a very long shift!",  # exact duplicate once normalised
             2: "walking home in the rain after a very long shift again",  # near-duplicate
             3: real}  # a real test text

    def script(n, messages, seed):
        if n in texts:
            return json.dumps({**asked_shape(messages), "text": texts[n]})
        return good_answer(n, messages, seed)

    frame, sidecar, _ = run(tmp_path, dair_dir, script, per_label=1)
    c = sidecar["counts"]
    assert (c["duplicates"], c["near_duplicates"], c["near_real"]) == (1, 1, 1)
    assert texts[0] in set(frame["text"]) and real not in set(frame["text"])  # the first copy is the one kept
    assert len(frame) == 6 and c["kept"] == 6
    assert "test.csv:" in sidecar["rejected_examples"]["near_real"][0]["detail"]


def test_same_seed_same_file_and_resume_after_an_interruption(tmp_path, dair_dir):
    settings = dict(per_label=3, checkpoint_every=2)
    whole, _, _ = run(tmp_path, dair_dir, good_answer, name="whole.csv", **settings)
    again, _, _ = run(tmp_path, dair_dir, good_answer, name="again.csv", **settings)
    assert whole.equals(again)

    out = tmp_path / "out" / "cut.csv"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, dair_dir, good_answer, name="cut.csv", backend=ScriptedBackend(good_answer, fail_after=7),
            **settings)
    assert not out.exists() and journal_path(out).is_file()
    script_calls = []

    def rest(n, messages, seed):
        script_calls.append(seed)
        return good_answer(n, messages, seed)

    resumed, sidecar, _ = run(tmp_path, dair_dir, rest, name="cut.csv", **settings)
    assert resumed.equals(whole)
    assert sidecar["answers_replayed_from_journal"] == 7 and len(script_calls) == 18 - 7
    # a finished file reruns from its journal alone: no model is loaded
    rerun, _, _ = run(tmp_path, dair_dir, None, name="cut.csv", backend=ScriptedBackend(good_answer, fail_after=0),
                      **settings)
    assert rerun.equals(whole)


def test_a_capped_run_can_be_extended_and_ends_as_one_uncapped_run(tmp_path, dair_dir):
    whole, _, _ = run(tmp_path, dair_dir, good_answer, name="whole.csv", per_label=2)
    part, sidecar, _ = run(tmp_path, dair_dir, good_answer, name="part.csv", per_label=2, max_requests=5)
    assert len(part) == 5 and not sidecar["complete"]
    calls = []
    extended, sidecar, _ = run(tmp_path, dair_dir, lambda n, m, s: calls.append(s) or good_answer(n, m, s),
                               name="part.csv", per_label=2)
    assert extended.equals(whole) and sidecar["complete"] and len(calls) == 12 - 5


def test_resume_refuses_a_journal_of_other_settings(tmp_path, dair_dir):
    run(tmp_path, dair_dir, good_answer, per_label=1)
    with pytest.raises(ConfigError, match=r"other settings \(per_label: 1 -> 2\); pass another --out"):
        run(tmp_path, dair_dir, good_answer, per_label=2)


def test_multilabel_targets_rare_labels_with_several_labels_per_row(tmp_path, comp_dir):
    frame, sidecar, backend = run(tmp_path, comp_dir, good_answer, competition="emotion-detection-fall-2024",
                                  labels=("trust",), labels_per_example=(1, 3), per_label=6)
    assert list(frame.columns) == ["ID", "Tweet"] + LABELS + GEN_COLS
    assert (frame["trust"] == "1").all() and len(frame) == 6
    sizes = frame[LABELS].astype(int).sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 3 and sizes.nunique() > 1
    assert list(sidecar["per_label"]) == ["trust"]
    assert '"labels": [' in backend.calls[0]["messages"][-1]["content"]


def test_in_context_examples_come_from_training_rows_and_are_recorded(tmp_path, dair_dir):
    frame, sidecar, backend = run(tmp_path, dair_dir, good_answer, examples=2, per_label=1)
    train = pd.concat([pd.read_csv(dair_dir / "train.csv"), pd.read_csv(dair_dir / "validation.csv")])
    by_id = dict(zip(train["id"], train["text"]))
    labels = dict(zip(train["id"], train["label"]))
    for _, row in frame.iterrows():
        ids = row["gen_examples"].split(";")
        assert len(ids) == 2 and all(i in by_id and labels[i] == row["label"] for i in ids)
        prompt = backend.calls[int(row["gen_request"])]["messages"][-1]["content"]
        assert all(by_id[i] in prompt for i in ids)
    assert sidecar["real_examples_shown"] == len({i for v in frame["gen_examples"] for i in v.split(";")})


def test_round_trip_filter_drops_disagreements_and_asks_again(tmp_path, dair_dir):
    scored = []

    def scorer(texts, asked):  # every third row scored disagrees with its label
        out = [(k % 3 != 0, 0.1 if k % 3 == 0 else 0.9) for k in range(sum(scored), sum(scored) + len(texts))]
        scored.append(len(texts))
        return out

    cfg = GenerateConfig(out=str(tmp_path / "f.csv"), data_dir=str(dair_dir), competition="dair-emotion", per_label=2)
    sidecar = generate(cfg, backend_factory=lambda: ScriptedBackend(good_answer), scorer=scorer)
    frame = pd.read_csv(cfg.out, dtype=str)
    assert sidecar["counts"]["filtered"] > 0 and sidecar["complete"]
    assert frame["label"].value_counts().to_dict() == {c: 2 for c in DAIR_CLASSES}
    assert frame["gen_filter_prob"].astype(float).eq(0.9).all() and len(scored) >= 2


def test_request_cap_and_nothing_usable(tmp_path, dair_dir):
    _, sidecar, _ = run(tmp_path, dair_dir, good_answer, per_label=3, max_requests=10)
    assert not sidecar["complete"] and sidecar["counts"]["asked"] == 10
    assert sum(sidecar["short_of_target"].values()) == 10 == sidecar["counts"]["kept"]  # kept per short label
    assert len(sidecar["short_of_target"]) == 6
    with pytest.raises(ConfigError, match="no row survived generation .* no_json 8"):
        run(tmp_path, dair_dir, lambda n, m, s: "sorry", name="none.csv", max_requests=2, max_retries=3)


def test_cli_bad_flags_are_one_line_errors(tmp_path, dair_dir, capsys):
    base = ["--competition", "dair-emotion", "--data-dir", str(dair_dir), "--out", str(tmp_path / "x.csv"), "--quiet"]
    cases = [
        (["--labels", "sadnes,joy"], "unknown label names ['sadnes'] for competition dair-emotion (did you mean "
                                     "'sadnes' -> 'sadness'?)"),
        (["--model", "minilm-l6"], "model preset 'minilm-l6' cannot generate text"),
        (["--model", "smolm2-135m"], "unknown model preset 'smolm2-135m'; did you mean 'smollm2-135m'"),
        (["--labels-per-example", "2-3"], "labels_per_example is for multilabel competitions"),
        (["--per-label", "0", "--temperature", "-1"], "per_label must be >= 1, got 0; temperature must be in"),
        (["--filter-run", str(tmp_path)], f"--filter-run {tmp_path} is not a run directory"),
    ]
    for extra, message in cases:
        assert generate_main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.csv").exists()


def test_seeded_post_is_a_distinct_text_per_seed():
    assert seeded_post(1) != seeded_post(2) and seeded_post(1) == seeded_post(1)


def test_round_trip_filter_with_a_finished_run(tmp_path, dair_dir):
    """The real filter: a tfidf-lr run's fold models, averaged by pipeline.predict, score each row."""
    from pipeline.config import load_config
    from pipeline.cv import run_cv

    cfg = load_config(None, ["data.competition=dair-emotion", f"data.data_dir={dair_dir}", "model.preset=tfidf-lr",
                             "cv.n_folds=2"])
    run_cv(cfg, tmp_path / "run", quiet=True)
    cues = {"sadness": "gloomy tears", "joy": "happy glad", "love": "adore darling", "anger": "furious rage",
            "fear": "scared afraid", "surprise": "shocked amazed"}

    def script(n, messages, seed):  # every other answer carries another class's cue words
        label = asked_labels(messages)[0]
        cue = cues[label] if n % 2 == 0 else cues[DAIR_CLASSES[(DAIR_CLASSES.index(label) + 1) % 6]]
        return json.dumps({"text": f"{seeded_post(seed, 4)} {cue}", "label": label})

    frame, sidecar, _ = run(tmp_path, dair_dir, script, per_label=2, filter_run=str(tmp_path / "run"))
    assert sidecar["counts"]["filtered"] > 0 and sidecar["complete"] and len(frame) == 12
    assert frame["gen_filter_prob"].astype(float).gt(0).all()


def test_a_finished_file_rerun_with_a_filter_replays_its_answers_and_tops_up(tmp_path, dair_dir):
    """generate, then the same --out with a filter: answers whose prompt and seed still match are replayed,
    only the requests the filter's refusals add are asked; another filter rescored, not replayed."""
    whole, _, _ = run(tmp_path, dair_dir, good_answer, per_label=2)
    marks = {}

    def scorer(texts, asked):  # refuses the first row it sees of each class, once
        out = []
        for text, labels in zip(texts, asked):
            first = labels[0] not in marks
            marks.setdefault(labels[0], text)
            out.append((not first, 0.2 if first else 0.8))
        return out

    calls = []
    cfg = GenerateConfig(out=str(tmp_path / "out" / "syn.csv"), data_dir=str(dair_dir), competition="dair-emotion",
                         per_label=2, filter_run=None)
    sidecar = generate(cfg, backend_factory=lambda: ScriptedBackend(lambda n, m, s: calls.append(s) or
                                                                    good_answer(n, m, s)), scorer=scorer)
    frame = pd.read_csv(cfg.out, dtype=str)
    assert sidecar["counts"]["filtered"] == 6 and sidecar["complete"] and len(frame) == 12
    assert sidecar["answers_replayed_from_journal"] == 12 and len(calls) == 6  # 6 new requests, nothing re-asked
    refused = set(marks.values())
    assert refused <= set(whole["text"]) and not refused & set(frame["text"])
    assert set(whole["text"]) - refused <= set(frame["text"])  # every unrefused row of the first file stays
    assert frame["gen_filter_prob"].astype(float).eq(0.8).all()
    # the scorer's verdicts are journalled: the same scorer replays them; a filter run by path is another filter
    again = generate(cfg, backend_factory=lambda: ScriptedBackend(good_answer, fail_after=0),
                     scorer=lambda texts, asked: pytest.fail("replayed scores were asked again"))
    assert again["counts"]["filtered"] == 6
    scores = [json.loads(line) for line in journal_path(cfg.out).read_text().splitlines() if '"score"' in line]
    assert {s["filter"] for s in scores} == {"scorer"} and len(scores) == 18
