"""predict.py: kept fold models reproduce a run's test_probs.csv (which a run's own test set reads instead), ensembles
and submissions' rules, refusals."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS
from pipeline.cli import predict_main
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.submit import make_submission


def tiny_run(tmp_path, comp_dir, name, *extra):
    cfg = load_config(None, [f"data.data_dir={comp_dir}", "cv.n_folds=2", "train.epochs=2", "train.max_steps=4",
                             "thresholds.n_trials=10", *extra])
    return run_cv(cfg, tmp_path / name, quiet=True)


def predict(tmp_path, *args) -> pd.DataFrame:
    out = tmp_path / "predictions.csv"
    assert predict_main([*args, "--out", str(out), "--quiet"]) == 0
    return pd.read_csv(out, dtype={"ID": str, "id": str})


def probs_of(frame: pd.DataFrame, labels: list) -> np.ndarray:
    return frame[[f"{c}_prob" for c in labels]].to_numpy()


def preds_of(frame: pd.DataFrame, labels: list) -> np.ndarray:
    return frame[[f"{c}_pred" for c in labels]].to_numpy()


@pytest.mark.parametrize("preset, extra, saved", [
    ("tiny-encoder", [], "model.safetensors"),  # full fine-tuning: every weight
    ("tiny-decoder", [], "adapter_model.safetensors"),  # LoRA adapters and head
    ("tiny-encoder", ["model.finetune=head"], "model.safetensors"),  # a head over frozen features
    # several hidden states pooled (model.feature_layers): the kept model is rebuilt with the same layers
    ("tiny-encoder", ["model.finetune=head", "model.feature_layers=0-2", "model.feature_combine=concat"],
     "model.safetensors"),
    ("tiny-decoder", ["model.feature_layers=1,2"], "adapter_model.safetensors"),
    ("tfidf-lr", [], "model.pkl"),
])
def test_predicting_test_csv_reproduces_the_runs_test_probs(tmp_path, comp_dir, preset, extra, saved):
    run = tiny_run(tmp_path, comp_dir, "run", f"model.preset={preset}", *extra)
    for k in range(2):
        assert (run / "folds" / f"fold_{k}" / "model" / saved).is_file()
    out = predict(tmp_path, "--runs", str(run), "--input", str(comp_dir / "test.csv"), "--recompute")
    expected = pd.read_csv(run / "test_probs.csv", dtype={"id": str})
    assert list(out.columns) == ["ID"] + [f"{c}_prob" for c in LABELS] + [f"{c}_pred" for c in LABELS]
    assert out["ID"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(probs_of(out, LABELS), expected[LABELS].to_numpy(), rtol=0, atol=1e-6)
    # the run's own rule, as its report chose it (what make_submission.py applies to this run alone)
    report = json.loads((run / "report.json").read_text())
    thresholds = json.loads((run / "thresholds.json").read_text())
    cut = np.array([thresholds[c] for c in LABELS]) if report["headline"]["rule"] == "tuned" else 0.5
    assert np.array_equal(preds_of(out, LABELS), (expected[LABELS].to_numpy() >= cut).astype(int))
    # without --recompute the run's own test set is read from test_probs.csv: the same file, no model run
    reused = predict(tmp_path, "--runs", str(run), "--input", str(comp_dir / "test.csv"))
    assert np.array_equal(probs_of(reused, LABELS), expected[LABELS].to_numpy())
    assert np.array_equal(preds_of(reused, LABELS), preds_of(out, LABELS))


def test_only_the_runs_exact_test_set_is_read_from_test_probs(tmp_path, comp_dir, capsys):
    run = tiny_run(tmp_path, comp_dir, "run", "model.preset=tfidf-lr")
    expected = pd.read_csv(run / "test_probs.csv", dtype={"id": str}).set_index("id")
    test = pd.read_csv(comp_dir / "test.csv", dtype=str, keep_default_na=False)
    edited = test.copy()
    edited.loc[0, "Tweet"] = edited.loc[0, "Tweet"] + " !"
    variants = {"same": test, "reordered": test.iloc[::-1], "one text edited": edited, "one row fewer": test.iloc[1:]}
    for name, frame in variants.items():
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        capsys.readouterr()
        out = predict(tmp_path, "--runs", str(run), "--input", str(path))
        read = "read from test_probs.csv" in capsys.readouterr().out
        assert read == (name == "same"), name
        unchanged = out["ID"] != test.loc[0, "ID"] if name == "one text edited" else slice(None)
        np.testing.assert_allclose(probs_of(out, LABELS)[unchanged],
                                   expected.loc[out["ID"][unchanged], LABELS].to_numpy(), rtol=0, atol=1e-6)
    changed = predict(tmp_path, "--runs", str(run), "--input", str(tmp_path / "one text edited.csv"))
    assert not np.allclose(probs_of(changed, LABELS)[0], expected.loc[test.loc[0, "ID"], LABELS].to_numpy())


def test_a_submission_gives_its_runs_weights_and_rule_and_plain_runs_average_equally(tmp_path, comp_dir):
    a = tiny_run(tmp_path, comp_dir, "a", "model.preset=tfidf-lr")
    b = tiny_run(tmp_path, comp_dir, "b", "model.preset=tfidf-lr", "cv.seed=7")
    sub = tmp_path / "submissions" / "ab.csv"
    make_submission([a, b], sub, weights=[1.0, 3.0])
    test_a, test_b = (pd.read_csv(r / "test_probs.csv")[LABELS].to_numpy() for r in (a, b))

    out = predict(tmp_path, "--submission", str(sub.with_suffix(".json")), "--input", str(comp_dir / "test.csv"),
                  "--recompute")
    np.testing.assert_allclose(probs_of(out, LABELS), 0.25 * test_a + 0.75 * test_b, rtol=0, atol=1e-6)
    submitted = pd.read_csv(sub, dtype={"ID": str}).set_index("ID").loc[out["ID"], LABELS].to_numpy()
    assert np.array_equal(preds_of(out, LABELS), submitted)

    out = predict(tmp_path, "--runs", str(a), "b", "--runs-root", str(tmp_path), "--input", str(comp_dir / "test.csv"))
    mean = 0.5 * (test_a + test_b)
    np.testing.assert_allclose(probs_of(out, LABELS), mean, rtol=0, atol=1e-6)
    # no rule was tuned for an ad-hoc ensemble: 0.5
    assert np.array_equal(preds_of(out, LABELS), (probs_of(out, LABELS) >= 0.5).astype(int))


def test_multiclass_run_predicts_with_its_rule_and_ignores_extra_columns(tmp_path, dair_dir):
    run = tiny_run(tmp_path, dair_dir, "dair-run", "data.competition=dair-emotion", "model.preset=tfidf-lr")
    sub = tmp_path / "dair.csv"
    make_submission([run], sub)
    # dair's test.csv also has the label column: only id and text are read
    out = predict(tmp_path, "--runs", str(run), "--input", str(dair_dir / "test.csv"), "--recompute")
    expected = pd.read_csv(run / "test_probs.csv", dtype={"id": str})
    classes = list(expected.columns[1:])
    np.testing.assert_allclose(probs_of(out, classes), expected[classes].to_numpy(), rtol=0, atol=1e-6)
    preds = preds_of(out, classes)
    assert (preds.sum(1) == 1).all()
    submitted = pd.read_csv(sub, dtype={"id": str}).set_index("id").loc[out["id"], "label"]
    assert np.asarray(classes)[preds.argmax(1)].tolist() == submitted.tolist()


def test_a_run_without_kept_models_is_refused_in_one_line(tmp_path, comp_dir, capsys):
    run = tiny_run(tmp_path, comp_dir, "run", "model.preset=tfidf-lr", "train.save_models=false")
    assert not (run / "folds" / "fold_0" / "model").exists()
    code = predict_main(["--runs", str(run), "--input", str(comp_dir / "test.csv"), "--out", "p.csv", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: run ") and str(run) in err and "train.save_models" in err


def test_save_models_changes_neither_the_config_hash_nor_the_run(tmp_path, comp_dir):
    base = [f"data.data_dir={comp_dir}", "model.preset=tfidf-lr", "cv.n_folds=2"]
    keep, drop = load_config(None, base), load_config(None, base + ["train.save_models=false"])
    assert keep.short_hash() == drop.short_hash() and keep.run_name() == drop.run_name()
    assert keep.result_dict() == drop.result_dict()
    run = run_cv(keep, tmp_path / "run", quiet=True)
    run_cv(drop, run, quiet=True)  # the same run: accepted, nothing retrained


def test_bad_input_files_and_flags_get_one_line_errors(tmp_path, comp_dir, capsys):
    run = tiny_run(tmp_path, comp_dir, "run", "model.preset=tfidf-lr")
    bad = tmp_path / "texts.csv"
    pd.DataFrame({"ID": ["a", "b"], "text": ["one", "two"]}).to_csv(bad, index=False)
    assert predict_main(["--runs", str(run), "--input", str(bad), "--out", "p.csv", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "texts.csv is missing columns ['Tweet']" in err and "found: ID, text" in err
    pd.DataFrame({"ID": ["a", "a"], "Tweet": ["one", "two"]}).to_csv(bad, index=False)
    assert predict_main(["--runs", str(run), "--input", str(bad), "--out", "p.csv", "--quiet"]) == 2
    assert "texts.csv has 1 duplicate ids in column 'ID'" in capsys.readouterr().err
    assert predict_main(["--runs", str(run), "--submission", "x.json", "--input", str(bad), "--out", "p.csv"]) == 2
    assert "either --runs" in capsys.readouterr().err
    assert predict_main(["--submission", "x.json", "--input", str(bad), "--out", "p.csv"]) == 2
    assert "x.json does not exist" in capsys.readouterr().err


def test_tfidf_folds_kept_by_joblib_before_model_pkl_still_predict(tmp_path, comp_dir):
    import joblib

    from pipeline.linear import load_tfidf_fold

    run = tiny_run(tmp_path, comp_dir, "run", "model.preset=tfidf-lr")
    for k in range(2):
        folder = run / "folds" / f"fold_{k}" / "model"
        joblib.dump(load_tfidf_fold(folder), folder / "model.joblib")
        (folder / "model.pkl").unlink()
    out = predict(tmp_path, "--runs", str(run), "--input", str(comp_dir / "test.csv"), "--recompute")
    expected = pd.read_csv(run / "test_probs.csv", dtype={"id": str})
    np.testing.assert_allclose(probs_of(out, LABELS), expected[LABELS].to_numpy(), rtol=0, atol=1e-6)
