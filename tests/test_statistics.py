"""The statistics of issue 29: ``analyze variance``, ``analyze power``, and ``analyze compare``'s P(A > B),
hierarchical bootstrap, Holm adjustment and declared comparisons (``compare:`` in a study spec).

The MLflow store is filled with known final values and the per-query predictions that give them
(:meth:`test_analysis.Store.predictions`), no training. References are computed here by hand: plain
arithmetic over the generated outcomes, normal quantiles from :class:`statistics.NormalDist`, and
scipy's t / noncentral-t distributions only where a quantile or a tail probability is needed.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import Store, cli_run

from paramcrop import sinks

Q = 40                                                     # queries per run
CORRECT = {"random": [14, 22, 18, 30],                     # variant -> correct queries of seeds 0..3
           "paramcrop-l1": [26, 27, 25, 30],               # vs random: 0.3, 0.125, 0.175, 0; vs l0: 3 wins
           "paramcrop-l0": [14, 23, 18, 31]}               # vs random: 0, 0.025, 0, 0.025 (two ties)
VARIANTS = {"random": {"crop.method": "random"},
            "paramcrop-l1": {"crop.method": "paramcrop", "crop.strength": "1.0"},
            "paramcrop-l0": {"crop.method": "paramcrop", "crop.strength": "0.0"}}
LABELS = {"random": "Random crop (baseline)", "paramcrop-l1": "ParamCrop, λ=1.0", "paramcrop-l0": "ParamCrop, λ=0.0"}
SPEC = """name: stats
config: {steps: 10}
search_space:
  crop:
    type: variants
    choices:
      random: {crop.method: random}
      paramcrop-l1: {crop.method: paramcrop, crop.strength: 1.0}
      paramcrop-l0: {crop.method: paramcrop, crop.strength: 0.0}
seeds: [0, 1, 2, 3]
compare:
  - {baseline: paramcrop-l0, against: [paramcrop-l1]}
  - {baseline: random, against: [%s]}
"""
DATA = "synthetic:videos_per_class=6"


def outcomes(variant: str, seed: int, k: int, q: int = Q) -> np.ndarray:
    """A run's 0/1 outcome per query: k of q correct, which ones fixed by (variant, seed)."""
    rng = np.random.default_rng([sorted(CORRECT).index(variant), seed])
    correct = np.zeros(q, dtype=int)
    correct[rng.permutation(q)[:k]] = 1
    return correct


def study(s: Store, name: str, spec: str | None, predictions: bool = True, correct=CORRECT, first_seed: int = 0) -> dict:
    """A study of ``correct``'s runs (trial run names as the runner writes them), its seeds counted from
    ``first_seed``; its spec as the parent's ``study.yaml``. Returns ``{(variant, seed): run id}``."""
    eid, parent = s.study(name, objective=sinks.EVAL_KNN_TOP1)
    if spec is not None:
        path = s.root / name / "study.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.replace("name: stats", f"name: {name}"))
        s.client.log_artifact(parent, str(path))
    ids, number = {}, 0
    for variant, ks in correct.items():
        for seed, k in enumerate(ks, start=first_seed):
            params = {"framework.name": "simclr", "backbone.name": "tiny3d", "steps": 10, "data.source": DATA,
                      "seed": seed, **VARIANTS[variant]}
            rid = s.run(eid, parent, params, final={sinks.EVAL_KNN_TOP1: k / Q}, name=f"t{number} crop={variant} seed={seed}")
            number += 1
            if predictions:
                labels = [i % 4 for i in range(Q)]
                knn = [lab if c else (lab + 1) % 4 for lab, c in zip(labels, outcomes(variant, seed, k))]
                s.predictions(rid, "test", labels, {"knn": knn, "linear": labels})
            ids[(variant, seed)] = rid
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("stats"))
    s.ids = study(s, "stats", SPEC % "paramcrop-l0")
    s.bare = study(s, "bare", None, predictions=False, correct={"random": [20, 22], "paramcrop-l1": [26, 27]})
    study(s, "badlabel", SPEC % "paramcrop-l9", predictions=False, correct={"random": [20, 22]})
    return s


def run(store, command, *args, out=None):
    result = cli_run(["analyze", command, "--tracking-uri", store.uri, "--no-log", *args,
                      *(["--out", str(out)] if out else [])])
    return result


def sample_sd(x) -> float:
    m = sum(x) / len(x)
    return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))


