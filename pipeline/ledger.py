"""The submission ledger: one row per submission file written, later joined to its Kaggle scores.

`ledger.csv` sits beside the submission files. Every change is a read-modify-write under a file lock,
written atomically, so two processes appending at once never lose a row and a crash never leaves half a file.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.html import esc, img, new_figure, page, section, table
from pipeline.io import atomic_write_csv, atomic_write_text

COLUMNS = ["time", "competition", "file", "sha256", "runs", "weights", "metric", "oof_tuned", "oof_cv", "fold_std",
           "message", "kaggle_status", "kaggle_date", "public_score", "private_score"]
SCORES = ["oof_tuned", "oof_cv", "fold_std", "public_score", "private_score"]
LOCK_TIMEOUT = 60  # seconds a writer waits for another one before giving up
GAP_RECENT = 3  # the latest scored submissions whose CV-leaderboard gap is compared with the earlier ones'
GAP_MARGIN = 0.01  # metric points by which the latest mean gap may exceed the earlier mean gap before a flag


def ledger_path(submission: Path) -> Path:
    """The ledger of a submission file: `ledger.csv` in the same folder."""
    return Path(submission).parent / "ledger.csv"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes: tells two submissions with one file name apart."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.6f}"
    return str(value)


def read_ledger(path: Path) -> pd.DataFrame:
    """The ledger as strings (empty cells are ''); an empty frame with COLUMNS when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS, dtype=str)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing ledger columns {missing}; found: {', '.join(frame.columns)}")
    return frame


@contextmanager
def _locked(path: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise DataError(f"{path} stayed locked for {LOCK_TIMEOUT} s by another process ({lock.lock_file}); "
                        f"retry, or delete the lock file if no other make_submission.py is running") from exc


def _update(path: Path, change) -> pd.DataFrame:
    """Read, change (frame -> frame) and write back the ledger atomically, holding its lock throughout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        frame = change(read_ledger(path))
        atomic_write_csv(path, frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]])
    return frame


def append_row(path: Path, row: dict) -> None:
    """Add one row (keys from COLUMNS; missing ones stay empty) at the end of the ledger."""
    unknown = sorted(set(row) - set(COLUMNS))
    assert not unknown, unknown
    new = pd.DataFrame([{c: _cell(row.get(c)) for c in COLUMNS}], dtype=str)
    _update(path, lambda frame: pd.concat([frame, new], ignore_index=True))


def record_submission(out: Path, competition: str, metric: str, summary: dict, fold_scores: list) -> dict:
    """Append the ledger row of a submission file just written by make_submission.

    summary: the `<out>.json` dict (runs, weights, ensemble scores); fold_scores: the ensemble's metric per
    fold with the tuned rule, whose std is the row's fold_std."""
    row = {"time": datetime.now().isoformat(timespec="seconds"), "competition": competition,
           "file": Path(out).name, "sha256": sha256_of(out),
           "runs": "+".join(Path(r).name for r in summary["runs"]),
           "weights": " ".join(f"{w:.4g}" for w in summary["weights"]), "metric": metric,
           "oof_tuned": summary["ensemble"][f"{metric}_tuned"], "oof_cv": summary["ensemble"][f"{metric}_cv"],
           "fold_std": float(np.std(fold_scores))}
    append_row(ledger_path(out), row)
    return row


def submit_to_kaggle(out: Path, message: str, client) -> str:
    """Upload a submission file written by make_submission, its run names and cross-validated OOF score
    appended to message, and record the message in its ledger row. Returns a printable line."""
    from pipeline.kaggle import kaggle_slug

    out = Path(out)
    path, sha = ledger_path(out), sha256_of(out)
    frame = read_ledger(path)
    rows = frame.index[(frame["file"] == out.name) & (frame["sha256"] == sha)]
    if not len(rows):
        raise DataError(f"{out} has no row in {path} (or the file changed since); write it with make_submission.py")
    row = frame.loc[rows[-1]].to_dict()
    slug = kaggle_slug(row["competition"])
    full = f"{message} | runs {row['runs']} | CV {row['metric']} {float(row['oof_cv']):.4f}"
    reply = client.submit(slug, out, full)

    def add_message(ledger):
        hits = ledger.index[(ledger["file"] == out.name) & (ledger["sha256"] == sha)]
        target = hits[-1] if len(hits) else None
        if target is None or ledger.at[target, "message"]:  # the same file submitted again: a row of its own
            new = dict(row, time=datetime.now().isoformat(timespec="seconds"), public_score="", private_score="",
                       kaggle_date="")
            ledger = pd.concat([ledger, pd.DataFrame([new], dtype=str)], ignore_index=True)
            target = ledger.index[-1]
        ledger.loc[target, ["message", "kaggle_status"]] = [full, "submitted"]
        return ledger

    _update(path, add_message)
    return f"submitted {out} to {slug} with message {full!r}; Kaggle: {reply or 'ok'} (scores: --leaderboard)"


def join_submissions(frame: pd.DataFrame, competition: str, subs: list) -> tuple:
    """Fill public/private scores, status and date of ledger rows from Kaggle submissions, matched by
    competition, file name and description (the message). Each Kaggle submission fills at most one row,
    oldest first into the earliest unmatched row; the ones the ledger lacks are returned, not added.

    subs: normalised submission dicts (pipeline.kaggle.normalise_submission). Returns (frame, unmatched)."""
    frame = frame.copy()
    taken = set()
    unmatched = []
    for sub in sorted(subs, key=lambda s: s["date"]):
        hits = [i for i in frame.index[(frame["competition"] == competition) & (frame["file"] == sub["file_name"])
                                       & (frame["message"].str.strip() == sub["description"])] if i not in taken]
        if not hits:
            unmatched.append(sub)
            continue
        taken.add(hits[0])
        frame.loc[hits[0], ["kaggle_status", "kaggle_date", "public_score", "private_score"]] = [
            sub["status"], sub["date"], _cell(sub["public_score"]), _cell(sub["private_score"])]
    return frame, unmatched


def fetch_leaderboard(path: Path, client, competition: Optional[str] = None) -> str:
    """Fetch the account's Kaggle submissions for each Kaggle competition in the ledger (or the one given),
    join them into the ledger and save it. Returns a printable report of what matched."""
    from competition import COMPETITIONS
    from pipeline.errors import KaggleError
    from pipeline.kaggle import kaggle_slug, normalise_submission

    path = Path(path)
    frame = read_ledger(path)
    found = sorted(set(frame["competition"]) - {""})
    # rows of competitions that are not on Kaggle (e.g. dair-emotion) have nothing to fetch
    names = [competition] if competition else [n for n in found if n in COMPETITIONS and COMPETITIONS[n].kaggle_slug]
    if not names:
        raise KaggleError(f"{path} has no submission to a Kaggle competition (found: {', '.join(found) or 'no rows'}); "
                          f"pass --competition or write a submission first")
    lines = []
    for name in names:
        slug = kaggle_slug(name)
        subs = [normalise_submission(s) for s in client.submissions(slug)]
        result = {}

        def join(ledger, name=name, subs=subs, result=result):
            joined, result["unmatched"] = join_submissions(ledger, name, subs)
            return joined

        _update(path, join)
        unmatched = result["unmatched"]
        lines.append(f"{slug}: {len(subs)} Kaggle submissions, {len(subs) - len(unmatched)} joined to {path}")
        for sub in unmatched:
            lines.append(f"  not in the ledger (left out): {sub['file_name']} {sub['description']!r} {sub['date']} "
                         f"public {_cell(sub['public_score']) or '-'}")
    return "\n".join(lines)


def _numbers(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col].replace("", np.nan), errors="coerce").to_numpy(dtype=float)


