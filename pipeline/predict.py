"""Predicts any CSV of texts with the fold models that finished runs kept (`predict.py`, `kfold-predict`).

A run's folds are averaged on probabilities, as cv.py averages its test predictions; several runs with
equal weights, or with a submission's runs and weights (`--submission <out>.json` of make_submission.py), or its
stacker when it was made with `--weights stack`.
The decision rule is that submission's, else a single run's own (the one its report chose: tuned only
where it beat the untuned rule cross-validated), else the untuned one. The output CSV holds the id
column, then `<label>_prob` (probability) and `<label>_pred` (0/1) for every label.

A file holding exactly a run's test set (same ids and texts in the same order: the sha256 its report.json records)
is not predicted again: that run's test_probs.csv is the mean of the same fold models' probabilities (tested
within 1e-6), and it is what make_submission.py used. `reuse=False` (`--recompute`) runs the models regardless.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from competition import get_competition
from pipeline.config import RunConfig, read_saved_config
from pipeline.data import read_texts, texts_digest
from pipeline.errors import RunDirError
from pipeline.io import atomic_write_csv
from pipeline.run_layout import fold_dir
from pipeline.stacking import stacker_from_json
from pipeline.tasks import task_for

log = logging.getLogger("pipeline")

PROB_SUFFIX, PRED_SUFFIX = "_prob", "_pred"


def fold_model_dirs(run_dir: Path, cfg: RunConfig) -> list:
    """The folds/fold_<k>/model/ folder of every fold; refuses a run that did not keep them all."""
    folders = [fold_dir(run_dir, k) / "model" for k in range(cfg.cv.n_folds)]
    missing = [k for k, folder in enumerate(folders) if not (folder / "fold.json").is_file()]
    if len(missing) == len(folders):
        raise RunDirError(f"run {run_dir} kept no fold models (folds/fold_<k>/model/): it was trained with "
                          f"train.save_models=false, or before fully fine-tuned weights were kept; retrain it into "
                          f"a new --run-dir with train.save_models=true to predict with it")
    if missing:
        raise RunDirError(f"run {run_dir} has no kept model for folds {missing} (folds/fold_<k>/model/); retrain "
                          f"those folds with train.save_models=true")
    return folders


def _neural_logits(cfg: RunConfig, folders: list, texts: list, n_labels: int, progress) -> list:
    """Each fold's (n, n_labels) logits, computed as train.py predicts test.csv: the same tokenization
    (prompt, eos, max_length), length-sorted batches of train.eval_batch_size, padding side, precision."""
    from accelerate.utils import set_seed

    from pipeline.cv import make_accelerator
    from pipeline.finetune import finetune_mode, load_fold_model
    from pipeline.inputs import Features
    from pipeline.models import FeatureExtractor, build_model, load_tokenizer
    from pipeline.train import predict_logits, release

    mode = finetune_mode(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    inputs = mode.inputs(tokenizer, cfg.model, [], texts, kept=folders[0] if folders else None)  # as trained
    accelerator = make_accelerator(cfg)
    index, batch = np.arange(len(texts)), cfg.train.eval_batch_size
    if mode.frozen_features:
        # as the run did: the frozen backbone's pooled features once (built with the run's seed), then each fold's head
        set_seed(cfg.train_seed)
        backbone, _ = build_model(cfg.model, n_labels, tokenizer, device=accelerator.device)
        extractor = accelerator.prepare_model(FeatureExtractor(backbone), evaluation_mode=True)
        features = predict_logits(extractor, accelerator, inputs, "test", index, batch, progress, "frozen features")
        inputs = Features(np.zeros((0, features.shape[1]), dtype=np.float32), features)
        del backbone, extractor
        release(accelerator)
    out = []
    for k, folder in enumerate(folders):
        if mode.frozen_features:
            model = mode.read_head(cfg, n_labels, folder, inputs.test.shape[1])
        else:
            model, _ = load_fold_model(cfg, n_labels, folder, tokenizer, device=accelerator.device)
        model = accelerator.prepare_model(model, evaluation_mode=True)
        out.append(predict_logits(model, accelerator, inputs, "test", index, batch, progress, f"fold {k + 1}"))
        del model
        release(accelerator)
    return out


def _tfidf_logits(cfg: RunConfig, folders: list, texts: list, n_labels: int, progress) -> list:
    from pipeline.linear import load_tfidf_fold

    return [load_tfidf_fold(folder)(list(texts)) for folder in folders]


FOLD_PREDICTORS = {"encoder": _neural_logits, "decoder": _neural_logits, "tfidf": _tfidf_logits}


def run_label_cols(run_dir: Path) -> list:
    """The probability columns of a completed run (its test_probs.csv header, less the id)."""
    if not (run_dir / "report.json").is_file():
        raise RunDirError(f"{run_dir} is not a completed run (no report.json); finish it with run_cv.py first")
    return list(pd.read_csv(run_dir / "test_probs.csv", nrows=0).columns[1:])


def saved_test_probs(run_dir: Path, digest: str) -> Optional[np.ndarray]:
    """The run's test_probs.csv when `digest` (texts_digest of the file to predict) is its test set's, else None."""
    report = json.loads((Path(run_dir) / "report.json").read_text())
    if report.get("test_inputs_sha256") != digest:
        return None
    return pd.read_csv(Path(run_dir) / "test_probs.csv")[run_label_cols(Path(run_dir))].to_numpy()


def run_probs(run_dir: Path, texts: list, progress: Optional[Callable] = None) -> np.ndarray:
    """(len(texts), n_labels) probabilities: the mean over the run's folds of each kept fold model's
    probabilities (the task's link of its logits). progress: a tqdm-like factory or None."""
    from pipeline.presets import get_preset

    run_dir = Path(run_dir)
    cfg = read_saved_config(run_dir / "config.yaml")
    folders = fold_model_dirs(run_dir, cfg)
    task = task_for(cfg.data.competition)
    predict = FOLD_PREDICTORS[get_preset(cfg.model.preset).kind]
    logits = predict(cfg, folders, list(texts), len(run_label_cols(run_dir)), progress)
    return np.mean([task.probs(fold_logits) for fold_logits in logits], axis=0)


def _run_rule(run_dir: Path, task, label_cols: list) -> tuple:
    """A single run's decision rule: the one its report chose. Returns (probs -> preds, description)."""
    report = json.loads((run_dir / "report.json").read_text())
    if report.get("headline", {}).get("rule", "tuned") != "tuned":
        return task.untuned_preds, (f"{task.untuned} (the run's report chose it: the tuned rule did not beat it "
                                    f"cross-validated)")
    values = json.loads((run_dir / task.decision_file).read_text())
    return task.decider_from_json(values, label_cols).predict, f"tuned ({run_dir / task.decision_file})"


def _submission_runs(path: Path, runs_root: Path) -> tuple:
    """(run directories, weights, summary) of a make_submission.py summary `<out>.json`."""
    if not path.is_file():
        raise RunDirError(f"submission summary {path} does not exist (make_submission.py writes it beside the CSV)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(summary, dict) or not {"runs", "weights", "rule"} <= set(summary):
        raise RunDirError(f"{path} is not a make_submission.py summary (it needs 'runs', 'weights' and 'rule')")
    runs = []
    for name in summary["runs"]:
        found = [p for p in (Path(name), runs_root / Path(name).name) if (p / "config.yaml").is_file()]
        if not found:
            raise RunDirError(f"run {name} of {path} not found (looked for {name} and {runs_root / Path(name).name})")
        runs.append(found[0])
    return runs, np.asarray(summary["weights"], dtype=float), summary


def predict_file(input_csv: Path, out: Path, run_dirs: Optional[list] = None, submission: Optional[Path] = None,
                 runs_root: Path = Path("runs"), progress: Optional[Callable] = None, reuse: bool = True) -> str:
    """Predict `input_csv` (the competition's id and text columns) with the kept fold models of `run_dirs`
    (equal weights), or of the runs of a make_submission.py summary `submission` (its weights and rule).
    reuse: read a run's test_probs.csv when the file is exactly its test set.
    Writes `out`: id, `<label>_prob` per label, `<label>_pred` per label (0/1). Returns a printable summary."""
    summary = None
    if submission is not None:
        runs, weights, summary = _submission_runs(Path(submission), Path(runs_root))
    else:
        runs = [Path(r) for r in run_dirs]
        weights = np.ones(len(runs)) / len(runs)
    cfgs = [read_saved_config(r / "config.yaml") for r in runs]
    label_cols = run_label_cols(runs[0])
    for run, cfg in zip(runs[1:], cfgs[1:]):
        if cfg.data.competition != cfgs[0].data.competition or run_label_cols(run) != label_cols:
            raise RunDirError(f"runs {runs[0]} and {run} predict different competitions or labels "
                              f"({cfgs[0].data.competition} vs {cfg.data.competition})")
    for run, cfg in zip(runs, cfgs):
        fold_model_dirs(run, cfg)  # every run's models are there before any is loaded
    comp = get_competition(cfgs[0].data.competition)
    task = task_for(comp.name)
    if summary is not None:
        key = task.decision_file.removesuffix(".json")
        if key not in summary:
            raise RunDirError(f"{submission} has no '{key}' for the {task.name} task of {comp.name}")
        rule = task.decider_from_json(summary[key], label_cols).predict
        described = f"{summary['rule']} ({key} from {submission})"
    elif len(runs) == 1:
        rule, described = _run_rule(runs[0], task, label_cols)
    else:
        rule, described = task.untuned_preds, (f"{task.untuned} (no rule was tuned for this ensemble; pass "
                                               f"--submission with make_submission.py's .json for one)")
    frame = read_texts(Path(input_csv), comp)
    texts = frame[comp.text_col].tolist()
    digest = texts_digest(frame[comp.id_col], texts) if reuse else None
    members, reused = [], []
    for run in runs:
        saved = saved_test_probs(run, digest) if reuse else None
        if saved is not None:
            log.info("%s is %s's test set (sha256 %s): its test_probs.csv, no model run", input_csv, run, digest[:12])
            reused.append(run)
        else:
            log.info("predicting %d texts with the folds of %s", len(texts), run)
            saved = run_probs(run, texts, progress)
        members.append(saved)
    stacked = summary is not None and summary.get("combine") == "stack"
    if stacked:
        probs = stacker_from_json(summary.get("stacker"), label_cols, [Path(r).name for r in summary["runs"]]).predict(
            members)
    else:
        probs = sum(w * p for w, p in zip(weights, members))
    preds = rule(probs)
    table = pd.DataFrame({comp.id_col: frame[comp.id_col]})
    for j, col in enumerate(label_cols):
        table[col + PROB_SUFFIX] = probs[:, j]
    for j, col in enumerate(label_cols):
        table[col + PRED_SUFFIX] = preds[:, j].astype(np.int64)
    atomic_write_csv(Path(out), table)
    shown = ", ".join(f"{r} ({w:.2f})" for r, w in zip(runs, weights)) + (
        f"; stacked by {submission}'s logistic regression (mean coefficients in brackets)" if stacked else "")
    return "\n".join([f"wrote {out}: {len(table)} rows; {comp.id_col}, then <label>{PROB_SUFFIX} and "
                      f"<label>{PRED_SUFFIX} for {len(label_cols)} labels",
                      f"  runs (weight): {shown}; folds averaged on probabilities",
                      *([f"  read from test_probs.csv (the file is their test set; --recompute runs the models): "
                         + ", ".join(map(str, reused))] if reused else []),
                      f"  decision rule: {described}",
                      "  predicted positive rate: " + ", ".join(f"{c} {r:.3f}" for c, r in
                                                               zip(label_cols, preds.mean(0)))])
