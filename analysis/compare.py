"""Paired differences from a baseline configuration: ``paramcrop analyze compare`` and the
``diff`` columns of ``analyze table``.

- **Configurations** as everywhere (:mod:`analysis.groups`); each run counts with its final value
  of the objective (:func:`analysis.values.objective_values`).
- **Baseline**: ``--baseline`` is a configuration's label exactly as the comparison shows it
  (``"Random crop (baseline), crop.area=(0.5, 1.0)"``), or param conditions ``key=value`` joined
  by ``,`` outside brackets (``crop.method=random`` or ``crop.method=random,crop.area=(0.5, 1.0)``;
  values compare as in :mod:`analysis.groups`) that exactly one configuration meets. Default:
  the random-crop configuration (``crop.method=random``) when there is exactly one
  (:func:`analysis.family.choose_baseline`). Anything else
  is an error (exit 2) that lists the configurations; a baseline without objective values, or
  nothing but the baseline, exits 1.
- **Pairs**: by ``seed`` param: a configuration's run with seed ``s`` against the baseline's run
  with seed ``s`` (several runs with one seed in one configuration: their mean). Per
  configuration: ``pairs`` (matched seeds), ``diff`` (mean of configuration - baseline over the
  pairs), ``diff_std`` (sample std of the differences), the ``level`` (95 %) Student-t interval of
  the mean difference ``diff_lower``, ``diff_upper`` (:func:`analysis.stats.t_interval`: NaN for
  one pair) and ``unpaired``: seeds of either side without a partner (and runs without a seed),
  left out; a note names them.
- **Family** (:func:`analysis.family.comparisons`): without ``--baseline``, a study whose spec declares
  ``compare`` makes the declared comparisons (a ``declared`` column names each); otherwise every
  configuration against the baseline.
- Beside each t-interval (``analyze compare`` only, :func:`comparison_table`):

  - ``p_value``: the paired t-test of the differences (two-sided, mean 0;
    :func:`analysis.resampling.paired_t_p`); ``p_adjusted``: with ``--adjust holm``, Holm's
    step-down adjustment over the comparisons of the call (:func:`analysis.resampling.holm`), with
    ``none`` (default) the p-value itself. ``adj_lower``, ``adj_upper``: the t-interval at the level
    the comparison's Holm step tests at, ``1 - alpha / (m - k + 1)`` for the k-th smallest of m
    p-values (``alpha = 1 - level``; :func:`analysis.resampling.holm_levels`); these widen the
    comparisons with the smallest p-values most and are not simultaneous intervals (the
    conservative simultaneous ones are Bonferroni's, every interval at ``1 - alpha / m``). With
    ``none`` they are the t-interval.
  - ``p_better``: P(A > B) over the paired seeds, the share of pairs in which the configuration
    beats the baseline (higher objective), a tie counting 1/2
    (:func:`analysis.resampling.probability_of_improvement`); ``p_better_lower``,
    ``p_better_upper``: its Wilson score interval at ``level`` over the n pairs
    (:func:`analysis.resampling.wilson_interval`).
  - ``boot_lower``, ``boot_upper``: the hierarchical bootstrap percentile interval at ``level`` of
    the mean difference: resample the pairs (seeds) with replacement, then within each drawn pair
    the queries with replacement, from the runs' per-query predictions (:mod:`analysis.queries`);
    the two runs of a pair were evaluated on the same queries, so a pair's queries are resampled
    together (per query: A correct - B correct; several runs of one seed: their mean per query), and
    apart from the other pairs' (conservative: the seed level already carries part of that noise).
    :data:`RESAMPLES` resamples, seed :data:`BOOTSTRAP_SEED`
    (:func:`analysis.resampling.hierarchical_bootstrap`): deterministic. Empty, with a note, for runs
    without predictions or an objective that has none.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import groups, plots
from analysis.errors import NotFoundError
from analysis.family import comparisons
from analysis.load import RunQuery
from analysis.report import Report
from analysis.stats import check_level, t_interval
from analysis.values import seeded_values

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

DIFF_COLUMNS = ["pairs", "diff", "diff_std", "diff_lower", "diff_upper", "unpaired"]
TEST_COLUMNS = ["p_value", "p_adjusted", "adj_lower", "adj_upper", "p_better", "p_better_lower", "p_better_upper",
                "boot_lower", "boot_upper"]
"""What :func:`comparison_table` adds to :data:`DIFF_COLUMNS` (module doc)."""
ADJUSTMENTS = ("none", "holm")
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
STEM = "compare"


def per_seed(values: pd.DataFrame) -> pd.Series:
    """Mean objective per ``(config, seed)`` of the runs with a seed (``values``: canonical seeds)."""
    return values.dropna(subset=["seed"]).groupby(["config", "seed"])["objective"].mean()


def _of(per: pd.Series, config: int) -> pd.Series:
    return per.loc[config] if config in per.index.get_level_values(0) else pd.Series(dtype=float)


def differences(per: pd.Series, config: int, baseline: int) -> pd.Series:
    """``seed -> config - baseline`` over the seeds both have (``per``: :func:`per_seed`)."""
    mine, base = _of(per, config), _of(per, baseline)
    common = mine.index.intersection(base.index)
    return mine[common] - base[common]


def paired(values: pd.DataFrame, baseline: int, level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """Per configuration other than ``baseline`` (``values``: ``config, configuration, seed,
    objective``): ``config, configuration`` and :data:`DIFF_COLUMNS` (module doc), in config
    order; and the notes on unpaired seeds."""
    v = values.assign(seed=values["seed"].map(groups.canonical))
    per = per_seed(v)
    base = _of(per, baseline)
    base_label = v.loc[v["config"] == baseline, "configuration"].iloc[0]
    rows, notes = [], []
    for config, g in v[v["config"] != baseline].groupby("config", sort=True):
        mine = _of(per, config)
        d = differences(per, config, baseline).to_numpy(float)
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


def forest(data: pd.DataFrame, title: str, objective: str, level: float, baseline: str | None = None):
    """Difference from the baseline per comparison: point, t-interval bar and (where computed) the
    hierarchical bootstrap interval below it, a zero line."""
    names = data["declared"] if "declared" in data.columns else data["configuration"]
    labels = [f"{c} (n={n})" for c, n in zip(names, data["pairs"])]
    width = max(plots.PANEL_WIDTH_IN, min(3 * plots.PANEL_WIDTH_IN, 2.2 + 0.055 * max(map(len, labels))))
    fig = plots.new_figure(width, 1.2 + 0.3 * len(data))
    ax = fig.subplots()
    y = np.arange(len(data))[::-1].astype(float)
    colours = plots.palette(2)
    err = np.vstack([data["diff"] - data["diff_lower"], data["diff_upper"] - data["diff"]])
    ax.errorbar(data["diff"], y, xerr=np.nan_to_num(err), fmt="o", color=colours[0], markersize=4,
                capsize=2.5, linewidth=1.4, label=f"{plots.percent(level)} t-interval")
    if "boot_lower" in data.columns and data["boot_lower"].notna().any():
        ax.hlines(y - 0.22, data["boot_lower"], data["boot_upper"], color=colours[1], linewidth=1.4,
                  label="hierarchical bootstrap")
        fig.legend(loc="outside lower center", ncol=2, frameon=False)
    ax.axvline(0.0, color=plots.BASELINE_COLOUR, linestyle="--", linewidth=1.0)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(data) - 0.3)
    ax.set_xlabel(f"Difference in {objective}\n(paired by seed, {plots.percent(level)} intervals)")
    ax.grid(axis="y", visible=False)
    fig.suptitle(f"{title}\nbaseline: {baseline}" if baseline else title)
    return fig


def diff_lines(data: pd.DataFrame, level: float) -> list[str]:
    """Markdown table rows of :func:`paired` output: configuration, difference, interval, pairs, unpaired."""
    lines = [f"| configuration | difference | {plots.percent(level)} interval | pairs | unpaired |", "|---|---:|:---:|---:|---:|"]
    for r in data.itertuples(index=False):
        interval = "–" if r.diff_lower != r.diff_lower else f"[{r.diff_lower:+.3f}, {r.diff_upper:+.3f}]"
        diff = "–" if r.diff != r.diff else f"{r.diff:+.3f}"
        lines.append(f"| {r.configuration} | {diff} | {interval} | {r.pairs} | {r.unpaired} |")
    return lines


def explanation(baseline: str, objective: str, level: float) -> str:
    return (f"Baseline: {baseline}. Objective `{objective}`: difference configuration - baseline, paired by "
            f"seed: mean over the pairs, its {plots.percent(level)} t-interval, n pairs; unpaired seeds are left out.")


def check_adjust(adjust: str) -> str:
    """``none`` or ``holm`` (else :class:`NotFoundError`, exit 2)."""
    if adjust not in ADJUSTMENTS:
        raise NotFoundError(f"--adjust must be one of {', '.join(ADJUSTMENTS)}, got {adjust!r}")
    return adjust


def pair_queries(values: pd.DataFrame, outcomes: dict, against: int, baseline: int, seeds) -> list[np.ndarray] | None:
    """Per seed, the per-query differences ``against - baseline`` (each side: mean over its runs of
    that seed), on the queries both were evaluated on; None when a run has no predictions."""
    out = []
    for seed in seeds:
        sides = []
        for config in (against, baseline):
            ids = values.loc[(values["config"] == config) & (values["seed"] == seed), "run_id"]
            if any(r not in outcomes for r in ids):
                return None
            sides.append(pd.concat([outcomes[r] for r in ids], axis=1).mean(axis=1))
        a, b = sides[0].align(sides[1], join="inner")
        out.append((a - b).to_numpy(float))
    return out


def comparison_table(sel, client: "MlflowClient", baseline: str | None = None, adjust: str = "none",
                     level: float = 0.95, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(table, notes, warnings)``: one row per comparison of the call's family (module doc):
    ``[declared,] configuration, baseline`` and :data:`DIFF_COLUMNS` + :data:`TEST_COLUMNS`. What
    ``analyze compare`` writes, and what a report shows."""
    from analysis import resampling
    from analysis.queries import QueryOutcomes, source

    check_level(level)
    check_adjust(adjust)
    values, configs, notes = seeded_values(sel)
    values = values.assign(seed=values["seed"].map(groups.canonical))
    pairs, family_notes = comparisons(sel, client, values, configs, baseline)
    notes += family_notes
    labels = dict(zip(configs["config"], configs["configuration"]))
    per = per_seed(values)
    try:
        source(sel.objective)
        outcomes, missing = QueryOutcomes(client).outcomes(values["run_id"], sel.objective)
    except NotFoundError:
        outcomes, missing = {}, None
        notes.append(f"{sel.objective} has no per-query predictions: no hierarchical bootstrap interval")
    rows, diffs = [], []
    for pair in pairs:
        summary, pair_notes = paired(values[values["config"].isin([pair.baseline, pair.against])], pair.baseline, level)
        notes += pair_notes
        row = summary.iloc[0].to_dict()
        d = differences(per, pair.against, pair.baseline)
        diffs.append(d.to_numpy(float))
        share = resampling.probability_of_improvement(d)
        lower, upper = np.nan, np.nan
        queries = pair_queries(values, outcomes, pair.against, pair.baseline, d.index) if missing is not None else None
        if queries:
            lower, upper = resampling.hierarchical_bootstrap(queries, level, resamples, seed)
        rows.append({**({"declared": pair.declared} if pair.declared else {}), "configuration": labels[pair.against],
                     "baseline": labels[pair.baseline], **{c: row[c] for c in DIFF_COLUMNS},
                     "p_value": resampling.paired_t_p(d), "p_better": share,
                     **dict(zip(["p_better_lower", "p_better_upper"], resampling.wilson_interval(share, len(d), level))),
                     "boot_lower": lower, "boot_upper": upper})
    if missing:
        notes.append(f"{len(missing)} run(s) without per-query predictions: no hierarchical bootstrap interval "
                     f"where they count ({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}); write them "
                     f"with `paramcrop eval RUN_ID --data SOURCE`")
    data = pd.DataFrame(rows)
    p = data["p_value"].to_numpy(float)
    if adjust == "holm":
        data["p_adjusted"] = resampling.holm(p)
        bounds = [t_interval(d, lv) if lv == lv else {"lower": np.nan, "upper": np.nan}
                  for d, lv in zip(diffs, resampling.holm_levels(p, level))]
        data["adj_lower"] = [b["lower"] for b in bounds]
        data["adj_upper"] = [b["upper"] for b in bounds]
    else:
        data["p_adjusted"], data["adj_lower"], data["adj_upper"] = p, data["diff_lower"], data["diff_upper"]
    first = ["declared"] if "declared" in data.columns else []
    warnings = []
    if (data["pairs"] == 0).any():
        warnings.append("no seed in common with the baseline: " + ", ".join(data.loc[data["pairs"] == 0, "configuration"]))
    return data[first + ["configuration", "baseline", *DIFF_COLUMNS, *TEST_COLUMNS]], notes, warnings


