"""A fake Kaggle client with the real one's three methods, and a tiny finished run to submit from.

The fake records its calls, serves a zip of the CSVs in `<folder>/competition/` and returns canned
submissions (objects with 1.x camelCase fields or dicts with 2.x snake_case ones). In-process tests
monkeypatch `pipeline.kaggle.get_client`; a subprocess gets it through
KFOLD_KAGGLE_CLIENT=fake_kaggle:FakeKaggle with FAKE_KAGGLE_DIR=<folder>, and its calls land in
`<folder>/calls.jsonl`, its canned submissions come from `<folder>/submissions.json`.
"""
from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

from conftest import make_frames, write_competition


class FakeKaggle:
    def __init__(self, folder=None, submissions=None):
        self.folder = Path(folder or os.environ["FAKE_KAGGLE_DIR"])
        self.calls = []
        canned = self.folder / "submissions.json"
        self.canned = submissions if submissions is not None else (
            json.loads(canned.read_text()) if canned.is_file() else [])

    def _log(self, *call):
        self.calls.append(call)
        with open(self.folder / "calls.jsonl", "a") as handle:
            handle.write(json.dumps([str(c) for c in call]) + "\n")

    def download(self, competition, dest_dir):
        self._log("download", competition, dest_dir)
        with zipfile.ZipFile(Path(dest_dir) / f"{competition}.zip", "w") as zf:
            for path in sorted((self.folder / "competition").iterdir()):
                zf.write(path, path.name)

    def submit(self, competition, file_path, message):
        assert Path(file_path).is_file()
        self._log("submit", competition, file_path, message)
        return "Successfully submitted to Emotion Detection"

    def submissions(self, competition):
        self._log("submissions", competition)
        return self.canned


def camel(file_name, description, public, private, status="complete", date="2024-11-02T10:00:00"):
    """A submission as kaggle 1.x returns it: an object with camelCase attributes, scores as strings."""
    return SimpleNamespace(fileName=file_name, description=description, date=date, status=status,
                           publicScore=public, privateScore=private, ref=1)


def snake(file_name, description, public, private, status="SubmissionStatus.COMPLETE", date="2024-11-03T10:00:00"):
    """A submission with kaggle 2.x field names, as a dict."""
    return {"file_name": file_name, "description": description, "date": date, "status": status,
            "public_score": public, "private_score": private}


def make_fake_folder(folder: Path, drop: tuple = ()) -> Path:
    """The fake's folder: competition CSVs for download (minus the files in drop)."""
    write_competition(folder / "competition", *make_frames())
    for name in drop:
        (folder / "competition" / name).unlink()
    return folder


def build_tiny_run(root: Path, name: str = "tiny") -> Path:
    """A finished 2-fold tfidf-lr run on the generated competition: root/runs/<name> (a few seconds)."""
    from pipeline.cli import run_cv_main

    comp = write_competition(root / "comp", *make_frames())
    run_dir = root / "runs" / name
    with contextlib.chdir(root):
        assert run_cv_main(["--model", "tfidf-lr", "--folds", "2", "--data-dir", str(comp), "--quiet",
                            "--set", "thresholds.n_trials=10", "--run-dir", str(run_dir)]) == 0
    return run_dir
