"""K-fold multilabel text classification: folds, one training loop, OOF, thresholds, submissions."""
