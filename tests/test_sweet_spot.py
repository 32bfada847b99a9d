"""analysis/sweet_spot.py (``analyze sweet-spot``): synthetic runs logged straight into a temporary
MLflow store (no training), three matched levels x three seeds and one ParamCrop configuration;
the CSV's numbers against plain arithmetic, the t quantile from ``scipy.stats.t.ppf``."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import Store, cli_run

from paramcrop import sinks

TEST, VAL = sinks.EVAL_KNN_TOP1, sinks.EVAL_VAL_KNN_TOP1
SEEDS = (0, 1, 2)
LEVELS = ("0.3", "0.6", "0.9")
OBJ = {  # configuration -> objective -> per seed
    "0.3": {TEST: [0.40, 0.43, 0.41], VAL: [0.42, 0.44, 0.40]},
    "0.6": {TEST: [0.45, 0.47, 0.44], VAL: [0.56, 0.55, 0.57]},   # the validation kNN's best level
    "0.9": {TEST: [0.55, 0.58, 0.54], VAL: [0.50, 0.53, 0.52]},   # the test kNN's best: the easiest
    "paramcrop": {TEST: [0.60, 0.62, 0.57], VAL: [0.58, 0.61, 0.55]},
}
LABEL = {"0.3": "Matched random crop, crop.iou=0.3", "0.6": "Matched random crop, crop.iou=0.6",
         "0.9": "Matched random crop, crop.iou=0.9",
         "paramcrop": "ParamCrop, λ=1.0"}


def iou_history(config: str, seed: int) -> list[tuple[int, float]]:
    """Matched: 20 points (2 at each end), near the target; ParamCrop: 25 points (3 at each end),
    falling from 0.85 to 0.35."""
    if config == "paramcrop":
        return [(4 * i, 0.85 - 0.5 * i / 24 + 0.01 * seed) for i in range(25)]
    return [(5 * i, float(config) + 0.01 * seed + 0.004 * (i % 3) - 0.003 * (i % 2)) for i in range(20)]


def run_params(config: str, seed: int) -> dict:
    common = {"framework.name": "simclr", "backbone.name": "tiny3d", "steps": 100, "seed": seed}
    if config == "paramcrop":
        return {**common, "crop.method": "paramcrop", "crop.strength": "1.0"}
    return {**common, "crop.method": "matched", "crop.iou": config}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("sweet"))
    eid, parent = s.study("sweet", objective=VAL)
    s.parent = parent
    for config, objectives in OBJ.items():
        for seed in SEEDS:
            s.run(eid, parent, run_params(config, seed), {sinks.VIEW_IOU: iou_history(config, seed)},
                  final={k: v[seed] for k, v in objectives.items()}, name=f"{config}-s{seed}")
    eid, parent = s.study("nomatched")
    for seed in SEEDS:
        s.run(eid, parent, run_params("paramcrop", seed), {sinks.VIEW_IOU: iou_history("paramcrop", seed)},
              final={TEST: 0.5})
    eid, parent = s.study("onelevel")
    for config in ("0.3", "paramcrop"):
        for seed in SEEDS:
            s.run(eid, parent, run_params(config, seed), {sinks.VIEW_IOU: iou_history(config, seed)},
                  final={TEST: 0.5, VAL: 0.5})
    eid, parent = s.study("testonly")  # runs without a validation split: no eval/val/*
    for config in ("0.3", "0.6"):
        for seed in (0, 1):
            s.run(eid, parent, run_params(config, seed), {sinks.VIEW_IOU: iou_history(config, seed)},
                  final={TEST: OBJ[config][TEST][seed]})
    return s


def by_hand(values, level=0.95):
    """n, mean, t-interval at ``level``."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return n, mean, mean - half, mean + half


def mean(xs):
    return sum(xs) / len(xs)


