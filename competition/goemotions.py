"""GoEmotions (Demszky et al. 2020): 27 emotions + neutral per Reddit comment, multilabel; test labels public.

train.csv + validation.csv are the K-fold training data; test.csv (with labels) is the hold-out.
No sample submission: the format is `id` + the 28 label columns, 0/1.
"""
from competition import Competition

LABELS = ("admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
          "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
          "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
          "remorse", "sadness", "surprise", "neutral")

COMPETITION = Competition(
    name="goemotions",
    id_col="id",
    text_col="text",
    task="multilabel",
    classes=LABELS,
    extra_train_files=("validation.csv",),
    sample_submission_file="",
    solution_file="test.csv",
    metric="macro_f1",
    download="see https://github.com/google-research/google-research/tree/master/goemotions",
)
