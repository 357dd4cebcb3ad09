"""Balanced single-label subsets of a multilabel corpus (GoEmotions), drawn once with a seed and saved.

Rows carrying exactly one label (`neutral` excluded) form each class's pool; the K classes are the K most
frequent on the training split. A subset `k{K}-n{N}` holds N/K training rows per class and a hold-out set
with the same number of rows per class from the corpus's own test split. Each class's pool is shuffled by
(seed, class) alone, so the rows of a smaller N are the first rows of a larger N (and shared by every K
that has that class): trends along N and K are not noise from a different draw.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.io import atomic_write_csv, atomic_write_json, atomic_write_text

EXCLUDED = ("neutral",)  # a class meaning "no emotion" is not an emotion to tell apart
SPLITS = ("train", "validation", "test")


def subset_name(k: int, n: int) -> str:
    return f"k{k}-n{n}"


def read_single_label(source: Path, split: str) -> pd.DataFrame:
    """Rows of `<source>/<split>.csv` with exactly one label, excluded classes dropped.

    Returns a frame with columns id, text, label (the class name), sorted by id so the draw does not
    depend on the file's row order, and the split's label columns in file order as `frame.attrs["labels"]`.
    """
    path = Path(source) / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"{path} does not exist; the source folder needs {', '.join(s + '.csv' for s in SPLITS)} "
                        f"(columns id, text and one 0/1 column per label)")
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    missing = [c for c in ("id", "text") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing columns {missing}; found: {', '.join(frame.columns)}")
    labels = [c for c in frame.columns if c not in ("id", "text")]
    values = frame[labels].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in labels if not values[c].isin([0, 1]).all()]
    if not labels or bad:
        raise DataError(f"{path}: label columns must contain only 0/1; bad columns: {bad or 'none found'}")
    single = values.sum(axis=1) == 1
    keep = [c for c in labels if c not in EXCLUDED]
    rows = single & (values[keep].sum(axis=1) == 1)
    out = pd.DataFrame({"id": frame.loc[rows, "id"], "text": frame.loc[rows, "text"],
                        "label": values.loc[rows, keep].idxmax(axis=1)})
    out = out.sort_values("id", kind="stable").reset_index(drop=True)
    out.attrs["labels"] = keep
    return out


def top_classes(train: pd.DataFrame, k: int) -> list[str]:
    """The k most frequent classes of `train` (ties broken by the file's label order)."""
    order = {name: i for i, name in enumerate(train.attrs.get("labels", sorted(train["label"].unique())))}
    counts = train["label"].value_counts()
    ranked = sorted(counts.index, key=lambda c: (-counts[c], order.get(c, len(order))))
    return ranked[:k]


def _shuffled(pool: pd.DataFrame, seed: int, name: str, split: str) -> pd.DataFrame:
    """One class's rows in an order fixed by (seed, class, split) only: prefixes nest."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{split}:{name}".encode())])
    return pool.iloc[rng.permutation(len(pool))]


@dataclass
class SubsetPlan:
    """What one subset will hold; `spec()` is what a saved subset must match to be reused."""
    k: int
    n: int
    seed: int
    classes: list
    holdout_per_class: int
    holdout_cap: int
    train_splits: list
    available: dict  # class -> {"train": rows in the training pool, "test": rows in the test split}

    @property
    def name(self) -> str:
        return subset_name(self.k, self.n)

    def spec(self) -> dict:
        per_class = self.n // self.k
        return {"name": self.name, "seed": self.seed, "k": self.k, "n": self.n, "classes": self.classes,
                "train_per_class": {c: per_class for c in self.classes},
                "holdout_per_class": {c: self.holdout_per_class for c in self.classes},
                "holdout_rows": self.holdout_per_class * self.k, "holdout_cap": self.holdout_cap,
                "train_splits": self.train_splits, "holdout_split": "test", "available": self.available,
                "rule": f"rows with exactly one label, {', '.join(EXCLUDED)} excluded; classes: the {self.k} most "
                        f"frequent on the train split; balanced; drawn per class with the seed"}


def plan_subsets(source: Path, ks: list, ns: list, seed: int, holdout_cap: int = 200,
                 train_splits: tuple = ("train",)) -> tuple[dict, dict]:
    """Plans for every (K, N), checked before anything is drawn; refuses a class that cannot supply N/K rows.

    Returns (plans by subset name, pools: {"train": frame, "test": frame}).
    """
    frames = {split: read_single_label(source, split) for split in set(train_splits) | {"train", "test"}}
    ranked_on = frames["train"]
    pool = pd.concat([frames[s] for s in train_splits], ignore_index=True)
    pool = pool.sort_values("id", kind="stable").reset_index(drop=True)
    dupes = pool["id"][pool["id"].duplicated()]
    if len(dupes):
        raise DataError(f"{source}: ids repeat across {', '.join(train_splits)} (first: {dupes.iloc[0]})")
    test = frames["test"]
    problems, plans = [], {}
    n_classes = ranked_on["label"].nunique()
    for k in ks:
        if k > n_classes:
            problems.append(f"classes {k}: only {n_classes} classes have single-label rows in {source}/train.csv")
            continue
        classes = top_classes(ranked_on, k)
        available = {c: {"train": int((pool["label"] == c).sum()), "test": int((test["label"] == c).sum())}
                     for c in classes}
        rarest = min(classes, key=lambda c: available[c]["test"])
        holdout = min(holdout_cap, available[rarest]["test"])
        if holdout < 1:
            problems.append(f"classes {k}: class '{rarest}' has no single-label rows in {source}/test.csv")
        for n in ns:
            short = [f"'{c}' has {available[c]['train']}" for c in classes if available[c]["train"] < n // k]
            if short:
                problems.append(f"{subset_name(k, n)} needs {n // k} training rows per class but "
                                f"{', '.join(short)} single-label rows in {'+'.join(train_splits)}")
            plans[subset_name(k, n)] = SubsetPlan(k, n, seed, classes, holdout, holdout_cap, list(train_splits),
                                                  available)
    if problems:
        raise DataError("cannot draw the subsets: " + "; ".join(problems))
    return plans, {"train": pool, "test": test}


def _draw(plan: SubsetPlan, pools: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(plan.seed)
    parts = {"train": [], "test": []}
    for split, per_class in (("train", plan.n // plan.k), ("test", plan.holdout_per_class)):
        frame = pools[split]
        for c in plan.classes:
            parts[split].append(_shuffled(frame[frame["label"] == c], plan.seed, c, split).head(per_class))
    out = []
    for split in ("train", "test"):
        rows = pd.concat(parts[split], ignore_index=True)
        out.append(rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)[["id", "text", "label"]])
    return out[0], out[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_subset(plan: SubsetPlan, pools: dict, folder: Path, source: Path) -> bool:
    """Draw and write `folder/{train,test}.csv` and `subset.json` (last: it marks a finished subset).

    An existing subset with the same spec and intact files is kept; one made differently is refused.
    Returns True when it drew anew.
    """
    folder = Path(folder)
    meta_path = folder / "subset.json"
    spec = plan.spec()
    if meta_path.is_file():
        saved = json.loads(meta_path.read_text(encoding="utf-8"))
        old = {k: v for k, v in saved.items() if k not in ("files", "source")}
        if old != spec:
            changed = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise DataError(f"{folder} holds a subset drawn differently (differs in: {', '.join(changed)}); "
                            f"delete that folder or use another study directory")
        files = saved.get("files", {})
        if all((folder / f).is_file() and _digest(folder / f) == files.get(f) for f in ("train.csv", "test.csv")):
            return False
    train, test = _draw(plan, pools)
    atomic_write_csv(folder / "train.csv", train)
    atomic_write_csv(folder / "test.csv", test)
    atomic_write_json(meta_path, {**spec, "source": str(source),
                                  "files": {f: _digest(folder / f) for f in ("train.csv", "test.csv")}})
    return True


def write_readme(data_root: Path) -> None:
    """`data_root/README.md`: one line per saved subset with its classes and hold-out size."""
    lines = ["# Study data subsets", "",
             "Each folder holds `train.csv` and `test.csv` (columns id, text, label; test.csv is the labelled "
             "hold-out) and `subset.json` (seed, classes, per-class counts, source).", "",
             "| subset | K | train rows | per class | hold-out rows | hold-out per class | classes |",
             "|---|---|---|---|---|---|---|"]
    metas = [json.loads(p.read_text(encoding="utf-8")) for p in Path(data_root).glob("*/subset.json")]
    for m in sorted(metas, key=lambda m: (m["k"], m["n"])):
        per_class = m["n"] // m["k"]
        hold = next(iter(m["holdout_per_class"].values()))
        lines.append(f"| {m['name']} | {m['k']} | {m['n']} | {per_class} | {m['holdout_rows']} | {hold} "
                     f"(cap {m['holdout_cap']}) | {', '.join(m['classes'])} |")
    if metas:
        m = metas[0]
        lines += ["", f"Source: `{m['source']}` (training rows from {'+'.join(m['train_splits'])}, hold-out from "
                      f"{m['holdout_split']}); seed {m['seed']}. Hold-out per class: as many as the rarest of the "
                      f"K classes has in the test split, capped."]
    atomic_write_text(Path(data_root) / "README.md", "\n".join(lines) + "\n")


def build_subsets(source: Path, data_root: Path, ks: list, ns: list, seed: int, holdout_cap: int = 200,
                  train_splits: tuple = ("train",), only: Optional[set] = None) -> dict:
    """Make (or reuse) the subsets `k{K}-n{N}` under data_root; `only` limits them to these names.

    Returns {subset name: folder}.
    """
    plans, pools = plan_subsets(Path(source), ks, ns, seed, holdout_cap, tuple(train_splits))
    folders = {}
    for name, plan in plans.items():
        if only is not None and name not in only:
            continue
        folders[name] = Path(data_root) / name
        write_subset(plan, pools, folders[name], Path(source))
    write_readme(data_root)
    return folders
