"""Configurations: which runs are repetitions of one another, and their labels. Every analysis
that groups runs (``table``, ``compare``, ``iou-curves``, ``learning-curves``, ``strength``,
``sweet-spot``) uses
:func:`configurations`, so they cannot disagree.

- **Identity**: two runs are the same configuration when *every* logged param has the same value
  in both, except the params of :data:`EXCLUDED`: ``seed`` (what repetitions differ by) and run
  bookkeeping that cannot change a training result beyond float rounding (the config fields marked
  so, :func:`paramcrop.config.bookkeeping_keys`: ``data.workers``, ``data.cache_mb``, ``compile``,
  ``device``, ``log_every``, ``checkpoint_every``, ``snapshot_every``, ``visualize_at``). Everything
  else counts, ``steps``, ``eval.every`` (the learning curve's resolution) and ``data.digest``
  (the files a run read, :data:`paramcrop.artifacts.DATA_DIGEST`) included. Values compare as numbers when both parse as numbers (``"1"`` = ``"1.0"``), else as
  stripped strings; a param a run lacks is a value of its own ("–"), except those of
  :data:`PARAM_DEFAULTS` (the values of a run that has no such param); params under an old config
  name read under the current one (:func:`analysis.load.runs_frame`).
  Different configurations are never pooled. (Study trials do not log their Optuna variant label
  ``variant:<name>`` as an MLflow param, so identity comes from params alone.)
- **Label**: the crop label (:func:`analysis.plots.crop_label` of ``crop.method`` and
  ``crop.strength``), then ``key=value`` (:func:`analysis.plots.param_label`; the auxiliary-loss
  weights as one :func:`analysis.plots.losses_label`) for each other param
  that *varies*: takes two or more values among the runs that have it (a run without it shows
  nothing for it). A param of a component's
  namespace (``crop.area``, ``framework.temperature``) varies only when it takes two values among
  runs of the same component (same ``crop.method`` / ``framework.name`` ...), and is named only in
  the labels of those components' runs: the random crop's ``crop.area`` is not shown just because
  ParamCrop has none, nor a generator's ``optim.generator_lr`` (a field of the ``optim`` section
  that the config marks as the crop's, :func:`paramcrop.config.component_selectors`) on crops
  without a generator. Params the caller shows elsewhere
  (``omit``, e.g. the table's rows) are left out; params it asks for (``show``, ``--hue``) are
  always in. Should two configurations still agree on every param shown (or omitted), the params
  that tell them apart are added as raw ``key=value``.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from analysis import plots
from analysis.plots import BASELINE_METHOD, P_CROP, P_HEAD, P_LOSSES, P_ORDER, P_REGION, P_SEED, P_STRENGTH
from paramcrop.config import bookkeeping_keys, component_selectors

EXCLUDED = frozenset({P_SEED, *bookkeeping_keys()})
"""Params that never define a configuration (see module doc)."""
PARAM_DEFAULTS = {P_HEAD: plots.DEFAULT_HEAD, P_REGION: "0.0", P_ORDER: "0.0"}
"""What a run without the param used (no head: the MLP head; no auxiliary-loss weight: off)."""
PARAMETERISATION_PARAMS = ("crop.dof", "crop.generator_input", "crop.coupling", "crop.uncontrolled", "crop.budget",
                           "crop.budget_schedule", "optim.generator_optimizer", "crop.grad_fraction")
"""The crop parameterisation (:func:`paramcrop.crops.dof.parameterisation_name`, the run's
``paramcrop.crop_parameterisation`` tag): in the crop label when one of them varies."""
CROP_LABEL_PARAMS = (P_CROP, P_STRENGTH, *PARAMETERISATION_PARAMS)
"""Params that :func:`analysis.plots.crop_label` shows (never repeated as ``key=value``)."""
SELECTORS = ("name", "method")
"""``<namespace>.name`` / ``<namespace>.method`` choose a component; its other params depend on it."""
SELECTED = component_selectors()
"""Params outside their component's namespace (a generator's ``optim.generator_lr``) -> its selector."""


def canonical(value):
    """A param value for comparison: None when missing, a float when it parses, else the stripped string."""
    if plots._missing(value):  # noqa: SLF001 - the one definition of "missing"
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value).strip()


def params(runs: pd.DataFrame) -> pd.DataFrame:
    """``run_id`` and one column per param that can define a configuration (not :data:`EXCLUDED`),
    raw values as logged, :data:`PARAM_DEFAULTS` filled in."""
    out = pd.DataFrame({"run_id": runs["run_id"].to_numpy()})
    names = sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
    for name in [n for n in names if n not in EXCLUDED] + [p for p in PARAM_DEFAULTS if p not in names]:
        values = runs[f"params.{name}"] if f"params.{name}" in runs.columns else pd.Series([None] * len(runs))
        values = pd.Series(values.to_numpy(), dtype=object)
        if name in PARAM_DEFAULTS:
            values = values.where(values.notna(), PARAM_DEFAULTS[name])
        out[name] = values.to_numpy()
    return out


def configuration_keys(runs: pd.DataFrame) -> list[str]:
    """The params whose values differ between ``runs`` (see module doc: missing counts as a value):
    together they define the configurations. ``crop.method``, ``crop.strength`` first, then by name."""
    p = params(runs)
    keys = [k for k in p.columns[1:] if p[k].map(canonical).nunique(dropna=False) > 1]
    return sorted(keys, key=lambda k: (k not in CROP_LABEL_PARAMS, CROP_LABEL_PARAMS.index(k)
                                       if k in CROP_LABEL_PARAMS else 0, k))


def _selector(key: str, columns) -> str | None:
    if key in SELECTED:
        return SELECTED[key] if SELECTED[key] in columns else None
    namespace = key.split(".", 1)[0] if "." in key else None
    for s in SELECTORS:
        if namespace and f"{namespace}.{s}" in columns and f"{namespace}.{s}" != key:
            return f"{namespace}.{s}"
    return None


def varying_in(p: pd.DataFrame, key: str) -> set | None:
    """The components (values of ``key``'s selector) among whose runs ``key`` takes two or more
    values; None for a param of no component, when it varies among all the runs that have it."""
    values = p[key].map(canonical)
    selector = _selector(key, p.columns)
    if selector is None:
        return None if values.dropna().nunique() > 1 else set()
    counts = values.groupby(p[selector].map(canonical), dropna=False).nunique()
    return set(counts.index[counts > 1])


def varying(p: pd.DataFrame, key: str) -> bool:
    """Whether ``key`` takes two or more values among the runs that have it (within one component
    when it belongs to one: ``crop.area`` by ``crop.method``, :data:`SELECTED`)."""
    return varying_in(p, key) != set()


def configurations(runs: pd.DataFrame, omit: Sequence[str] = (),
                   show: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: ``run_id``, ``config`` (an integer id: same id = same configuration),
    ``configuration`` (its label), ``baseline`` (``crop.method == random``), ``order`` (= ``config``:
    baseline first, then by the values of :func:`configuration_keys`) and one column per label param
    (raw values). Returns the frame and the label params (``crop.method``, ``crop.strength`` first)."""
    p = params(runs)
    keys = configuration_keys(runs)
    label_keys = [k for k in keys if k not in omit and k not in CROP_LABEL_PARAMS and varying(p, k)]
    label_keys = list(dict.fromkeys(label_keys + [s for s in show if s not in CROP_LABEL_PARAMS]))
    identity = [tuple(canonical(v) for v in row) for row in p[keys].itertuples(index=False)] if keys else [()] * len(p)
    frame = pd.DataFrame({"run_id": p["run_id"], "_id": identity})
    # "ParamCrop spatial, λ=1.0" only where the parameterisation differs between the runs
    parameterised = any(k in p.columns and k not in omit and varying(p, k) for k in PARAMETERISATION_PARAMS)
    crop_keys = CROP_LABEL_PARAMS if parameterised else (P_CROP, P_STRENGTH)
    for k in dict.fromkeys(crop_keys + tuple(label_keys) + P_LOSSES):
        frame[k] = p[k].to_numpy() if k in p.columns else None
    first = frame.drop_duplicates("_id")
    within = {k: varying_in(p, k) for k in label_keys if k not in show}  # None: shown for every run
    selectors = {k: _selector(k, p.columns) for k in within}

    def label(r) -> str:
        strength = None if P_STRENGTH in omit else r[P_STRENGTH]
        parameterisation = [r[k] if parameterised else None for k in PARAMETERISATION_PARAMS]
        parts = [plots.crop_label(r[P_CROP], strength, *parameterisation)]
        for k in label_keys:
            if k in P_LOSSES:  # the loss weights as one part: "no extra losses", "region", "region=0.5+order"
                part = plots.losses_words(plots.losses_label({o: canonical(r[o]) for o in P_LOSSES}))
            elif plots._missing(r[k]) or not (within.get(k) is None  # noqa: SLF001
                                                or canonical(p.at[r.name, selectors[k]]) in within[k]):
                continue  # a run without it, or of a component whose runs all agree on it
            else:
                part = plots.param_label(k, r[k])
            if part not in parts:
                parts.append(part)
        return ", ".join(parts)

    labels = {r["_id"]: label(r) for _, r in first.iterrows()}
    shown = {*crop_keys, *label_keys, *omit}
    clashes: dict = {}  # configurations that agree on every shown (or omitted) param
    for i in labels:
        clashes.setdefault(tuple(v for k, v in zip(keys, i) if k in shown), []).append(i)
    for ids in (ids for ids in clashes.values() if len(ids) > 1):
        differ = [j for j, k in enumerate(keys) if len({i[j] for i in ids}) > 1]
        for i in ids:
            raw = p.loc[[x == i for x in frame["_id"]]].iloc[0]
            for j in differ:
                value = "–" if plots._missing(raw[keys[j]]) else raw[keys[j]]  # noqa: SLF001
                labels[i] += f", {keys[j]}={value}"
    frame["configuration"] = [labels[i] for i in frame["_id"]]
    frame["baseline"] = frame[P_CROP] == BASELINE_METHOD

    defaults = [canonical(PARAM_DEFAULTS.get(k)) for k in keys]

    def sort_key(r):  # from the identity alone: the same ids whatever omit and show; defaults first
        return (not r["baseline"], *((v != d, plots.sort_key(v)) for v, d in zip(r["_id"], defaults)))

    ordered = sorted(frame.drop_duplicates("_id").to_dict("records"), key=sort_key)
    ids = {r["_id"]: n for n, r in enumerate(ordered)}
    frame["config"] = [ids[i] for i in frame["_id"]]
    frame["order"] = frame["config"]
    cols = ["run_id", "config", "configuration", "baseline", "order", *crop_keys, *label_keys]
    return frame[cols], [*crop_keys, *label_keys]
