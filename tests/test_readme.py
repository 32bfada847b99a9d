"""README.md, the front door: short, the two commands and the test command in order (``.ci/run``
reads the test command from it), and no dead relative link in it or in docs/."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
FIRST = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && paramcrop study run && "
         "paramcrop analyze iou-curves")
TESTS = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest -q'


def test_readme_is_short_and_holds_the_two_commands_then_the_test_command():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    first, tests = lines.index(FIRST), lines.index(TESTS)
    header = next(i for i, line in enumerate(lines) if line.startswith("Install and run the tests"))
    assert first < header < tests <= header + 3


def test_ci_reads_the_test_command_from_readme():
    """The extraction ``.ci/run`` does, as it does it."""
    out = subprocess.run(["bash", "-c", "grep -A3 '^Install and run the tests' README.md | grep -m1 '^python3 -m venv'"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == TESTS


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


DOCS = [README, *sorted((REPO / "docs").rglob("*.md")), REPO / "benchmarks" / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            dead.append(target)
    assert not dead, f"{doc.relative_to(REPO)}: dead links {dead}"
