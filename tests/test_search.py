"""Hyperparameter search: study, best.yaml, resume after a kill, failed trials, pruning, the objective
against an independent computation, and one-line errors for bad spaces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from pipeline.cli import run_cv_main
from pipeline.config import load_config
from pipeline.search import FoldPruning, search_main
from pipeline.search_space import check_space, config_with, space_for

ROOT = Path(__file__).resolve().parents[1]
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)


def tune_args(comp_dir, search_dir, *extra, trials=3, folds=3, model="tfidf-lr"):
    return ["--model", model, "--folds", str(folds), "--data-dir", str(comp_dir), "--trials", str(trials),
            "--search-dir", str(search_dir), "--quiet", "--set", "thresholds.n_trials=20", "--set",
            "thresholds.method=exact", *extra]  # exact sweeps: the Optuna threshold search takes seconds a trial


def load_study(search_dir):
    return optuna.load_study(study_name="search", storage=f"sqlite:///{Path(search_dir).resolve() / 'study.db'}")


def write_space(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_three_trials_write_a_study_and_a_best_yaml_that_reruns_the_best_trial(tmp_path, comp_dir, capsys):
    space = write_space(tmp_path / "space.yaml", "train.warmup_ratio: {type: float, low: 0.0, high: 0.5}\n")
    search = tmp_path / "search"
    assert search_main(tune_args(comp_dir, search, "--space", space)) == 0
    out = capsys.readouterr().out
    study = load_study(search)
    assert [t.state for t in study.trials] == [COMPLETE] * 3
    # the first trial is the base config's own values (tfidf-lr defaults)
    assert study.trials[0].params == {"train.pos_weight": "full", "train.warmup_ratio": 0.1}
    for t in study.trials:
        assert {"untuned", "tuned", "cv", "run_dir", "seconds"} <= set(t.user_attrs)
        assert t.value == t.user_attrs["cv"]
        assert (search / t.user_attrs["run_dir"] / "folds" / "fold_1" / "oof.csv").is_file()
        assert not (search / t.user_attrs["run_dir"] / "folds" / "fold_2").exists()  # only the searched folds
        # the objective reads validation rows only: a trial never predicts test.csv
        result = json.loads((search / t.user_attrs["run_dir"] / "folds" / "fold_1" / "result.json").read_text())
        assert result["validation_only"] is True
        assert not (search / t.user_attrs["run_dir"] / "folds" / "fold_1" / "test_probs.csv").exists()
    best = max((t for t in study.trials), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert f"full run: python run_cv.py --config {search / 'best.yaml'}" in out
    assert out.count("COMPLETE") == 3

    cfg = load_config(str(search / "best.yaml"))  # a valid config, with the best trial's values
    assert cfg.train.pos_weight == best.params["train.pos_weight"]
    assert cfg.train.warmup_ratio == best.params["train.warmup_ratio"]
    assert cfg.cv.n_folds == 3 and cfg.train.save_models is True
    base = load_config(None, ["model.preset=tfidf-lr", "cv.n_folds=3", f"data.data_dir={comp_dir}",
                              "thresholds.n_trials=20", "thresholds.method=exact"])
    assert cfg.to_dict() == config_with(base, best.params).to_dict()

    # the full run from best.yaml uses the search's folds and reproduces the best trial's folds
    assert run_cv_main(["--config", str(search / "best.yaml"), "--run-dir", str(tmp_path / "full"), "--quiet"]) == 0
    assert (tmp_path / "full" / "folds.csv").read_text() == (search / "folds.csv").read_text()
    trial_dir = search / best.user_attrs["run_dir"]
    for k in (0, 1):
        rel = Path("folds") / f"fold_{k}" / "oof.csv"
        assert (tmp_path / "full" / rel).read_text() == (trial_dir / rel).read_text()

    # an ordinary run never takes a trial's folds, which have no test predictions
    capsys.readouterr()
    assert run_cv_main(["--config", str(search / "best.yaml"), "--run-dir", str(trial_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "predicted its validation rows only" in err and "\n" not in err

    # rerunning the same command adds nothing; a larger --trials adds the difference
    assert search_main(tune_args(comp_dir, search, "--space", space)) == 0
    assert len(load_study(search).trials) == 3
    assert search_main(tune_args(comp_dir, search, "--space", space, trials=4)) == 0
    assert len(load_study(search).trials) == 4
    # a different base config is refused instead of mixing incomparable trials
    capsys.readouterr()
    assert search_main(tune_args(comp_dir, search, "--space", space, "--set", "cv.seed=7", trials=5)) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a search with other settings" in err and "base_config.cv.seed: 42 -> 7" in err and "\n" not in err


def _independent_cv(probs, labels, folds, make_tuner, score):
    """Each searched fold decided by a rule fitted on the other searched folds, written out here."""
    preds = np.zeros_like(labels)
    for k in np.unique(folds):
        rule = make_tuner().fit(probs[folds != k], labels[folds != k])
        preds[folds == k] = rule.predict(probs[folds == k])
    return score(labels, preds)


@pytest.mark.parametrize("shape", ["multilabel", "multiclass"])
def test_objective_equals_the_cv_figure_computed_independently(tmp_path, comp_dir, dair_dir, shape):
    from pipeline.data import load_competition_data
    from pipeline.thresholds import BiasTuner, ThresholdTuner

    search = tmp_path / "search"
    data_dir, competition = (comp_dir, "emotion-detection-fall-2024") if shape == "multilabel" else \
        (dair_dir, "dair-emotion")
    if shape == "multiclass":  # cue words make every class separable: a third of the labels redrawn, so scores differ
        train = pd.read_csv(dair_dir / "train.csv")
        rng = np.random.default_rng(1)
        redraw = rng.random(len(train)) < 0.33
        train.loc[redraw, "label"] = rng.choice(sorted(set(train["label"])), int(redraw.sum()))
        train.to_csv(dair_dir / "train.csv", index=False)
    args = tune_args(data_dir, search, "--competition", competition, "--set", "thresholds.method=optuna", trials=1,
                     folds=4)
    assert search_main(args + ["--search-folds", "1,3"]) == 0
    trial = load_study(search).trials[0]
    run_dir = search / trial.user_attrs["run_dir"]
    folds = pd.read_csv(search / "folds.csv", dtype={"id": str}).set_index("id")["fold"]
    oof = pd.concat([pd.read_csv(run_dir / "folds" / f"fold_{k}" / "oof.csv", dtype={"id": str}) for k in (1, 3)])
    assert set(oof["id"]) == set(folds.index[folds.isin([1, 3])])  # exactly the rows of the searched folds
    data = load_competition_data(load_config(None, [f"data.data_dir={data_dir}",
                                                    f"data.competition={competition}"]).data)
    probs = oof[data.label_cols].to_numpy()
    labels = data.labels_for(oof["id"])
    held = folds.loc[oof["id"]].to_numpy()
    if shape == "multilabel":
        def make_tuner():
            return ThresholdTuner("optuna", 20, 0.02, 0.98, seed=42)

        def score(y, p):
            return f1_score(y, p, average="macro", zero_division=0)
    else:
        def make_tuner():
            return BiasTuner("optuna", 20, metric="macro_f1", seed=42)

        def score(y, p):
            return f1_score(y.argmax(1), p.argmax(1), average="macro", zero_division=0)
    assert trial.value == pytest.approx(_independent_cv(probs, labels, held, make_tuner, score), abs=1e-12)
    assert trial.value < trial.user_attrs["tuned"]  # the honest figure is not the one tuned on all of the OOF
    assert trial.user_attrs["tuned"] == pytest.approx(score(labels, make_tuner().fit(probs, labels).predict(probs)),
                                                      abs=1e-12)
    untuned = (probs >= 0.5).astype(int) if shape == "multilabel" else np.eye(probs.shape[1])[probs.argmax(1)]
    assert trial.user_attrs["untuned"] == pytest.approx(score(labels, untuned), abs=1e-12)


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import pipeline.linear as linear
real = linear.fit_tfidf_fold
def fit(cfg, fold, *rest):
    if "trial_0001" in str(rest[-1]):  # save_dir: inside the second trial's run directory
        os.kill(os.getpid(), signal.SIGKILL)
    return real(cfg, fold, *rest)
linear.fit_tfidf_fold = fit
from pipeline.search import search_main
sys.exit(search_main(sys.argv[1:]))
"""


