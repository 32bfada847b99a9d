"""``paramcrop analyze report``: one study's results as one page, HTML and Markdown.

The page is assembled from the other analyses, called as they are (nothing here computes a
statistic): the spec (the parent run's ``study.yaml``), the trials (every child run: state,
duration, objective, a link to its run page), the summary table (:func:`analysis.tables.table`
once per reported metric: each configuration's mean, t-interval and n, validation and test), the
comparisons (:func:`comparisons`, one call to :func:`analysis.compare.compare` per metric, every
column of its frame shown), the IoU / center-distance curves (:func:`analysis.iou_curves.iou_curves`),
the sweet-spot figure when ``crop.method=matched`` runs are present
(:func:`analysis.sweet_spot.sweet_spot`) and the generator diagnostics when learned crops logged them
(:func:`analysis.generator.generator`). Under each element: the command that reproduces it.

Written to ``--out`` (default ``./analysis-NAME/``) as ``NAME.md`` with its figures in ``NAME/``
beside it and ``NAME.html``, one self-contained file (figures as data-URI PNGs, no script, no
network) that the MLflow UI's artifact viewer renders; for a study both are logged to its parent run
as ``report.html`` and ``report.md`` (figures under ``NAME/``, where the Markdown's links point).
"""
from __future__ import annotations

import base64
import html
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from analysis import plots
from analysis.errors import AnalysisError
from analysis.load import RunQuery, Selection, column
from analysis.report import Report
from paramcrop import sinks

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