def markdown(data: pd.DataFrame, title: str, objective: str, level: float, adjust: str) -> str:
    """The comparison table (:func:`comparison_table`) in Markdown; a baseline column when it has several."""
    def num(v, fmt="{:+.3f}"):
        return "–" if v != v else fmt.format(v)

    def interval(lo, hi, fmt="{:+.3f}"):
        return "–" if lo != lo else f"[{fmt.format(lo)}, {fmt.format(hi)}]"

    names = data["declared"] if "declared" in data.columns else data["configuration"]
    bases = list(dict.fromkeys(data["baseline"]))
    holm_ = adjust == "holm"
    lines = [f"# {title}", "", (f"Baseline: {bases[0]}. " if len(bases) == 1 else "")
             + f"Objective `{objective}`: difference configuration - baseline, paired by seed: mean over the pairs, "
             f"its {plots.percent(level)} t-interval, the paired t-test's p"
             + (" (Holm-adjusted over these comparisons) and the interval at the level of its Holm step" if holm_ else "")
             + f", P(A > B) over the seeds (ties 1/2) with its {plots.percent(level)} Wilson interval, and the {plots.percent(level)} "
             "hierarchical bootstrap interval (seeds, then queries). Unpaired seeds are left out.", "",
             "| comparison | " + ("baseline | " if len(bases) > 1 else "") + f"difference | {plots.percent(level)} interval | "
             + ("p (Holm) | Holm interval | " if holm_ else "p | ")
             + "P(A > B) | bootstrap interval | pairs | unpaired |",
             "|---|" + ("---|" if len(bases) > 1 else "") + "---:|:---:|---:|" + (":---:|" if holm_ else "")
             + "---:|:---:|---:|---:|"]
    for name, r in zip(names, data.itertuples(index=False)):
        cells = [name, *([r.baseline] if len(bases) > 1 else []), num(r.diff), interval(r.diff_lower, r.diff_upper),
                 num(r.p_adjusted, "{:.3g}")]
        if holm_:
            cells.append(interval(r.adj_lower, r.adj_upper))
        cells += [f"{num(r.p_better, '{:.2f}')} {interval(r.p_better_lower, r.p_better_upper, '{:.2f}')}",
                  interval(r.boot_lower, r.boot_upper), str(r.pairs), str(r.unpaired)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(query: RunQuery, baseline: str | None = None, level: float = 0.95, adjust: str = "none",
            client: "MlflowClient | None" = None) -> Report:
    """Compute (:func:`comparison_table`), write and (for a study) log ``compare.csv``, ``compare.md``
    and the forest plot ``compare.png``/``.pdf``."""
    check_level(level)
    check_adjust(adjust)
    client, sel = query.resolve(client)
    data, notes, warnings = comparison_table(sel, client, baseline, adjust, level)
    bases = list(dict.fromkeys(data["baseline"]))
    title = sel.title(f"{sel.objective} vs baseline" if len(bases) == 1 else f"{sel.objective}, declared comparisons")
    report = Report(f"compare ({sel.kind} {sel.name})", notes=sel.notes + notes, warnings=warnings)
    with plots.paper_style():
        fig = forest(data, title, sel.objective, level, bases[0] if len(bases) == 1 else None)
        writers = {f"{STEM}.csv": plots.csv_writer(data),
                   f"{STEM}.md": plots.text_writer(markdown(data, title, sel.objective, level, adjust)),
                   **plots.figure_writers(fig, STEM)}
        plots.publish(report, client, sel, query.out, writers, query.log)
    shown = ["declared"] if "declared" in data.columns else []
    shown += ["configuration"] + (["baseline"] if len(bases) > 1 else [])
    shown += ["pairs", "diff", "diff_lower", "diff_upper", "p_adjusted", "p_better", "boot_lower", "boot_upper"]
    caption = (f"{sel.name}: {sel.objective}, difference from {bases[0]} (paired by seed)" if len(bases) == 1
               else f"{sel.name}: {sel.objective}, the declared comparisons (paired by seed)")
    report.tables.append((caption, data[shown].rename(columns={"p_adjusted": "p_holm" if adjust == "holm" else "p"})))
    report.data.update(compare=data, selection=sel)
    return report
