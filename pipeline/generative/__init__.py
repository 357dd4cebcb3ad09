"""Decoders that write their labels (model.finetune='generate'): chat prompts with the label names, supervised
fine-tuning on the answer tokens only, per-label scores read from the model, and constrained generation."""
