"""Task-adaptive pretraining on the competition's texts: `python pretrain.py --model minilm-l6 --out models/x`."""
import sys

from pipeline.pretrain import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
