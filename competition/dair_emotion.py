"""dair-ai/emotion (CARER, Saravia et al. 2018): one of six emotions per tweet; test labels are public.

train.csv + validation.csv (18,000 rows) are the K-fold training data; test.csv (2,000 rows, with labels)
is the hold-out, scored once after everything is fitted. No sample submission: the format is
`id,label` with the class name.
"""
from competition import Competition

COMPETITION = Competition(
    name="dair-emotion",
    id_col="id",
    text_col="text",
    task="multiclass",
    label_col="label",
    classes=("sadness", "joy", "love", "anger", "fear", "surprise"),  # the Hugging Face release's code order
    extra_train_files=("validation.csv",),
    sample_submission_file="",
    solution_file="test.csv",
    metric="macro_f1",
    download="python -c \"import datasets; datasets.load_dataset('dair-ai/emotion')\" (then write id,text,label CSVs)",
)
