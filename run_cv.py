"""K-fold cross-validation on a competition: `python run_cv.py --model minilm-l6 --folds 5`."""
import sys

from pipeline.cli import run_cv_main

if __name__ == "__main__":
    sys.exit(run_cv_main())
