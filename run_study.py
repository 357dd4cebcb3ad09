"""A grid of runs (models x data subsets) with a table and heatmap: `python run_study.py --config FILE`."""
import sys

from pipeline.cli import study_main

if __name__ == "__main__":
    sys.exit(study_main())
