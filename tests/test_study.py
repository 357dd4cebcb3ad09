"""The study grid: subsets (single-label, top-K, balanced, nested, reproducible), the study YAML, the cell
runner (failures, --cell), the table and heatmap from finished runs, and a killed study that resumes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import study as study_mod
from pipeline.cli import study_main
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.study import (Cell, StudyModel, heatmap_png, load_study, parse_study, run_study,
                            select_cells, study_cells, write_outputs)
from pipeline.subsets import build_subsets

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# single-label rows per class in the fake train split: the order of frequency is the order here
TRAIN_COUNTS = {"admiration": 40, "amusement": 34, "anger": 28, "joy": 22, "sadness": 6}
TEST_COUNTS = {"admiration": 9, "amusement": 7, "anger": 5, "joy": 4, "sadness": 3}
LABELS = ["amusement", "admiration", "anger", "joy", "sadness", "neutral"]  # file order differs from frequency
CUES = {"admiration": "great", "amusement": "lol", "anger": "furious", "joy": "happy", "sadness": "sad",
        "neutral": "okay"}


def make_goemotions(folder: Path, seed: int = 0) -> Path:
    """A GoEmotions-like folder: id, text, 0/1 label columns; single-label rows per class as counted above,
    plus neutral rows and rows with two emotions (both must never be drawn)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, counts in (("train", TRAIN_COUNTS), ("validation", {c: 3 for c in TRAIN_COUNTS}),
                          ("test", TEST_COUNTS)):
        rows = []
        for label, n in {**counts, "neutral": 10}.items():
            rows += [[label] for _ in range(n)]
        rows += [["admiration", "joy"] for _ in range(5)] + [["anger", "neutral"] for _ in range(3)]
        rng.shuffle(rows)
        frame = pd.DataFrame({"id": [f"{split[:2]}{i:04d}" for i in range(len(rows))],
                              "text": [" ".join(CUES[c] for c in r) + f" words {rng.integers(1000)}" for r in rows]})
        for label in LABELS:
            frame[label] = [int(label in r) for r in rows]
        frame.to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    return make_goemotions(tmp_path / "goemotions")


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name, dtype={"id": str}, keep_default_na=False)


# ---- subsets -------------------------------------------------------------------------------------------

