"""Analyses of tracked runs: read MLflow into pandas, plot, tabulate.

``analysis/`` reads MLflow only (any tracking URI), so it works on study trials and on
``paramcrop train`` runs alike. Heavy libraries (mlflow, matplotlib, seaborn, optuna, scipy)
are imported inside functions so that importing this package is instant.

Modules: ``store`` (tracking-URI default, client), ``load`` (runs and metric histories as
tidy frames), ``groups`` (which runs are one configuration, and its label: every analysis),
``stats`` (t-intervals), ``plots`` (paper style, labels, atomic outputs), ``iou_curves``,
``strength``, ``tables``, ``compare`` (paired differences from a baseline), ``sweet_spot``
(the objective against the measured view IoU of matched random crops), ``importance``, ``crops``,
``family`` (which comparisons a call makes: a baseline, or a spec's declared ones), ``queries``
(per-query predictions of runs), ``resampling`` (Holm, P(A > B), bootstraps, seeds needed),
``variance`` (training vs evaluation variance), ``power`` (seeds a comparison needs), ``page``
(``analyze report``: a study's results as one page, built from the others).
"""
from analysis.errors import AnalysisError, NoDataError, NotFoundError

__all__ = ["AnalysisError", "NoDataError", "NotFoundError"]