HTML_NAME = "report.html"
MD_NAME = "report.md"
"""The page's artifact names on the study's parent run."""
SPEC_ARTIFACT = "study.yaml"
DEFAULT_STORE = "sqlite:///mlflow.db"
"""The working folder's store: commands on the page leave it out."""


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere."""

    text: str
    url: str


@dataclass
class Element:
    """One part of the page: a heading, paragraphs (inline `code` allowed), tables, a figure (a PNG
    in the page's figure folder), the command that reproduces it."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figure: Path | None = None
    command: str | None = None


# --- what the page reports -------------------------------------------------------------------
def reported_metrics(sel: Selection, tag: str | None) -> list[str]:
    """The study's objectives (the parent's comma-separated ``paramcrop.objective`` tag, else the
    selection's objective), each with its other split (``eval/val/X`` <-> ``eval/X``), validation
    first; only metrics some selected run has."""
    asked = [m.strip() for m in (tag or "").split(",") if m.strip()] or [sel.objective]
    val = sinks.val_metric("")
    out: list[str] = []
    for metric in asked:
        if metric.startswith(val):
            out += [metric, "eval/" + metric.removeprefix(val)]
        elif metric.startswith("eval/") and metric.count("/") == 1:
            out += [sinks.val_metric(metric), metric]
        else:
            out.append(metric)
    logged = {c.removeprefix("metrics.") for c in sel.runs.columns if c.startswith("metrics.")}
    return [m for m in dict.fromkeys(out) if m in logged]


def command(name: str, sel: Selection, query: RunQuery, *extra: str) -> str:
    """``paramcrop analyze NAME`` with the selection of ``sel`` / ``query`` and ``extra`` arguments."""
    parts = ["paramcrop", "analyze", name]
    if sel.kind == "study":
        parts += ["--study", sel.name]
    parts += [a for e in query.experiments for a in ("--experiment", e)]
    if query.run_ids:
        parts += ["--runs", ",".join(query.run_ids)]
    if query.tracking_uri and query.tracking_uri != DEFAULT_STORE:
        parts += ["--tracking-uri", sinks.redact_url(query.tracking_uri)]
    return shlex.join([*parts, *extra])


def comparisons(query: RunQuery, metric: str, declared: Sequence[dict], client) -> Report:
    """The comparisons of ``metric``: one call to :func:`analysis.compare.compare`, whose frame the
    page shows whole (every column it has): the spec's declared family (its ``compare:`` list,
    ``declared``), Holm-adjusted over the family, or without one every configuration against the
    default baseline. ``query``: where its files go, not logged."""
    from analysis.compare import compare

    return compare(replace(query, objective=metric), client=client, adjust="holm" if declared else "none")


# --- the elements ----------------------------------------------------------------------------
def _spec(client, sel: Selection) -> dict:
    """The parent run's ``study.yaml`` (empty when there is none: not a study, or not logged)."""
    import yaml

    if not sel.parent_run_id:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(sel.parent_run_id, SPEC_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 - a parent run without the spec: the page says so
            return {}
        return yaml.safe_load(Path(path).read_text()) or {}


def _space(space: dict) -> list[str]:
    lines = []
    for key, dim in (space or {}).items():
        kind = dim.get("type")
        if kind == "variants":
            choices = "; ".join(f"`{name}` = " + ", ".join(f"{k}={v}" for k, v in (sets or {}).items())
                                for name, sets in dim.get("choices", {}).items())
            lines.append(f"`{key}` (variants): {choices}")
        elif kind == "categorical":
            lines.append(f"`{key}`: " + ", ".join(f"`{c}`" for c in dim.get("choices", [])))
        else:
            lines.append(f"`{key}` ({kind}): {dim.get('low')} to {dim.get('high')}" + (", log" if dim.get("log") else ""))
    return lines


def spec_element(spec: dict, sel: Selection) -> Element:
    if not spec:
        return Element("The study", [f"No study spec: {sel.kind} {sel.name!r} is not a study with a "
                                     f"`{SPEC_ARTIFACT}` on its parent run (`--study NAME` reads it)."])
    objectives = spec.get("objective") or []
    objectives = [objectives] if isinstance(objectives, dict) else objectives
    declared = spec.get("compare") or []
    sampler = spec.get("sampler", "grid")
    text = ["What varies: " + ("; ".join(_space(spec.get("search_space"))) or "nothing"),
            "Seeds: " + (", ".join(map(str, spec.get("seeds") or [])) or "none listed (one run per grid point)")
            + f"; sampler `{sampler.get('type') if isinstance(sampler, dict) else sampler}`; data "
            f"`{spec.get('data', 'synthetic')}`.",
            "Objective: " + ", ".join(f"`{o.get('metric')}` ({o.get('direction', 'maximize')})" for o in objectives)
            + " (validation selects, test reports).",
            "Declared comparisons: " + ("; ".join(f"{d.get('against')} against {d.get('baseline')}" for d in declared)
                                        if declared else "none in the spec.")]
    text.append(f"The spec as it ran is the parent run's `{SPEC_ARTIFACT}`; a built-in one also prints with "
                f"`paramcrop study spec NAME`.")
    return Element("The study", text, command=f"paramcrop study run {shlex.quote(str(spec.get('name', sel.name)))}")


def _child_runs(client, sel: Selection) -> pd.DataFrame:
    """Every run under the study's parent run, finished or not (:func:`analysis.load.runs_frame`)."""
    from analysis.load import runs_frame

    if not sel.parent_run_id:
        return sel.runs
    runs, token = [], None
    while True:
        page = client.search_runs(sel.experiment_ids, f"tags.`{sinks.PARENT_RUN_TAG}` = '{sel.parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs_frame(runs)


def trials_element(client, sel: Selection, metrics: list[str], query: RunQuery) -> Element:
    from studies.tracking import run_url

    runs = _child_runs(client, sel)
    trial = pd.to_numeric(column(runs, f"tags.{sinks.TAG_TRIAL}"), errors="coerce")
    runs = runs.assign(_t=trial).sort_values(["_t", "start_time"], kind="stable")
    state = column(runs, f"tags.{sinks.TAG_TRIAL_STATE}").fillna(runs["status"])
    seconds = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
    frame = pd.DataFrame({
        "trial": ["–" if t != t else str(int(t)) for t in runs["_t"]],
        "run": [Link(str(n or r[:8]), run_url(e, r)) for n, r, e in
                zip(runs["run_name"], runs["run_id"], runs["experiment_id"])],
        "state": list(state),
        "duration": ["–" if s != s else f"{int(s) // 60} min {int(s) % 60:02d} s" for s in seconds],
    })
    for metric in metrics:
        frame[metric] = pd.to_numeric(column(runs, f"metrics.{metric}"), errors="coerce").to_numpy()
    if sel.kind == "study":
        cmd = f"paramcrop study show {shlex.quote(sel.name)}"
    else:
        cmd = command("table", sel, query)
    text = [f"{len(frame)} runs; the analyses above count the finished, unpruned ones ({len(sel.runs)}). "
            "Run links open the run in `paramcrop ui` at its default address."]
    return Element("Trials", text, [("", frame.reset_index(drop=True))], command=cmd)


def _label(tab: pd.DataFrame) -> list[str]:
    """Each table row's configuration: its crop label, after framework · backbone, head and losses
    when those differ between rows."""
    from analysis.tables import LOSSES, row_label

    rows = [(row_label(f, b), plots.head_label(h), j) for f, b, h, j in
            zip(tab[plots.P_FRAMEWORK], tab[plots.P_BACKBONE], tab[plots.P_HEAD], tab[LOSSES])]
    if len(set(rows)) <= 1:
        return list(tab["crop"])
    return [f"{r[0]}, {r[1]} head, losses {r[2]} · {c}" for r, c in zip(rows, tab["crop"])]


def _interval(lo: float, hi: float) -> str:
    return "–" if lo != lo else f"[{lo:.3f}, {hi:.3f}]"


def summary_element(client, query: RunQuery, sel: Selection, metrics: list[str], level: float,
                    out: Path) -> tuple[Element, dict[str, pd.DataFrame], list[str]]:
    """The summary table (:func:`analysis.tables.table` per metric) and each metric's table frame."""
    from analysis.tables import table

    frames, notes, parts = {}, [], []
    for metric in metrics:
        rep = table(replace(query, objective=metric, out=out, log=False), level=level, client=client)
        tab = rep.data["table"]
        frames[metric] = tab
        notes += rep.notes + rep.warnings
        parts.append(pd.DataFrame({"config": tab["config"], "configuration": _label(tab), "metric": metric,
                                   "_m": len(parts), "mean": tab["mean"],
                                   f"{plots.percent(level)} interval": [_interval(lo, hi) for lo, hi in
                                                             zip(tab["lower"], tab["upper"])], "n": tab["n"]}))
    text = [f"Per configuration (every param that differs between the runs, seed aside) and metric: the mean of "
            f"each run's final value over its n runs (seeds) and the {plots.percent(level)} Student-t interval. "
            "Validation selects, test reports."]
    commands = "\n".join(command("table", sel, query, "--objective", m) for m in metrics)
    shown = pd.concat(parts, ignore_index=True).sort_values(["config", "_m"], kind="stable")
    shown = shown.drop(columns=["config", "_m"]).reset_index(drop=True)
    return Element("Summary", text, [("", shown)], command=commands), frames, notes


def comparisons_element(client, query: RunQuery, sel: Selection, metrics: list[str], declared: Sequence[dict],
                        out: Path) -> tuple[Element, dict[str, pd.DataFrame], list[str]]:
    frames, notes, tables, text = {}, [], [], []
    for metric in metrics:
        try:
            rep = comparisons(replace(query, out=out, log=False), metric, declared, client)
        except AnalysisError as exc:
            text.append(f"`{metric}`: no comparison: {exc}")
            continue
        frame = rep.data["compare"]
        frames[metric] = frame
        notes += rep.notes + rep.warnings
        tables.append((f"`{metric}`: difference from {frame['baseline'].iloc[0]}", frame.drop(columns="baseline")))
    text.insert(0, "Each configuration against the baseline (the random crop unless the study declares otherwise), "
                   "paired by seed: the mean difference over the seeds both have, its interval and the pairs.")
    commands = "\n".join(command("compare", sel, query, "--objective", m) for m in metrics)
    return Element("Comparisons", text, tables, command=commands), frames, notes


def figure_elements(client, query: RunQuery, sel: Selection, out: Path, level: float) -> tuple[list[Element], list[str]]:
    """The IoU / center-distance curves; the sweet spot with matched crops; the generator with learned crops."""
    from analysis.generator import generator
    from analysis.iou_curves import CurveOptions, iou_curves
    from analysis.sweet_spot import sweet_spot

    q = replace(query, out=out, log=False)
    elements, notes = [], []
    jobs = [("View IoU and center distance over training", "iou-curves",
             lambda: iou_curves(q, CurveOptions(level=level), client=client), command("iou-curves", sel, query))]
    if (column(sel.runs, f"params.{plots.P_CROP}") == "matched").any():
        jobs.append(("Sweet spot: accuracy against the measured view IoU", "sweet-spot",
                     lambda: sweet_spot(q, level=level, client=client), command("sweet-spot", sel, query)))
    if f"metrics.{sinks.GENERATOR_GRAD_NORM}" in sel.runs.columns:
        jobs.append(("The generator during training", "generator",
                     lambda: generator(q, CurveOptions(level=level), client=client), command("generator", sel, query)))
    for title, stem, run, cmd in jobs:
        try:
            rep = run()
        except AnalysisError as exc:
            elements.append(Element(title, [f"Not drawn: {exc}"], command=cmd))
            continue
        notes += rep.notes + rep.warnings
        elements.append(Element(title, tables=rep.tables, figure=out / f"{stem}.png", command=cmd))
    return elements, notes


# --- rendering -------------------------------------------------------------------------------
def _cell(value) -> str:
    if isinstance(value, Link):
        return value.text
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3f}"
    return str(value)


def _md_cell(value) -> str:
    text = f"[{value.text}]({value.url})" if isinstance(value, Link) else _cell(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, intro: list[str], elements: list[Element], figures: str) -> str:
    """The page as Markdown; figures linked as ``figures/<png>``."""
    lines = [f"# {title}", "", *[p for para in intro for p in (para, "")]]
    for el in elements:
        lines += [f"## {el.title}", ""]
        for para in el.text:
            lines += [para, ""]
        for caption, frame in el.tables:
            if caption:
                lines += [caption, ""]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in frame.columns) + " |")
            lines.append("|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---"
                                        for c in frame.columns) + "|")
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
            lines.append("")
        if el.figure is not None:
            lines += [f"![{el.title}]({figures}/{el.figure.name})", ""]
        if el.command:
            lines += ["Reproduce:", "", "```bash", el.command, "```", ""]
    return "\n".join(lines)


