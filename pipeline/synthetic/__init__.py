"""Synthetic labelled examples written by an instruction-tuned LLM (`generate_data.py`, `kfold-generate`).

prompts: seeded requests and JSON schemas; backends: llama-cpp-python (GGUF, CPU) or transformers;
parse: JSON extraction and validation; filters: normalisation, dedup, near-duplicates, diversity;
files: the output CSV, its sidecar, the resume journal and `read_extra_train`; generate: the driver.
"""
