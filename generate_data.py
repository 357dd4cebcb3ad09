"""Synthetic labelled examples from an LLM: `python generate_data.py --competition dair-emotion --out FILE.csv`."""
import sys

from pipeline.synthetic.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main())
