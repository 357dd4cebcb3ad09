"""Command line of `generate_data.py` (`kfold-generate`): parse flags, build a GenerateConfig, call generate().

A `PipelineError` (bad flag, file or label name) is printed as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from pipeline.cli import _guard, _setup_logging
from pipeline.errors import ConfigError


def generate_parser() -> argparse.ArgumentParser:
    from pipeline.synthetic.generate import GenerateConfig

    d = GenerateConfig()
    p = argparse.ArgumentParser(prog="generate_data.py", description="Have an instruction-tuned LLM write labelled "
                                "training examples (JSON-controlled), deduplicate and filter them, and write a "
                                "reviewable CSV in the competition's training format with per-row provenance, plus "
                                "a .json of the counts at every stage. Rerunning the same command resumes.")
    p.add_argument("--competition", default=d.competition, help=f"competition definition (default {d.competition})")
    p.add_argument("--data-dir", help="folder with the competition's files (default data/<competition>)")
    p.add_argument("--model", default=d.model, help=f"model preset; the preset picks the backend (default {d.model}: "
                   "GGUF through llama-cpp-python on CPU; qwen2.5-7b-instruct, mistral-7b: transformers, 4-bit on GPU)")
    p.add_argument("--model-path", help="a GGUF file (llama-cpp presets) or model folder (transformers presets) "
                   "instead of the preset's weights")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="the synthetic CSV, e.g. data/synthetic/x.csv")
    p.add_argument("--per-label", type=int, default=d.per_label, help=f"kept rows wanted per target label "
                   f"(default {d.per_label})")
    p.add_argument("--labels", help="comma-separated target labels, e.g. trust,surprise,pessimism (default: all)")
    p.add_argument("--labels-per-example", metavar="LO-HI", help="multilabel: labels asked per row, drawn per row "
                   "(e.g. 1-3; default 1-2); partners are drawn favouring combinations rare in the training data")
    p.add_argument("--examples", type=int, default=d.examples, help="real training rows of the target label shown "
                   f"as in-context examples per prompt (default {d.examples}); their ids are recorded per row")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"default {d.temperature}")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p}")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"per answer (default {d.max_new_tokens})")
    p.add_argument("--max-retries", type=int, default=d.max_retries, help="further attempts after a malformed answer "
                   f"(default {d.max_retries})")
    p.add_argument("--max-requests", type=int, default=d.max_requests, help="cap on requests (default 3 x per-label "
                   "x target labels)")
    p.add_argument("--near-dup-threshold", type=float, default=d.near_dup_threshold, help="MinHash Jaccard of "
                   f"character 5-grams that counts as a near-duplicate (default {d.near_dup_threshold})")
    p.add_argument("--filter-run", metavar="RUN_DIR", help="round-trip filter: keep a row only if this finished "
                   "run's fold models (same competition, kept models) predict its label(s)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for the model (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or info lines")
    return p


def _labels_per_example(value: Optional[str]) -> tuple:
    if not value:
        return ()
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError as exc:
        raise ConfigError(f"--labels-per-example must be N or LO-HI (e.g. 1-3), got {value!r}") from exc


@_guard
def generate_main(argv: Optional[list] = None) -> int:
    args = generate_parser().parse_args(argv)
    _setup_logging(args.quiet)
    from pipeline.synthetic.generate import GenerateConfig, generate, summary_lines

    labels = tuple(n.strip() for n in args.labels.split(",") if n.strip()) if args.labels else ()
    cfg = GenerateConfig(out=args.out, competition=args.competition, data_dir=args.data_dir, model=args.model,
                         model_path=args.model_path, per_label=args.per_label, labels=labels,
                         labels_per_example=_labels_per_example(args.labels_per_example), examples=args.examples,
                         seed=args.seed, temperature=args.temperature, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens, max_retries=args.max_retries,
                         max_requests=args.max_requests, near_dup_threshold=args.near_dup_threshold,
                         filter_run=args.filter_run, threads=args.threads)
    progress = None
    if not args.quiet:
        from functools import partial

        from tqdm.auto import tqdm
        progress = partial(tqdm, leave=False, dynamic_ncols=True)
    try:
        sidecar = generate(cfg, progress=progress)
    except KeyboardInterrupt:
        print("interrupted: every answer so far is in the journal beside --out; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(summary_lines(sidecar))
    return 0