def iou_by_hand(config):
    """Mean over seeds of each run's mean, start (first 10 %, rounded up) and end IoU."""
    runs = [[v for _, v in iou_history(config, seed)] for seed in SEEDS]
    k = 3 if config == "paramcrop" else 2  # ceil(25 / 10), ceil(20 / 10)
    return mean([mean(r) for r in runs]), mean([mean(r[:k]) for r in runs]), mean([mean(r[-k:]) for r in runs])


@pytest.fixture(scope="module")
def result(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "sweet-spot"
    res = cli_run(["analyze", "sweet-spot", "--study", "sweet", "--tracking-uri", store.uri, "--out", str(out),
                   "--ceiling", "0.9"])
    assert res.exit_code == 0, res.output
    return out, res


def test_csv_numbers_by_hand(result):
    out, _ = result
    data = pd.read_csv(out / "sweet-spot.csv")
    assert list(data.columns) == ["configuration", "method", "n", "iou_mean", "iou_start", "iou_end", "objective",
                                  "mean", "ci_low", "ci_high"]
    assert list(dict.fromkeys(data["objective"])) == [VAL, TEST]  # default: both, validation first
    order = [LABEL[c] for c in ("0.3", "0.6", "0.9", "paramcrop")]  # matched by measured IoU, then the others
    for objective in (VAL, TEST):
        rows = data[data["objective"] == objective].set_index("configuration")
        assert list(rows.index) == order
        for config in OBJ:
            r = rows.loc[LABEL[config]]
            n, m, lo, hi = by_hand(OBJ[config][objective])
            assert r["method"] == ("paramcrop" if config == "paramcrop" else "matched")
            assert r["n"] == n == 3
            assert (r["mean"], r["ci_low"], r["ci_high"]) == pytest.approx((m, lo, hi), abs=1e-12)
            assert (r["iou_mean"], r["iou_start"], r["iou_end"]) == pytest.approx(iou_by_hand(config), abs=1e-12)
    pc = data[(data["configuration"] == LABEL["paramcrop"]) & (data["objective"] == TEST)].iloc[0]
    # ParamCrop's start: mean of 0.85, 0.85 - 0.5/24, 0.85 - 1/24 (+ 0.01 mean seed offset); end likewise
    assert pc["iou_start"] == pytest.approx(0.85 - 0.5 / 24 + 0.01, abs=1e-12)
    assert pc["iou_end"] == pytest.approx(0.35 + 0.5 / 24 + 0.01, abs=1e-12)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    """The same analysis through the Python API: its paired table (the CLI prints it, the md holds it)."""
    from analysis.load import RunQuery
    from analysis.sweet_spot import sweet_spot

    return sweet_spot(RunQuery(study="sweet", tracking_uri=store.uri, out=tmp_path_factory.mktemp("api"), log=False))


def test_paired_best_against_easiest_and_hardest(result, report):
    """The best level is chosen on the first objective (validation: 0.6) and compared on both, also
    on test, where another level (0.9, the easiest) has the highest mean: select on validation."""
    pairs = report.data["pairs"]
    for objective in (VAL, TEST):
        t = pairs[pairs["objective"] == objective].set_index("versus")
        assert set(t["best"]) == {LABEL["0.6"]}
        for versus, other in (("easiest", "0.9"), ("hardest", "0.3")):
            n, m, lo, hi = by_hand([b - o for b, o in zip(OBJ["0.6"][objective], OBJ[other][objective])])
            r = t.loc[versus]
            assert r["other"] == LABEL[other]
            assert (r["pairs"], r["unpaired"]) == (3, 0)
            assert (r["diff"], r["diff_lower"], r["diff_upper"]) == pytest.approx((m, lo, hi), abs=1e-12)
    assert pairs.loc[(pairs["objective"] == TEST) & (pairs["versus"] == "easiest"), "diff"].iloc[0] < 0
    out, _ = result
    md = (out / "sweet-spot.md").read_text()
    _, m, lo, hi = by_hand([b - o for b, o in zip(OBJ["0.6"][TEST], OBJ["0.9"][TEST])])
    assert f"| {TEST} | {LABEL['0.6']} | easiest | {LABEL['0.9']} | {m:+.3f} | [{lo:+.3f}, {hi:+.3f}] | 3 | 0 |" in md
    assert f"highest mean `{VAL}` (the first objective selects" in md
    assert "`paramcrop analyze sweet-spot --study sweet --tracking-uri sqlite:" in md
    assert f"--objective {VAL} --objective {TEST} --ceiling 0.9" in md
    assert "Supervised ceiling of `eval/knn_top1`: 0.900." in md


def test_a_bonferroni_level_is_computed_and_written_as_given(store, tmp_path):
    """Two contrasts read at 97.5 % each: the intervals at that level, and the page says 97.5%, not 98%."""
    from analysis.load import RunQuery
    from analysis.sweet_spot import sweet_spot

    report = sweet_spot(RunQuery(study="sweet", tracking_uri=store.uri, out=tmp_path, log=False), level=0.975)
    pairs = report.data["pairs"].set_index(["objective", "versus"])
    _, m, lo, hi = by_hand([b - o for b, o in zip(OBJ["0.6"][TEST], OBJ["0.3"][TEST])], level=0.975)
    r = pairs.loc[(TEST, "hardest")]
    assert (r["diff"], r["diff_lower"], r["diff_upper"]) == pytest.approx((m, lo, hi), abs=1e-12)
    md = (tmp_path / "sweet-spot.md").read_text()
    assert "| 97.5% interval |" in md and "98%" not in md


def test_figures_and_artifacts(store, result):
    from PIL import Image

    out, res = result
    assert sorted(p.name for p in out.iterdir()) == ["sweet-spot.csv", "sweet-spot.md", "sweet-spot.pdf",
                                                     "sweet-spot.png"]
    img = np.asarray(Image.open(out / "sweet-spot.png").convert("L"), dtype=float)
    assert img.shape[1] >= 2000  # two 3.5-in panels at 300 dpi
    assert img.std() > 10 and (img < 100).mean() > 0.003
    assert (out / "sweet-spot.pdf").read_bytes()[:5] == b"%PDF-"
    logged = {Path(a.path).name for a in store.client.list_artifacts(store.parent, "analysis")}
    assert logged == {"sweet-spot.csv", "sweet-spot.md", "sweet-spot.pdf", "sweet-spot.png"}
    assert LABEL["0.6"] in res.stdout and "easiest" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--study", "nomatched"], "no crop.method=matched runs in study 'nomatched'"),
    (["--study", "nomatched"], "run the sweet-spot study"),
    (["--study", "onelevel"], "fewer than 2 matched levels"),
    (["--study", "sweet", "--objective", "eval/nope"], "'eval/nope'"),
    (["--study", "sweet", "--ceiling", "high"], "Invalid value for '--ceiling'"),
])
def test_bad_input_exits_2(store, tmp_path, args, message):
    out = tmp_path / "o"
    res = cli_run(["analyze", "sweet-spot", *args, "--tracking-uri", store.uri, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.split())
    assert not out.exists()


def test_objectives_as_a_list_and_a_missing_default(store, tmp_path):
    common = ["analyze", "sweet-spot", "--tracking-uri", store.uri, "--no-log"]
    res = cli_run([*common, "--study", "sweet", "--out", str(tmp_path / "a"), "--objective", f"{TEST},{VAL}"])
    assert res.exit_code == 0, res.output
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "a" / "sweet-spot.csv")["objective"])) == [TEST, VAL]
    # a default objective that no run has is left out with a warning; the ceiling needs the test kNN's panel
    res = cli_run([*common, "--study", "testonly", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert f"no run of 'testonly' has {VAL}" in res.stderr
    data = pd.read_csv(tmp_path / "b" / "sweet-spot.csv")
    assert set(data["objective"]) == {TEST} and list(data["n"]) == [2, 2]
    res = cli_run([*common, "--study", "sweet", "--out", str(tmp_path / "c"), "--objective", VAL, "--ceiling", "0.8"])
    assert res.exit_code == 0 and "which is no panel here" in " ".join(res.stderr.split())