def _short(value: str, width: int) -> str:
    return value if len(value) <= width else value[:width - 3] + "..."


def _rows(frame: pd.DataFrame) -> list:
    def show(v):
        return "-" if v == "" else f"{float(v):.4f}"

    return [[str(i + 1), r["time"][:16].replace("T", " "), r["file"], r["runs"], show(r["oof_cv"]),
             show(r["fold_std"]), show(r["oof_tuned"]), show(r["public_score"]), show(r["private_score"]),
             r["kaggle_status"] or "-", r["message"] or "-"] for i, (_, r) in enumerate(frame.iterrows())]


HEADER = ["#", "time", "file", "runs", "CV", "fold std", "tuned", "public", "private", "status", "message"]


def format_ledger(frame: pd.DataFrame, path: Path) -> str:
    """The ledger as a fixed-width text table (long file names, runs and messages shortened)."""
    if frame.empty:
        return f"{path}: no submissions recorded yet"
    rows = [[_short(v, 40) if j in (2, 3, 10) else v for j, v in enumerate(r)] for r in _rows(frame)]
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    lines = [f"{path} ({len(frame)} submissions; CV = cross-validated OOF {frame['metric'].iloc[-1]})"]
    for r in [HEADER] + rows:
        lines.append("  ".join(str(v).ljust(w) if j in (1, 2, 3, 9, 10) else str(v).rjust(w)
                               for j, (v, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def gap_trend(cv: np.ndarray, public: np.ndarray) -> Optional[dict]:
    """Whether |CV - public| widens: the mean gap of the latest min(GAP_RECENT, n // 2) scored submissions
    against the mean gap of the earlier ones, flagged past GAP_MARGIN. cv, public: (n,) in ledger order;
    None with fewer than 4."""
    gaps = np.abs(np.asarray(cv, float) - np.asarray(public, float))
    if len(gaps) < 4:
        return None
    k = min(GAP_RECENT, len(gaps) // 2)
    recent, earlier = float(gaps[-k:].mean()), float(gaps[:-k].mean())
    return {"n_recent": k, "recent_gap": recent, "earlier_gap": earlier, "widening": recent - earlier > GAP_MARGIN}


def cv_leaderboard_figure(cv: np.ndarray, cv_std: np.ndarray, public: np.ndarray, names: list, metric: str):
    """Scatter of the public score (y) against the cross-validated OOF score (x) with fold-std error bars.
    cv, cv_std, public: (n,); names: n point labels."""
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    ax.errorbar(cv, public, xerr=np.nan_to_num(cv_std), fmt="o", capsize=3, color="#1f77b4")
    for x, y, name in zip(cv, public, names):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    lo, hi = float(min(cv.min(), public.min())), float(max(cv.max(), public.max()))
    pad = max(hi - lo, 0.01) * 0.1
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", lw=1, color="grey", label="CV = public")
    ax.set_xlabel(f"cross-validated OOF {metric} (bars: ± fold std)")
    ax.set_ylabel(f"public leaderboard {metric}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def ledger_page(frame: pd.DataFrame) -> str:
    """A self-contained HTML page: CV against leaderboard scatter, correlation, gap trend, the ledger."""
    metric = frame["metric"].iloc[-1] if len(frame) else "score"
    cv, std, public = _numbers(frame, "oof_cv"), _numbers(frame, "fold_std"), _numbers(frame, "public_score")
    scored = ~np.isnan(cv) & ~np.isnan(public)
    n = int(scored.sum())
    names = [str(i + 1) for i in np.flatnonzero(scored)]
    parts = []
    if n:
        parts.append(img(cv_leaderboard_figure(cv[scored], std[scored], public[scored], names, metric),
                         "public leaderboard score against cross-validated OOF score"))
    else:
        parts.append("<p class=muted>No submission has a public score yet: submit with --submit, then fetch the "
                     "scores with --leaderboard.</p>")
    if n >= 3:
        r = np.corrcoef(cv[scored], public[scored])[0, 1] if np.std(cv[scored]) and np.std(public[scored]) else np.nan
        shown = "undefined (one of the scores is constant)" if np.isnan(r) else f"{r:.3f}"
        parts.append(f"<p>Pearson correlation of CV and public score over {n} submissions: <b>{esc(shown)}</b></p>")
    else:
        parts.append(f"<p class=muted>Pearson correlation: needs at least 3 scored submissions ({n} so far).</p>")
    rule = (f"Rule: flagged when the mean |CV - public| of the latest min({GAP_RECENT}, n/2) scored submissions "
            f"exceeds the mean of the earlier ones by more than {GAP_MARGIN} (needs at least 4 scored).")
    trend = gap_trend(cv[scored], public[scored])
    if trend is None:
        parts.append(f"<p class=muted>Gap trend: not enough scored submissions. {esc(rule)}</p>")
    else:
        said = (f"latest {trend['n_recent']}: mean |CV - public| {trend['recent_gap']:.4f}; earlier: "
                f"{trend['earlier_gap']:.4f}")
        if trend["widening"]:
            parts.append(f"<p class=flag>The gap between CV and leaderboard is widening ({esc(said)}): recent changes "
                         f"may fit the folds rather than the test set. {esc(rule)}</p>")
        else:
            parts.append(f"<p>Gap not widening ({esc(said)}). {esc(rule)}</p>")
    body = section("CV against the leaderboard", "each point is one scored submission, numbered as in the ledger; "
                   "points on the dashed line score on the public leaderboard what cross-validation predicted",
                   "".join(parts), anchor="scatter")
    body += section("Ledger", "one row per submission file written; CV is cross-validated OOF (weights and rule "
                    "fitted on the other folds), tuned is fitted on all of OOF (optimistic)",
                    table(HEADER, _rows(frame), text_cols=(1, 2, 3, 9, 10)), anchor="ledger")
    return page("Submission ledger", body)


def show_ledger(path: Path, write_html: bool = True) -> str:
    """The ledger as a text table; with write_html also `ledger.html` beside it. Returns printable text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no ledger at {path}: make_submission.py writes one with each submission")
    frame = read_ledger(path)
    text = format_ledger(frame, path)
    if write_html:
        html_path = path.with_suffix(".html")
        atomic_write_text(html_path, ledger_page(frame))
        text += f"\nwrote {html_path}"
    return text
