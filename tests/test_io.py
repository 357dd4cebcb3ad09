"""Atomic writes: a failure leaves the old file (or nothing), never a partial one."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.io import atomic_write_csv, atomic_write_json, atomic_write_text


def test_atomic_text_and_json(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert '"x": 1' in (tmp_path / "sub" / "b.json").read_text()


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.csv"
    atomic_write_csv(path, pd.DataFrame({"a": [1]}))

    class Boom(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            args[0].write("a\n1\npartial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_csv(path, Boom({"a": [2]}))
    assert path.read_text() == "a\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
