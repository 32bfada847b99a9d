"""analysis/: loading tracked runs from MLflow, the iou-curves / table / strength analyses,
their error cases through the CLI.

The MLflow store is filled here with known synthetic histories (``log_batch``), no training.
Expected means and t-intervals are computed by hand below; the 97.5 % t quantiles come from
their closed forms (1 degree of freedom: tan(0.475 pi); 2: 0.95 / sqrt(2 * 0.975 * 0.025)),
so the tests do not share the code's use of scipy.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paramcrop import sinks

T975 = {1: math.tan(math.pi * 0.475), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025)}  # 12.7062..., 4.3026...
T0 = 1_700_000_000_000  # ms


# --- store building ----------------------------------------------------------------------
class Store:
    """A fresh SQLite MLflow store with helpers to add studies and runs."""

    def __init__(self, root: Path) -> None:
        from mlflow import MlflowClient

        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self._clock = T0

    def tick(self) -> int:
        self._clock += 1000
        return self._clock

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=(self.root / "art" / name).as_uri())

    def study(self, name: str, objective: str | None = None) -> tuple[str, str]:
        eid = self.experiment(name)
        tags = {sinks.TAG_ROLE: "study", sinks.TAG_STUDY: name}
        if objective:
            tags[sinks.TAG_OBJECTIVE] = objective
        parent = self.client.create_run(eid, start_time=self.tick(), tags=tags, run_name=f"{name}-parent")
        return eid, parent.info.run_id

    def run(self, eid: str, parent: str | None, params: dict, series: dict | None = None,
            final: dict | None = None, status: str = "FINISHED", tags: dict | None = None,
            name: str | None = None) -> str:
        """``series``: metric -> [(step, value)]; ``final``: metric -> value logged at step 0."""
        from mlflow.entities import Metric, Param

        all_tags = {sinks.TAG_ROLE: "trial" if parent else "train"}
        if parent:
            all_tags[sinks.PARENT_RUN_TAG] = parent
        all_tags.update(tags or {})
        run = self.client.create_run(eid, start_time=self.tick(), tags=all_tags, run_name=name)
        rid = run.info.run_id
        metrics = [Metric(k, float(v), T0 + int(s), int(s)) for k, pts in (series or {}).items()
                   for s, v in pts]
        metrics += [Metric(k, float(v), T0, 0) for k, v in (final or {}).items()]
        self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(rid, metrics=metrics[i:i + 1000])
        if status != "RUNNING":
            self.client.set_terminated(rid, status=status)
        return rid

    def predictions(self, rid: str, split: str, labels, predictions: dict, videos=None) -> None:
        """Log a run's per-query predictions ``predictions/<split>.csv`` (:mod:`paramcrop.predictions`);
        videos ``<split>/v000.mp4``, ... unless given."""
        from paramcrop.predictions import artifact_path, write_predictions

        videos = videos or [f"{split}/v{i:03d}.mp4" for i in range(len(labels))]
        path = write_predictions(self.root / "predictions" / rid / f"{split}.csv", videos, labels, predictions)
        self.client.log_artifact(rid, str(path), artifact_path(split).rsplit("/", 1)[0])


def linear(steps_logged, total, a, b, seed_offset):
    """``a + b * step / total + seed_offset`` at each logged step (linear in progress, so
    interpolation is exact and hand-computable)."""
    return [(s, a + b * s / total + seed_offset) for s in steps_logged]


def view_series(steps_logged, total, seed, iou=(0.9, -0.6, 0.02), dist=(0.1, 0.5, 0.05)):
    return {
        sinks.VIEW_IOU: linear(steps_logged, total, iou[0], iou[1], iou[2] * seed),
        sinks.VIEW_CENTER_DISTANCE: linear(steps_logged, total, dist[0], dist[1], dist[2] * seed),
        sinks.VIEW_IOU_XY: linear(steps_logged, total, 0.95, -0.3, 0.0),
        sinks.VIEW_CENTER_DISTANCE_XY: linear(steps_logged, total, 0.05, 0.3, 0.0),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Studies:

    ``main``: objective tag ``eval/linear_top1``.
      - random, steps=101 (the trainer numbers steps 0..100): seeds 0, 1 logged at 0,10..100;
        seed 2 stopped at step 50 (0,10..50). iou = 0.8 - 0.1 p + 0.01 seed,
        dist = 0.3 + 0.1 p + 0.02 seed, p = step / 100.
      - paramcrop λ=1.0: seed 0 steps=100 logged 0,10..100 (a producer numbering steps 1..S);
        seed 1 steps=201 (0,20..200); seed 2 steps=51 (0,5..50).
        iou = 0.9 - 0.6 p + 0.02 seed, dist = 0.1 + 0.5 p + 0.05 seed.
      - paramcrop λ=0.5: seed 0 no ``steps`` param, logged 0,4..40 (progress = step / 40).
      - excluded: one RUNNING, one pruned, one FAILED paramcrop λ=1.0 run with wild values.
    ``nobase``: paramcrop λ=1.0 only, 2 seeds, logged like the trainer: steps=100, at 9,19..99.
    ``unfinished``: one RUNNING run.
    ``noview``: one run with train/loss only.
    ``grid``: table data (framework x backbone x crop), created last = the most recent study.
    """
    s = Store(tmp_path_factory.mktemp("mlruns"))
    obj = sinks.EVAL_LINEAR_TOP1
    eid, parent = s.study("main", objective=obj)
    s.ids = {"main": (eid, parent)}
    steps_every10 = list(range(0, 101, 10))
    for seed in (0, 1, 2):
        logged = steps_every10 if seed < 2 else list(range(0, 51, 10))
        s.run(eid, parent, {"crop.method": "random", "steps": 101, "seed": seed, "framework.name": "simclr"},
              view_series(logged, 100, seed, iou=(0.8, -0.1, 0.01), dist=(0.3, 0.1, 0.02)),
              final={obj: 0.40 + 0.01 * seed, sinks.EVAL_KNN_TOP1: 0.3}, name=f"random-{seed}")
    for seed, total, every in ((0, 100, 10), (1, 200, 20), (2, 50, 5)):
        planned = total if seed == 0 else total + 1
        s.run(eid, parent, {"crop.method": "paramcrop", "crop.strength": "1.0", "steps": planned, "seed": seed,
                            "framework.name": "simclr"},
              view_series(list(range(0, total + 1, every)), total, seed),
              final={obj: 0.50 + 0.02 * seed}, name=f"pc1-{seed}")
    s.run(eid, parent, {"crop.method": "paramcrop", "crop.strength": "0.5", "seed": 0, "framework.name": "simclr"},
          view_series(list(range(0, 41, 4)), 40, 0), final={obj: 0.45}, name="pc05-0")
    wild = view_series(steps_every10, 100, 50)
    params = {"crop.method": "paramcrop", "crop.strength": "1.0", "steps": 100, "seed": 9, "framework.name": "simclr"}
    s.run(eid, parent, params, wild, status="RUNNING", name="running")
    s.run(eid, parent, params, wild, tags={sinks.TAG_PRUNED: "true"}, name="pruned")
    s.run(eid, parent, params, wild, status="FAILED", name="failed")

    eid, parent = s.study("nobase")
    s.ids["nobase"] = (eid, parent)
    for seed in (0, 1):
        s.run(eid, parent, {"crop.method": "paramcrop", "crop.strength": "1.0", "steps": 100, "seed": seed},
              view_series(list(range(9, 100, 10)), 99, seed), final={sinks.EVAL_KNN_TOP1: 0.5})

    eid, parent = s.study("unfinished")
    s.ids["unfinished"] = (eid, parent)
    s.run(eid, parent, {"crop.method": "random", "steps": 100}, view_series(steps_every10, 100, 0), status="RUNNING")

    eid, parent = s.study("noview")
    s.ids["noview"] = (eid, parent)
    s.noview_run = s.run(eid, parent, {"crop.method": "random", "steps": 100},
                         {sinks.TRAIN_LOSS: [(0, 1.0), (10, 0.5)]}, name="lossonly")

    eid, parent = s.study("grid")
    s.ids["grid"] = (eid, parent)
    s.grid_values = {}
    values = {
        ("simclr", "tiny3d", "random", None): [0.30, 0.34, 0.35],
        ("simclr", "tiny3d", "paramcrop", "1.0"): [0.50, 0.56],
        ("moco", "tiny3d", "random", None): [0.20],
        ("moco", "tiny3d", "paramcrop", "1.0"): [0.41, 0.43, 0.48],
        ("moco", "tiny3d", "paramcrop", "0.5"): [0.40, 0.46],
    }
    for (fw, bb, crop, lam), objs in values.items():
        for seed, v in enumerate(objs):
            params = {"crop.method": crop, "framework.name": fw, "backbone.name": bb, "seed": seed, "steps": 100}
            if lam is not None:
                params["crop.strength"] = lam
            s.run(eid, parent, params, view_series(steps_every10, 100, seed), final={sinks.EVAL_KNN_TOP1: v})
    s.grid_values = values
    return s


