"""Threshold tuning: recovers a planted threshold, matches the exact sweep, is reproducible."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.thresholds import ThresholdTuner, exact_threshold, f1_at


def logistic_oof(n=4000, rates=(0.37, 0.14, 0.38, 0.05, 0.3), seed=0):
    """Probabilities shaped like a real model's OOF: noisy logits, shifted per label."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(rates))) < rates).astype(int)
    logits = rng.normal(0, 1.3, labels.shape) + 2.2 * labels - rng.uniform(0.5, 2.5, len(rates))
    return 1 / (1 + np.exp(-logits)), labels


def test_recovers_planted_threshold():
    rng = np.random.default_rng(1)
    probs = rng.random((3000, 3))
    planted = np.array([0.23, 0.61, 0.8])
    labels = (probs >= planted).astype(int)  # perfectly separable at the planted cut
    tuner = ThresholdTuner("optuna", n_trials=60, seed=0).fit(probs, labels)
    np.testing.assert_allclose(tuner.thresholds_, planted, atol=0.01)
    assert np.all(tuner.f1_ >= 0.99)
    assert (tuner.predict(probs) == labels).mean() > 0.999


def test_exact_sweep_is_the_true_optimum():
    probs, labels = logistic_oof(n=600)
    for j in range(labels.shape[1]):
        t, best = exact_threshold(probs[:, j], labels[:, j])
        brute = max(f1_score(labels[:, j], probs[:, j] >= c, zero_division=0) for c in np.unique(probs[:, j]))
        assert best == pytest.approx(brute, abs=1e-12)
        assert f1_at(probs[:, j], labels[:, j], t) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optuna_within_0002_of_exact(seed):
    probs, labels = logistic_oof(seed=seed)
    tuner = ThresholdTuner("optuna", n_trials=100, seed=seed).fit(probs, labels)
    exact = np.array([exact_threshold(probs[:, j], labels[:, j], 0.02, 0.98)[1] for j in range(labels.shape[1])])
    assert np.all(exact - tuner.f1_ <= 0.002), exact - tuner.f1_
    assert np.all(tuner.f1_ <= exact + 1e-12)


def test_same_oof_same_thresholds():
    probs, labels = logistic_oof(seed=5)
    a = ThresholdTuner("optuna", n_trials=50, seed=3).fit(probs, labels).thresholds_
    b = ThresholdTuner("optuna", n_trials=50, seed=3).fit(probs, labels).thresholds_
    np.testing.assert_array_equal(a, b)


def test_refining_grid_skips_exactly_what_optunas_skip_if_exists_skips(monkeypatch):
    """The grid's duplicate check is Optuna's own rule, vectorised: the same thresholds as enqueueing every grid point
    through enqueue_trial(skip_if_exists=True), which the search used before (and which took over half its time)."""
    import optuna

    from pipeline import thresholds

    probs, labels = logistic_oof(n=1500)
    probs[:, 0] = np.round(probs[:, 0], 2)  # coarse probabilities: TPE lands on grid points, so there is work to skip
    fast = ThresholdTuner(n_trials=40).fit(probs, labels).thresholds_
    enqueue = optuna.study.Study.enqueue_trial
    monkeypatch.setattr(thresholds, "_untried", lambda t, tried: True)
    monkeypatch.setattr(optuna.study.Study, "enqueue_trial",
                        lambda self, params, **kw: enqueue(self, params, skip_if_exists=True))
    assert np.array_equal(ThresholdTuner(n_trials=40).fit(probs, labels).thresholds_, fast)


def test_fixed_method_is_half():
    probs, labels = logistic_oof(n=100)
    np.testing.assert_array_equal(ThresholdTuner("fixed").fit(probs, labels).thresholds_, 0.5)


def _planted(bias, n=6000, k=4, seed=0):
    """Balanced classes, noisy logits; `bias` is subtracted from one class's logits (under-predicting it)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), y] += 1.5
    logits[:, 2] -= bias
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, np.eye(k, dtype=np.int8)[y]


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bias_tuner_recovers_a_planted_bias(metric):
    from pipeline.thresholds import BiasTuner

    probs, labels = _planted(1.0)
    tuner = BiasTuner("optuna", n_trials=60, metric=metric, seed=0).fit(probs, labels)
    relative = tuner.biases_ - np.delete(tuner.biases_, 2).mean()
    assert relative[2] == pytest.approx(1.0, abs=0.2)  # the planted shift, undone
    assert np.abs(np.delete(relative, 2)).max() < 0.2
    plain = BiasTuner("fixed").fit(probs, labels)
    np.testing.assert_array_equal(plain.biases_, 0)
    assert tuner.score_ > plain.score_ + 0.01
    again = BiasTuner("optuna", n_trials=60, metric=metric, seed=0).fit(probs, labels)
    np.testing.assert_array_equal(again.biases_, tuner.biases_)  # seeded: same OOF, same rule
    preds = tuner.predict(probs)
    assert preds.shape == labels.shape and (preds.sum(1) == 1).all()


def test_fast_tuner_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from pipeline.thresholds import _FAST

    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 5, 500), rng.integers(0, 4, 500)  # class 4 never predicted
    assert _FAST["macro_f1"](y, pred, 5) == pytest.approx(f1_score(y, pred, average="macro", labels=range(5),
                                                                    zero_division=0))
    assert _FAST["accuracy"](y, pred, 5) == pytest.approx(accuracy_score(y, pred))


def test_bias_budget_benchmark_reproduces_the_runs_cross_validated_score(tmp_path, dair_dir):
    """benchmarks/bias_budget.py refits a finished multiclass run's rule per budget; at the default budget (rounds 4)
    its cross-validated score is the run's own, and a smaller budget runs fewer trials."""
    import importlib.util
    import json
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.cv import run_cv

    cfg = load_config(None, [f"data.data_dir={dair_dir}", "data.competition=dair-emotion", "model.preset=tfidf-lr",
                             "cv.n_folds=3", "thresholds.n_trials=10"])
    run = run_cv(cfg, tmp_path / "run", quiet=True)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bias_budget.py"
    spec = importlib.util.spec_from_file_location("bias_budget", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "budget.json"
    assert module.main([str(run), "--rounds", "1", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["rounds"] for r in rows] == [1, 4] and [r["trials"] for r in rows] == [10, 40]
    report = json.loads((run / "report.json").read_text())
    assert rows[1]["cv"] == pytest.approx(report["oof_tuned_cv"]["macro_f1"], abs=1e-12)