def test_a_search_killed_during_trial_2_resumes_to_the_total(tmp_path, comp_dir):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    search = tmp_path / "search"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), *tune_args(comp_dir, search)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert [t.state for t in load_study(search).trials] == [COMPLETE, optuna.trial.TrialState.RUNNING]

    assert search_main(tune_args(comp_dir, search)) == 0
    trials = load_study(search).trials
    assert [t.state for t in trials] == [COMPLETE, FAIL, COMPLETE]
    assert "killed" in trials[1].user_attrs["error"]
    assert (search / "best.yaml").is_file()


def test_a_failing_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, comp_dir, monkeypatch, capsys):
    import pipeline.linear as linear

    real = linear.fit_tfidf_fold

    def fit(cfg, fold, *rest):
        if "trial_0001" in str(rest[-1]):
            raise RuntimeError("simulated failure")
        return real(cfg, fold, *rest)

    monkeypatch.setattr(linear, "fit_tfidf_fold", fit)
    search = tmp_path / "search"
    assert search_main(tune_args(comp_dir, search)) == 0
    trials = load_study(search).trials
    assert [t.state for t in trials] == [COMPLETE, FAIL, COMPLETE]
    assert trials[1].user_attrs["error"] == "RuntimeError: simulated failure"
    assert "FAIL" in capsys.readouterr().out


