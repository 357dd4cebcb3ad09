"""Tabulate finished runs side by side: `python compare_runs.py runs/a runs/b ...`."""
import sys

from pipeline.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
