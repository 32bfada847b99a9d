"""analysis/compare.py: paired differences from a baseline (``analyze compare`` and the table's
``diff`` columns), checked against hand-computed values; the 97.5 % t quantile comes from
``scipy.stats.t.ppf`` here, the differences and their std from plain arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import SMALL_AREA, Store, cli_run, variants_store

from paramcrop import sinks

RANDOM = {0: 0.30, 1: 0.34, 2: 0.35}          # seed -> objective
PC1 = {0: 0.50, 1: 0.56, 2: 0.53}             # differences 0.20, 0.22, 0.18
PC05 = {0: 0.40, 1: 0.30, 3: 0.90}            # seeds 0, 1 pair (0.10, -0.04); seed 3 and baseline seed 2 do not


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("compare"))
    eid, parent = s.study("pairs")
    common = {"framework.name": "simclr", "backbone.name": "tiny3d", "steps": 100}
    for crop, lam, values in (("random", None, RANDOM), ("paramcrop", "1.0", PC1), ("paramcrop", "0.5", PC05)):
        for seed, v in values.items():
            params = {**common, "crop.method": crop, "seed": seed, **({"crop.strength": lam} if lam else {})}
            s.run(eid, parent, params, final={sinks.EVAL_KNN_TOP1: v})
    return s


def hand(diffs):
    """n, mean, sample std, 95 % t-interval of the paired differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def test_paired_differences_and_intervals_by_hand(store, tmp_path):
    out = tmp_path / "c"
    result = cli_run(["analyze", "compare", "--study", "pairs", "--tracking-uri", store.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "compare.csv").set_index("configuration")
    assert list(data.index) == ["ParamCrop, λ=0.5", "ParamCrop, λ=1.0"]
    assert set(data["baseline"]) == {"Random crop (baseline)"}  # the one random-crop configuration
    n, mean, sd, lo, hi = hand([PC1[s] - RANDOM[s] for s in (0, 1, 2)])
    r = data.loc["ParamCrop, λ=1.0"]
    assert (r["pairs"], r["unpaired"]) == (3, 0)
    assert (r["diff"], r["diff_std"], r["diff_lower"], r["diff_upper"]) == pytest.approx((mean, sd, lo, hi), abs=1e-12)
    assert mean == pytest.approx(0.20) and hi - mean == pytest.approx(4.302652729911275 * sd / math.sqrt(3))
    # unmatched seeds: only seeds 0 and 1 pair; seed 3 (λ=0.5) and seed 2 (baseline) are dropped, and said so
    n, mean, sd, lo, hi = hand([PC05[0] - RANDOM[0], PC05[1] - RANDOM[1]])
    r = data.loc["ParamCrop, λ=0.5"]
    assert (r["pairs"], r["unpaired"]) == (2, 2)
    assert (r["diff"], r["diff_lower"], r["diff_upper"]) == pytest.approx((mean, lo, hi), abs=1e-12)
    assert mean == pytest.approx(0.03)
    err = " ".join(result.stderr.split())
    assert "ParamCrop, λ=0.5 vs Random crop (baseline): 2 unpaired seed(s)" in err and "(3, 2)" in err
    md = (out / "compare.md").read_text()
    assert "| ParamCrop, λ=1.0 | +0.200 | [" in md and "| 3 | 0 |" in md
    for name in ("compare.png", "compare.pdf"):
        assert (out / name).stat().st_size > 3000
    from PIL import Image

    img = np.asarray(Image.open(out / "compare.png").convert("L"), dtype=float)
    assert img.std() > 10 and (img < 100).mean() > 0.003  # points, bars, labels


def test_baseline_by_label_or_conditions(store, tmp_path):
    common = ["--study", "pairs", "--tracking-uri", store.uri, "--no-log"]
    for spec in ("ParamCrop, λ=1.0", "crop.method=paramcrop,crop.strength=1"):
        out = tmp_path / str(abs(hash(spec)))
        result = cli_run(["analyze", "compare", *common, "--out", str(out), "--baseline", spec])
        assert result.exit_code == 0, result.output
        data = pd.read_csv(out / "compare.csv").set_index("configuration")
        assert list(data.index) == ["Random crop (baseline)", "ParamCrop, λ=0.5"]
        n, mean, *_ = hand([RANDOM[s] - PC1[s] for s in (0, 1, 2)])
        assert data.loc["Random crop (baseline)", "diff"] == pytest.approx(mean, abs=1e-12)


@pytest.mark.parametrize("spec, message", [
    ("crop.method=paramcrop", "matches 2 configurations"),
    ("ParamCrop", "is no configuration here"),
    ("optim.nope=1", "no param 'optim.nope'"),
    ("crop.method=cvrl", "matches 0 configurations"),
])
def test_baseline_errors_list_the_configurations(store, tmp_path, spec, message):
    out = tmp_path / "o"
    result = cli_run(["analyze", "compare", "--study", "pairs", "--tracking-uri", store.uri, "--out", str(out),
                      "--baseline", spec])
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert message in err
    for label in ("Random crop (baseline)", "ParamCrop, λ=0.5", "ParamCrop, λ=1.0"):
        assert label in err
    assert not out.exists()
    result = cli_run(["analyze", "table", "--study", "pairs", "--tracking-uri", store.uri, "--out", str(out),
                      "--baseline", spec])
    assert result.exit_code == 2 and message in result.stderr and not out.exists()


def test_no_default_baseline_with_two_random_configurations(tmp_path):
    s = variants_store(tmp_path / "store")
    common = ["--study", "variants", "--tracking-uri", s.uri, "--no-log"]
    result = cli_run(["analyze", "compare", *common, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "2 random-crop configurations" in result.stderr and SMALL_AREA in result.stderr
    assert not (tmp_path / "o").exists()
    result = cli_run(["analyze", "compare", *common, "--out", str(tmp_path / "c"), "--baseline", "crop.area=(0.1, 0.5)"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(tmp_path / "c" / "compare.csv").set_index("configuration")
    assert data.loc["Random crop (baseline), crop.area=(0.5, 1.0)", "diff"] == pytest.approx(0.4)  # 0.6-0.2, 0.7-0.3
    assert data.loc["Random crop (baseline), crop.area=(0.5, 1.0)", "diff_std"] == pytest.approx(0.0, abs=1e-12)
    # the table says why it has no differences instead of failing
    result = cli_run(["analyze", "table", *common, "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "no paired differences" in result.stderr
    assert "diff" not in pd.read_csv(tmp_path / "t" / "table.csv").columns


def test_table_gains_the_paired_differences(store, tmp_path):
    out = tmp_path / "t"
    result = cli_run(["analyze", "table", "--study", "pairs", "--tracking-uri", store.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    tab = pd.read_csv(out / "table.csv").set_index("crop")
    assert math.isnan(tab.loc["Random crop (baseline)", "diff"])
    n, mean, sd, lo, hi = hand([PC1[s] - RANDOM[s] for s in (0, 1, 2)])
    r = tab.loc["ParamCrop, λ=1.0"]
    assert (r["pairs"], r["diff"], r["diff_lower"], r["diff_upper"]) == pytest.approx((3, mean, lo, hi), abs=1e-12)
    assert (tab.loc["ParamCrop, λ=0.5", "pairs"], tab.loc["ParamCrop, λ=0.5", "unpaired"]) == (2, 2)
    md = (out / "table.md").read_text()
    assert "## Difference from Random crop (baseline)" in md and "| ParamCrop, λ=1.0 | +0.200 |" in md


def test_conditions_keep_commas_inside_brackets():
    from analysis.family import conditions
    from analysis.errors import NotFoundError

    assert conditions("crop.method=random, crop.area=(0.5, 1.0)") == {"crop.method": "random",
                                                                      "crop.area": "(0.5, 1.0)"}
    with pytest.raises(NotFoundError, match="'oops' is not key=value"):
        conditions("crop.method=random,oops")
