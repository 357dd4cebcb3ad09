"""HTML reports (pipeline/report_html.py): every section of a run page for both task shapes, the
submission and comparison pages, self-containment, on-demand rewriting, and a render in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LABELS
from pipeline.cli import compare_main, report_main
from pipeline.config import load_config
from pipeline.cv import run_cv
from pipeline.submit import make_submission

ROOT = Path(__file__).resolve().parents[1]
RUN_SECTIONS = ["headline", "learning-curves", "rows", "holdout-timing"]


def tiny_run(comp_dir, run_dir, *extra):
    cfg = load_config(None, [f"data.data_dir={comp_dir}", "model.preset=tiny-encoder", "cv.n_folds=2",
                             "train.epochs=2", "thresholds.n_trials=20", *extra])
    return run_cv(cfg, run_dir, quiet=True)


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    from conftest import make_frames, write_competition

    base = tmp_path_factory.mktemp("html")
    comp = write_competition(base / "comp", *make_frames())
    return tiny_run(comp, base / "run"), comp


def images(page: str) -> list:
    return re.findall(r'<img src="([^"]*)"', page)


def headline_keys(page: str) -> dict:
    return {k: v for k, v in re.findall(r'data-key="([^"]+)">([^<]*)<', page) if v != "-"}


def assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), "a page refers to a URL"
    assert "<script" not in page and "<link" not in page
    srcs = images(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def expected_headline(report: dict, untuned_key: str) -> dict:
    out = {}
    for part, key in (("untuned", untuned_key), ("tuned", "oof_tuned"), ("cv", "oof_tuned_cv")):
        for name, value in report[key].items():
            out[f"{part}.{name}"] = f"{value:.4f}"
    return out


def test_a_multilabel_run_page_has_every_section_and_the_reports_numbers(multilabel_run):
    run_dir, _ = multilabel_run
    page = (run_dir / "report.html").read_text()
    report = json.loads((run_dir / "report.json").read_text())
    for anchor in RUN_SECTIONS + ["per-label", "cooccurrence"]:
        assert f'id="{anchor}"' in page, anchor
    assert page.count('<p class=reading>') >= 6  # every section says what it shows
    assert_self_contained(page)
    # one figure per label (threshold curves, PR, reliability), co-occurrence pair, learning curves
    assert len(images(page)) == len(LABELS) + 2
    for label in LABELS:
        assert f"{label}: threshold curves, precision-recall, reliability" in page
        assert f"<summary>{label}</summary>" in page  # its worst and best rows
    assert "most confident false positives" in page and "most confident false negatives" in page
    assert headline_keys(page) == expected_headline(report, "oof_at_0.5")
    for fold_score in report["per_fold"]["macro_f1_tuned"]:
        assert f"{fold_score:.4f}" in page
    assert "model:" in page and "tiny-encoder" in page  # the config that produced it


def test_the_page_is_rewritten_on_demand_the_same(multilabel_run, capsys):
    run_dir, _ = multilabel_run
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    assert report_main([str(run_dir)]) == 0
    assert (run_dir / "report.html").read_text() == before
    assert "wrote" in capsys.readouterr().out


def test_on_demand_report_of_something_else_is_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_multiclass_run_page_has_the_confusion_matrix_and_per_class_curves(tmp_path, dair_dir):
    from conftest import DAIR_CLASSES

    run_dir = tiny_run(dair_dir, tmp_path / "run", "data.competition=dair-emotion")
    page = (run_dir / "report.html").read_text()
    report = json.loads((run_dir / "report.json").read_text())
    for anchor in RUN_SECTIONS + ["per-class", "confusion"]:
        assert f'id="{anchor}"' in page, anchor
    assert_self_contained(page)
    assert "confusion matrix, counts and row-normalised" in page
    assert len(images(page)) == len(DAIR_CLASSES) + 2
    assert headline_keys(page) == expected_headline(report, "oof_argmax")
    assert "Hold-out test" in page  # dair-emotion's test labels


def test_submission_and_comparison_pages(multilabel_run, tmp_path, capsys):
    run_dir, comp = multilabel_run
    other = tiny_run(comp, tmp_path / "other", "model.preset=tfidf-lr")
    out = tmp_path / "subs" / "ens.csv"
    make_submission([run_dir, other], out)
    page = (tmp_path / "subs" / "ens.html").read_text()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert_self_contained(page)
    assert headline_keys(page) == {f"ensemble.{k}": f"{v:.4f}" for k, v in summary["ensemble"].items()}
    for label in LABELS:
        assert f"<td class=text>{label}</td>" in page
    assert run_dir.name in page and other.name in page
    assert "predicted test rate against training rate" in page
    assert compare_main([str(run_dir), str(other), "--html", str(tmp_path / "cmp.html")]) == 0
    cmp = (tmp_path / "cmp.html").read_text()
    assert_self_contained(cmp)
    assert len(images(cmp)) == 2 and "Same in every run" in cmp
    capsys.readouterr()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK = """<script>window.addEventListener('load', () => { setTimeout(() => {
const imgs = [...document.images];
const out = {n_images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  resources: performance.getEntriesByType('resource').map(e => e.name),
  keys: Object.fromEntries([...document.querySelectorAll('[data-key]')].filter(e => e.textContent != '-')
    .map(e => [e.dataset.key, e.textContent])),
  load_ms: performance.getEntriesByType('navigation')[0].loadEventStart};
const pre = document.createElement('pre'); pre.id = 'render-check'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre); }, 0); });</script>"""


def render_check(page: Path, tmp_path: Path) -> dict:
    """Open a copy of the page with a probe script in headless Chromium; return what the probe saw."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    profile = tmp_path / f"profile-{page.stem}"
    profile.mkdir()
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the probe did not run; chromium said: {out.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: "
                    "apt-get install -y chromium)")
def test_pages_render_in_headless_chromium_with_every_image_and_no_network(multilabel_run, tmp_path):
    run_dir, _ = multilabel_run
    report = json.loads((run_dir / "report.json").read_text())
    start = time.perf_counter()
    seen = render_check(run_dir / "report.html", tmp_path)
    assert time.perf_counter() - start < 60
    assert seen["n_images"] == len(LABELS) + 2
    assert seen["broken"] == []
    assert seen["resources"] == []  # nothing fetched: every image is inline
    assert seen["keys"] == expected_headline(report, "oof_at_0.5")
    assert seen["load_ms"] < 2000


def test_report_module_runs_as_a_script(multilabel_run):
    run_dir, _ = multilabel_run
    out = subprocess.run([sys.executable, "-m", "pipeline.report", str(run_dir)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote {run_dir / 'report.html'}"
