"""pipeline.process_memory: the resident memory and the peak a `--jobs` worker resets before each task."""
from __future__ import annotations

import numpy as np

from pipeline import process_memory


def test_a_reset_peak_counts_from_now_and_sees_a_new_allocation():
    big = np.ones(400_000_000 // 8)  # 400 MB, touched
    del big
    assert process_memory.reset_peak()
    start, after_reset = process_memory.resident(), process_memory.peak()
    assert after_reset < start + 100e6  # the earlier 400 MB no longer count
    block = np.ones(200_000_000 // 8)  # 200 MB more, written page by page
    assert process_memory.peak() >= start + 190e6
    assert process_memory.resident() >= start + 190e6
    del block
    assert process_memory.peak() >= start + 190e6  # a peak stays after the memory is given back


def test_without_proc_the_readings_are_unknown(monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr("builtins.open", no_proc)
    assert process_memory.resident() is None and process_memory.peak() is None
    assert process_memory.reset_peak() is False
    monkeypatch.undo()
    assert process_memory.gigabytes(None) == "unknown" and process_memory.gigabytes(2_140_000_000) == "2.1 GB"
