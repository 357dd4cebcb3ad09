"""Talks to Kaggle behind a small client: download a competition's files, submit a file, list submissions.

The real client wraps the `kaggle` package and imports it only inside its methods (importing it looks for
credentials). Tests hand in a fake with the same three methods through `get_client()`.
"""
from __future__ import annotations

import importlib
import io
import os
import zipfile
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Optional, Protocol

from competition import COMPETITIONS, get_competition
from pipeline.errors import KaggleError

# 'module:Class' of a client built instead of the real one, e.g. a fake for subprocess tests
CLIENT_ENV = "KFOLD_KAGGLE_CLIENT"
NO_CREDENTIALS = ("no Kaggle credentials found: set KAGGLE_API_TOKEN (an API token from kaggle.com/settings), "
                  "or save ~/.kaggle/kaggle.json, or set KAGGLE_USERNAME and KAGGLE_KEY")
# one dict shape for a submission, whatever the kaggle package's version returns
SUBMISSION_FIELDS = ("file_name", "description", "date", "status", "public_score", "private_score")


class KaggleClient(Protocol):
    """The three Kaggle calls the project makes."""

    def download(self, competition: str, dest_dir: Path) -> None:
        """Put the competition's archive (`<competition>.zip`) into dest_dir."""

    def submit(self, competition: str, file_path: Path, message: str) -> str:
        """Upload file_path as a submission described by message; returns Kaggle's reply."""

    def submissions(self, competition: str) -> list:
        """The account's submissions to the competition: objects or dicts, in either field-name style."""


class KaggleApiClient:
    """The real client, over the `kaggle` package (1.x or 2.x)."""

    def __init__(self):
        self._api = None

    def _connect(self):
        if self._api is None:
            # the package prints its own help on stdout and calls exit(1) when no credentials are found
            # (2.x; 1.x raises OSError at import): one line of ours replaces both
            chatter = io.StringIO()
            try:
                with redirect_stdout(chatter), redirect_stderr(chatter):
                    from kaggle.api.kaggle_api_extended import KaggleApi

                    api = KaggleApi()
                    api.authenticate()
            except ImportError as exc:
                raise KaggleError(f"the kaggle package cannot be imported ({exc}); install it with "
                                  f"pip install -e '.[kaggle]'") from exc
            except (SystemExit, OSError, ValueError) as exc:
                raise KaggleError(NO_CREDENTIALS) from exc
            self._api = api
        return self._api

    def _call(self, what: str, competition: str, method: str, *args, **kwargs):
        api = self._connect()
        try:
            with redirect_stdout(io.StringIO()):  # progress lines; the caller prints its own summary
                return getattr(api, method)(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KaggleError(f"Kaggle {what} for '{competition}' failed: {first}") from exc

    def download(self, competition: str, dest_dir: Path) -> None:
        self._call("download", competition, "competition_download_files", competition, path=str(dest_dir),
                   force=True, quiet=True)

    def submit(self, competition: str, file_path: Path, message: str) -> str:
        reply = self._call("submit", competition, "competition_submit", str(file_path), message, competition,
                           quiet=True)
        text = str(getattr(reply, "message", reply) or "")
        if text.startswith("Could not submit"):  # 2.x reports a failed upload in the reply, not by raising
            raise KaggleError(f"Kaggle submit for '{competition}' failed: {text}")
        return text

    def submissions(self, competition: str) -> list:
        return list(self._call("submissions list", competition, "competition_submissions", competition,
                               page_size=100) or [])


def get_client() -> KaggleClient:
    """The client every command uses: the real one, or the `module:Class` named by $KFOLD_KAGGLE_CLIENT."""
    spec = os.environ.get(CLIENT_ENV, "")
    if not spec:
        return KaggleApiClient()
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise KaggleError(f"{CLIENT_ENV}={spec!r} does not name an importable 'module:Class'") from exc
    return factory()


def kaggle_slug(competition: str) -> str:
    """The Kaggle slug of a competition definition; a clear error for one that is not on Kaggle."""
    slug = get_competition(competition).kaggle_slug
    if not slug:
        on_kaggle = sorted(c.name for c in COMPETITIONS.values() if c.kaggle_slug)
        raise KaggleError(f"'{competition}' is not a Kaggle competition (its definition has no kaggle_slug); "
                          f"Kaggle competitions here: {', '.join(on_kaggle)}")
    return slug


def _first(sub, names: tuple):
    for name in names:
        value = sub.get(name) if isinstance(sub, Mapping) else getattr(sub, name, None)
        if value is not None and value != "":
            return value
    return None


def _score(value) -> Optional[float]:
    # pending or failed submissions carry '' or None; an unparsable score is no score
    try:
        return None if value is None or str(value).strip() == "" else float(value)
    except ValueError:
        return None


def _status(value) -> str:
    # 2.x: SubmissionStatus.COMPLETE (an enum); 1.x: 'complete' or 'SubmissionStatus.COMPLETE'
    text = getattr(value, "name", None) or ("" if value is None else str(value))
    return text.rsplit(".", 1)[-1].lower()


def normalise_submission(sub) -> dict:
    """One Kaggle submission (object or dict; 1.x camelCase or 2.x snake_case fields) as a dict with
    SUBMISSION_FIELDS: scores are floats or None (pending, failed), status lower case, date an ISO string."""
    date = _first(sub, ("date", "submitted_at", "dateSubmitted"))
    if isinstance(date, datetime):
        date = date.isoformat(timespec="seconds")
    return {"file_name": str(_first(sub, ("file_name", "fileName")) or ""),
            "description": str(_first(sub, ("description",)) or "").strip(),
            "date": "" if date is None else str(date),
            "status": _status(_first(sub, ("status",))),
            "public_score": _score(_first(sub, ("public_score", "publicScore"))),
            "private_score": _score(_first(sub, ("private_score", "privateScore")))}


def _unzip(archive: Path, dest: Path) -> list:
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for name in names:
                if not (root / name).resolve().is_relative_to(root):
                    raise KaggleError(f"{archive} holds a path outside {dest}: {name!r}; not extracted")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise KaggleError(f"{archive} is not a zip archive ({exc}); delete it and download again") from exc
    return names


def download_competition(competition: str, dest: Optional[Path] = None, client: Optional[KaggleClient] = None) -> str:
    """Download a Kaggle competition's files into dest (default data/<competition>), unzip them there and
    check them against the competition definition. Returns a printable summary."""
    from pipeline.config import DataConfig
    from pipeline.data import load_competition_data

    slug = kaggle_slug(competition)
    dest = Path(dest) if dest else Path("data") / competition
    dest.mkdir(parents=True, exist_ok=True)
    (client or get_client()).download(slug, dest)
    archive = dest / f"{slug}.zip"
    names = []
    if archive.is_file():
        names = _unzip(archive, dest)
        archive.unlink()  # as `kaggle competitions download --unzip` does
    data = load_competition_data(DataConfig(competition=competition), str(dest))
    shown = f"{len(names)} files unzipped" if names else "no archive to unzip"
    return (f"downloaded {slug} into {dest} ({shown}); checked against the definition: {len(data.train)} "
            f"training rows, {len(data.test)} test rows, {len(data.label_cols)} labels ({', '.join(data.label_cols)})")


if __name__ == "__main__":
    import sys

    from pipeline.cli import kaggle_main

    sys.exit(kaggle_main())