# --- analyze variance ------------------------------------------------------------------------------
def test_variance_by_hand_from_the_predictions(store, tmp_path):
    result = run(store, "variance", "--study", "stats", out=tmp_path / "v")
    assert result.exit_code == 0, result.output
    data = pd.read_csv(tmp_path / "v" / "variance.csv").set_index("configuration")
    pooled_ss = pooled_df = 0
    pooled_eval = []
    for variant, ks in CORRECT.items():
        runs = [outcomes(variant, seed, k) for seed, k in enumerate(ks)]
        acc = [sum(c) / Q for c in runs]
        evals = [sum((c_i - a) ** 2 for c_i in c) / Q / Q for c, a in zip(runs, acc)]  # bootstrap var of a mean
        between, evaluation = sample_sd(acc) ** 2, sum(evals) / len(evals)
        r = data.loc[LABELS[variant]]
        assert (r["runs"], r["queries"]) == (4, Q)
        assert r["between_sd"] == pytest.approx(math.sqrt(between), abs=1e-12)
        assert r["eval_se"] == pytest.approx(math.sqrt(evaluation), abs=1e-12)
        assert r["training_sd"] == pytest.approx(math.sqrt(max(between - evaluation, 0)), abs=1e-12)
        assert r["eval_share"] == pytest.approx(min(evaluation / between, 1), abs=1e-12)
        assert r["eval_share"] + r["training_share"] == pytest.approx(1)
        pooled_ss, pooled_df = pooled_ss + 3 * between, pooled_df + 3
        pooled_eval += evals
    # random: 0.35, 0.55, 0.45, 0.75 -> sd 0.171, evaluation SE 0.075: a fifth of the variance is evaluation;
    # λ=1: 0.65, 0.675, 0.625, 0.75 -> sd 0.054 < SE 0.074: all of it could be evaluation (clipped)
    assert data.loc[LABELS["random"], "eval_share"] == pytest.approx(0.195)
    assert data.loc[LABELS["paramcrop-l1"], "eval_share"] == 1.0 and data.loc[LABELS["paramcrop-l1"], "training_sd"] == 0
    pooled = data.loc["all configurations (pooled)"]
    assert pooled["between_sd"] == pytest.approx(math.sqrt(pooled_ss / pooled_df), abs=1e-12)
    assert pooled["eval_se"] == pytest.approx(math.sqrt(sum(pooled_eval) / len(pooled_eval)), abs=1e-12)
    assert "| Random crop (baseline) | 4 | 40 | 0.525 |" in (tmp_path / "v" / "variance.md").read_text()
    for name in ("variance.png", "variance.pdf"):
        assert (tmp_path / "v" / name).stat().st_size > 3000


def test_variance_names_the_runs_without_predictions_and_the_command(store, tmp_path):
    result = run(store, "variance", "--study", "bare", out=tmp_path / "v")
    assert result.exit_code == 2, result.output
    err = " ".join(result.stderr.split())
    assert "4 run(s) have no per-query predictions (predictions/test.csv, for eval/knn_top1)" in err
    for rid in store.bare.values():
        assert f"paramcrop eval {rid} --data {DATA}" in err
    assert not (tmp_path / "v").exists()
    result = run(store, "variance", "--study", "stats", "--objective", "eval/retrieval_r1", out=tmp_path / "v")
    assert result.exit_code == 2 and "'eval/retrieval_r1' has no per-query predictions" in result.stderr
    assert "eval/val/knn_top1" in result.stderr


