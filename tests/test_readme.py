"""The README stays true: each of its commands is run by .ci/run (or is the test command itself)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# needs a Kaggle account and internet, which CI does not have; documented as the user's step
NOT_RUNNABLE_HERE = ("kaggle competitions download", "unzip ")


def readme_blocks(language: str) -> list:
    """The lines of every fenced block tagged `language` ('' for untagged blocks)."""
    text = (ROOT / "README.md").read_text()
    blocks = [body for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S) if lang == language]
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def readme_commands():
    """Untagged blocks hold the commands a user runs here; CI runs each of them."""
    return readme_blocks("")


def test_every_readme_command_is_run_by_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = readme_commands()
    assert "python -m pytest -q" in commands
    for command in commands:
        if command.startswith(NOT_RUNNABLE_HERE):
            continue
        assert command in ci or command.replace("pip install ", "pip install -q ") in ci, command


def test_readme_names_every_preset_and_the_data_command():
    from pipeline.presets import PRESETS

    text = (ROOT / "README.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in text, name
    assert "kaggle competitions download -c emotion-detection-fall-2024" in text


def test_readme_recipes_use_real_flags_and_valid_configs():
    """`bash` blocks are recipes for other machines (SLURM, several GPUs): CI cannot run them, so
    each `run_cv.py` command in them must at least parse and give a valid config."""
    import shlex

    from pipeline.cli import config_from_args, cv_parser

    found = 0
    for line in readme_blocks("bash"):
        if "run_cv.py" not in line or line.startswith("#"):
            continue
        command = line[line.index("run_cv.py") + len("run_cv.py"):].split("&")[0].split(";")[0]
        command = re.sub(r"\$\{?\w+\}?", "0", command)
        args = cv_parser().parse_args(shlex.split(command))
        config_from_args(args)
        found += 1
    assert found >= 3


def test_readme_study_recipes_name_valid_study_configs():
    """The long study grid is a recipe (a `bash` block): its config must load."""
    import shlex

    from pipeline.study import load_study

    found = 0
    for line in readme_blocks("bash") + readme_commands():
        if "run_study.py" not in line:
            continue
        args = shlex.split(line)
        load_study(ROOT / args[args.index("--config") + 1])
        found += 1
    assert found >= 2
