"""pipeline/synthetic/files.py: `read_extra_train` accepts a generated file and refuses bad ones in one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import LABELS
from pipeline.config import DataConfig
from pipeline.data import load_competition_data
from pipeline.errors import DataError
from pipeline.synthetic.files import leaky_rows, read_extra_train


@pytest.fixture
def dair(dair_dir):
    return load_competition_data(DataConfig(competition="dair-emotion", data_dir=str(dair_dir)))


@pytest.fixture
def emotions(comp_dir):
    return load_competition_data(DataConfig(data_dir=str(comp_dir)))


def write(tmp_path, frame, name="syn.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def dair_rows(**extra):
    return pd.DataFrame({"id": ["syn-000000", "syn-000001"], "text": ["i feel so alone tonight", "what a lovely day"],
                         "label": ["sadness", "joy"], "gen_backend": ["llama-cpp"] * 2,
                         "gen_examples": ["train_00001;train_00002", ""], **extra})


def test_reads_a_synthetic_file_in_the_training_format(tmp_path, dair, emotions):
    frame, labels = read_extra_train(write(tmp_path, dair_rows()), dair)
    assert list(frame.columns) == ["id", "text", "label", "gen_backend", "gen_examples"]
    assert labels.tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    multi = pd.DataFrame({"ID": ["syn-1"], "Tweet": ["trust me, it works"], **{c: [int(c == "trust")] for c in LABELS}})
    frame, labels = read_extra_train(write(tmp_path, multi, "m.csv"), emotions)
    assert list(frame.columns) == ["ID", "Tweet"] + LABELS and labels.tolist() == [[0, 0, 0, 1]]
    assert frame["trust"].dtype == np.int64


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "synthetic file {p} does not exist"),
    (lambda p: p.write_text(""), "syn.csv is empty"),
    (lambda p: p.write_text("id,text,label\n"), "syn.csv has a header but no data rows"),
    (lambda p: p.write_bytes(b"id,text,label\nsyn-1,caf\xe9 time,joy\n"), "syn.csv is not UTF-8 text"),
    (lambda p: dair_rows(label=["sadness", "happiness"]).to_csv(p, index=False),
     "syn.csv: column 'label' has values that are not among the classes sadness, joy, love, anger, fear, surprise: "
     "'happiness' in 1 rows"),
    (lambda p: dair_rows(joy=[0, 1]).to_csv(p, index=False),
     "syn.csv has columns ['joy'] that competition dair-emotion does not have"),
    (lambda p: dair_rows().drop(columns="label").to_csv(p, index=False), "syn.csv is missing columns ['label']"),
    (lambda p: dair_rows(id=["train_00003", "syn-1"]).to_csv(p, index=False),
     "syn.csv: 1 ids are also ids of train.csv + validation.csv (first: 'train_00003')"),
    (lambda p: dair_rows(id=["syn-1", "test_00000"]).to_csv(p, index=False),
     "syn.csv: 1 ids are also ids of test.csv (first: 'test_00000')"),
    (lambda p: dair_rows(id=["syn-1", "syn-1"]).to_csv(p, index=False), "syn.csv has 1 duplicate ids"),
    (lambda p: dair_rows(text=["fine text", "  "]).to_csv(p, index=False), "syn.csv: column 'text' is empty in 1 rows"),
])
def test_bad_synthetic_files_get_one_line_errors(tmp_path, dair, make, message):
    path = tmp_path / "syn.csv"
    make(path)
    with pytest.raises(DataError) as err:
        read_extra_train(path, dair)
    assert message.format(p=path) in str(err.value) and "\n" not in str(err.value)


def test_multilabel_columns_must_be_the_competitions(tmp_path, emotions):
    base = {"ID": ["syn-1"], "Tweet": ["trust me"], **{c: [0] for c in LABELS}}
    with pytest.raises(DataError, match=r"has columns \['optimism'\] that competition emotion-detection-fall-2024"):
        read_extra_train(write(tmp_path, pd.DataFrame({**base, "optimism": [1]})), emotions)
    with pytest.raises(DataError, match=r"column 'trust' must contain only 0/1; found \{yes\}"):
        read_extra_train(write(tmp_path, pd.DataFrame({**base, "trust": ["yes"]})), emotions)


def test_leaky_rows_name_rows_whose_examples_a_fold_validates_on():
    frame = dair_rows()
    assert leaky_rows(frame, ["train_00002"]).tolist() == [True, False]
    assert leaky_rows(frame, ["train_00009"]).tolist() == [False, False]
    assert leaky_rows(frame.drop(columns="gen_examples"), ["train_00002"]).tolist() == [False, False]