BASE_MAIN = "Random crop (baseline), steps=101"  # study main: steps differ between its configurations


def cli_run(args, env=None):
    from typer.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.app, args, env=env)


def ci(values):
    x = np.asarray(values, float)
    n = len(x)
    mean = float(x.sum() / n)
    if n < 2:
        return n, mean, math.nan, math.nan
    sd = math.sqrt(float(((x - mean) ** 2).sum()) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return n, mean, mean - half, mean + half


def row(frame, metric, config, x, xcol="progress"):
    sel = frame[(frame["metric"] == metric) & (frame["configuration"] == config) & np.isclose(frame[xcol], x)]
    assert len(sel) == 1, (metric, config, x, sel)
    return sel.iloc[0]


# --- loading -------------------------------------------------------------------------------
def test_default_tracking_uri(monkeypatch):
    from analysis.store import default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert default_tracking_uri() == "sqlite:///elsewhere.db"


def test_select_study_keeps_finished_unpruned_runs(store):
    from analysis.load import select

    sel = select(store.client, study="main")
    assert sel.kind == "study" and sel.parent_run_id == store.ids["main"][1]
    assert sorted(sel.runs["run_name"]) == sorted(
        ["random-0", "random-1", "random-2", "pc1-0", "pc1-1", "pc1-2", "pc05-0"])
    assert sel.objective == sinks.EVAL_LINEAR_TOP1
    assert any("3 of 10 runs not analysed" in n for n in sel.notes)
    assert sel.runs.loc[sel.runs["run_name"] == "pc1-1", "params.steps"].item() == "201"
    assert sel.runs.loc[sel.runs["run_name"] == "pc05-0", f"metrics.{sinks.EVAL_LINEAR_TOP1}"].item() == 0.45


def test_default_study_is_the_most_recent(store):
    from analysis.load import select

    assert select(store.client).name == "grid"


@pytest.mark.parametrize("method", ["sql", "client"])
def test_histories_are_complete_and_identical_across_methods(store, method):
    from analysis.histories import load_histories
    from analysis.load import select

    sel = select(store.client, study="main")
    h = load_histories(store.client, sel.run_ids, [sinks.VIEW_IOU, sinks.VIEW_CENTER_DISTANCE], method=method)
    assert list(h.columns) == ["run_id", "metric", "step", "timestamp", "value"]
    per_run = h.groupby("run_id").size()
    rid = sel.runs.loc[sel.runs["run_name"] == "pc1-2", "run_id"].item()
    assert per_run[rid] == 2 * 11  # steps 0,5..50 for two metrics
    v = h[(h["run_id"] == rid) & (h["metric"] == sinks.VIEW_IOU) & (h["step"] == 25)]["value"].item()
    assert v == pytest.approx(0.9 - 0.6 * 0.5 + 0.04)
    if method == "client":
        other = load_histories(store.client, sel.run_ids, [sinks.VIEW_IOU, sinks.VIEW_CENTER_DISTANCE], method="sql")
        pd.testing.assert_frame_equal(h, other)


# --- iou-curves data -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def curves_out(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "curves"
    result = cli_run(["analyze", "iou-curves", "--study", "main", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_iou_curves_csv_means_and_bounds(curves_out):
    out, _ = curves_out
    data = pd.read_csv(out / "iou-curves.csv")
    assert list(data.columns) == ["metric", "configuration", "baseline", "crop.method", "crop.strength", "steps",
                                  "progress", "n", "mean", "std", "lower", "upper"]
    for seed, steps in ((0, 100), (1, 201), (2, 51)):
        # ParamCrop λ=1.0 runs of 100, 200 and 50 steps: three configurations (steps differ), never
        # pooled; each aligned on progress (a producer numbering 1..S, and the trainer's 0..S-1)
        label = f"ParamCrop, λ=1.0, steps={steps}"
        for p in (0.0, 0.3, 0.5, 0.77, 1.0):
            r = row(data, sinks.VIEW_IOU, label, p)
            assert r["n"] == 1 and r["mean"] == pytest.approx(0.9 - 0.6 * p + 0.02 * seed, abs=1e-9)
            assert math.isnan(r["lower"]) and math.isnan(r["upper"])
            r = row(data, sinks.VIEW_CENTER_DISTANCE, label, p)
            assert r["n"] == 1 and r["mean"] == pytest.approx(0.1 + 0.5 * p + 0.05 * seed, abs=1e-9)
    base = data[(data["configuration"] == BASE_MAIN) & (data["metric"] == sinks.VIEW_IOU)]
    for p in (0.0, 0.3, 0.5):  # the baseline's three seeds (same params): pooled, with their t-interval
        n, mean, lo, hi = ci([0.8 - 0.1 * p + 0.01 * s for s in (0, 1, 2)])
        r = row(base, sinks.VIEW_IOU, BASE_MAIN, p)
        assert (r["n"], r["mean"], r["lower"], r["upper"]) == pytest.approx((3, mean, lo, hi), abs=1e-9)
        assert r["upper"] - r["mean"] == pytest.approx(T975[2] * 0.01 / math.sqrt(3), abs=1e-9)


def test_iou_curves_run_stopped_early_leaves_the_mean(curves_out):
    out, _ = curves_out
    data = pd.read_csv(out / "iou-curves.csv")
    base = BASE_MAIN
    r = row(data, sinks.VIEW_IOU, base, 0.5)  # seed 2 stopped at step 50 = progress 0.5
    n, mean, lo, hi = ci([0.8 - 0.05 + 0.01 * s for s in (0, 1, 2)])
    assert (r["n"], r["mean"], r["lower"], r["upper"]) == pytest.approx((3, mean, lo, hi), abs=1e-9)
    r = row(data, sinks.VIEW_IOU, base, 0.8)
    n, mean, lo, hi = ci([0.8 - 0.08 + 0.01 * s for s in (0, 1)])
    assert (r["n"], r["mean"], r["lower"], r["upper"]) == pytest.approx((2, mean, lo, hi), abs=1e-9)
    # the baseline is identified and is the only one
    assert set(data.loc[data["baseline"], "configuration"]) == {base}
    assert set(data.loc[data["baseline"], "crop.method"]) == {"random"}


def test_iou_curves_progress_falls_back_to_max_logged_step(curves_out):
    out, _ = curves_out
    data = pd.read_csv(out / "iou-curves.csv")
    r = row(data, sinks.VIEW_IOU, "ParamCrop, λ=0.5", 0.5)  # no steps param: step 20 of 40
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.6, abs=1e-9)
    assert math.isnan(r["lower"]) and math.isnan(r["upper"])
    assert row(data, sinks.VIEW_IOU, "ParamCrop, λ=0.5", 1.0)["mean"] == pytest.approx(0.3, abs=1e-9)
    # the grid: 101 points, every configuration and metric
    assert sorted(data["progress"].round(6).unique()) == pytest.approx(np.linspace(0, 1, 101))
    assert len(data) == 2 * 5 * 101  # random, λ=0.5 and λ=1.0 at three lengths


def test_iou_curves_step_axis(store, tmp_path):
    out = tmp_path / "steps"
    result = cli_run(["analyze", "iou-curves", "--study", "main", "--tracking-uri", store.uri, "--out", str(out),
                      "--x", "step", "--points", "11", "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "iou-curves.csv")
    assert sorted(data["step"].unique()) == list(range(0, 201, 20))
    r = row(data, sinks.VIEW_IOU, "ParamCrop, λ=1.0, steps=100", 100, "step")  # seed 0 at its end
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.9 - 0.6 * 1.0, abs=1e-9)
    r = row(data, sinks.VIEW_IOU, "ParamCrop, λ=1.0, steps=201", 100, "step")  # seed 1 halfway
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.9 - 0.6 * 0.5 + 0.02, abs=1e-9)


def test_iou_curves_images_tables_and_artifacts(store, curves_out):
    from PIL import Image

    out, result = curves_out
    png, pdf = out / "iou-curves.png", out / "iou-curves.pdf"
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[1] >= 1500 and img.shape[0] >= 600  # two 3.5-in panels at 300 dpi
    assert img.std() > 10 and (img < 100).mean() > 0.005  # not blank: lines and text
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert sorted(p.name for p in out.iterdir()) == ["iou-curves.csv", "iou-curves.pdf", "iou-curves.png"]
    parent = store.ids["main"][1]
    logged = {Path(a.path).name for a in store.client.list_artifacts(parent, "analysis")}
    assert logged == {"iou-curves.csv", "iou-curves.pdf", "iou-curves.png"}
    text = result.stdout
    assert str(png) in text.replace("\n", "") or png.name in text
    assert "Random crop (baseline)" in text and "ParamCrop, λ=1.0" in text
    assert "0.410 ± 0.010 (n=3)" in text  # objective eval/linear_top1 of the baseline
    assert sinks.EVAL_LINEAR_TOP1 in text


def test_iou_curves_spatial_axes_and_hue(store, tmp_path):
    out = tmp_path / "xy"
    result = cli_run(["analyze", "iou-curves", "--study", "main", "--tracking-uri", store.uri, "--out", str(out),
                      "--axes", "xy", "--hue", "framework.name", "--separate", "--no-log"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["iou-curves-xy.csv", "iou-curves-xy-iou-xy.png", "iou-curves-xy-iou-xy.pdf",
                            "iou-curves-xy-center-distance-xy.png", "iou-curves-xy-center-distance-xy.pdf"])
    data = pd.read_csv(out / "iou-curves-xy.csv")
    assert set(data["metric"]) == {sinks.VIEW_IOU_XY, sinks.VIEW_CENTER_DISTANCE_XY}
    assert "ParamCrop, λ=1.0, steps=100, SimCLR" in set(data["configuration"])  # a constant --hue param shown
    assert row(data, sinks.VIEW_IOU_XY, "ParamCrop, λ=1.0, steps=100, SimCLR", 0.5)["mean"] == pytest.approx(0.8)


def test_iou_curves_on_explicit_runs(store, tmp_path):
    from analysis.load import select

    sel = select(store.client, study="main")
    ids = sel.runs.loc[sel.runs["params.crop.method"] == "random", "run_id"]
    out = tmp_path / "runs"
    result = cli_run(["analyze", "iou-curves", "--runs", ",".join(ids), "--tracking-uri", store.uri,
                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "iou-curves.csv")
    assert set(data["configuration"]) == {"Random crop (baseline)"}


# --- learning curves ---------------------------------------------------------------------------
def test_learning_curves_of_the_online_knn_and_any_metric(tmp_path):
    """kNN logged every 50 of 201 steps (progress = step / 200): hand means at 0.25 and 1.0, the
    random-crop baseline dashed in the CSV; a run evaluated only at the end is one point, said so."""
    s = Store(tmp_path / "store")
    eid, parent = s.study("online")
    knn = {("random", 0): [0.20, 0.25, 0.27, 0.30], ("random", 1): [0.22, 0.23, 0.29, 0.32],
           ("paramcrop", 0): [0.30, 0.45, 0.50, 0.52], ("paramcrop", 1): [0.34, 0.41, 0.56, 0.58]}
    for (crop, seed), values in knn.items():
        params = {"crop.method": crop, "seed": seed, "steps": 201}
        params.update({"crop.strength": "1.0"} if crop != "random" else {})
        s.run(eid, parent, params, {sinks.EVAL_KNN_TOP1: list(zip((50, 100, 150, 200), values)),
                                    sinks.TRAIN_LOSS: [(0, 5.0), (200, 3.0 + seed)]})
    out = tmp_path / "lc"
    result = cli_run(["analyze", "learning-curves", "--study", "online", "--tracking-uri", s.uri, "--out", str(out),
                      "--no-log", "--metric", "eval/knn_top1", "--metric", "train/loss"])
    assert result.exit_code == 0, result.output
    assert "one step only" not in result.stderr
    data = pd.read_csv(out / "learning-curves.csv")
    knn_rows = data[data["metric"] == sinks.EVAL_KNN_TOP1]
    pc = knn_rows[knn_rows["configuration"] == "ParamCrop, λ=1.0"].set_index("progress")
    assert pc.loc[0.25, "mean"] == pytest.approx(0.32) and pc.loc[1.0, "mean"] == pytest.approx(0.55)
    assert pc.index.min() == pytest.approx(0.25)  # no extrapolation before the first evaluation
    base = knn_rows[knn_rows["baseline"]].set_index("progress")
    assert base.loc[0.5, "mean"] == pytest.approx(0.24) and base.loc[0.5, "n"] == 2
    loss = data[(data["metric"] == sinks.TRAIN_LOSS) & (data["configuration"] == "ParamCrop, λ=1.0")]
    assert loss.set_index("progress").loc[0.5, "mean"] == pytest.approx(4.25)  # 5 -> 3.5 (mean of 3 and 4)
    assert (out / "learning-curves.png").stat().st_size > 3000

    s.run(eid, parent, {"crop.method": "random", "seed": 2, "steps": 201}, {sinks.EVAL_KNN_TOP1: [(200, 0.3)]})
    result = cli_run(["analyze", "learning-curves", "--study", "online", "--tracking-uri", s.uri,
                      "--out", str(tmp_path / "lc2"), "--no-log"])
    assert result.exit_code == 0, result.output
    assert "1 run(s) logged eval/knn_top1 at one step only" in " ".join(result.stderr.split())
    assert "config.eval.every" in result.stderr


# --- errors --------------------------------------------------------------------------------
def test_unknown_study_lists_known_ones(store, tmp_path):
    out = tmp_path / "o"
    result = cli_run(["analyze", "iou-curves", "--study", "nope", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown study 'nope'" in result.stderr
    for name in ("main", "nobase", "grid"):
        assert name in result.stderr
    assert not out.exists()


def test_study_without_finished_runs(store, tmp_path):
    out = tmp_path / "o"
    result = cli_run(["analyze", "iou-curves", "--study", "unfinished", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 1
    assert "no finished runs" in result.stderr and "RUNNING" in result.stderr
    assert not out.exists()


def test_runs_without_view_metrics_are_named(store, tmp_path):
    out = tmp_path / "o"
    result = cli_run(["analyze", "iou-curves", "--study", "noview", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 1
    err = result.stderr
    assert store.noview_run in err and "lossonly" in err
    assert sinks.VIEW_IOU in err and "train/loss" in err  # what is missing and what it has
    assert "per-step view metrics" in err
    assert not out.exists()


def test_no_baseline_warns_and_plots(store, tmp_path):
    out = tmp_path / "o"
    result = cli_run(["analyze", "iou-curves", "--study", "nobase", "--tracking-uri", store.uri, "--out", str(out),
                      "--no-log"])
    assert result.exit_code == 0, result.output
    assert "no random-crop baseline" in result.stderr and "crop.method" in result.stderr
    assert (out / "iou-curves.png").exists()
    data = pd.read_csv(out / "iou-curves.csv")
    assert not data["baseline"].any()
    # trainer-like logging (steps 9..99 of 0..99): progress = step / 99 reaches exactly 1
    iou = data[data["metric"] == sinks.VIEW_IOU]
    assert iou["progress"].min() == pytest.approx(0.1) and iou["progress"].max() == pytest.approx(1.0)
    n, mean, lo, hi = ci([0.3, 0.32])
    r = row(data, sinks.VIEW_IOU, "ParamCrop, λ=1.0", 1.0)
    assert (r["n"], r["mean"], r["lower"], r["upper"]) == pytest.approx((n, mean, lo, hi), abs=1e-9)


def test_missing_store_and_unknown_runs(store, tmp_path):
    result = cli_run(["analyze", "iou-curves", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "no MLflow tracking store" in result.stderr
    assert not (tmp_path / "none.db").exists()
    result = cli_run(["analyze", "iou-curves", "--runs", "0123456789abcdef", "--tracking-uri", store.uri,
                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown run id(s): 0123456789abcdef" in result.stderr
    result = cli_run(["analyze", "iou-curves", "--experiment", "nope", "--tracking-uri", store.uri,
                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown experiment" in result.stderr and "main" in result.stderr
    result = cli_run(["analyze", "iou-curves", "--study", "main", "--hue", "nope", "--tracking-uri", store.uri,
                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--hue nope" in result.stderr
    assert not (tmp_path / "o").exists()


def test_tracking_uri_from_environment(store, tmp_path):
    out = tmp_path / "env"
    result = cli_run(["analyze", "iou-curves", "--study", "nobase", "--out", str(out), "--no-log"],
                     env={"MLFLOW_TRACKING_URI": store.uri})
    assert result.exit_code == 0, result.output


# --- table and strength ---------------------------------------------------------------------
def test_table_aggregates(store, tmp_path):
    out = tmp_path / "table"
    result = cli_run(["analyze", "table", "--study", "grid", "--tracking-uri", store.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "table.csv")
    assert list(data.columns[:4]) == ["framework.name", "backbone.name", "crop.method", "crop.strength"]
    for (fw, bb, crop, lam), values in store.grid_values.items():
        sel = data[(data["framework.name"] == fw) & (data["crop.method"] == crop)
                   & ((data["crop.strength"] == float(lam)) if lam else data["crop.strength"].isna())]
        assert len(sel) == 1, (fw, crop, lam)
        r = sel.iloc[0]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        assert r["n"] == n and r["mean"] == pytest.approx(mean, abs=1e-12)
        assert (math.isnan(r["std"]) and n == 1) or r["std"] == pytest.approx(std, abs=1e-12)
    md = (out / "table.md").read_text()
    assert "0.330 ± 0.026 (n=3)" in md  # simclr/tiny3d/random: mean 0.33, std 0.0264575
    assert "0.200 (n=1)" in md
    assert "MoCo v2" in md and "ParamCrop, λ=0.5" in md
    for name in ("table.png", "table.pdf"):
        assert (out / name).stat().st_size > 3000


def test_table_groups_by_head_and_losses(tmp_path):
    """Runs differing only by head or auxiliary losses are separate cells; runs without those
    params count as head mlp, losses off (so they join the explicit mlp / 0-weight runs)."""
    s = Store(tmp_path / "store")
    eid, parent = s.study("heads")
    base = {"crop.method": "random", "framework.name": "simclr", "backbone.name": "tiny3d", "steps": 100}
    groups = [  # (extra params, objective values)
        ({}, [0.30, 0.34]),
        ({"head.name": "mlp", "losses.region": "0.0", "losses.order": "0.0"}, [0.38]),
        ({"head.name": "cate"}, [0.40, 0.44]),
        ({"losses.region": "1.0", "losses.order": "0.0"}, [0.50, 0.54, 0.49]),
        ({"losses.order": "1.0"}, [0.45, 0.47]),
        ({"losses.region": "1.0", "losses.order": "1.0"}, [0.60]),
        ({"losses.region": "0.5"}, [0.52]),
        ({"head.name": "cate", "losses.region": "1.0", "losses.order": "1.0"}, [0.70, 0.74]),
    ]
    for extra, objs in groups:
        for seed, v in enumerate(objs):
            s.run(eid, parent, {**base, **extra, "seed": seed}, final={sinks.EVAL_KNN_TOP1: v})
    out = tmp_path / "table"
    result = cli_run(["analyze", "table", "--study", "heads", "--tracking-uri", s.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "table.csv")
    # by hand: (head, losses label) -> n, mean, sample std (NaN for n = 1), in table order
    expected = [
        ("mlp", "none", 3, 0.34, 0.04),  # 0.30, 0.34 (no params) and 0.38 (explicit defaults)
        ("mlp", "region=0.5", 1, 0.52, math.nan),  # the same loss at another weight: its own cell
        ("mlp", "region", 3, 0.51, math.sqrt(0.0007)),  # deviations -0.01, 0.03, -0.02
        ("mlp", "order", 2, 0.46, math.sqrt(0.0002)),
        ("mlp", "region+order", 1, 0.60, math.nan),
        ("cate", "none", 2, 0.42, math.sqrt(0.0008)),
        ("cate", "region+order", 2, 0.72, math.sqrt(0.0008)),
    ]
    assert list(zip(data["head.name"], data["losses"])) == [e[:2] for e in expected]
    for (_, _, n, mean, std), (_, r) in zip(expected, data.iterrows()):
        assert r["n"] == n and r["mean"] == pytest.approx(mean, abs=1e-12)
        assert (math.isnan(std) and math.isnan(r["std"])) or r["std"] == pytest.approx(std, abs=1e-12)
    assert set(data["losses.region"]) == {0.0, 0.5, 1.0} and set(data["losses.order"]) == {0.0, 1.0}
    md = (out / "table.md").read_text()
    assert "| framework · backbone | head | losses | Random crop (baseline) |" in md
    assert "| SimCLR · Tiny3D | MLP | none | 0.340 ± 0.040 (n=3) |" in md
    assert "| SimCLR · Tiny3D | MLP | region | 0.510 ± 0.026 (n=3) |" in md
    assert "| SimCLR · Tiny3D | MLP | region+order | 0.600 (n=1) |" in md
    assert "| SimCLR · Tiny3D | CATE | region+order | 0.720 ± 0.028 (n=2) |" in md

    from analysis.load import select
    from analysis.tables import heatmap_rows, objective_table
    from analysis.values import objective_values

    tab = objective_table(objective_values(select(s.client, study="heads"))[0])
    labels, ylabel, suffix = heatmap_rows(tab)  # one framework and backbone: named in the title
    assert labels[0] == "MLP head · no extra losses" and labels[-1] == "CATE head · region+order"
    assert ylabel == "Head · losses" and suffix == " (SimCLR · Tiny3D)"
    only_cate = tab[tab["head.name"] == "cate"].iloc[1:]
    assert heatmap_rows(only_cate) == (["SimCLR · Tiny3D"], "Framework · backbone", " (CATE head, region+order)")
    two_frameworks = pd.concat([tab, tab.iloc[:1].assign(**{"framework.name": "moco"})], ignore_index=True)
    labels, ylabel, suffix = heatmap_rows(two_frameworks)
    assert labels[-1] == "MoCo v2 · Tiny3D · MLP head · no extra losses" and suffix == ""
    assert ylabel == "Framework · backbone · head · losses"
    for name in ("table.png", "table.pdf"):
        assert (out / name).stat().st_size > 3000


def test_strength(store, tmp_path):
    out = tmp_path / "strength"
    result = cli_run(["analyze", "strength", "--study", "grid", "--tracking-uri", store.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "strength.csv")
    r = data[(data["framework.name"] == "moco") & (data["crop.strength"] == 1.0)].iloc[0]
    n, mean, lo, hi = ci([0.41, 0.43, 0.48])
    assert (r["n"], r["mean"], r["lower"], r["upper"]) == pytest.approx((n, mean, lo, hi), abs=1e-12)
    ref = data[(data["framework.name"] == "simclr") & (data["crop.method"] == "random")].iloc[0]
    assert ref["mean"] == pytest.approx(0.33) and ref["n"] == 3
    assert (out / "strength.png").exists() and (out / "strength.pdf").exists()


def test_strength_groups_by_head_and_losses(tmp_path):
    """Runs of another head or other auxiliary losses are their own line and reference, never averaged
    in; their legend names the head and losses (they vary here)."""
    s = Store(tmp_path / "store")
    eid, parent = s.study("heads")
    base = {"framework.name": "simclr", "backbone.name": "tiny3d", "steps": 100}
    groups = {  # (head, region weight, crop, strength) -> objective values
        ("mlp", None, "random", None): [0.30, 0.32],
        ("mlp", None, "paramcrop", "1.0"): [0.50, 0.54],
        ("cate", None, "random", None): [0.40],
        ("cate", None, "paramcrop", "1.0"): [0.70, 0.74, 0.72],
        ("mlp", "1.0", "paramcrop", "1.0"): [0.60],
    }
    for (head, region, crop, lam), objs in groups.items():
        for seed, v in enumerate(objs):
            params = {**base, "head.name": head, "crop.method": crop, "seed": seed}
            params.update({"crop.strength": lam} if lam else {})
            params.update({"losses.region": region} if region else {})
            s.run(eid, parent, params, final={sinks.EVAL_KNN_TOP1: v})
    out = tmp_path / "strength"
    result = cli_run(["analyze", "strength", "--study", "heads", "--tracking-uri", s.uri, "--out", str(out),
                      "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "strength.csv")
    # in order: per setting (mlp/none, mlp/region, cate/none) its strength points, then its reference
    expected = [("mlp", "none", "paramcrop", [0.50, 0.54]), ("mlp", "none", "random", [0.30, 0.32]),
                ("mlp", "region", "paramcrop", [0.60]),
                ("cate", "none", "paramcrop", [0.70, 0.74, 0.72]), ("cate", "none", "random", [0.40])]
    assert list(zip(data["head.name"], data["losses"], data["crop.method"])) == [e[:3] for e in expected]
    for (*_, values), (_, r) in zip(expected, data.iterrows()):
        n, mean, lo, hi = ci(values)
        assert r["n"] == n and r["mean"] == pytest.approx(mean, abs=1e-12)
        assert (math.isnan(lo) and math.isnan(r["lower"])) or r["lower"] == pytest.approx(lo, abs=1e-12)

    from analysis.strength import setting_labels

    assert setting_labels(data)[:4] == ["SimCLR, MLP head, no extra losses", "SimCLR, MLP head, no extra losses",
                                        "SimCLR, MLP head, region", "SimCLR, CATE head, no extra losses"]
    assert setting_labels(data[data["losses"] == "none"]) == ["SimCLR, MLP head"] * 2 + ["SimCLR, CATE head"] * 2


def test_strength_without_strength_param(store, tmp_path):
    result = cli_run(["analyze", "strength", "--study", "noview", "--tracking-uri", store.uri,
                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "crop.strength" in result.stderr
    assert not (tmp_path / "o").exists()


def test_help_lists_analyses():
    result = cli_run(["analyze", "--help"])
    assert result.exit_code == 0
    for name in ("iou-curves", "learning-curves", "strength", "table", "compare", "sweet-spot", "importance", "crops"):
        assert re.search(rf"\b{name}\b", result.stdout)


# --- importance and crops -------------------------------------------------------------------
@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> Path:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path_factory.mktemp("optuna") / "paramcrop-studies.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))

    def objective(trial):
        method = trial.suggest_categorical("crop.method", ["random", "paramcrop"])
        lr = trial.suggest_float("optim.lr", 1e-3, 1e-1, log=True)
        return 0.4 + 0.1 * (method == "paramcrop") - 0.1 * abs(math.log10(lr) + 1.5)

    for name in ("older", "imp"):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(objective, n_trials=10)
    optuna.create_study(study_name="empty", storage=storage)
    return path


def test_importance(journal, tmp_path, monkeypatch):
    monkeypatch.chdir(journal.parent)  # the default storage is ./paramcrop-studies.journal
    before = journal.read_bytes()
    out = tmp_path / "imp"
    result = cli_run(["analyze", "importance", "--study", "imp", "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    imp = pd.read_csv(out / "importance.csv")
    assert set(imp["param"]) == {"crop.method", "optim.lr"}
    assert imp["importance"].sum() == pytest.approx(1.0)
    hist = pd.read_csv(out / "optimization-history.csv")
    assert list(hist["trial"]) == list(range(10))
    assert (hist["best_so_far"] == hist["value"].cummax()).all()
    for name in ("importance", "optimization-history"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.pdf").exists()
    assert journal.read_bytes() == before  # reading writes nothing
    assert sorted(p.name for p in journal.parent.iterdir()) == ["paramcrop-studies.journal"]


def test_importance_errors(journal, tmp_path):
    result = cli_run(["analyze", "importance", "--storage", str(tmp_path / "none.journal"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no Optuna journal file" in result.stderr
    assert not (tmp_path / "none.journal").exists()
    result = cli_run(["analyze", "importance", "--storage", str(journal), "--study", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown study 'nope'" in result.stderr and "imp" in result.stderr
    result = cli_run(["analyze", "importance", "--storage", str(journal), "--study", "empty", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "0 complete trial" in result.stderr
    assert not (tmp_path / "o").exists()


def test_crops(store, tmp_path):
    from matplotlib.image import imsave

    eid = store.experiment("crops-exp")
    rid = store.run(eid, None, {"crop.method": "paramcrop"}, name="with-crops")
    for step, shade in ((299, 0.9), (0, 0.1), (150, 0.5)):
        img = np.full((40, 60, 3), shade)
        img[5:15, 5:25] = (1.0, 0.5, 0.0)
        path = tmp_path / f"step_{step:06d}.png"
        imsave(path, img)
        store.client.log_artifact(rid, str(path), "crops")
    out = tmp_path / "crops"
    result = cli_run(["analyze", "crops", "--run", rid, "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    listing = pd.read_csv(out / f"crops-{rid[:8]}.csv")
    assert list(listing["step"]) == [0, 150, 299]
    assert list(listing["artifact_path"]) == [f"crops/step_{s:06d}.png" for s in (0, 150, 299)]
    assert (out / f"crops-{rid[:8]}.png").stat().st_size > 5000
    no_crops = store.run(eid, None, {"crop.method": "random"}, name="no-crops")
    result = cli_run(["analyze", "crops", "--run", no_crops, "--tracking-uri", store.uri, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no PNG under artifact path crops/" in result.stderr
    result = cli_run(["analyze", "crops", "--run", "deadbeef", "--tracking-uri", store.uri, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown run id" in result.stderr
    assert not (tmp_path / "o").exists()


def test_objective_rule_and_journal_prefix(journal):
    from analysis.load import _objective
    from analysis.store import open_optuna_storage

    assert _objective({sinks.TAG_OBJECTIVE: "eval/linear_top1,eval/recall_at_1"}, None) == "eval/linear_top1"
    assert _objective({}, None) == sinks.EVAL_KNN_TOP1
    assert _objective({sinks.TAG_OBJECTIVE: "eval/linear_top1"}, "eval/x") == "eval/x"
    import optuna

    names = optuna.get_all_study_names(open_optuna_storage(f"journal:{journal}"))
    assert {"older", "imp", "empty"} <= set(names)


def test_a_step_logged_twice_counts_once_with_its_last_value():
    from analysis.iou_curves import align, interpolate

    history = pd.DataFrame({"run_id": ["r"] * 4, "metric": [sinks.VIEW_IOU] * 4, "step": [0, 10, 10, 20],
                            "timestamp": [1, 3, 2, 4], "value": [1.0, 0.5, 9.0, 0.0]})
    runs = pd.DataFrame({"run_id": ["r"], "params.steps": ["21"]})
    aligned, _ = align(history, runs, "progress")
    assert list(aligned["step"]) == [0, 10, 20] and list(aligned["value"]) == [1.0, 0.5, 0.0]
    at = interpolate(aligned, np.array([0.25, 0.5, 0.75, 1.5]))  # 1.5 lies outside: no extrapolation
    assert list(at["x"]) == [0.25, 0.5, 0.75] and list(at["value"]) == pytest.approx([0.75, 0.5, 0.25])


# --- configurations: never pooled --------------------------------------------------------------
def variants_store(root: Path) -> Store:
    """A study of two random-crop variants that differ only in crop.area, two seeds
    each (IoU 0.3 vs 0.7, objective 0.2/0.3 vs 0.6/0.7), and ParamCrop λ=1 (its own crop params, no
    crop.area); every run logs all its params like the trainer, device differing (bookkeeping)."""
    s = Store(root)
    eid, parent = s.study("variants")
    common = {"framework.name": "simclr", "backbone.name": "tiny3d", "steps": 11, "log_every": 5}
    random = {"crop.method": "random", "crop.aspect": "(0.5, 2.0)", "crop.duration": "(0.5, 1.0)"}
    runs = [({**random, "crop.area": "(0.1, 0.5)"}, 0.3, (0.2, 0.3)),
            ({**random, "crop.area": "(0.5, 1.0)"}, 0.7, (0.6, 0.7)),
            ({"crop.method": "paramcrop", "crop.strength": "1.0", "crop.noise_dim": 16}, 0.9, (0.5, 0.5))]
    for params, iou, objs in runs:
        for seed, obj in enumerate(objs):
            s.run(eid, parent, {**common, **params, "seed": seed, "device": ["cpu", "cuda"][seed]},
                  {sinks.VIEW_IOU: [(0, iou), (10, iou)], sinks.VIEW_CENTER_DISTANCE: [(0, 0.1), (10, 0.1)],
                   sinks.EVAL_KNN_TOP1: [(5, obj), (10, obj)]}, final={})
    return s


SMALL_AREA = "Random crop (baseline), crop.area=(0.1, 0.5)"
LARGE_AREA = "Random crop (baseline), crop.area=(0.5, 1.0)"


def test_configurations_are_every_differing_param():
    from analysis.groups import configuration_keys, configurations

    runs = pd.DataFrame({
        "run_id": list("abcdef"),
        "params.crop.method": ["random"] * 4 + ["paramcrop"] * 2,
        "params.crop.area": ["(0.1, 0.5)", "(0.1, 0.5)", "(0.5, 1.0)", "(0.5, 1.0)", None, None],
        "params.crop.strength": [None] * 4 + ["1.0", "1"],  # "1" = "1.0": compared as numbers
        "params.optim.lr": ["0.001"] * 6,
        "params.seed": ["0", "1", "0", "1", "0", "1"],
        "params.device": ["cpu", "cuda"] * 3, "params.data.workers": ["0", "2"] * 3,
    })
    assert configuration_keys(runs) == ["crop.method", "crop.strength", "crop.area"]  # not seed, device, workers
    frame, keys = configurations(runs)
    assert list(frame["configuration"]) == [SMALL_AREA] * 2 + [LARGE_AREA] * 2 + ["ParamCrop, λ=1.0"] * 2
    assert list(frame["config"]) == [0, 0, 1, 1, 2, 2] and keys == ["crop.method", "crop.strength", "crop.area"]
    # a param that only some runs have is a value of its own: told apart in the label
    runs.loc[5, "params.optim.lr"] = None
    labels = configurations(runs)[0]["configuration"]
    assert labels[4] == "ParamCrop, λ=1.0, optim.lr=0.001" and labels[5] == "ParamCrop, λ=1, optim.lr=–"  # as logged


def test_variants_that_differ_in_one_crop_key_are_never_pooled(tmp_path):
    """Two random-crop variants that differ only in crop.area stay two configurations of n = 2 in
    every analysis (pooled, they would be one 'Random crop (baseline)' group of n = 4 at IoU 0.5)."""
    s = variants_store(tmp_path / "store")
    common = ["--study", "variants", "--tracking-uri", s.uri, "--no-log"]
    result = cli_run(["analyze", "table", *common, "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t" / "table.csv")
    assert list(table["crop"]) == [SMALL_AREA, LARGE_AREA, "ParamCrop, λ=1.0"]
    assert list(table["n"]) == [2, 2, 2] and list(table["mean"]) == pytest.approx([0.25, 0.65, 0.5])
    assert list(table["crop.area"].fillna("")) == ["(0.1, 0.5)", "(0.5, 1.0)", ""]
    assert f"| {SMALL_AREA} | {LARGE_AREA} | ParamCrop, λ=1.0 |" in (tmp_path / "t" / "table.md").read_text()

    result = cli_run(["analyze", "iou-curves", *common, "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(tmp_path / "c" / "iou-curves.csv")
    iou = curves[(curves["metric"] == sinks.VIEW_IOU) & np.isclose(curves["progress"], 0.5)].set_index("configuration")
    assert list(iou.index) == [SMALL_AREA, LARGE_AREA, "ParamCrop, λ=1.0"]
    assert list(iou["n"]) == [2, 2, 2] and list(iou["mean"]) == pytest.approx([0.3, 0.7, 0.9])
    assert list(iou["baseline"]) == [True, True, False]

    result = cli_run(["analyze", "learning-curves", *common, "--out", str(tmp_path / "l")])
    assert result.exit_code == 0, result.output
    knn = pd.read_csv(tmp_path / "l" / "learning-curves.csv")
    end = knn[np.isclose(knn["progress"], 1.0)].set_index("configuration")
    assert end.loc[SMALL_AREA, "mean"] == pytest.approx(0.25) and end.loc[LARGE_AREA, "mean"] == pytest.approx(0.65)

    result = cli_run(["analyze", "strength", *common, "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    refs = pd.read_csv(tmp_path / "s" / "strength.csv").query("`crop.method` == 'random'")
    assert list(refs["configuration"]) == [SMALL_AREA, LARGE_AREA] and list(refs["mean"]) == pytest.approx([0.25, 0.65])


def test_configuration_labels_of_trainer_params():
    """Runs logged like the trainer (every config key, component defaults filled in): the labels name
    only what varies within a component; loss weights read as words; MLP and no extra losses first."""
    from analysis.groups import configurations
    from paramcrop.config import TrainConfig

    rows = []
    for crop in ({"crop.method": "random"}, {"crop.method": "cvrl"}, {"crop.method": "paramcrop"}):
        for head in ("cate", "mlp"):
            for region, order in ((1.0, 1.0), (0.0, 0.0)):
                cfg = TrainConfig().with_overrides({**crop, "head.name": head, "losses.region": region,
                                                    "losses.order": order, "seed": len(rows)})
                rows.append({"run_id": str(len(rows)), **{f"params.{k}": str(v) for k, v in cfg.flatten().items()}})
    frame, _ = configurations(pd.DataFrame(rows))
    labels = list(frame.sort_values("config")["configuration"])
    assert labels[:4] == ["Random crop (baseline), MLP head, no extra losses",
                          "Random crop (baseline), MLP head, region+order",
                          "Random crop (baseline), CATE head, no extra losses",
                          "Random crop (baseline), CATE head, region+order"]
    assert labels[4] == "CVRL crop, MLP head, no extra losses"
    assert labels[8] == "ParamCrop, λ=1.0, MLP head, no extra losses"
    assert frame["config"].nunique() == 12


def test_configuration_labels_name_the_crop_parameterisation_where_it_varies():
    """Trainer-style params of the parameterisation study: the crop label carries the degrees of freedom
    (and generator input / coupling) only when they differ between the runs."""
    from analysis.groups import configurations
    from paramcrop.config import TrainConfig

    def rows(points):
        out = []
        for overrides in points:
            cfg = TrainConfig().with_overrides({**overrides, "seed": len(out)})
            out.append({"run_id": str(len(out)), **{f"params.{k}": str(v) for k, v in cfg.flatten().items()}})
        return pd.DataFrame(out)

    varied = rows([{"crop.method": "random", "crop.dof": "spatial"}, {"crop.method": "paramcrop", "crop.dof": "spatial"},
                   {"crop.method": "paramcrop", "crop.dof": "temporal"},
                   {"crop.method": "paramcrop", "crop.generator_input": "none"}])
    labels = set(configurations(varied)[0]["configuration"])
    assert labels == {"Random crop spatial (baseline)", "ParamCrop spatial, λ=1.0", "ParamCrop temporal, λ=1.0",
                      "ParamCrop spatiotemporal, input none, λ=1.0"}
    plain = rows([{"crop.method": "random"}, {"crop.method": "paramcrop"}])
    assert set(configurations(plain)[0]["configuration"]) == {"Random crop (baseline)", "ParamCrop, λ=1.0"}


# --- how late the views change, and the generator's diagnostics -------------------------
def test_late_share_by_hand():
    from analysis.iou_curves import late_share

    x = np.linspace(0, 1, 101)
    assert late_share(x, 0.9 - 0.6 * x) == pytest.approx(0.25)  # a linear change
    late = np.where(x <= 0.75, 0.98, 0.98 - 0.39 * (x - 0.75) / 0.25)  # the controls study's shape, all late
    assert late_share(x, late) == pytest.approx(1.0)
    bent = np.interp(x, [0, 0.5, 0.75, 1], [0.98, 0.95, 0.90, 0.59])  # 0.98 -> 0.95 mid -> 0.59
    assert late_share(x, bent) == pytest.approx((0.90 - 0.59) / (0.98 - 0.59))
    assert late_share(x[:51] * 2 + 3, 0.9 - 0.6 * x[:51]) == pytest.approx(0.25)  # any span: its own last quarter
    assert math.isnan(late_share(x, 0.5 + 0.004 * x))  # under 0.01 of change: nothing to apportion
    assert math.isnan(late_share(x[:1], x[:1]))


def late_store(root: Path) -> Store:
    """Study ``late``: ParamCrop λ=1 whose IoU holds at 0.95 for three quarters of its 101 steps and then falls to
    0.55 (two seeds, ± 0.01), ParamCrop λ=0.5 falling linearly 0.9 -> 0.6, and the random crop (flat 0.5, no
    change to apportion). The λ=1 runs also log the generator diagnostics, linear in progress; the λ=0.5 runs
    log them only at step 0 (a point); the random crop has none."""
    s = Store(root)
    eid, s.parent = s.study("late")
    parent = s.parent
    steps = list(range(0, 101, 5))
    distance = {sinks.VIEW_CENTER_DISTANCE: linear(steps, 100, 0.1, 0.0, 0.0)}
    for seed in (0, 1):
        off = 0.01 * (1 if seed else -1)
        late = [(st, (0.95 if st <= 75 else 0.95 - 0.4 * (st - 75) / 25) + off) for st in steps]
        diag = {sinks.GENERATOR_GRAD_NORM: linear(steps, 100, 1.0, 1.0, 0.1 * seed),
                sinks.GENERATOR_UPDATE_NORM: linear(steps, 100, 0.02, -0.01, 0.0),
                sinks.GENERATOR_SATURATION: linear(steps, 100, 0.0, 0.5, 0.0),
                **{m: linear(steps, 100, 0.1, 0.1 * (i + 1), 0.0) for i, m in enumerate(sinks.CUBE_STD_METRICS)}}
        s.run(eid, parent, {"crop.method": "paramcrop", "crop.strength": "1.0", "steps": 101, "seed": seed},
              {sinks.VIEW_IOU: late, **distance, **diag}, final={sinks.EVAL_KNN_TOP1: 0.5})
        s.run(eid, parent, {"crop.method": "paramcrop", "crop.strength": "0.5", "steps": 101, "seed": seed},
              {sinks.VIEW_IOU: linear(steps, 100, 0.9, -0.3, off), **distance,
               **{m: [(0, 0.0)] for m in sinks.GENERATOR_METRICS}},
              final={sinks.EVAL_KNN_TOP1: 0.45})
        s.random_run = s.run(eid, parent, {"crop.method": "random", "steps": 101, "seed": seed},
                             {sinks.VIEW_IOU: linear(steps, 100, 0.5, 0, 0), **distance},
                             final={sinks.EVAL_KNN_TOP1: 0.4})
    return s


@pytest.fixture(scope="module")
def late_runs(tmp_path_factory) -> Store:
    return late_store(tmp_path_factory.mktemp("late"))


def test_iou_curves_and_table_report_the_late_share(late_runs, tmp_path):
    from analysis.iou_curves import iou_curves
    from analysis.load import RunQuery

    report = iou_curves(RunQuery(study="late", tracking_uri=late_runs.uri, out=tmp_path / "c", log=False))
    shares = report.data["summary"].set_index("configuration")["late_share"]
    assert shares["ParamCrop, λ=1.0"] == pytest.approx(1.0)  # all of the change in the last quarter
    assert shares["ParamCrop, λ=0.5"] == pytest.approx(0.25)  # linear
    assert math.isnan(shares["Random crop (baseline)"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["iou-curves.csv", "iou-curves.pdf", "iou-curves.png"]
    out = tmp_path / "t"
    result = cli_run(["analyze", "table", "--study", "late", "--tracking-uri", late_runs.uri, "--out", str(out),
                      "--no-log"])
    assert result.exit_code == 0, result.output
    tab = pd.read_csv(out / "table.csv").set_index("crop")
    assert tab.loc["ParamCrop, λ=1.0", "late_share"] == pytest.approx(1.0)
    assert tab.loc["ParamCrop, λ=0.5", "late_share"] == pytest.approx(0.25)
    assert math.isnan(tab.loc["Random crop (baseline)", "late_share"])
    md = (out / "table.md").read_text()
    assert "## When the views change" in md
    assert "| ParamCrop, λ=1.0 | 1.00 |" in md and "| ParamCrop, λ=0.5 | 0.25 |" in md
    assert "| Random crop (baseline) | – |" in md


def test_analyze_generator_plots_the_diagnostics_of_learned_crops(late_runs, tmp_path):
    out = tmp_path / "g"
    result = cli_run(["analyze", "generator", "--study", "late", "--tracking-uri", late_runs.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["generator.csv", "generator.pdf", "generator.png"]
    data = pd.read_csv(out / "generator.csv")
    assert set(data["metric"]) == {sinks.VIEW_IOU, *sinks.GENERATOR_METRICS}
    assert set(data["configuration"]) == {"ParamCrop, λ=1.0", "ParamCrop, λ=0.5"}  # the random crop: no generator
    assert "2 run(s) skipped without train/generator_grad_norm" in " ".join(result.stderr.split())
    assert "no random-crop baseline" not in result.stderr
    # means over the two seeds, by hand: grad norm 1 + p + 0.05, the last cube std 0.1 + 1.2 p
    grad = row(data, sinks.GENERATOR_GRAD_NORM, "ParamCrop, λ=1.0", 0.5)
    assert (grad["n"], grad["mean"]) == pytest.approx((2, 1.55))
    assert row(data, sinks.CUBE_STD_METRICS[-1], "ParamCrop, λ=1.0", 1.0)["mean"] == pytest.approx(1.3)
    assert row(data, sinks.VIEW_IOU, "ParamCrop, λ=1.0", 0.9)["mean"] == pytest.approx(0.95 - 0.4 * 15 / 25)
    assert "late_share" in result.stdout
    from PIL import Image

    img = np.asarray(Image.open(out / "generator.png").convert("L"), dtype=float)
    assert img.shape[1] >= 4000 and img.std() > 10  # five panels a row, not blank
    logged = {Path(a.path).name for a in late_runs.client.list_artifacts(late_runs.parent, "analysis")}
    assert {"generator.csv", "generator.png", "generator.pdf"} <= logged  # on the study's parent run
    none = cli_run(["analyze", "generator", "--runs", late_runs.random_run, "--tracking-uri", late_runs.uri,
                    "--out", str(tmp_path / "n"), "--no-log"])
    assert none.exit_code == 1 and "train/generator_grad_norm" in none.stderr


def test_generator_settings_label_only_the_crops_whose_runs_differ_in_them():
    """optim.generator_lr is logged by every run but acts only on a generator: of the adversary
    study's crops, only ParamCrop (two rates) names it; the random and hardest crops do not."""
    from analysis.groups import configurations, varying_in, params
    from paramcrop.config import TrainConfig, component_selectors

    assert component_selectors()["optim.generator_lr"] == "crop.method"
    points = [{"crop.method": "random"}, {"crop.method": "hardest"},
              {"crop.method": "paramcrop", "crop.strength": 0.0},
              {"crop.method": "paramcrop", "optim.generator_optimizer": "sgd", "optim.generator_lr": 5e-3}]
    rows = []
    for overrides in points:
        cfg = TrainConfig().with_overrides({**overrides, "seed": len(rows)})
        rows.append({"run_id": str(len(rows)), **{f"params.{k}": str(v) for k, v in cfg.flatten().items()}})
    runs = pd.DataFrame(rows)
    assert varying_in(params(runs), "optim.generator_lr") == {"paramcrop"}
    labels = list(configurations(runs)[0].sort_values("run_id")["configuration"])
    assert labels[:2] == ["Random crop spatiotemporal (baseline)", "Hardest views spatiotemporal"]
    assert labels[2:] == ["ParamCrop spatiotemporal, λ=0.0, optim.generator_lr=0.00025",
                          "ParamCrop spatiotemporal, optimizer sgd, λ=1.0, optim.generator_lr=0.005"]
    assert len(set(labels)) == 4
