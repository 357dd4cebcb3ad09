"""Hyperparameter search with Optuna on a few folds: `python tune_cv.py --model minilm-l6 --trials 20`."""
import sys

from pipeline.search import search_main

if __name__ == "__main__":
    sys.exit(search_main())
