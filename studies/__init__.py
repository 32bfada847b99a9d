"""Optuna studies over training configurations, tracked in MLflow."""

DEFAULT_STORAGE = "paramcrop-studies.journal"
"""The Optuna storage used when none is given: a journal file in the working directory (safe for
several local workers). Defined here, not in :mod:`studies.storage`, so that the CLI's help can name
it without importing Optuna."""
