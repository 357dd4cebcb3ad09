"""Exceptions for problems the user can fix (bad files, configs, flags).

Entry points print their message on one line and exit with status 2; no traceback.
"""


class PipelineError(Exception):
    """A problem with user input, worded so the user knows what to change."""


class DataError(PipelineError):
    """A competition CSV is missing, malformed or inconsistent."""


class ConfigError(PipelineError):
    """A config file, override or flag is invalid."""


class RunDirError(PipelineError):
    """A run directory is incomplete or belongs to another config."""


class KaggleError(PipelineError):
    """Kaggle cannot be used: no credentials, no `kaggle` package, not a Kaggle competition, or a failed call."""
