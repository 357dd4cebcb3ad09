"""Submissions equal the sample submission's shape: columns, order, dtypes and id order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.submission import build_submission, write_submission


@pytest.fixture
def sample():
    return pd.DataFrame({"ID": ["2018-3", "2018-1", "2018-2"], "anger": 0, "joy": 0})


def test_submission_matches_sample(tmp_path, sample):
    sample_path = tmp_path / "sample_submission.csv"
    sample.to_csv(sample_path, index=False)
    probs = pd.DataFrame({"anger": [0.9, 0.1, 0.6], "joy": [0.2, 0.7, 0.4]},
                         index=pd.Index(["2018-1", "2018-2", "2018-3"], name="id"))
    frame = build_submission(sample, "ID", probs, np.array([0.5, 0.3]))
    write_submission(tmp_path / "sub.csv", frame, sample, "ID")
    written = pd.read_csv(tmp_path / "sub.csv")
    expected = pd.read_csv(sample_path)
    assert list(written.columns) == list(expected.columns)
    assert (written.dtypes == expected.dtypes).all()
    assert written["ID"].tolist() == expected["ID"].tolist()
    # rows follow the sample's id order, predictions looked up by id
    assert written.set_index("ID").loc["2018-1"].tolist() == [1, 0]
    assert written.set_index("ID").loc["2018-3"].tolist() == [1, 1]


def test_missing_ids_refused_and_nothing_written(tmp_path, sample):
    probs = pd.DataFrame({"anger": [0.9], "joy": [0.2]}, index=pd.Index(["2018-1"], name="id"))
    with pytest.raises(DataError, match=r"predictions cover 1 ids but the sample submission has 3; "
                                        r"missing: \['2018-2', '2018-3'\]"):
        build_submission(sample, "ID", probs, np.array([0.5, 0.5]))
    bad = sample.copy()
    bad["anger"] = bad["anger"].astype(float)
    with pytest.raises(DataError, match="must be int64 0/1"):
        write_submission(tmp_path / "sub.csv", bad, sample, "ID")
    assert not list(tmp_path.iterdir())
