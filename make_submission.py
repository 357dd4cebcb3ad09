"""Write a submission from the latest run, or an ensemble: `python make_submission.py --runs A B`."""
import sys

from pipeline.cli import make_submission_main

if __name__ == "__main__":
    sys.exit(make_submission_main())
