"""Each run's final objective value with its configuration: what the table, the comparison and the
sweet spot count (:func:`objective_values`, :func:`seeded_values`)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from analysis import groups, plots
from analysis.errors import NoDataError
from analysis.load import Selection, column
from analysis.plots import (P_BACKBONE, P_CROP, P_FRAMEWORK, P_HEAD, P_LOSSES, P_ORDER, P_REGION, P_SEED,
                            P_STRENGTH)

KEYS = [P_FRAMEWORK, P_BACKBONE, P_CROP, P_STRENGTH, P_HEAD, P_REGION, P_ORDER]
ROW_PARAMS = (P_FRAMEWORK, P_BACKBONE, P_HEAD, *P_LOSSES)
"""Params the table's rows show (left out of its crop labels)."""


def objective_values(sel: Selection, keys: Sequence[str] = KEYS,
                     omit: Sequence[str] = ROW_PARAMS) -> tuple[pd.DataFrame, list[str]]:
    """``run_id, <keys>, <other label params>, config, configuration, objective`` for the runs that
    have a final objective value (:func:`analysis.groups.configurations`, labels without the
    ``omit`` params); params a run lacks take :data:`analysis.groups.PARAM_DEFAULTS`, objective
    weights are floats. Returns the frame and notes."""
    runs = sel.runs
    frame = pd.DataFrame({"run_id": runs["run_id"].to_numpy()})
    for key in keys:
        values = column(runs, f"params.{key}")
        if key in groups.PARAM_DEFAULTS:
            values = values.where(values.notna(), groups.PARAM_DEFAULTS[key])
        if key in P_LOSSES:
            values = plots.numeric(values).astype(float)
        frame[key] = values.to_numpy()
    configs, label_keys = groups.configurations(runs, omit=omit)
    for key in label_keys:
        if key not in frame.columns:
            frame[key] = configs[key].to_numpy()
    frame["config"] = configs["config"].to_numpy()
    frame["configuration"] = configs["configuration"].to_numpy()
    frame["objective"] = plots.numeric(column(runs, f"metrics.{sel.objective}")).to_numpy(dtype=float)
    missing = frame["objective"].isna()
    notes = []
    if missing.all():
        logged = sorted({c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")})
        raise NoDataError(
            f"no run of {sel.name!r} has a value of the objective {sel.objective!r}. Metrics "
            f"logged: {', '.join(logged) or 'none'}; choose one with --objective METRIC."
        )
    if missing.any():
        notes.append(f"{int(missing.sum())} run(s) without {sel.objective} left out: "
                     + ", ".join(frame.loc[missing, "run_id"]))
    return frame[~missing].reset_index(drop=True), notes


def seeded_values(sel, omit: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(values, configs, notes)``: :func:`objective_values` (labels without
    ``omit``) with a ``seed`` column, and :func:`analysis.groups.configurations` of the runs
    (full labels, same ``config`` ids)."""
    values, notes = objective_values(sel, omit=omit)
    seeds = dict(zip(sel.runs["run_id"], column(sel.runs, f"params.{P_SEED}")))
    values["seed"] = values["run_id"].map(seeds)
    configs, _ = groups.configurations(sel.runs)
    return values, configs, notes
