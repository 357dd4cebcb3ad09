"""Ensembling matches rows by id, never by position."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.ensemble import RunProbs, average_runs
from pipeline.errors import RunDirError


def run(name, ids, values, cols=("a", "b")):
    frame = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=list(cols))
    return RunProbs(name, frame, frame.copy(), list(cols), pd.Series(np.arange(len(ids)) % 2, index=frame.index))


def test_average_matches_by_id_when_shuffled():
    ids = ["x", "y", "z"]
    first = run("r1", ids, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    second = run("r2", ids[::-1], [[0.9, 0.8], [0.7, 0.6], [0.5, 0.4]])  # z, y, x
    oof, test = average_runs([first, second])
    np.testing.assert_allclose(oof.loc["x"].to_numpy(), [(0.1 + 0.5) / 2, (0.2 + 0.4) / 2])
    np.testing.assert_allclose(oof.loc["z"].to_numpy(), [(0.5 + 0.9) / 2, (0.6 + 0.8) / 2])
    assert list(test.index) == ids


def test_weights():
    a = run("a", ["x"], [[0.0, 1.0]])
    b = run("b", ["x"], [[1.0, 0.0]])
    oof, _ = average_runs([a, b], [3, 1])
    np.testing.assert_allclose(oof.loc["x"].to_numpy(), [0.25, 0.75])


def test_refuses_different_ids_or_labels():
    with pytest.raises(RunDirError, match="cover different oof ids"):
        average_runs([run("a", ["x", "y"], [[0, 0], [0, 0]]), run("b", ["x", "q"], [[0, 0], [0, 0]])])
    with pytest.raises(RunDirError, match="predict different labels"):
        average_runs([run("a", ["x"], [[0, 0]]), run("b", ["x"], [[0, 0]], cols=("a", "c"))])


def test_ensemble_selection_picks_the_useful_runs():
    from pipeline.ensemble import search_weights

    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < 0.3).astype(np.int8)
    good = labels * 0.3 + rng.random((400, 3)) * 0.7  # positives and negatives overlap
    other = labels * 0.3 + rng.random((400, 3)) * 0.7  # as good, independent noise
    noise = rng.random((400, 3))
    weights = search_weights([good, noise, other], labels)
    assert weights.sum() == pytest.approx(1.0) and weights[1] == 0.0  # pure noise is never picked
    assert weights[0] > 0.2 and weights[2] > 0.2  # two independent good runs both help
    assert np.array_equal(weights, search_weights([good, noise, other], labels))  # deterministic


def test_cross_validated_score_fits_thresholds_without_the_held_out_fold():
    from pipeline.ensemble import cross_validated_macro_f1
    from pipeline.thresholds import ThresholdTuner

    rng = np.random.default_rng(1)
    labels = (rng.random((300, 2)) < 0.4).astype(np.int8)
    probs = np.clip(labels * 0.3 + rng.random((300, 2)) * 0.7, 0, 1)
    folds = np.arange(300) % 3
    tuner = lambda: ThresholdTuner("exact")  # noqa: E731
    honest = cross_validated_macro_f1([probs], labels, folds, tuner, weights=np.ones(1))
    optimistic = ThresholdTuner("exact").fit(probs, labels).f1_.mean()
    assert 0.3 < honest <= optimistic  # tuning on the rows you score can only look better
