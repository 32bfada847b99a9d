"""analysis/page.py (``analyze report``): the page of a tiny study, logged straight into a temporary
MLflow store (no training): against ``analyze table`` and ``analyze compare``, its images, its HTML
and Markdown; and the page as the MLflow UI shows it, in headless Chromium where one is installed."""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from test_analysis import Store, cli_run

from paramcrop import sinks

TEST, VAL = sinks.EVAL_KNN_TOP1, sinks.EVAL_VAL_KNN_TOP1
SEEDS = (0, 1, 2)
CONFIGS = {  # name -> params, per-seed (validation, test) values
    "random": ({"crop.method": "random"}, [(0.40, 0.38), (0.44, 0.41), (0.41, 0.40)]),
    "paramcrop": ({"crop.method": "paramcrop", "crop.strength": "1.0"}, [(0.50, 0.47), (0.47, 0.49), (0.52, 0.46)]),
    "matched-0.5": ({"crop.method": "matched", "crop.iou": "0.5"}, [(0.45, 0.44), (0.43, 0.45), (0.47, 0.42)]),
    "matched-0.8": ({"crop.method": "matched", "crop.iou": "0.8"}, [(0.55, 0.52), (0.51, 0.50), (0.53, 0.55)]),
}
SPEC = {"name": "page", "description": "A tiny study for the page.", "data": "synthetic",
        "search_space": {"crop": {"type": "variants", "choices": {k: v[0] for k, v in CONFIGS.items()}}},
        "seeds": list(SEEDS), "sampler": "grid", "objective": {"metric": VAL, "direction": "maximize"},
        "compare": [{"baseline": "random", "against": "paramcrop"}]}


def history(config: str, seed: int) -> dict:
    steps = range(0, 100, 10)
    start = 0.95 if config == "paramcrop" else float(CONFIGS[config][0].get("crop.iou", 0.7))
    end = 0.3 if config == "paramcrop" else start
    out = {sinks.VIEW_IOU: [(s, start + (end - start) * s / 90 + 0.01 * seed) for s in steps],
           sinks.VIEW_CENTER_DISTANCE: [(s, 1 - start + (start - end) * s / 90) for s in steps]}
    if config == "paramcrop":
        out.update({m: [(s, 0.1 + 0.01 * s / 10 + 0.001 * seed) for s in steps] for m in sinks.GENERATOR_METRICS})
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("page"))
    eid, parent = s.study("page", objective=VAL)
    s.eid, s.parent = eid, parent
    spec = s.root / "study.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    s.client.log_artifact(parent, str(spec))
    trial = 0
    for config, (params, values) in CONFIGS.items():
        for seed in SEEDS:
            s.run(eid, parent, {**params, "framework.name": "simclr", "steps": 90, "seed": seed},
                  history(config, seed), final={VAL: values[seed][0], TEST: values[seed][1]},
                  tags={sinks.TAG_TRIAL: str(trial), sinks.TAG_TRIAL_STATE: "COMPLETE"}, name=f"t{trial} {config}")
            trial += 1
    s.run(eid, parent, {**CONFIGS["random"][0], "seed": 9}, status="FAILED",
          tags={sinks.TAG_TRIAL: str(trial), sinks.TAG_TRIAL_STATE: "FAIL"}, name=f"t{trial} failed")
    return s


