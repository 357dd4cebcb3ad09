"""compare_runs.py: finished runs side by side, settings that differ, scores from their reports."""
from __future__ import annotations

import json

import yaml

from pipeline.cli import compare_main
from pipeline.config import load_config
from pipeline.cv import run_cv


def _rows(table: str) -> tuple:
    """A printed markdown table as (header, one {column: cell} dict per body row)."""
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    lines = table.splitlines()
    header = split(lines[0])
    return header, [dict(zip(header, split(line))) for line in lines[2:] if line.startswith("|")]


def test_compare_tabulates_runs_and_their_differences(tmp_path, comp_dir, capsys):
    common = [f"data.data_dir={comp_dir}", "model.preset=tfidf-lr", "cv.n_folds=2", "thresholds.n_trials=5"]
    a = run_cv(load_config(None, common), tmp_path / "a", quiet=True)
    b = run_cv(load_config(None, common + ["data.fit_filter=clean"]), tmp_path / "b", quiet=True)
    out = tmp_path / "table.md"
    assert compare_main([str(a), str(b), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert out.read_text() == table
    header, rows = _rows(table)
    assert "fit filter" in header and "preset" not in header  # equal settings move below the table
    assert "Same in every run: preset tfidf-lr" in table
    assert len(rows) == 2
    for run, cells in zip((a, b), rows):
        report = json.loads((run / "report.json").read_text())
        assert cells["run"] == run.name
        assert cells["macro-F1 tuned"] == f"{report['oof_tuned']['macro_f1']:.4f}"
    # adapters on some blocks only (model.lora_layers) is a setting that tells runs apart
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["model"]["lora_layers"] = "15-29"
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    assert compare_main([str(a), str(b)]) == 0
    assert [c["LoRA blocks"] for c in _rows(capsys.readouterr().out)[1]] == ["-", "15-29"]
    assert compare_main([str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
