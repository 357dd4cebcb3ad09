"""The CV report holds the scores a person needs and renders as markdown."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import macro_f1
from pipeline.report import build_report, render_markdown


def test_report_contents():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.3).astype(int)
    probs = np.clip(labels * 0.5 + rng.random((200, 3)) * 0.6, 0, 1)
    folds = np.arange(200) % 4
    thresholds = np.array([0.4, 0.5, 0.6])
    report = build_report(probs, labels, folds, thresholds, ["a", "b", "c"])
    assert report["oof_at_0.5"]["macro_f1"] == pytest.approx(macro_f1(labels, (probs >= 0.5).astype(int)))
    assert report["oof_tuned"]["macro_f1"] == pytest.approx(macro_f1(labels, (probs >= thresholds).astype(int)))
    assert {"micro_f1", "samples_jaccard"} <= set(report["oof_tuned"])
    assert [r["label"] for r in report["per_label"]] == ["a", "b", "c"]
    assert {"precision", "recall", "f1", "threshold", "support"} <= set(report["per_label"][0])
    assert len(report["per_fold"]["macro_f1_tuned"]) == 4
    assert report["per_fold"]["std_tuned"] >= 0
    text = render_markdown(report, "t")
    assert "| macro-F1 |" in text and "| b |" in text and "mean ± std" in text
