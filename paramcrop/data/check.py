"""``paramcrop data check``: scan a dataset and say whether it is usable.

Broken files are reported, not fatal. A dataset is *not* usable when nothing is readable, when no
training video is readable, or when a class has no readable video. (A missing split file or folder
fails earlier, in :func:`.sources.resolve_source`.)
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .records import DatasetSpec
from .video import scan_videos

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class CheckReport:
    """Scan results: ``readable[split][label]`` counts, ``unreadable`` ``(path, reason)`` pairs and
    their count per label, the frame counts and ``(width, height)`` resolutions of readable videos."""

    classes: list[str]
    readable: dict[str, Counter[int]]
    unreadable: list[tuple[Path, str]]
    unreadable_per_class: Counter[int]
    frame_counts: list[int]
    resolutions: Counter[tuple[int, int]]

    @property
    def problems(self) -> list[str]:
        if not self.frame_counts:
            return ["no video is readable"]
        problems = [] if self.readable["train"] else ["no training video is readable"]
        totals = self.readable["train"] + self.readable["test"]
        problems += [f"class {name!r} has no readable video" for label, name in enumerate(self.classes) if not totals[label]]
        return problems

    @property
    def usable(self) -> bool:
        return not self.problems


def check_dataset(spec: DatasetSpec, *, progress: bool = False) -> CheckReport:
    """Probe every train and test video of ``spec``."""
    parts = [("train", r) for r in spec.train] + [("test", r) for r in spec.test]
    infos, unreadable = scan_videos([r.path for _, r in parts], progress=progress)
    report = CheckReport(spec.classes, {"train": Counter(), "test": Counter()}, unreadable, Counter(), [], Counter())
    for (split, record), info in zip(parts, infos):
        if info is None:
            report.unreadable_per_class[record.label] += 1
        else:
            report.readable[split][record.label] += 1
            report.frame_counts.append(info.frames)
            report.resolutions[(info.width, info.height)] += 1
    return report


def print_report(report: CheckReport, console: Console) -> None:
    """Print ``report`` as rich tables on ``console``."""
    from rich.table import Table

    table = Table(title="Readable videos per class")
    for column in ("class", "train", "test", "unreadable"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, name in enumerate(report.classes):
        train, test = report.readable["train"][label], report.readable["test"][label]
        style = "red" if train + test == 0 else None
        table.add_row(name, str(train), str(test), str(report.unreadable_per_class[label]), style=style)
    totals = (report.readable["train"].total(), report.readable["test"].total(), len(report.unreadable))
    table.add_row("total", *map(str, totals), style="bold")
    console.print(table)
    if report.frame_counts:
        counts = sorted(report.frame_counts)
        resolutions = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.resolutions.most_common(5))
        more = f" and {len(report.resolutions) - 5} more" if len(report.resolutions) > 5 else ""
        console.print(
            f"frames per video: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}\n"
            f"resolutions (width x height, videos): {resolutions}{more}"
        )
    if report.unreadable:
        root = Path(os.path.commonpath([path.parent for path, _ in report.unreadable]))
        bad = Table(title=f"Unreadable files under {root} ({len(report.unreadable)}, skipped)")
        bad.add_column("file", overflow="fold")
        bad.add_column("reason", overflow="fold")
        for path, reason in report.unreadable:
            bad.add_row(str(path.relative_to(root)), reason)
        console.print(bad)
    if report.usable:
        console.print("[green]usable[/green]")
    for problem in report.problems:
        console.print(f"[red]not usable:[/red] {problem}")