# --- analyze power ---------------------------------------------------------------------------------
def test_power_against_the_closed_form(store, tmp_path):
    result = run(store, "power", "--study", "stats", "--baseline", "crop.method=random", "--delta", "0.01",
                 out=tmp_path / "p")
    assert result.exit_code == 0, result.output
    data = pd.read_csv(tmp_path / "p" / "power.csv").set_index("configuration")
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    for variant in ("paramcrop-l1", "paramcrop-l0"):
        diffs = [(a - b) / Q for a, b in zip(CORRECT[variant], CORRECT["random"])]
        s = sample_sd(diffs)
        r = data.loc[LABELS[variant]]
        assert (r["pairs"], r["diff_std"]) == (4, pytest.approx(s, abs=1e-12))
        # half-width: the smallest n with t_{0.975, n-1} s / sqrt(n) <= 0.01
        n = r["n_interval"]
        assert stats.t.ppf(0.975, n - 1) * s / math.sqrt(n) <= 0.01 < stats.t.ppf(0.975, n - 2) * s / math.sqrt(n - 1)
        normal = max(2, math.ceil((z * s / 0.01) ** 2))
        assert r["n_power_normal"] == normal

        def power(n):  # paired t-test, two-sided alpha 0.05, true difference 0.01
            crit, nc = stats.t.ppf(0.975, n - 1), 0.01 * math.sqrt(n) / s
            return stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)

        n = r["n_power"]
        assert power(n) >= 0.8 > power(n - 1)
        assert normal <= n <= normal + 3  # the t test needs a little more than the normal approximation
    assert data.loc[LABELS["paramcrop-l0"], "n_power"] == 19  # s = 0.0144: (2.80 * 1.44)^2 = 16.4 -> 17, t: 19
    assert "| ParamCrop, λ=1.0 | Random crop (baseline) | 4 |" in (tmp_path / "p" / "power.md").read_text()
    # the declared family by default
    result = run(store, "power", "--study", "stats", out=tmp_path / "f")
    assert result.exit_code == 0, result.output
    family = pd.read_csv(tmp_path / "f" / "power.csv")
    assert list(family["configuration"]) == ["paramcrop-l1 vs paramcrop-l0", "paramcrop-l0 vs random"]


