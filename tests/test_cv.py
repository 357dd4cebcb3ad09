"""End to end: folds, OOF, test probabilities, thresholds, reports, submission; resume; refusals."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS, REAL_DATA
from pipeline import cv as cv_module
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.errors import RunDirError
from pipeline.submit import make_submission

OUTPUTS = ["config.yaml", "folds.csv", "oof.csv", "test_probs.csv", "thresholds.json", "report.md", "report.json"]


def tiny_cfg(comp_dir, *extra):
    return load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder", "cv.n_folds=2",
                              "train.epochs=2", "train.max_steps=6", "thresholds.n_trials=20", *extra])


def check_run(run_dir, train, test, n_folds=2):
    for name in OUTPUTS:
        assert (run_dir / name).is_file(), name
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "fold"] + LABELS
    assert oof["id"].tolist() == train["ID"].tolist()  # every training row exactly once, in file order
    assert set(oof["fold"]) == set(range(n_folds))
    assert oof[LABELS].to_numpy().min() >= 0 and oof[LABELS].to_numpy().max() <= 1
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"id": str})
    assert folds["fold"].tolist() == oof["fold"].tolist()
    test_probs = pd.read_csv(run_dir / "test_probs.csv", dtype={"id": str})
    assert test_probs["id"].tolist() == test["ID"].tolist()
    per_fold = [pd.read_csv(run_dir / "folds" / f"fold_{k}" / "test_probs.csv")[LABELS].to_numpy()
                for k in range(n_folds)]
    np.testing.assert_allclose(test_probs[LABELS].to_numpy(), np.mean(per_fold, axis=0), atol=1e-6)
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert list(thresholds) == LABELS
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("oof_at_0.5", "oof_tuned", "per_label", "per_fold", "timing"):
        assert key in report
    assert {"macro_f1", "micro_f1", "samples_jaccard"} <= set(report["oof_tuned"])
    assert report["timing"]["train_examples_per_second"] > 0
    assert report["timing"]["predict_examples_per_second"] > 0
    assert "macro-F1" in (run_dir / "report.md").read_text()
    return report


def check_submission(path, sample_path):
    sub, sample = pd.read_csv(path), pd.read_csv(sample_path)
    assert list(sub.columns) == list(sample.columns)
    assert (sub.dtypes == sample.dtypes).all()
    assert sub["ID"].tolist() == sample["ID"].tolist()
    assert set(np.unique(sub[LABELS].to_numpy())) <= {0, 1}


@pytest.mark.parametrize("preset", ["tiny-encoder", "tfidf-lr"])
def test_end_to_end(tmp_path, comp_dir, frames, preset):
    train, test, _ = frames
    cfg = tiny_cfg(comp_dir, f"model.preset={preset}")
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    report = check_run(run_dir, train, test)
    if preset == "tfidf-lr":
        assert report["oof_tuned"]["macro_f1"] > 0.8  # cue words make this easy
    out = tmp_path / "sub.csv"
    make_submission([run_dir], out)
    check_submission(out, comp_dir / "sample_submission.csv")
    assert json.loads(out.with_suffix(".json").read_text())["n_oof_rows"] == len(train)


def test_ensemble_of_two_runs(tmp_path, comp_dir):
    a = run_cv(tiny_cfg(comp_dir), tmp_path / "a", quiet=True)
    b = run_cv(tiny_cfg(comp_dir, "model.preset=tfidf-lr"), tmp_path / "b", quiet=True)
    summary = make_submission([a, b], tmp_path / "ens.csv")
    assert "ensemble of 2" in summary
    check_submission(tmp_path / "ens.csv", comp_dir / "sample_submission.csv")
    info = json.loads((tmp_path / "ens.json").read_text())
    assert set(info["per_run"]) == {"a", "b"} and "macro_f1_tuned" in info["ensemble"]


def test_resume_skips_finished_folds_and_redoes_a_killed_one(tmp_path, comp_dir, frames, monkeypatch):
    cfg = tiny_cfg(comp_dir)
    real = cv_module._NeuralFolds.__call__
    calls = []

    def crash_on_second(self, fold, folds, *rest):
        calls.append(fold)
        if fold == 1:
            raise KeyboardInterrupt("killed")
        return real(self, fold, folds, *rest)

    monkeypatch.setattr(cv_module._NeuralFolds, "__call__", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "folds" / "fold_0" / "result.json").is_file()
    assert not (tmp_path / "run" / "report.json").exists()
    # a fold killed halfway leaves files without result.json: it must be redone, not trusted
    half = tmp_path / "run" / "folds" / "fold_1"
    half.mkdir(parents=True)
    (half / "oof.csv").write_text("garbage")

    calls.clear()
    def record(self, fold, folds, *rest):
        calls.append(fold)
        return real(self, fold, folds, *rest)

    monkeypatch.setattr(cv_module._NeuralFolds, "__call__", record)
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    assert calls == [1]
    check_run(run_dir, frames[0], frames[1])

    # a finished run reruns without training anything
    calls.clear()
    run_cv(cfg, tmp_path / "run", quiet=True)
    assert calls == []


def test_resumed_run_equals_uninterrupted(tmp_path, comp_dir, monkeypatch):
    cfg = tiny_cfg(comp_dir)
    whole = run_cv(cfg, tmp_path / "whole", quiet=True)
    real = cv_module._NeuralFolds.__call__

    def crash(self, fold, folds, *rest):
        if fold == 1:
            raise RuntimeError("crash")
        return real(self, fold, folds, *rest)

    monkeypatch.setattr(cv_module._NeuralFolds, "__call__", crash)
    with pytest.raises(RuntimeError):
        run_cv(cfg, tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(cv_module._NeuralFolds, "__call__", real)
    resumed = run_cv(cfg, tmp_path / "resumed", quiet=True)
    assert (whole / "oof.csv").read_bytes() == (resumed / "oof.csv").read_bytes()
    assert (whole / "thresholds.json").read_bytes() == (resumed / "thresholds.json").read_bytes()


def test_other_config_in_existing_run_dir_is_refused(tmp_path, comp_dir):
    run_cv(tiny_cfg(comp_dir, "model.preset=tfidf-lr"), tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match=r"holds a run with a different config \(cv.seed: 42 -> 7\)"):
        run_cv(tiny_cfg(comp_dir, "model.preset=tfidf-lr", "cv.seed=7"), tmp_path / "run", quiet=True)


def test_max_rows_subsets_train_but_keeps_test_whole(tmp_path, comp_dir, frames):
    cfg = tiny_cfg(comp_dir, "model.preset=tfidf-lr", "data.max_rows=60")
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    assert len(pd.read_csv(run_dir / "oof.csv")) == 60
    assert len(pd.read_csv(run_dir / "test_probs.csv")) == len(frames[1])
    make_submission([run_dir], tmp_path / "sub.csv")
    check_submission(tmp_path / "sub.csv", comp_dir / "sample_submission.csv")


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real competition data not found at {REAL_DATA}")
def test_real_minilm_on_a_few_hundred_rows(tmp_path):
    cfg = load_config(None, [f"data.data_dir={REAL_DATA}", "model.preset=minilm-l6", "data.max_rows=300",
                             "cv.n_folds=2", "train.epochs=1", "thresholds.n_trials=30"])
    run_dir = run_cv(cfg, tmp_path / "run", quiet=True)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_rows"] == 300 and len(report["per_label"]) == 11
    # a pretrained encoder after one short epoch beats predicting every label (base-rate F1 ~0.3)
    assert report["oof_tuned"]["macro_f1"] > 0.3
    make_submission([run_dir], tmp_path / "sub.csv")
    check_submission_real = pd.read_csv(tmp_path / "sub.csv")
    assert len(check_submission_real) == 3259


def test_texts_are_tokenized_once_per_run_not_per_fold(tmp_path, comp_dir, monkeypatch):
    import pipeline.finetune as finetune_module

    calls = []
    real = finetune_module.tokenize
    def counting(tok, texts, *args):
        calls.append(len(texts))
        return real(tok, texts, *args)

    monkeypatch.setattr(finetune_module, "tokenize", counting)
    run_cv(tiny_cfg(comp_dir, "cv.n_folds=3", "train.grad_accum_steps=2"), tmp_path / "run", quiet=True)
    assert calls == [160, 40]  # train once, test once, for three folds


@pytest.mark.parametrize("extra", [["model.preset=tiny-decoder", "model.finetune=head"],
                                   ["model.preset=tiny-qwen2", "model.finetune=generate", "model.padding_side=left"]],
                         ids=["head", "generate"])
def test_validation_only_folds_never_tokenize_or_predict_test(tmp_path, comp_dir, frames, extra):
    """A search trial's folds (run_cv validation_only): validation rows predicted, no test text touched, every fold
    present and still no assembly."""
    train, _, _ = frames
    run = run_cv(tiny_cfg(comp_dir, *extra), tmp_path / "run", quiet=True, validation_only=True)
    for k in (0, 1):
        fold = run / "folds" / f"fold_{k}"
        oof = pd.read_csv(fold / "oof.csv")
        assert len(oof) == (pd.read_csv(run / "folds.csv")["fold"] == k).sum() and oof[LABELS].notna().all().all()
        assert not (fold / "test_probs.csv").exists() and not (fold / "test_generated.csv").exists()
        result = json.loads((fold / "result.json").read_text())
        assert result["predict_examples"] == len(result["history"]) * len(oof)  # each validation, and no test row
    assert not (run / "oof.csv").exists() and not (run / "report.json").exists()
    if "model.finetune=generate" in extra:
        assert len(pd.read_csv(run / "folds" / "fold_0" / "oof_generated.csv")) == len(train) // 2