@pytest.fixture(scope="module")
def page(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    res = cli_run(["analyze", "report", "--study", "page", "--tracking-uri", store.uri, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res


def query(store, metric, out):
    from analysis.load import RunQuery

    return RunQuery(study="page", tracking_uri=store.uri, objective=metric, out=out, log=False)


class Page(HTMLParser):
    """Tags, tables (rows of cell texts) and image sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.images, self.tables, self.text = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parsed(out: Path) -> Page:
    p = Page()
    p.feed((out / "page.html").read_text())
    p.close()
    return p


def test_summary_matches_analyze_table_and_comparisons_match_analyze_compare(store, page, tmp_path):
    from analysis.compare import compare
    from analysis.tables import table

    out, _ = page
    doc = parsed(out)
    summary = next(t for t in doc.tables if t[0] == ["configuration", "metric", "mean", "95% interval", "n"])
    rows = {(r[0], r[1]): r[2:] for r in summary[1:]}
    assert len(rows) == 2 * len(CONFIGS)
    for metric in (VAL, TEST):
        tab = table(query(store, metric, tmp_path), client=store.client).data["table"]
        assert len(tab) == len(CONFIGS)
        for r in tab.itertuples(index=False):
            assert rows[r.crop, metric] == [f"{r.mean:.3f}", f"[{r.lower:.3f}, {r.upper:.3f}]", str(r.n)]
            assert r.n == 3
        frame = compare(query(store, metric, tmp_path), client=store.client).data["compare"]
        md = (out / "page.md").read_text()
        section = md.split(f"`{metric}`: difference from", 1)[1].split("\n\n", 2)[1]
        for r in frame.itertuples(index=False):  # every configuration, every column of compare's frame
            line = next(x for x in section.splitlines() if x.startswith(f"| {r.configuration} |"))
            assert f"| {r.diff:.3f} |" in line and f"| {r.diff_lower:.3f} |" in line and f"| {r.pairs} |" in line
        assert len(frame) == len(CONFIGS) - 1


def test_page_holds_the_spec_trials_figures_and_commands(page):
    out, res = page
    md = (out / "page.md").read_text()
    for heading in ("The study", "Trials", "Summary", "Comparisons", "View IoU and center distance over training",
                    "Sweet spot: accuracy against the measured view IoU", "The generator during training"):
        assert f"\n## {heading}\n" in md
    assert "A tiny study for the page." in md and "paramcrop against random" in md  # the declared comparison
    assert md.count("| FAIL |") == 1 and md.count("| COMPLETE |") == 12
    for cmd in ("paramcrop analyze table --study page", "paramcrop analyze compare --study page",
                "paramcrop analyze iou-curves --study page", "paramcrop analyze sweet-spot --study page",
                "paramcrop analyze generator --study page", "paramcrop study show page"):
        assert cmd in md
    assert str(out / "page.html") in res.output


def test_html_parses_embeds_every_image_and_runs_no_script(page):
    from PIL import Image

    out, _ = page
    doc = parsed(out)
    assert "script" not in doc.tags and "link" not in doc.tags
    html = (out / "page.html").read_text()
    assert "http://" not in re.sub(r'href="http://127\.0\.0\.1:5000/#/experiments/[^"]+"', "", html)
    assert len(doc.images) == 3 == len(list((out / "page").glob("*.png")))
    for src in doc.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.verify()
        assert image.size[0] > 100


def test_markdown_links_resolve(page):
    out, _ = page
    md = (out / "page.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", md)
    local = [t for t in targets if not t.startswith("http")]
    assert len(local) == 3
    for target in local:
        assert (out / target).is_file(), target


def test_the_page_is_logged_to_the_parent_run(store, page):
    names = {a.path for a in store.client.list_artifacts(store.parent)}
    assert {"report.html", "report.md", "study.yaml", "page"} <= names
    assert {a.path for a in store.client.list_artifacts(store.parent, "page")} == \
           {f"page/{p.name}" for p in (page[0] / "page").glob("*.png")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (Debian: apt-get install chromium; .ci/run "
                    "installs it as root)")
def test_the_mlflow_ui_renders_the_page(store, page, tmp_path):
    """``paramcrop ui`` serves the store; Chromium opens the parent run's report.html in the artifact viewer;
    the screenshot shows more than a blank page."""
    from PIL import Image, ImageStat

    from analysis.page import BAND
    from studies.tracking import run_url

    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--tracking-uri", store.uri, "--port", str(port)],
                          cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.5)
        shot = Path(os.environ.get("PARAMCROP_PAGE_SCREENSHOT", tmp_path / "page.png"))
        url = run_url(store.eid, store.parent, "report.html", port=port)
        # the viewer's iframe is another origin: without site isolation its pixels reach the screenshot
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-site-isolation-trials", "--disable-features=IsolateOrigins,site-per-process",
                        "--virtual-time-budget=15000", "--window-size=1400,1000", f"--screenshot={shot}", url],
                       check=True, capture_output=True, timeout=90)
        image = Image.open(shot).convert("RGB")
        assert max(ImageStat.Stat(image).stddev) > 10  # not one flat colour
        band = tuple(int(BAND[i:i + 2], 16) for i in (1, 3, 5))  # the page's own top band: it rendered
        assert sum(n for n, colour in image.getcolors(1 << 20) if colour == band) > 1000
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # paramcrop ui and the mlflow server it started
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
