"""Paired differences from a baseline configuration: ``paramcrop analyze compare`` and the
``diff`` columns of ``analyze table``.

- **Configurations** as everywhere (:mod:`analysis.groups`); each run counts with its final value
  of the objective (:func:`analysis.values.objective_values`).
- **Baseline**: ``--baseline`` is a configuration's label exactly as the comparison shows it
  (``"Random crop (baseline), crop.area=(0.5, 1.0)"``), or param conditions ``key=value`` joined
  by ``,`` outside brackets (``crop.method=random`` or ``crop.method=random,crop.area=(0.5, 1.0)``;
  values compare as in :mod:`analysis.groups`) that exactly one configuration meets. Default:
  the random-crop configuration (``crop.method=random``) when there is exactly one. Anything else
  is an error (exit 2) that lists the configurations; a baseline without objective values, or
  nothing but the baseline, exits 1.
- **Pairs**: by ``seed`` param: a configuration's run with seed ``s`` against the baseline's run
  with seed ``s`` (several runs with one seed in one configuration: their mean). Per
  configuration: ``pairs`` (matched seeds), ``diff`` (mean of configuration - baseline over the
  pairs), ``diff_std`` (sample std of the differences), the ``level`` (95 %) Student-t interval of
  the mean difference ``diff_lower``, ``diff_upper`` (:func:`analysis.stats.t_interval`: NaN for
  one pair) and ``unpaired``: seeds of either side without a partner (and runs without a seed),
  left out; a note names them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from analysis import groups, plots
from analysis.errors import NoDataError, NotFoundError
from analysis.load import RunQuery, column
from analysis.plots import BASELINE_METHOD, P_CROP
from analysis.report import Report
from analysis.stats import check_level, t_interval
from analysis.values import seeded_values

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

DIFF_COLUMNS = ["pairs", "diff", "diff_std", "diff_lower", "diff_upper", "unpaired"]
STEM = "compare"


def conditions(spec: str) -> dict[str, str]:
    """``"a=1,b=(0.5, 1.0)"`` -> ``{"a": "1", "b": "(0.5, 1.0)"}`` (commas inside brackets kept);
    raises :class:`NotFoundError` when a part is not ``key=value``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise NotFoundError(f"--baseline {spec!r}: {part.strip()!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _listing(labels: Sequence[str]) -> str:
    return "Configurations:\n" + "\n".join(f"  {lab}" for lab in labels)


def choose_baseline(runs: pd.DataFrame, configs: pd.DataFrame, spec: str | None,
                    required: bool = True) -> int | None:
    """The baseline's ``config`` id (module doc). ``configs``: :func:`analysis.groups.configurations`
    of ``runs`` (its labels are the ones ``spec`` may name). Without ``spec`` and without a single
    random-crop configuration: None, or (``required``) :class:`NotFoundError`."""
    first = configs.drop_duplicates("config").sort_values("config")
    labels = list(first["configuration"])
    if spec is not None and spec.strip() in labels:
        return int(first.loc[first["configuration"] == spec.strip(), "config"].iloc[0])
    if spec is None:
        wanted = {P_CROP: BASELINE_METHOD}
        what = f"no --baseline given and {{}} random-crop configurations ({P_CROP}=random)"
    else:
        if "=" not in spec:
            raise NotFoundError(f"--baseline {spec!r} is no configuration here and no key=value condition. "
                                + _listing(labels))
        wanted, what = conditions(spec), f"--baseline {spec!r} matches {{}} configurations"
    match = pd.Series(True, index=runs.index)
    for key, value in wanted.items():
        if f"params.{key}" not in runs.columns and key not in groups.PARAM_DEFAULTS:
            raise NotFoundError(f"--baseline {spec!r}: no param {key!r} in these runs. " + _listing(labels))
        logged = column(runs, f"params.{key}", groups.PARAM_DEFAULTS.get(key))
        match &= logged.map(groups.canonical) == groups.canonical(value)
    ids = sorted(set(configs.loc[match.to_numpy(), "config"]))
    if len(ids) == 1:
        return int(ids[0])
    if spec is None and not required:
        return None
    hint = "; name one with --baseline LABEL or --baseline KEY=VALUE,..." if spec is None else ""
    raise NotFoundError(what.format(len(ids)) + hint + ". " + _listing(labels))


def paired(values: pd.DataFrame, baseline: int, level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """Per configuration other than ``baseline`` (``values``: ``config, configuration, seed,
    objective``): ``config, configuration`` and :data:`DIFF_COLUMNS` (module doc), in config
    order; and the notes on unpaired seeds."""
    v = values.assign(seed=values["seed"].map(groups.canonical))
    seeded = v.dropna(subset=["seed"])
    per = seeded.groupby(["config", "seed"])["objective"].mean()
    base = per.loc[baseline] if baseline in per.index.get_level_values(0) else pd.Series(dtype=float)
    base_label = v.loc[v["config"] == baseline, "configuration"].iloc[0]
    rows, notes = [], []
    for config, g in v[v["config"] != baseline].groupby("config", sort=True):
        mine = per.loc[config] if config in per.index.get_level_values(0) else pd.Series(dtype=float)
        common = mine.index.intersection(base.index)
        d = (mine[common] - base[common]).to_numpy(float)
        s = t_interval(d, level)
        unseeded = int(g["seed"].isna().sum())
        unpaired = len(mine.index.difference(base.index)) + len(base.index.difference(mine.index)) + unseeded
        label = g["configuration"].iloc[0]
        rows.append({"config": config, "configuration": label, "pairs": s["n"], "diff": s["mean"],
                     "diff_std": s["std"], "diff_lower": s["lower"], "diff_upper": s["upper"], "unpaired": unpaired})
        if unpaired:
            seeds = [f"{x:g}" if isinstance(x, float) else str(x) for x in
                     list(mine.index.difference(base.index)) + list(base.index.difference(mine.index))]
            notes.append(f"{label} vs {base_label}: {unpaired} unpaired seed(s) or run(s) without a seed left out "
                         f"({', '.join(seeds + ['no seed'] * unseeded)}); {s['n']} pair(s) count.")
    return pd.DataFrame(rows, columns=["config", "configuration", *DIFF_COLUMNS]), notes


def forest(data: pd.DataFrame, baseline: str, title: str, objective: str, level: float):
    """Difference from the baseline per configuration: point and t-interval bar, a zero line."""
    labels = [f"{c} (n={n})" for c, n in zip(data["configuration"], data["pairs"])]
    width = max(plots.PANEL_WIDTH_IN, min(3 * plots.PANEL_WIDTH_IN, 2.2 + 0.055 * max(map(len, labels))))
    fig = plots.new_figure(width, 1.2 + 0.3 * len(data))
    ax = fig.subplots()
    y = np.arange(len(data))[::-1]
    err = np.vstack([data["diff"] - data["diff_lower"], data["diff_upper"] - data["diff"]])
    ax.errorbar(data["diff"], y, xerr=np.nan_to_num(err), fmt="o", color=plots.palette(1)[0], markersize=4,
                capsize=2.5, linewidth=1.4)
    ax.axvline(0.0, color=plots.BASELINE_COLOUR, linestyle="--", linewidth=1.0)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(data) - 0.3)
    ax.set_xlabel(f"Difference in {objective}\n(paired by seed, {level:.0%} t-interval)")
    ax.grid(axis="y", visible=False)
    fig.suptitle(f"{title}\nbaseline: {baseline}")
    return fig


def diff_lines(data: pd.DataFrame, level: float) -> list[str]:
    """Markdown table rows of :func:`paired` output: configuration, difference, interval, pairs, unpaired."""
    lines = [f"| configuration | difference | {level:.0%} interval | pairs | unpaired |", "|---|---:|:---:|---:|---:|"]
    for r in data.itertuples(index=False):
        interval = "–" if r.diff_lower != r.diff_lower else f"[{r.diff_lower:+.3f}, {r.diff_upper:+.3f}]"
        diff = "–" if r.diff != r.diff else f"{r.diff:+.3f}"
        lines.append(f"| {r.configuration} | {diff} | {interval} | {r.pairs} | {r.unpaired} |")
    return lines


def explanation(baseline: str, objective: str, level: float) -> str:
    return (f"Baseline: {baseline}. Objective `{objective}`: difference configuration - baseline, paired by "
            f"seed: mean over the pairs, its {level:.0%} t-interval, n pairs; unpaired seeds are left out.")


def markdown(data: pd.DataFrame, baseline: str, title: str, objective: str, level: float) -> str:
    lines = [f"# {title}", "", explanation(baseline, objective, level), "", *diff_lines(data, level)]
    return "\n".join(lines) + "\n"


def compare(query: RunQuery, baseline: str | None = None, level: float = 0.95,
            client: "MlflowClient | None" = None) -> Report:
    """Compute, write and (for a study) log ``compare.csv``, ``compare.md`` and the forest plot
    ``compare.png``/``.pdf``."""
    check_level(level)
    client, sel = query.resolve(client)
    values, configs, notes = seeded_values(sel)
    chosen = choose_baseline(sel.runs, configs, baseline)
    if chosen not in set(values["config"]):
        raise NoDataError(f"the baseline {configs.loc[configs['config'] == chosen, 'configuration'].iloc[0]} "
                            f"has no {sel.objective} value")
    data, pair_notes = paired(values, chosen, level)
    if data.empty:
        raise NoDataError("only the baseline configuration is here: nothing to compare. "
                            + _listing(list(configs.drop_duplicates("config")["configuration"])))
    base_label = values.loc[values["config"] == chosen, "configuration"].iloc[0]
    data = data.assign(baseline=base_label)
    data = data[["configuration", "baseline", *DIFF_COLUMNS]]
    title = sel.title(f"{sel.objective} vs baseline")
    report = Report(f"compare ({sel.kind} {sel.name})", notes=sel.notes + notes + pair_notes)
    if (data["pairs"] == 0).any():
        report.warnings.append("no seed in common with the baseline: " + ", ".join(
            data.loc[data["pairs"] == 0, "configuration"]))
    with plots.paper_style():
        fig = forest(data, base_label, title, sel.objective, level)
        writers = {f"{STEM}.csv": plots.csv_writer(data),
                   f"{STEM}.md": plots.text_writer(markdown(data, base_label, title, sel.objective, level)),
                   **plots.figure_writers(fig, STEM)}
        plots.publish(report, client, sel, query.out, writers, query.log)
    report.tables.append((f"{sel.name}: {sel.objective}, difference from {base_label} (paired by seed)",
                          data.drop(columns="baseline")))
    report.data.update(compare=data, selection=sel)
    return report
