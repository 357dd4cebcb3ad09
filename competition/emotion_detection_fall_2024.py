"""Emotion Detection Fall 2024 (SemEval-2018 Task 1 E-c, English): 11 emotions per tweet, macro-F1."""
from competition import Competition

COMPETITION = Competition(
    name="emotion-detection-fall-2024",
    id_col="ID",
    text_col="Tweet",
    task="multilabel",
    metric="macro_f1",
    download="kaggle competitions download -c emotion-detection-fall-2024",
    kaggle_slug="emotion-detection-fall-2024",
)