def test_pruning_stops_a_clearly_bad_trial():
    """A scripted objective feeds the status facts train_fold sends through the search's own pruning code."""
    # per trial, per searched fold, the validation score of each epoch
    curves = [[[0.5, 0.6], [0.55, 0.65]], [[0.52, 0.62], [0.5, 0.6]], [[0.1, 0.12], [0.1, 0.1]],
              [[0.6, 0.7], [0.6, 0.7]]]
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))

    def objective(trial):
        pruning = FoldPruning(trial, (2, 4), stride=2, score_key="val_macro_f1_at_0_5")
        for fold, scores in zip((2, 4), curves[trial.number]):
            pruning(phase="starting", fold=fold, n_folds=5)
            for epoch, score in enumerate(scores, 1):
                pruning(phase="train", epoch=epoch, step=3, total_steps=6, train_loss=0.5)
                pruning(phase="validated", epoch=epoch, step=3, total_steps=6, val_macro_f1_at_0_5=score,
                        best_epoch=1)
        return float(np.mean([max(s) for s in curves[trial.number]]))

    study.optimize(objective, n_trials=4)
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE, PRUNED, COMPLETE]
    # step 0 (the first epoch) is warm-up; the bad trial stops at the next one, before its second fold
    assert study.trials[2].intermediate_values == {0: 0.1, 1: 0.12}
    assert study.trials[2].user_attrs["pruned_at"] == {"fold": 2, "epoch": 2, "value": 0.12}
    # value: the mean over folds so far of each fold's best score so far; step: fold position x stride + epoch - 1
    assert study.trials[0].intermediate_values == pytest.approx({0: 0.5, 1: 0.6, 2: 0.575, 3: 0.625})