def test_power_refuses_a_pilot_of_fewer_than_three_pairs(store, tmp_path):
    result = run(store, "power", "--study", "bare", out=tmp_path / "p")
    assert result.exit_code == 2, result.output
    err = " ".join(result.stderr.split())
    assert "no comparison has a pilot of 3 or more pairs" in err and "ParamCrop, λ=1.0 vs Random crop (baseline) (2)" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("command, args, message", [
    ("power", ["--delta", "0"], "--delta must be a positive difference"),
    ("power", ["--delta", "-0.02"], "--delta must be a positive difference"),
    ("power", ["--power", "0"], "--power must be between 0 and 1"),
    ("power", ["--power", "1"], "--power must be between 0 and 1"),
    ("power", ["--power", "1.5"], "--power must be between 0 and 1"),
    ("compare", ["--adjust", "bonferroni"], "--adjust must be one of none, holm, got 'bonferroni'"),
])
def test_bad_options_exit_2_naming_them(store, tmp_path, command, args, message):
    result = run(store, command, "--study", "stats", *args, out=tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and not (tmp_path / "o").exists()


# --- analyze compare: P(A > B), bootstrap, Holm, the declared family -------------------------------------------
def t_test_p(d) -> float:
    n, m, s = len(d), sum(d) / len(d), sample_sd(d)
    return 2 * stats.t.sf(abs(m / (s / math.sqrt(n))), n - 1)


def t_half(d, level) -> float:
    return stats.t.ppf((1 + level) / 2, len(d) - 1) * sample_sd(d) / math.sqrt(len(d))


def wilson(share, n, level=0.95):
    z = NormalDist().inv_cdf((1 + level) / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_compare_makes_the_declared_family_with_holm(store, tmp_path):
    result = run(store, "compare", "--study", "stats", "--adjust", "holm", out=tmp_path / "c")
    assert result.exit_code == 0, result.output
    data = pd.read_csv(tmp_path / "c" / "compare.csv").set_index("declared")
    assert list(data.index) == ["paramcrop-l1 vs paramcrop-l0", "paramcrop-l0 vs random"]
    assert list(data["baseline"]) == [LABELS["paramcrop-l0"], LABELS["random"]]
    d = {name: [(a - b) / Q for a, b in zip(CORRECT[x], CORRECT[y])]
         for name, x, y in (("paramcrop-l1 vs paramcrop-l0", "paramcrop-l1", "paramcrop-l0"),
                            ("paramcrop-l0 vs random", "paramcrop-l0", "random"))}
    p = {name: t_test_p(x) for name, x in d.items()}
    assert list(data["p_value"]) == pytest.approx([p[n] for n in data.index], rel=1e-9)
    # Holm by hand, m = 2: the smaller p doubled (the first step, at alpha / 2), the larger kept (at alpha)
    small, large = sorted(p, key=p.get)
    assert data.loc[small, "p_adjusted"] == pytest.approx(min(1, 2 * p[small]), rel=1e-9)
    assert data.loc[large, "p_adjusted"] == pytest.approx(max(min(1, 2 * p[small]), p[large]), rel=1e-9)
    for name, level in ((small, 1 - 0.05 / 2), (large, 0.95)):
        mean = sum(d[name]) / 4
        assert (data.loc[name, "adj_lower"], data.loc[name, "adj_upper"]) == pytest.approx(
            (mean - t_half(d[name], level), mean + t_half(d[name], level)), abs=1e-12)
        assert (data.loc[name, "diff_lower"], data.loc[name, "diff_upper"]) == pytest.approx(
            (mean - t_half(d[name], 0.95), mean + t_half(d[name], 0.95)), abs=1e-12)
    # P(A > B) by counting: l1 vs l0 three wins, a loss; l0 vs random two wins, two ties
    for name, x in d.items():
        assert data.loc[name, "p_better"] == (sum(v > 0 for v in x) + sum(v == 0 for v in x) / 2) / 4 == 0.75
    for name in d:
        assert (data.loc[name, "p_better_lower"], data.loc[name, "p_better_upper"]) == pytest.approx(
            wilson(data.loc[name, "p_better"], 4), abs=1e-12)
        assert data.loc[name, "boot_lower"] <= data.loc[name, "diff"] <= data.loc[name, "boot_upper"]
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "| p (Holm) | Holm interval |" in md and "| paramcrop-l0 vs random | Random crop (baseline) |" in md
    assert "the 2 comparison(s) the spec declares" in " ".join(result.stderr.split())
    # no adjustment: the p-value and the t-interval themselves; --baseline replaces the declared family
    result = run(store, "compare", "--study", "stats", "--baseline", "crop.method=random", out=tmp_path / "n")
    assert result.exit_code == 0, result.output
    plain = pd.read_csv(tmp_path / "n" / "compare.csv").set_index("configuration")
    assert "declared" not in plain.columns and set(plain["baseline"]) == {LABELS["random"]}
    assert list(plain["p_adjusted"]) == list(plain["p_value"])
    assert list(plain["adj_lower"]) == list(plain["diff_lower"])
    assert plain.loc[LABELS["paramcrop-l0"], "p_value"] == pytest.approx(p["paramcrop-l0 vs random"], rel=1e-9)


def test_blocks_of_seeds_analysed_together_make_the_declared_family_of_the_whole(store, tmp_path):
    """Seeds 0-1 and 2-3 as two studies of one spec (``study run --seeds``): ``--experiment A --experiment B``
    gives the declared comparisons exactly as the one study of seeds 0-3 does. A block of some values
    (``--only``) adds pairs to the comparisons it can; a study of another grid gives no declared family."""
    from studies.spec import StudySpec

    blocks = Store(tmp_path / "blocks")
    for name, first in (("stats-seeds-0-1", 0), ("stats-seeds-2-3", 2)):
        study(blocks, name, SPEC % "paramcrop-l0", correct={v: ks[first:first + 2] for v, ks in CORRECT.items()},
              first_seed=first)
    part = StudySpec.from_yaml(SPEC % "paramcrop-l0")
    part.keep_only(["paramcrop-l1", "paramcrop-l0"])
    assert [(c.baseline, c.against) for c in part.compare] == [("paramcrop-l0", ["paramcrop-l1"])]
    study(blocks, "part", part.to_yaml(), correct={v: CORRECT[v][2:] for v in ("paramcrop-l1", "paramcrop-l0")},
          first_seed=2)
    study(blocks, "other", SPEC.replace("strength: 1.0", "strength: 0.5") % "paramcrop-l0",
          correct={v: ks[2:] for v, ks in CORRECT.items()}, first_seed=2)
    whole = run(store, "compare", "--study", "stats", "--adjust", "holm", out=tmp_path / "whole")
    both = run(blocks, "compare", "--experiment", "stats-seeds-0-1", "--experiment", "stats-seeds-2-3",
               "--adjust", "holm", out=tmp_path / "both")
    assert whole.exit_code == 0 and both.exit_code == 0, both.output
    columns = ["declared", "pairs", "diff", "diff_lower", "diff_upper", "p_value", "p_adjusted", "adj_lower",
               "adj_upper", "p_better"]
    expected = pd.read_csv(tmp_path / "whole" / "compare.csv")[columns]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "both" / "compare.csv")[columns], expected)
    with_part = run(blocks, "compare", "--experiment", "stats-seeds-0-1", "--experiment", "part", out=tmp_path / "part")
    assert with_part.exit_code == 0, with_part.output
    got = pd.read_csv(tmp_path / "part" / "compare.csv").set_index("declared")
    assert got.loc["paramcrop-l0 vs random", "pairs"] == 2
    plain = ["pairs", "diff", "diff_lower", "diff_upper", "p_value", "p_better"]
    pd.testing.assert_series_equal(got.loc["paramcrop-l1 vs paramcrop-l0", plain],
                                   expected.set_index("declared").loc["paramcrop-l1 vs paramcrop-l0", plain])
    short = run(blocks, "power", "--study", "part", out=tmp_path / "short")  # a declared comparison named once
    assert short.exit_code == 2 and "Pairs here: paramcrop-l1 vs paramcrop-l0 (2)." in " ".join(short.stderr.split())
    mixed = run(blocks, "compare", "--experiment", "stats-seeds-0-1", "--experiment", "other", out=tmp_path / "mixed")
    assert mixed.exit_code == 0, mixed.output
    assert "declared" not in pd.read_csv(tmp_path / "mixed" / "compare.csv").columns
    assert "study 'other''s grid is no block of 'stats-seeds-0-1''s" in " ".join(mixed.stderr.split())


