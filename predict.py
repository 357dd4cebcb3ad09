"""Predict any CSV with the fold models runs kept: `python predict.py --runs RUN --input FILE.csv --out FILE.csv`."""
import sys

from pipeline.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