def test_pruning_hears_every_validation_of_the_training_loop(tmp_path, comp_dir):
    space = write_space(tmp_path / "space.yaml", """\
        train.epochs: {type: int, low: 2, high: 3}
        train.lr: null
        train.warmup_ratio: null
        train.weight_decay: null
        model.dropout: null
        train.pos_weight: null
        train.batch_size: null
    """)
    search = tmp_path / "search"
    args = tune_args(comp_dir, search, "--space", space, "--set", "train.patience=0", trials=1,
                     model="tiny-encoder")
    assert search_main(args) == 0
    trial = load_study(search).trials[0]
    assert trial.state == COMPLETE and trial.params == {"train.epochs": 3}
    run_dir = search / trial.user_attrs["run_dir"]
    expected, best = {}, {}
    for position, fold in enumerate((0, 1)):
        result = json.loads((run_dir / "folds" / f"fold_{fold}" / "result.json").read_text())
        assert trial.user_attrs["best_epochs"][str(fold)] == result["best_epoch"]
        for row in result["history"]:
            best[fold] = max(best.get(fold, -1.0), row["val_macro_f1_at_0.5"])
            expected[position * 3 + row["epoch"] - 1] = np.mean(list(best.values()))
    assert len(expected) == 6
    assert trial.intermediate_values == pytest.approx(expected)
    assert not (run_dir / "folds" / "fold_0" / "model").exists()  # a search keeps no fold models


@pytest.mark.parametrize("space, message", [
    ("train.lrr: {type: float, low: 1.0e-5, high: 1.0e-3}\n", "unknown config key 'train.lrr'; did you mean 'lr'?"),
    ("train.warmup_ratio: {type: float, low: 0.0, high: 1.5}\n", "train.warmup_ratio must be in [0, 1), got 1.5"),
    ("cv.seed: {type: int, low: 1, high: 9}\n", "cv.seed cannot be searched"),
    ("train.lr: {type: uniform, low: 1.0e-5, high: 1.0e-3}\n", "train.lr needs a spec like"),
    ("train.lr: {type: float, low: 0.0, high: 1.0e-3, log: true}\n", "train.lr: a log range needs low > 0"),
    ("train.pos_weight: {type: categorical, choices: [full, half]}\n", "train.pos_weight must be one of full"),
])
def test_a_bad_space_is_a_one_line_error(tmp_path, comp_dir, capsys, space, message):
    path = write_space(tmp_path / "space.yaml", space)
    assert search_main(tune_args(comp_dir, tmp_path / "search", "--space", path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search space (preset tfidf-lr with ") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "search").exists()  # refused before anything is written


def test_bad_flags_and_a_busy_search_directory_are_one_line_errors(tmp_path, comp_dir, capsys):
    from filelock import FileLock

    search = tmp_path / "search"
    for extra, message in ((["--search-folds", "0"], "--search-folds must list at least two different folds"),
                           (["--search-folds", "0,3"], "--search-folds must list at least two different folds"),
                           (["--search-folds", "a,b"], "--search-folds takes comma-separated fold numbers")):
        assert search_main(tune_args(comp_dir, search, *extra)) == 2
        assert message in capsys.readouterr().err
    search.mkdir()
    with FileLock(str(search / "search.lock")):
        assert search_main(tune_args(comp_dir, search)) == 2
    err = capsys.readouterr().err.strip()
    assert "another search is running in" in err and "\n" not in err


def test_show_space_prints_the_preset_space_with_the_file_and_less_keys_fixed_by_set(tmp_path, capsys):
    import yaml

    assert search_main(["--model", "minilm-l6", "--show-space", "--set", "train.lr=5e-5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = space_for("minilm-l6")
    del expected["train.lr"]
    assert shown == expected
    # a file replaces, adds and drops keys; PyYAML's strings for 1e-5 and 3e-4 (no dot) are read as numbers
    space = write_space(tmp_path / "space.yaml", """\
        train.lr: {type: float, low: 1e-5, high: 3e-4, log: true}
        train.grad_accum_steps: {type: int, low: 1, high: 4, step: 1}
        model.dropout: null
    """)
    assert search_main(["--model", "minilm-l6", "--show-space", "--space", space]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train.lr"] == {"type": "float", "low": 1e-5, "high": 3e-4, "log": True}
    assert shown["train.grad_accum_steps"]["high"] == 4 and "model.dropout" not in shown
    assert shown["train.epochs"] == space_for("minilm-l6")["train.epochs"]


def test_every_preset_has_a_valid_space():
    from pipeline.presets import PRESETS

    for name in PRESETS:
        base = load_config(None, [f"model.preset={name}"])
        check_space(space_for(name), base, name)