BAND = "#1d6b57"
"""The colour of the band across the page's top (what a screenshot test looks for)."""
_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1100px;
margin:0 auto 1.5em;padding:0 1em;color:#1f2328;line-height:1.45;font-size:14px;border-top:10px solid BAND}
h1{font-size:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;
border-bottom:1px solid #eaeef2}table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px}th{background:#f6f8fa;text-align:left}td.n{text-align:right;
font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;border:1px solid #eaeef2}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;background:#f6f8fa}
pre{padding:.5em .8em;overflow-x:auto;border-radius:4px}.cmd{color:#57606a;font-size:12px;margin-bottom:.2em}
.wide{overflow-x:auto}
caption{text-align:left;font-weight:600;padding:.2em 0}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _html_cell(value) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.url)}">{html.escape(value.text)}</a>'
    return html.escape(_cell(value))


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def to_html(title: str, intro: list[str], elements: list[Element]) -> str:
    """The page as one HTML file: inline CSS, figures as data URIs, no script."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS.replace('BAND', BAND)}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", *[f"<p>{_inline(p)}</p>" for p in intro]]
    for el in elements:
        parts.append(f"<h2>{html.escape(el.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in el.text]
        for caption, frame in el.tables:
            numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
            parts.append('<div class="wide"><table>' + (f"<caption>{_inline(caption)}</caption>" if caption else "")
                         + "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns) + "</tr>")
            parts += ["<tr>" + "".join(f'<td{" class=n" if n else ""}>{_html_cell(v)}</td>' for v, n in zip(row, numeric))
                      + "</tr>" for row in frame.itertuples(index=False)]
            parts.append("</table></div>")
        if el.figure is not None:
            parts.append(f'<p><img alt="{html.escape(el.title)}" src="{data_uri(el.figure)}"></p>')
        if el.command:
            parts.append(f'<div class="cmd">Reproduce:</div><pre>{html.escape(el.command)}</pre>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- the command -----------------------------------------------------------------------------
def report_page(query: RunQuery, level: float = 0.95, client: "MlflowClient | None" = None) -> Report:
    """Assemble, write and (for a study) log the page (module doc)."""
    from analysis.stats import check_level

    check_level(level)
    client, sel = query.resolve(client)
    name = plots.safe_name(sel.name)
    out_dir = Path(query.out) if query.out is not None else plots.default_out(sel.name)
    tag = client.get_run(sel.parent_run_id).data.tags.get(sinks.TAG_OBJECTIVE) if sel.parent_run_id else None
    metrics = reported_metrics(sel, tag)
    if not metrics:
        from analysis.errors import NoDataError

        raise NoDataError(f"no run of {sel.kind} {sel.name!r} has the objective {sel.objective}")
    spec = _spec(client, sel)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        summary, tables, notes = summary_element(client, query, sel, metrics, level, work)
        compared, diffs, compare_notes = comparisons_element(client, query, sel, metrics, spec.get("compare") or [],
                                                             work)
        figures, figure_notes = figure_elements(client, query, sel, work, level)
        elements = [summary, compared, *figures, spec_element(spec, sel), trials_element(client, sel, metrics, query)]
        notes = list(dict.fromkeys(sel.notes + notes + compare_notes + figure_notes))
        if notes:
            elements.append(Element("Notes", notes))
        title = sel.title("results")
        intro = [str(spec.get("description") or "").strip(),
                 f"{len(sel.runs)} finished runs. Means with their {plots.percent(level)} t-interval and n runs (seeds); "
                 "differences paired by seed. Every table and figure comes from the analysis named under it; "
                 "the spec and the trials follow them.",
                 f"This page: `{command('report', sel, query)}`"]
        intro = [p for p in intro if p]
        drawn = [el for el in elements if el.figure is not None]
        figures_paths = plots.write_outputs(out_dir / name, {el.figure.name: (lambda dst, src=el.figure: _half(src, dst))
                                                             for el in drawn})
        for el in drawn:
            el.figure = out_dir / name / el.figure.name
        writers = {f"{name}.md": plots.text_writer(to_markdown(title, intro, elements, name)),
                   f"{name}.html": plots.text_writer(to_html(title, intro, elements))}
        paths = plots.write_outputs(out_dir, writers) + figures_paths
    report = Report(f"report ({sel.kind} {sel.name})", paths=paths, notes=notes)
    if query.log and sel.kind == "study" and sel.parent_run_id:
        warning = _log(client, sel.parent_run_id, out_dir, name)
        if warning:
            report.warnings.append(warning)
        else:
            report.logged_to = sel.parent_run_id
    report.data.update(selection=sel, metrics=metrics, tables=tables, compare=diffs, spec=spec,
                       html=out_dir / f"{name}.html", markdown=out_dir / f"{name}.md")
    return report


def _half(src: Path, dst: Path) -> None:
    """``src`` at half its size (the analyses draw at 300 dpi; a page needs 150)."""
    from PIL import Image

    with Image.open(src) as image:
        image.reduce(2).save(dst, format="png", optimize=True)


def _log(client, run_id: str, out_dir: Path, name: str) -> str | None:
    """Log the page as ``report.html`` / ``report.md`` and its figures under ``NAME/``."""
    with tempfile.TemporaryDirectory() as tmp:
        html_path, md_path = Path(tmp) / HTML_NAME, Path(tmp) / MD_NAME
        shutil.copyfile(out_dir / f"{name}.html", html_path)
        shutil.copyfile(out_dir / f"{name}.md", md_path)
        return (plots.log_to_run(client, run_id, [html_path, md_path], None)
                or plots.log_to_run(client, run_id, sorted((out_dir / name).glob("*.png")), name))
