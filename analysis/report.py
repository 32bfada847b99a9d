"""What an analysis hands back to the CLI, and how the CLI prints it (rich)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Report:
    """Paths written, tables to show, notes and warnings (printed to stderr)."""

    title: str
    paths: list[Path] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    logged_to: str | None = None          # run id the files were logged to as artifacts
    data: dict = field(default_factory=dict)  # the computed frames, for callers and tests


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def print_report(report: Report, width: int | None = None) -> None:
    """Paths and tables to stdout; notes and warnings to stderr."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Console(width=width, highlight=False)
    if width is None and not out.is_terminal:  # files, pipes, tests: do not squeeze tables to 80
        out = Console(width=140, highlight=False)
    err = Console(stderr=True, width=width, highlight=False)
    if width is None and not err.is_terminal:
        err = Console(stderr=True, width=140, highlight=False)
    for note in report.notes:
        err.print(f"note: {note}", markup=False)
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
    for caption, frame in report.tables:
        table = Table(title=caption, title_justify="left", box=box.SIMPLE_HEAD)
        for col in frame.columns:
            table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left")
        for row in frame.itertuples(index=False):
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
    out.print(f"{report.title}: wrote", markup=False)
    for path in report.paths:
        out.print(f"  {path}", markup=False)
    if report.logged_to:
        out.print(f"logged as artifacts to MLflow run {report.logged_to}", markup=False)