def test_subsets_are_single_label_top_k_balanced_with_a_balanced_holdout(tmp_path, source):
    folders = build_subsets(source, tmp_path / "data", [2, 4], [8, 16], seed=0, holdout_cap=5)
    assert sorted(folders) == ["k2-n16", "k2-n8", "k4-n16", "k4-n8"]
    raw = pd.read_csv(source / "train.csv", dtype={"id": str}).set_index("id")
    raw_test = pd.read_csv(source / "test.csv", dtype={"id": str}).set_index("id")
    for name, folder in folders.items():
        k, n = (int(x[1:]) for x in name.split("-"))
        train, test = _read(folder, "train.csv"), _read(folder, "test.csv")
        assert list(train.columns) == list(test.columns) == ["id", "text", "label"]
        top = ["admiration", "amusement", "anger", "joy"][:k]  # by train frequency, not file order
        assert sorted(train["label"].unique()) == sorted(top)
        assert train["label"].value_counts().to_dict() == {c: n // k for c in top}
        # hold-out: the same number per class, as many as the rarest class has in test, capped at 5
        per_class = min(5, min(TEST_COUNTS[c] for c in top))
        assert test["label"].value_counts().to_dict() == {c: per_class for c in top}
        for frame, origin in ((train, raw), (test, raw_test)):
            rows = origin.loc[frame["id"]]
            assert (rows[LABELS].sum(axis=1) == 1).all() and (rows["neutral"] == 0).all()  # one emotion, never neutral
            assert (rows[LABELS].idxmax(axis=1).to_numpy() == frame["label"].to_numpy()).all()
            assert frame["id"].is_unique
        meta = json.loads((folder / "subset.json").read_text())
        assert meta["seed"] == 0 and meta["k"] == k and meta["n"] == n and meta["classes"] == top
        assert meta["train_per_class"] == {c: n // k for c in top} and meta["holdout_rows"] == per_class * k
        assert meta["source"] == str(source)
    readme = (tmp_path / "data" / "README.md").read_text()
    assert "| k4-n16 | 4 | 16 | 4 | 16 | 4 (cap 5) |" in readme


def test_smaller_subsets_nest_in_larger_ones(tmp_path, source):
    folders = build_subsets(source, tmp_path / "data", [2, 4], [8, 16], seed=3, holdout_cap=5)
    ids = {name: set(_read(folder, "train.csv")["id"]) for name, folder in folders.items()}
    assert ids["k2-n8"] < ids["k2-n16"] and ids["k4-n8"] < ids["k4-n16"]
    k4 = _read(folders["k4-n16"], "train.csv")
    assert ids["k2-n8"] <= set(k4["id"])  # a class keeps its rows when more classes join
    hold = {name: set(_read(folder, "test.csv")["id"]) for name, folder in folders.items()}
    assert hold["k2-n8"] == hold["k2-n16"]  # one hold-out per K, whatever N


def test_same_seed_same_files_other_seed_other_rows_and_saved_subsets_are_reused(tmp_path, source):
    a = build_subsets(source, tmp_path / "a", [2], [16], seed=1, holdout_cap=5)["k2-n16"]
    b = build_subsets(source, tmp_path / "b", [2], [16], seed=1, holdout_cap=5)["k2-n16"]
    c = build_subsets(source, tmp_path / "c", [2], [16], seed=2, holdout_cap=5)["k2-n16"]
    for name in ("train.csv", "test.csv", "subset.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert set(_read(a, "train.csv")["id"]) != set(_read(c, "train.csv")["id"])
    stamp = (a / "train.csv").stat().st_mtime_ns
    build_subsets(source, tmp_path / "a", [2], [16], seed=1, holdout_cap=5)
    assert (a / "train.csv").stat().st_mtime_ns == stamp  # reused, not redrawn
    with pytest.raises(DataError, match=r"k2-n16 holds a subset drawn differently \(differs in: seed\)"):
        build_subsets(source, tmp_path / "a", [2], [16], seed=2, holdout_cap=5)


def test_a_class_too_small_for_n_over_k_is_refused_by_name(tmp_path, source):
    with pytest.raises(DataError, match=r"k4-n100 needs 25 training rows per class but 'joy' has 22 "
                                        r"single-label rows in train"):
        build_subsets(source, tmp_path / "data", [4], [100], seed=0)
    assert not (tmp_path / "data").exists()  # checked before anything is drawn
    # adding the validation split to the pool gives joy 25 rows: enough
    folders = build_subsets(source, tmp_path / "data", [4], [100], seed=0, train_splits=("train", "validation"))
    assert _read(folders["k4-n100"], "train.csv")["label"].value_counts().min() == 25


# ---- the study YAML --------------------------------------------------------------------------------------

def _raw(**changes) -> dict:
    raw = {"name": "grid", "source": "src", "classes": [2, 4], "train_rows": [8, 16], "folds": 2,
           "models": ["tfidf-lr", {"name": "tiny", "preset": "tiny-encoder", "set": ["train.max_steps=2"]}]}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def test_a_study_yaml_parses_into_cells():
    study = parse_study(_raw(set=["thresholds.n_trials=5"]))
    assert [m.name for m in study.models] == ["tfidf-lr", "tiny"]
    assert study.models[1] == StudyModel("tiny", "tiny-encoder", ("train.max_steps=2",))
    names = [c.name for c in study_cells(study)]
    assert names[:2] == ["tfidf-lr__k2-n8", "tfidf-lr__k2-n16"] and len(names) == 8 and names[-1] == "tiny__k4-n16"
    cells = study_cells(study)
    assert [c.name for c in select_cells(cells, ["tiny__k2-*", "0"])] == ["tfidf-lr__k2-n8", "tiny__k2-n8",
                                                                          "tiny__k2-n16"]
    with pytest.raises(ConfigError, match="no cell matches 'tiny__k2-n9'; did you mean 'tiny__k2-n8'"):
        select_cells(cells, ["tiny__k2-n9"])
    with pytest.raises(ConfigError, match="cell index 8 is out of range"):
        select_cells(cells, ["8"])
    overrides = study_mod.cell_overrides(study, cells[-1], Path("d"))
    assert overrides[:5] == ["data.competition=goemotions-subset", "data.data_dir=d", "model.preset=tiny-encoder",
                             "cv.n_folds=2", "cv.seed=42"]
    assert overrides[5:] == ["thresholds.n_trials=5", "train.max_steps=2"]  # the model's own come last


@pytest.mark.parametrize("changes, message", [
    ({"model": ["x"]}, "unknown study key 'model'; did you mean 'models'?"),
    ({"train_rows": [8, 10]}, "train_rows 10 is not divisible by classes 4"),
    ({"classes": [1]}, "classes must be a non-empty list of integers >= 2"),
    ({"models": [{"preset": "tfidf-lr", "sett": []}]}, "models[0]: unknown key 'sett'; did you mean 'set'?"),
    ({"models": ["tfidf-lr", "tfidf-lr"]}, "model name 'tfidf-lr' appears twice"),
    ({"models": []}, "models must be a non-empty list"),
    ({"set": ["train.lr"]}, "set must be a list of 'section.key=value' strings"),
    ({"folds": 5}, "k4-n8 has 2 rows per class, fewer than folds 5"),
    ({"name": None}, "name is required"),
    ({"train_splits": ["test"]}, "train_splits must be a non-empty list from [train, validation]"),
])
def test_bad_study_yaml_names_the_key(changes, message):
    with pytest.raises(ConfigError) as info:
        parse_study(_raw(**changes))
    assert message in str(info.value)


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert study_main(["--config", "missing.yaml"]) == 2
    (tmp_path / "s.yaml").write_text("name: s\nmodels: [tfidf-lr]\nclases: [2]\n")
    assert study_main(["--config", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: study config missing.yaml does not exist",
                   f"error: {tmp_path / 's.yaml'}: unknown study key 'clases'; did you mean 'classes'?; valid keys: "
                   "name, models, source, seed, classes, train_rows, folds, set, holdout_per_class, train_splits"]


def test_the_shipped_goemotions_grid_loads():
    study = load_study(ROOT / "configs" / "studies" / "goemotions-grid.yaml")
    assert study.classes == [2, 4, 8, 16] and study.train_rows == [800, 1600, 2400]
    assert [m.preset for m in study.models] == ["minilm-l6", "tfidf-lr", "smollm2-135m"]
    assert [m.name for m in study.models][-1] == "smollm2-lora" and len(study_cells(study)) == 36
    assert study.models[-1].overrides == ("train.epochs=2",)  # what docs/BENCHMARKS.md's smollm2 cells ran with


# ---- table and heatmap from finished runs ------------------------------------------------------------------

def fake_report(acc: float) -> dict:
    return {"headline": {"metric": "macro_f1", "untuned": acc - 0.05, "tuned": acc - 0.03, "cv": acc - 0.04},
            "holdout_test": {"n_rows": 10, "metric": "macro_f1",
                             "untuned": {"accuracy": acc, "macro_f1": acc - 0.01},
                             "tuned": {"accuracy": acc + 0.01, "macro_f1": acc}},
            "timing": {"wall_seconds": 12.5, "train_seconds": 10.0}}


def test_table_and_heatmap_from_finished_runs_show_missing_cells(tmp_path, capsys):
    study = parse_study(_raw())
    study_dir = tmp_path / "studies" / "grid"
    cells = study_cells(study)
    accs = {}
    for i, cell in enumerate(cells[:5]):
        run_dir = study_mod.cell_run_dir(study_dir, cell)
        run_dir.mkdir(parents=True)
        accs[cell.name] = 0.9 - 0.1 * i
        (run_dir / "report.json").write_text(json.dumps(fake_report(accs[cell.name])))
    study_mod.cell_run_dir(study_dir, cells[5]).mkdir(parents=True)  # started, killed before the end
    frame = write_outputs(study, study_dir)
    csv = pd.read_csv(study_dir / "results.csv")
    assert len(csv) == len(frame) == 8 and list(csv["model"] + "__" + csv["data"]) == [c.name for c in cells]
    assert list(csv["status"]) == ["done"] * 5 + ["incomplete", "missing", "missing"]
    done = csv.iloc[:5]
    assert np.allclose(done["holdout_accuracy"], list(accs.values()))
    assert np.allclose(done["holdout_macro_f1"], done["holdout_accuracy"] - 0.01)
    assert np.allclose(done["oof_macro_f1_cv"], done["holdout_accuracy"] - 0.04)
    assert (done["wall_seconds"] == 12.5).all() and (done["train_seconds"] == 10.0).all()
    assert csv.iloc[5:][["holdout_accuracy", "oof_macro_f1_cv", "wall_seconds"]].isna().all().all()
    md = (study_dir / "results.md").read_text()
    assert "5 of 8 cells finished" in md
    assert "| tfidf-lr | 0.900 | 0.800 | 0.700 | 0.600 |" in md and "| tiny | 0.500 | - | - | - |" in md
    assert "| tiny | k2-n16 | 2 | 16 | incomplete | - | - |" in md
    png = (study_dir / "heatmap.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(study_dir / "heatmap.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert not list(study_dir.glob(".*.tmp"))  # atomic writes leave no temporaries
    # --list and --table-only read the same run directories, train nothing
    (tmp_path / "grid.yaml").write_text(json.dumps(_raw()))
    assert study_main(["--config", str(tmp_path / "grid.yaml"), "--study-dir", str(study_dir), "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8 and out[0].split() == ["0", "tfidf-lr__k2-n8", "done"] and out[7].endswith("missing")
    (study_dir / "results.csv").unlink()
    assert study_main(["--config", str(tmp_path / "grid.yaml"), "--study-dir", str(study_dir), "--table-only",
                       "--quiet"]) == 0
    assert len(pd.read_csv(study_dir / "results.csv")) == 8


def test_heatmap_of_an_all_missing_grid_is_a_png():
    png = heatmap_png(np.full((2, 3), np.nan), ["a", "b"], ["x", "y", "z"], "nothing yet")
    assert png.startswith(PNG_SIGNATURE)


# ---- the runner with a fake run function --------------------------------------------------------------------

class FakeRuns:
    """Stands in for run_cv: writes config.yaml and a report; raises for the cells named in `fail`."""

    def __init__(self, fail: dict = None):
        self.calls, self.fail = [], fail or {}

    def __call__(self, cfg, run_dir, quiet=False):
        from pipeline.config import save_config

        name = Path(run_dir).name
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        assert Path(cfg.data.data_dir, "train.csv").is_file() and cfg.cv.n_folds == 2
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(run_dir) / "config.yaml")
        (Path(run_dir) / "report.json").write_text(json.dumps(fake_report(0.5 + 0.1 * cfg.data.data_dir.count("k2"))))
        return run_dir


@pytest.fixture
def known_competition(monkeypatch):
    # the fake runs never read data through the competition: any registered one lets the configs validate
    from competition import COMPETITIONS

    if study_mod.COMPETITION not in COMPETITIONS:
        monkeypatch.setattr(study_mod, "COMPETITION", next(iter(COMPETITIONS)))


def test_failed_cells_are_logged_and_the_rest_still_run(tmp_path, source, known_competition, monkeypatch,
                                                       caplog):
    study = parse_study(_raw(source=str(source), classes=[2], train_rows=[8]))
    fake = FakeRuns({"tfidf-lr__k2-n8": PipelineError("train.csv has 2 duplicate ids"),
                     "tiny__k2-n8": RuntimeError("boom")})
    failed = run_study(study, tmp_path / "s", run_fn=fake, quiet=True)
    assert failed == ["tfidf-lr__k2-n8", "tiny__k2-n8"] and fake.calls == failed
    assert "cell tfidf-lr__k2-n8 failed: train.csv has 2 duplicate ids" in caplog.text
    assert "cell tiny__k2-n8 failed" in caplog.text and "RuntimeError: boom" in caplog.text  # with traceback
    assert (tmp_path / "s" / "results.csv").is_file()
    # through the command line: the other cells are reported and the exit status is non-zero
    monkeypatch.setattr("pipeline.cv.run_cv", FakeRuns({"tiny__k2-n8": RuntimeError("boom")}))
    (tmp_path / "grid.yaml").write_text(json.dumps(_raw(source=str(source), classes=[2], train_rows=[8])))
    assert study_main(["--config", str(tmp_path / "grid.yaml"), "--study-dir", str(tmp_path / "s"), "--quiet"]) == 1


def test_cell_flag_runs_only_those_cells_and_finished_cells_are_skipped(tmp_path, source, known_competition):
    study = parse_study(_raw(source=str(source)))
    fake = FakeRuns()
    cells = select_cells(study_cells(study), ["tiny__k4-*"])
    assert run_study(study, tmp_path / "s", cells, run_fn=fake, quiet=True) == []
    assert fake.calls == ["tiny__k4-n8", "tiny__k4-n16"]
    assert sorted(p.name for p in (tmp_path / "s" / "data").iterdir()) == ["README.md", "k4-n16", "k4-n8"]
    frame = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(frame["status"]).count("done") == 2
    run_study(study, tmp_path / "s", run_fn=fake, quiet=True)
    assert fake.calls[2:] == [c.name for c in study_cells(study) if not c.name.startswith("tiny__k4")]
    # a finished cell whose config changed is handed to the run function (which refuses or reruns it)
    changed = parse_study(_raw(source=str(source), set=["thresholds.n_trials=7"]))
    run_study(changed, tmp_path / "s", [study_cells(changed)[0]], run_fn=fake, quiet=True)
    assert fake.calls[-1] == "tfidf-lr__k2-n8"


# ---- a real study, killed after its first cell, resumed ---------------------------------------------------------

HAS_SUBSET_COMPETITION = importlib.util.find_spec("competition.goemotions_subset") is not None


@pytest.mark.skipif(not HAS_SUBSET_COMPETITION, reason="needs competition/goemotions_subset.py (the "
                    "'goemotions-subset' multiclass competition), which is not in the repository yet")
def test_a_killed_study_resumes_without_recomputing_finished_cells(tmp_path, source, monkeypatch):
    from pipeline.cv import run_cv

    (tmp_path / "grid.yaml").write_text(json.dumps({
        "name": "tiny-grid", "source": str(source), "classes": [2, 3], "train_rows": [12], "folds": 2, "seed": 0,
        "holdout_per_class": 3, "set": ["thresholds.n_trials=5"],
        "models": ["tfidf-lr", {"name": "tiny", "preset": "tiny-encoder",
                                "set": ["train.max_steps=2", "train.epochs=1"]}]}))
    args = ["--config", str(tmp_path / "grid.yaml"), "--quiet"]
    calls = []

    def killed_on_second_cell(cfg, run_dir, quiet=False):
        calls.append(Path(run_dir).name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_cv(cfg, run_dir, quiet=quiet)

    monkeypatch.setattr("pipeline.cv.run_cv", killed_on_second_cell)
    with pytest.raises(KeyboardInterrupt):
        study_main(args)
    study_dir = tmp_path / "studies" / "tiny-grid"
    first = study_dir / "runs" / "tfidf-lr__k2-n12" / "report.json"
    assert first.is_file() and not (study_dir / "results.csv").exists()
    stamp = first.stat().st_mtime_ns

    def counting(cfg, run_dir, quiet=False):
        calls.append(Path(run_dir).name)
        return run_cv(cfg, run_dir, quiet=quiet)

    monkeypatch.setattr("pipeline.cv.run_cv", counting)
    calls.clear()
    assert study_main(args) == 0
    assert calls == ["tfidf-lr__k3-n12", "tiny__k2-n12", "tiny__k3-n12"]  # the first cell is not run again
    assert first.stat().st_mtime_ns == stamp
    frame = pd.read_csv(study_dir / "results.csv")
    assert list(frame["status"]) == ["done"] * 4 and list(frame["holdout_rows"]) == [6, 9, 6, 9]
    assert frame[["holdout_accuracy", "holdout_macro_f1", "oof_macro_f1_cv", "wall_seconds"]].notna().all().all()
    assert frame["holdout_accuracy"].between(0, 1).all()
    # each class has its own cue word: TF-IDF learns them, with two classes as with three
    assert (frame.loc[frame["model"] == "tfidf-lr", "holdout_accuracy"] > 0.8).all()
    assert (study_dir / "heatmap.png").read_bytes().startswith(PNG_SIGNATURE)
    test = pd.read_csv(study_dir / "data" / "k3-n12" / "test.csv")
    assert sorted(test["label"].unique()) == ["admiration", "amusement", "anger"]


def test_cells_of_a_study_are_named_model_then_data():
    cell = Cell(StudyModel("m", "tfidf-lr"), 4, 800)
    assert cell.name == "m__k4-n800" and cell.data_name == "k4-n800"
