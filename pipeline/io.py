"""Atomic file writes: write to a temporary file in the same folder, then rename.

After any crash a reader sees either the old file or the complete new one, never a part.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def _atomic(path: Path, write, binary: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda h: h.write(text))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    # float_format keeps probabilities exact enough to reproduce thresholds bit for bit
    _atomic(path, lambda h: frame.to_csv(h, index=False, lineterminator="\n", float_format="%.8g"))


def atomic_write_folder(folder: Path, write) -> None:
    """`write(tmp)` fills a temporary sibling folder, which then replaces `folder`: it appears whole or not at all."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def atomic_write_npz(path: Path, **arrays) -> None:
    """numpy arrays in one .npz, written to a temporary name and renamed."""
    import numpy as np

    _atomic(path, lambda h: np.savez(h, **arrays), binary=True)
