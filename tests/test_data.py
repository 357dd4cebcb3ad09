"""Reading and checking competition CSVs: every bad-input case gets a one-line error naming the problem."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import LABELS, write_competition
from pipeline.config import DataConfig
from pipeline.data import load_competition_data
from pipeline.errors import DataError


def load(folder):
    return load_competition_data(DataConfig(data_dir=str(folder)))


def test_reads_good_data_exactly(comp_dir, frames):
    train, test, _ = frames
    data = load(comp_dir)
    assert data.label_cols == LABELS  # from the sample submission's header
    assert data.labels.shape == (len(train), len(LABELS))
    np.testing.assert_array_equal(data.labels, train[LABELS].to_numpy())
    assert data.train_texts == train["Tweet"].tolist()
    assert list(data.test_ids) == test["ID"].tolist()


def test_text_kept_exactly(tmp_path, frames):
    train, test, sample = frames
    train.loc[0, "Tweet"] = "  spaces kept \u200b and \"quotes\", commas\nnewline "
    train.loc[1, "Tweet"] = "NA"  # must not become NaN
    data = load(write_competition(tmp_path / "c", train, test, sample))
    assert data.train_texts[0] == train.loc[0, "Tweet"]
    assert data.train_texts[1] == "NA"


def test_bom_and_crlf_are_read(tmp_path, frames):
    folder = write_competition(tmp_path / "c", *frames)
    raw = (folder / "train.csv").read_text()
    (folder / "train.csv").write_bytes(b"\xef\xbb\xbf" + raw.replace("\n", "\r\n").encode())
    data = load(folder)
    assert data.train.columns[0] == "ID"
    assert not any(t.endswith("\r") for t in data.train_texts)


def test_missing_folder_says_how_to_fill_it(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*kaggle competitions download -c "
                                        r"emotion-detection-fall-2024.*--data-dir"):
        load(tmp_path / "nowhere")


def test_empty_folder_names_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no train.csv, test.csv, sample_submission.csv.*kaggle"):
        load(tmp_path / "empty")


@pytest.mark.parametrize("case, pattern", [
    ("missing_label", r"train.csv is missing columns \['trust'\]; found: ID, Tweet, anger"),
    ("extra_column", r"train.csv has unexpected columns \['extra'\]"),
    ("label_two", r"train.csv: column 'joy' must contain only 0/1; found \{2\} in 1 rows \(first ids: '2017-00003'\)"),
    ("label_nan", r"column 'fear' must contain only 0/1; found \{nan\} in 2 rows"),
    ("label_text", r"column 'anger' must contain only 0/1; found \{yes\}"),
    ("duplicate_ids", r"train.csv has 1 duplicate ids in column 'ID' \(first: '2017-00001'\)"),
    ("empty_text", r"train.csv: column 'Tweet' is empty in 1 rows \(first ids: '2017-00004'\)"),
    ("test_id_missing", r"test.csv and sample_submission.csv list different ids: 0 only in test.csv .*1 only in "
                        r"sample_submission.csv \('2018-00039'\)"),
    ("test_id_added", r"1 only in test.csv \('2018-99999'\)"),
    ("test_missing_text_col", r"test.csv is missing columns \['Tweet'\]"),
    ("no_positives", r"label columns \['trust'\] have no positive rows"),
    ("semicolon", r"train.csv has a single column .*is it comma-separated"),
    ("empty_file", r"train.csv is empty"),
    ("header_only", r"train.csv has a header but no data rows"),
    ("not_utf8", r"train.csv is not UTF-8 text: byte 0xff"),
    ("duplicate_column", r"train.csv has duplicated column names: 'joy'"),
    ("malformed", r"train.csv is not a well-formed CSV"),
    ("train_test_overlap", r"1 ids appear in both train.csv and test.csv"),
])
def test_bad_input(tmp_path, frames, case, pattern):
    train, test, sample = (f.copy() for f in frames)
    folder = tmp_path / "c"
    if case == "missing_label":
        train = train.drop(columns=["trust"])
    elif case == "extra_column":
        train["extra"] = 1
    elif case == "label_two":
        train.loc[3, "joy"] = 2
    elif case == "label_nan":
        train["fear"] = train["fear"].astype(object)
        train.loc[[5, 6], "fear"] = None
    elif case == "label_text":
        train["anger"] = train["anger"].astype(object)
        train.loc[0, "anger"] = "yes"
    elif case == "duplicate_ids":
        train.loc[2, "ID"] = train.loc[1, "ID"]
    elif case == "empty_text":
        train.loc[4, "Tweet"] = "   "
    elif case == "test_id_missing":
        test = test.iloc[:-1]
    elif case == "test_id_added":
        test.loc[len(test)] = ["2018-99999", "extra tweet"]
    elif case == "test_missing_text_col":
        test = test[["ID"]]
    elif case == "no_positives":
        train["trust"] = 0
    elif case == "train_test_overlap":
        train.loc[0, "ID"] = test.loc[0, "ID"]
    write_competition(folder, train, test, sample)
    path = folder / "train.csv"
    if case == "semicolon":
        train.to_csv(path, index=False, sep=";")
    elif case == "empty_file":
        path.write_text("")
    elif case == "header_only":
        path.write_text(",".join(train.columns) + "\n")
    elif case == "not_utf8":
        path.write_bytes(path.read_bytes() + b"2017-77777,caf\xff,0,0,0,0\n")
    elif case == "duplicate_column":
        path.write_text(path.read_text().replace(",trust\n", ",joy\n", 1))
    elif case == "malformed":
        path.write_text(path.read_text() + "2017-88888,too,many,fields,0,0,0,0,1\n")
    with pytest.raises(DataError, match=pattern) as info:
        load(folder)
    assert "\n" not in str(info.value)


def test_clean_fit_filter_rules():
    from pipeline.data import fit_filter_mask

    texts = ["I am so happy today friends", "@bob I am SO happy   today friends",  # same words, same labels
             "this makes me furious and sad", "This makes me furious and sad!",  # same words, other labels
             "@bob lol", "nothing to feel here at all", "what a lovely morning it is"]
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [1, 0], [0, 0], [1, 0]])
    keep, reasons = fit_filter_mask(texts, labels, "clean")
    assert keep.tolist() == [True, False, False, False, False, False, True]
    assert reasons == {"no emotion label": 1, "fewer than 3 words": 1, "repeated text, conflicting labels": 2,
                       "repeated text, same labels (copies)": 1}
    keep, reasons = fit_filter_mask(texts, labels, "none")
    assert keep.all() and reasons == {}
