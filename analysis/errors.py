"""Errors of the analyses, each with the exit status the CLI uses.

- :class:`NotFoundError` (exit 2): something named does not exist: a tracking store, a
  study, an experiment, a run id, an Optuna storage, or an option value is invalid.
- :class:`NoDataError` (exit 1): what was named exists but lacks the data the analysis
  needs (no finished runs, runs without ``view/*`` metrics, no crop images, ...).

Errors are raised before any output file is written (see :mod:`analysis.plots`).
"""
from __future__ import annotations


class AnalysisError(Exception):
    """An analysis cannot be done; ``str(err)`` is the message for the user."""

    exit_code = 1


class NotFoundError(AnalysisError):
    """A named thing (store, study, experiment, run, storage) does not exist, or a bad option."""

    exit_code = 2


class NoDataError(AnalysisError):
    """The selection exists but holds no data the analysis can use."""

    exit_code = 1
