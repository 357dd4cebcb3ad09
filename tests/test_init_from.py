"""model.init_from (pipeline/init_from.py): a run starts from another run's finished fold model (the source may
have trained that fold alone). The head carries over only with the same labels; a LoRA source is merged; a source
that trained on this run's texts is refused; bad sources get one-line errors; folds trained from other weights are
never reused; predict.py still rebuilds."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import LABELS, make_frames, make_multiclass_frames, write_competition, write_multiclass
from pipeline.cli import predict_main, run_cv_main
from pipeline.config import load_config, read_saved_config
from pipeline.cv import run_cv
from pipeline.data import load_competition_data
from pipeline.errors import ConfigError, DataError, RunDirError
from pipeline.init_from import check_source
from pipeline.finetune import load_fold_model
from pipeline.models import build_model, load_tokenizer

TINY = ["model.preset=tiny-encoder", "cv.n_folds=2", "train.epochs=1", "train.max_steps=3", "thresholds.n_trials=5"]
PROBE = ["happy people smile today", "so scared and afraid of the rage", "the morning was just loyal"]


def tiny_cfg(data_dir, *extra):
    return load_config(None, [f"data.data_dir={data_dir}", *TINY, *extra])


def tiny_run(run_dir, data_dir, *extra):
    return run_cv(tiny_cfg(data_dir, *extra), run_dir, quiet=True)


def source_frames(seed: int = 1):
    """A competition with the test fixture's labels whose texts all start with a word the target never uses."""
    train, test, sample = make_frames(n_train=80, n_test=20, seed=seed)
    train["Tweet"] = "source " + train["Tweet"]
    test["Tweet"] = "source " + test["Tweet"]
    return train, test, sample


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Finished tiny-encoder runs to start from: full fine-tune and LoRA on the same labels, full on dair-emotion."""
    root = tmp_path_factory.mktemp("sources")
    same = write_competition(root / "same-comp", *source_frames())
    dair = write_multiclass(root / "dair", *make_multiclass_frames(n_train=60, n_val=12, n_test=20, seed=2))
    return {"full": tiny_run(root / "full", same), "lora": tiny_run(root / "lora", same, "model.finetune=lora"),
            "dair": tiny_run(root / "dair-run", dair, "data.competition=dair-emotion"), "root": root}


def fold_model(run_dir, fold: int = 0):
    cfg = read_saved_config(run_dir / "config.yaml")
    n_labels = len(pd.read_csv(run_dir / "test_probs.csv", nrows=0).columns) - 1
    model, _ = load_fold_model(cfg, n_labels, run_dir / "folds" / f"fold_{fold}" / "model")
    return model.eval()


def logits(model, texts=PROBE) -> torch.Tensor:
    tok = load_tokenizer(tiny_cfg(".").model)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def resolved(cfg):
    """cfg with model.init_head resolved as run_cv resolves it; returns (cfg, report record)."""
    record = check_source(cfg, load_competition_data(cfg.data))
    cfg.model.init_head = record["head"] == "kept"
    return cfg, record


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_same_labels_carry_the_head_so_the_untrained_model_predicts_as_the_source_fold(comp_dir, sources, kind):
    cfg, record = resolved(tiny_cfg(comp_dir, f"model.init_from={sources[kind]}", "model.init_fold=1"))
    assert record["head"] == "kept" and record["fold"] == 1 and record["finetune"] == kind
    model, _ = build_model(cfg.model, len(LABELS))
    model.eval()
    source = fold_model(sources[kind], 1)
    assert type(source).__name__ == ("PeftModel" if kind == "lora" else "SequenceClassifier")
    # the LoRA source's adapters are merged into the backbone: the same function, before any training
    torch.testing.assert_close(logits(model), logits(source), rtol=0, atol=1e-5)
    plain, _ = build_model(tiny_cfg(comp_dir).model, len(LABELS))
    assert not torch.allclose(logits(plain.eval()), logits(source), atol=1e-3)


@pytest.mark.parametrize("kind, extra", [("dair", []), ("lora", ["model.init_head=false"])])
def test_other_labels_take_the_backbone_and_a_fresh_head(comp_dir, sources, kind, extra):
    from accelerate.utils import set_seed

    from pipeline import init_from

    cfg, record = resolved(tiny_cfg(comp_dir, f"model.init_from={sources[kind]}", *extra))
    assert record["head"] == "fresh"
    assert record["source_competition"] == ("dair-emotion" if kind == "dair" else "emotion-detection-fall-2024")
    init_from._source_weights.cache_clear()  # a LoRA source is rebuilt (and reseeds): this run draws the same
    set_seed(5)
    model, _ = build_model(cfg.model, len(LABELS))
    set_seed(5)
    plain, _ = build_model(tiny_cfg(comp_dir).model, len(LABELS))
    source = fold_model(sources[kind])
    if kind == "lora":
        source = source.merge_and_unload()
    src_state, state = source.backbone.state_dict(), model.backbone.state_dict()
    assert src_state.keys() == state.keys() and all(torch.equal(src_state[k], state[k]) for k in state)
    assert not torch.equal(plain.backbone.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"])
    # the head is what a run without init_from draws with the same seed: shape (4 labels, hidden)
    assert model.head.weight.shape == (len(LABELS), 32) and source.head.weight.shape[0] == (6 if kind == "dair" else 4)
    assert torch.equal(model.head.weight, plain.head.weight) and torch.equal(model.head.bias, plain.head.bias)


def test_init_head_true_needs_the_same_labels(comp_dir, sources):
    with pytest.raises(ConfigError, match=r"model.init_head=true needs .* it predicts \['sadness'"):
        check_source(tiny_cfg(comp_dir, f"model.init_from={sources['dair']}", "model.init_head=true"),
                     load_competition_data(tiny_cfg(comp_dir).data))


def test_a_run_records_its_source_predicts_without_it_and_never_reuses_folds_from_other_weights(
        tmp_path, comp_dir, sources):
    source = shutil.copytree(sources["full"], tmp_path / "source")  # changed below
    cfg = tiny_cfg(comp_dir, f"model.init_from={source}")
    run = run_cv(cfg, tmp_path / "run", quiet=True)
    record = json.loads((run / "report.json").read_text())["init_from"]
    assert record["run"] == str(source) and record["fold"] == 0 and record["overlap"] == 0
    assert record["source_competition"] == "emotion-detection-fall-2024" and record["rows_checked"] == 80
    assert record["head"] == "kept" and read_saved_config(run / "config.yaml").model.init_from == str(source)
    for k in range(2):
        assert json.loads((run / "folds" / f"fold_{k}" / "result.json").read_text())["init_from_sha256"] == \
            record["sha256"]
    # another source is another config: another run name, and the run directory refuses it
    other = tiny_cfg(comp_dir, f"model.init_from={sources['lora']}")
    assert other.run_name() != cfg.run_name() != tiny_cfg(comp_dir).run_name()
    with pytest.raises(RunDirError, match="different config .*model.init_from"):
        run_cv(other, run, quiet=True)
    run_cv(cfg, run, quiet=True)  # the same source, unchanged: every fold is reused
    # a fully fine-tuned fold model holds every weight: predicting needs no source run
    moved = shutil.move(str(source), tmp_path / "moved")
    out = tmp_path / "p.csv"
    assert predict_main(["--runs", str(run), "--input", str(comp_dir / "test.csv"), "--out", str(out), "--quiet",
                         "--recompute"]) == 0
    expected = pd.read_csv(run / "test_probs.csv")
    got = pd.read_csv(out)[[f"{c}_prob" for c in LABELS]].to_numpy()
    np.testing.assert_allclose(got, expected[LABELS].to_numpy(), rtol=0, atol=1e-6)
    # the source's fold model changes (retrained in place): folds trained from the old weights are refused
    shutil.move(moved, source)
    weights = source / "folds" / "fold_0" / "model" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    changed = {k: v + 0.01 if k.startswith("backbone.encoder") else v for k, v in load_file(str(weights)).items()}
    save_file(changed, str(weights))
    with pytest.raises(RunDirError, match="different model.init_from fold model"):
        run_cv(cfg, run, quiet=True)


@pytest.mark.parametrize("finetune", ["lora", "head"])
def test_a_run_on_a_frozen_source_base_predicts_again_and_needs_the_source(tmp_path, comp_dir, sources, capsys,
                                                                            finetune):
    source = shutil.copytree(sources["full"], tmp_path / "source")
    run = tiny_run(tmp_path / "run", comp_dir, f"model.init_from={source}", f"model.finetune={finetune}")
    # the same labels: a LoRA run starts from the source's head, a head over frozen features is trained anew
    head = json.loads((run / "report.json").read_text())["init_from"]["head"]
    assert head == {"lora": "kept", "head": "fresh"}[finetune]
    out = tmp_path / "p.csv"
    args = ["--runs", str(run), "--input", str(comp_dir / "test.csv"), "--out", str(out), "--quiet", "--recompute"]
    assert predict_main(args) == 0
    got = pd.read_csv(out)[[f"{c}_prob" for c in LABELS]].to_numpy()
    np.testing.assert_allclose(got, pd.read_csv(run / "test_probs.csv")[LABELS].to_numpy(), rtol=0, atol=1e-6)
    shutil.rmtree(source)  # adapters or a head over the source's frozen weights: without them, a clear refusal
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model.init_from={source} does not exist" in err


def test_a_source_trained_on_this_runs_texts_is_refused_also_through_the_run_it_started_from(
        tmp_path, comp_dir, frames, capsys):
    train, test, _ = frames
    src_train, src_test, src_sample = source_frames(seed=3)
    src_train.loc[5, "Tweet"] = "  " + test.loc[7, "Tweet"].upper().replace(" ", "   ")  # case and spaces differ
    leaky_dir = write_competition(tmp_path / "leaky-comp", src_train, src_test, src_sample)
    extra = src_train.iloc[:3].copy()
    extra["ID"] = [f"syn-{i}" for i in range(3)]
    extra["Tweet"] = [train.loc[0, "Tweet"], "source extra one", "source extra two"]
    extra.to_csv(tmp_path / "extra.csv", index=False)
    leaky = tiny_run(tmp_path / "leaky", leaky_dir, f"data.extra_train={tmp_path / 'extra.csv'}")
    code = run_cv_main(["--data-dir", str(comp_dir), "--quiet", "--run-dir", str(tmp_path / "run"),
                        *[a for s in TINY for a in ("--set", s)], "--set", f"model.init_from={leaky}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    # one text of its train file (a test text here) and one of its extra rows (a train text here)
    assert f"model.init_from={leaky}: 2 training texts of {leaky} (emotion-detection-fall-2024)" in err
    assert test.loc[7, "Tweet"].upper().replace(" ", "   ")[:20] in err  # the sample text, as the source has it
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # an allowance (e.g. for short stock phrases) lets it through and the report lists what matched
    data = load_competition_data(tiny_cfg(comp_dir).data)
    with pytest.raises(DataError, match=r"\(2 in all, model.init_max_overlap=1\)"):
        check_source(tiny_cfg(comp_dir, f"model.init_from={leaky}", "model.init_max_overlap=1"), data)
    allowed = tiny_cfg(comp_dir, f"model.init_from={leaky}", "model.init_max_overlap=2")
    record = check_source(allowed, data)
    assert record["overlap"] == 2 and record["overlap_texts"][1] == train.loc[0, "Tweet"]
    assert allowed.short_hash() == tiny_cfg(comp_dir, f"model.init_from={leaky}").short_hash()
    # a clean run that started from the leaky one carries its texts: refused too, naming the leaky run
    other = write_competition(tmp_path / "other-comp", *source_frames(seed=4))
    clean = tiny_run(tmp_path / "clean", other, f"model.init_from={leaky}", "model.finetune=lora")
    with pytest.raises(DataError, match=f"2 training texts of {leaky} "):
        check_source(tiny_cfg(comp_dir, f"model.init_from={clean}"), load_competition_data(tiny_cfg(comp_dir).data))


def test_a_source_needs_only_its_one_fold(tmp_path, comp_dir):
    """`run_cv.py --fold 0` on the source (what a recipe's intermediate run with `fold: 0` does) trains half the
    folds and assembles nothing; a run starts from that fold exactly as from the same fold of a complete run."""
    same = write_competition(tmp_path / "same-comp", *source_frames())
    assert run_cv_main(["--data-dir", str(same), "--quiet", "--run-dir", str(tmp_path / "one"), "--fold", "0",
                        *[a for s in TINY for a in ("--set", s)]]) == 0
    one = tmp_path / "one"
    assert (one / "folds" / "fold_0" / "result.json").is_file() and not (one / "folds" / "fold_1").exists()
    assert not (one / "report.json").exists()
    complete = tiny_run(tmp_path / "complete", same)
    for source in (one, complete):
        cfg, record = resolved(tiny_cfg(comp_dir, f"model.init_from={source}"))
        assert record["fold"] == 0 and record["head"] == "kept"
        model, _ = build_model(cfg.model, len(LABELS))
        torch.testing.assert_close(logits(model.eval()), logits(fold_model(complete)), rtol=0, atol=1e-5)
    assert resolved(tiny_cfg(comp_dir, f"model.init_from={one}"))[1]["sha256"] == \
        resolved(tiny_cfg(comp_dir, f"model.init_from={complete}"))[1]["sha256"]


def test_bad_sources_get_one_line_errors(tmp_path, comp_dir, sources, capsys):
    def refused(source, *extra) -> str:
        code = run_cv_main(["--data-dir", str(comp_dir), "--quiet", "--run-dir", str(tmp_path / "run"),
                            *[a for s in TINY for a in ("--set", s)], "--set", f"model.init_from={source}",
                            *[a for s in extra for a in ("--set", s)]])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()
        return err

    assert "does not exist" in refused(tmp_path / "nowhere")
    assert "is not a run directory (no config.yaml)" in refused(comp_dir)
    unfinished = shutil.copytree(sources["full"], tmp_path / "unfinished")
    (unfinished / "report.json").unlink()
    (unfinished / "folds" / "fold_1" / "result.json").unlink()  # fold 1 was stopped before it finished
    assert "has not finished fold 1" in refused(unfinished, "model.init_fold=1") and "--fold 1 trains that fold alone" \
        in refused(unfinished, "model.init_fold=1")
    no_models = shutil.copytree(sources["full"], tmp_path / "no-models")
    for k in range(2):
        shutil.rmtree(no_models / "folds" / f"fold_{k}" / "model")
    assert "kept no fold models" in refused(no_models) and "train.save_models=false" in refused(no_models)
    one_model = shutil.copytree(sources["full"], tmp_path / "one-model")
    shutil.rmtree(one_model / "folds" / "fold_1" / "model")
    assert "has no kept model for fold 1" in refused(one_model, "model.init_fold=1") and "one of [0]" in \
        refused(one_model, "model.init_fold=1")
    assert "model.init_fold must be in [0, 1] for the 2 folds" in refused(one_model, "model.init_fold=2")
    tfidf = run_cv(load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tfidf-lr", "cv.n_folds=2",
                                      "thresholds.n_trials=5"]),
                   tmp_path / "tfidf", quiet=True)
    assert "was trained with preset 'tfidf-lr', this run uses 'tiny-encoder'" in refused(tfidf)


def test_config_checks_name_each_key():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.init_fold=-1", "model.init_head=true", "model.init_max_overlap=-2"])
    assert "model.init_fold must be >= 0, got -1" in str(exc.value)
    assert "model.init_max_overlap must be >= 0, got -2" in str(exc.value)
    assert "model.init_fold and model.init_head need model.init_from" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.preset=tfidf-lr", "model.init_from=runs/x"])
    assert "model.init_from needs a neural preset; 'tfidf-lr'" in str(exc.value)
    with pytest.raises(ConfigError, match="model.init_from cannot load fine-tuned weights into a 4-bit base"):
        load_config(None, ["model.preset=tiny-decoder", "model.load_in_4bit=true", "model.init_from=runs/x"])
    assert load_config(None, []).short_hash() == load_config(None, ["model.init_fold=0"]).short_hash()
