"""A class-balanced single-label GoEmotions subset made by the study grid (pipeline/study.py).

Each cell's folder holds train.csv and test.csv with `id,text,label`; the classes are the labels
found in train.csv, and test.csv's labels are the hold-out.
"""
from competition import Competition

COMPETITION = Competition(
    name="goemotions-subset",
    id_col="id",
    text_col="text",
    task="multiclass",
    label_col="label",
    sample_submission_file="",
    solution_file="test.csv",
    metric="macro_f1",
    download="python run_study.py --config configs/studies/goemotions-grid.yaml (it writes the subsets)",
)