def test_holm_by_hand():
    from analysis.resampling import holm, holm_levels

    p = [0.01, 0.04, 0.03, 0.2, math.nan]
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): 4 * 0.01, 3 * 0.03, max(0.09, 2 * 0.04), max(0.09, 0.2)
    assert holm(p)[:4] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert math.isnan(holm(p)[4])
    assert holm([0.5, 0.4])[0] == 0.8 and holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm_levels(p, 0.95)[:4] == pytest.approx([1 - 0.05 / 4, 1 - 0.05 / 2, 1 - 0.05 / 3, 0.95])


def test_probability_of_improvement_counts_ties_half():
    from analysis.resampling import probability_of_improvement, wilson_interval

    diffs = [0.1, -0.2, 0.0, 0.3, 0.0, 0.05, -0.01]
    wins, ties = sum(x > 0 for x in diffs), sum(x == 0 for x in diffs)
    assert probability_of_improvement(diffs) == (wins + ties / 2) / len(diffs) == 4 / 7
    assert wilson_interval(4 / 7, 7) == pytest.approx(wilson(4 / 7, 7), abs=1e-12)
    assert wilson_interval(1.0, 5)[1] == 1.0 and wilson_interval(0.0, 5)[0] == 0.0


def pair_outcomes(per_query: int, seed: int = 1) -> list[np.ndarray]:
    """Five pairs, A - B per query, with accuracy differences 0.10, 0.05, 0.15, 0.10, 0.0 on any
    number of queries (a multiple of 20)."""
    rng = np.random.default_rng(seed)
    out = []
    for wins in (3, 2, 4, 3, 1):        # per 20 queries: A alone right `wins` times, B alone once, else tie
        block = np.array([1] * wins + [-1] * 1 + [0] * (20 - wins - 1))
        out.append(rng.permutation(np.tile(block, per_query // 20)))
    return out


def test_hierarchical_bootstrap_contains_the_centre_and_narrows_with_queries():
    from analysis.resampling import hierarchical_bootstrap

    widths = []
    for q in (20, 200, 2000):
        pairs = pair_outcomes(q)
        centre = np.mean([p.mean() for p in pairs])  # the t-interval's centre: the mean paired difference
        assert centre == pytest.approx(0.08)
        lo, hi = hierarchical_bootstrap(pairs)
        assert lo < centre < hi
        assert hierarchical_bootstrap(pairs) == (lo, hi)  # seeded
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # the seed level alone is left with many queries: close to the bootstrap of the five pair means
    means = np.array([0.10, 0.05, 0.15, 0.10, 0.0])
    rng = np.random.default_rng(0)
    seeds_only = np.quantile(rng.choice(means, (4000, 5)).mean(1), [0.025, 0.975])
    assert widths[2] == pytest.approx(seeds_only[1] - seeds_only[0], abs=0.02)


def test_hierarchical_bootstrap_agrees_with_resampling_query_by_query():
    from analysis.resampling import hierarchical_bootstrap

    pairs = pair_outcomes(20)
    rng = np.random.default_rng(7)
    stat = []
    for _ in range(3000):  # the two levels literally: seeds, then each drawn seed's queries
        drawn = rng.integers(0, len(pairs), len(pairs))
        stat.append(np.mean([rng.choice(pairs[i], pairs[i].size).mean() for i in drawn]))
    naive = np.quantile(stat, [0.025, 0.975])
    assert hierarchical_bootstrap(pairs, resamples=3000) == pytest.approx(tuple(naive), abs=0.012)


# --- declared comparisons in the spec ------------------------------------------------------------------------
def test_declared_comparisons_are_validated_when_the_spec_loads(tmp_path):
    from studies.spec import SpecError, StudySpec

    spec = StudySpec.from_yaml(SPEC % "paramcrop-l0")
    assert [(c.baseline, c.against) for c in spec.compare] == [("paramcrop-l0", ["paramcrop-l1"]),
                                                               ("random", ["paramcrop-l0"])]
    assert StudySpec.from_yaml(spec.to_yaml()).compare == spec.compare
    with pytest.raises(SpecError, match=r"compare\[1\].against: unknown label 'paramcrop-l9'; valid labels: "
                                        r"crop=random, random, crop=paramcrop-l1, paramcrop-l1"):
        StudySpec.from_yaml(SPEC % "paramcrop-l9")
    assert StudySpec.from_yaml(SPEC % "crop=paramcrop-l0").compare[1].against == ["crop=paramcrop-l0"]
    two = SPEC.replace("seeds:", "  backbone.name: {type: categorical, choices: [tiny3d, r3d_18]}\nseeds:")
    with pytest.raises(SpecError, match="'backbone.name=r3d_18' is a value of backbone.name, the baseline 'random' "
                                        "one of crop"):
        StudySpec.from_yaml(two % "backbone.name=r3d_18")
    # analysis-only: declaring comparisons leaves the study's identity (resuming) alone
    bare = StudySpec.from_yaml(SPEC.split("compare:")[0])
    assert "compare" not in bare.to_yaml()
    assert StudySpec.identity(spec.to_yaml()) == StudySpec.identity(bare.to_yaml()) == bare.to_yaml()
    # the CLI refuses such a spec before anything is created
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC % "paramcrop-l9")
    result = cli_run(["study", "run", str(path), "--no-progress"])
    assert result.exit_code == 2 and "unknown label 'paramcrop-l9'" in result.stderr
    assert not list(tmp_path.glob("*.db"))


def test_study_spec_shows_the_declared_comparisons_and_analyze_refuses_unknown_labels(store, tmp_path):
    result = cli_run(["study", "spec", "controls"])
    assert result.exit_code == 0
    assert "compare:" in result.stdout and "{baseline: paramcrop-l0, against: [paramcrop, matched-sweet]}" in result.stdout
    from studies.spec import load_spec

    assert [c.baseline for c in load_spec("controls").compare] == ["paramcrop-l0", "paramcrop"]
    result = run(store, "compare", "--study", "badlabel", out=tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert "unknown label 'paramcrop-l9'" in result.stderr and "valid labels:" in result.stderr


def test_declared_comparisons_pair_within_each_value_of_the_other_dimensions():
    from analysis.family import declared_pairs
    from analysis.groups import configurations
    from studies.spec import StudySpec

    spec = StudySpec.from_yaml(SPEC.replace("seeds:", "  backbone.name: {type: categorical, choices: [tiny3d, r3d_18]}\n"
                                            "seeds:") % "paramcrop-l0")
    rows, number = [], 0
    for variant in ("random", "paramcrop-l0", "paramcrop-l1"):
        for backbone in ("tiny3d", "r3d_18"):
            for seed in (0, 1):
                retry = " (retry of t1)" if number == 7 else ""
                rows.append({"run_id": f"r{number}", "run_name": f"t{number} crop={variant} backbone.name={backbone} "
                             f"seed={seed}{retry}", "params.backbone.name": backbone, "params.seed": str(seed),
                             **{f"params.{k}": v for k, v in VARIANTS[variant].items()}})
                number += 1
    runs = pd.DataFrame(rows)
    configs, _ = configurations(runs)
    config_of = dict(zip(runs["run_name"].str.split(" seed=").str[0].str.split(" ", n=1).str[1], configs["config"]))
    pairs, notes = declared_pairs(spec, runs, configs)
    assert not notes
    got = {(p.declared, p.baseline, p.against) for p in pairs}
    want = {(f"{a} vs {b} (backbone.name={bb})", config_of[f"crop={b} backbone.name={bb}"],
             config_of[f"crop={a} backbone.name={bb}"])
            for a, b in (("paramcrop-l1", "paramcrop-l0"), ("paramcrop-l0", "random")) for bb in ("tiny3d", "r3d_18")}
    assert got == want and len(pairs) == 4
    # a label without runs is said, not fatal
    pairs, notes = declared_pairs(spec, runs[~runs["run_name"].str.contains("paramcrop-l1")], configs)
    assert len(pairs) == 2 and notes == ["declared comparison paramcrop-l1 vs paramcrop-l0: no runs of paramcrop-l1"]
