"""Speed of model.finetune='generate' on this CPU, in one process: training steps on the answer-only loss, label
scoring (per-label probabilities from the answer lattice) and constrained generation, each on the same real rows of
the competition, through the interfaces a run uses (Conversations batches into LabelGenerator, generated_preds).
Rows are sorted by prompt length before batching, as prediction batches are. One warm-up batch of each kind runs
first and is not timed.

    python benchmarks/generate_speed.py --data-dir ../shared/data/emotion-detection-fall-2024 --out runs/generate-speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(config: str, data_dir: str, rows: int, train_batches: int, overrides: list) -> dict:
    import pandas as pd
    from accelerate.utils import set_seed

    from competition import get_competition
    from pipeline.generative.inputs import build_conversations
    from pipeline.generative.model import build_generator, generated_preds
    from pipeline.models import load_tokenizer
    from pipeline.presets import train_settings

    cfg = load_config(config, [f"data.data_dir={data_dir}", *overrides])
    comp = get_competition(cfg.data.competition)
    frame = pd.read_csv(Path(data_dir) / comp.train_file)
    labels_cols = [c for c in frame.columns if c not in (comp.id_col, comp.text_col)]
    _, batch = train_settings(cfg)
    n = rows + (train_batches + 1) * batch
    texts, labels = frame[comp.text_col].tolist()[:n], frame[labels_cols].to_numpy()[:n]
    tokenizer = load_tokenizer(cfg.model)
    conv = build_conversations(tokenizer, texts, [], labels_cols, cfg.model)
    set_seed(cfg.cv.seed)
    model = build_generator(cfg.model, conv.fmt, labels_cols, tokenizer)
    collate = conv.collate()
    out = {"config": config, "overrides": overrides, "threads": torch.get_num_threads(), "rows": rows,
           "train_batch": batch, "shared_prefix_tokens": len(getattr(conv, "prefix", ())),
           "mean_prompt_tokens": float(np.mean([len(p) for p in conv.train]))}

    # training: forward (answer-only loss) + backward + AdamW step, on consecutive batches of the first rows
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)

    def step(k: int) -> None:
        idx = np.arange(k * batch, (k + 1) * batch)
        ds = conv.dataset("train", idx, labels)
        model(**collate([ds[i] for i in range(len(idx))])["inputs"]).backward()
        opt.step()
        opt.zero_grad()

    step(0)  # warm-up
    seconds = sum(_timed(lambda k=k: step(k)) for k in range(1, train_batches + 1))
    out["train_rows_per_s"] = train_batches * batch / seconds

    # prediction rows: the next `rows`, sorted by prompt length and batched by train.eval_batch_size
    start = (train_batches + 1) * batch
    idx = np.arange(start, start + rows)
    idx = idx[np.argsort([len(conv.train[i]) for i in idx], kind="stable")]
    eval_batch = cfg.train.eval_batch_size
    model.eval()

    def score(part: np.ndarray) -> None:
        ds = conv.dataset("train", part, None)
        with torch.no_grad():
            model(**collate([ds[i] for i in range(len(part))])["inputs"])

    score(idx[:8])  # warm-up
    seconds = sum(_timed(lambda p=idx[s:s + eval_batch]: score(p)) for s in range(0, rows, eval_batch))
    out["score_rows_per_s"] = rows / seconds
    generated_preds(model, conv, "train", idx[:8], eval_batch)  # warm-up
    out["generate_rows_per_s"] = rows / _timed(lambda: generated_preds(model, conv, "train", idx, eval_batch))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the competition's train.csv")
    p.add_argument("--config", default=str(ROOT / "configs" / "modes" / "f-generate.yaml"))
    p.add_argument("--rows", type=int, default=256, help="rows scored and generated (default 256)")
    p.add_argument("--train-batches", type=int, default=4, help="timed training batches (default 4)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    result = measure(args.config, args.data_dir, args.rows, args.train_batches, args.overrides)
    result["load_average"] = os.getloadavg()
    for key in ("train_rows_per_s", "score_rows_per_s", "generate_rows_per_s"):
        print(f"{key:24s}{result[key]:8.2f}")
    print(f"shared prefix {result['shared_prefix_tokens']} tokens of {result['mean_prompt_tokens']:.1f} a prompt "
          f"on average; load average {result['load_average'][0]:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
