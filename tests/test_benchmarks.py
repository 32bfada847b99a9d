"""``benchmarks/gpu.sh`` in its CI-sized CPU form: every benchmark runs and reports finite ratios."""
import csv
import math
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_script_runs_on_cpu_and_writes_finite_ratios(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PARAMCROP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = {(r["benchmark"], r["name"]) for r in rows}
    for case in ("quickstart", "r3d"):
        for precision in ("fp32", "bf16"):
            for ratio in ("full_random_over_bare", "full_paramcrop_over_floor", "paramcrop_over_random"):
                assert ("train", f"{case}/{precision}/{ratio}") in names
        assert ("train", f"{case}/bf16_over_fp32_clips_per_s") in names
    assert ("crop", "float32/forward_backward/crop_video_over_grid_sample") in names
    assert ("crop", "crop_step/paramcrop_over_random") in names
    assert ("data", "loader_0_workers_over_step") in names
    ratios = [float(r["value"]) for r in rows if r["kind"] == "ratio"]
    assert len(ratios) >= 20 and all(math.isfinite(v) and v > 0 for v in ratios)
    assert all(math.isfinite(float(r["value"])) and float(r["value"]) > 0 for r in rows)
    log = (out / "gpu.log").read_text()
    assert "CUDA tests: skipped (--device cpu)" in log and "crop_video vs grid_sample" in log


def test_trial_phases_account_for_each_trial_once(tmp_path):
    """The phases of each trial are timed apart (none inside another): together they stay within the trial's wall time."""
    out = tmp_path / "phases.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PARAMCROP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["python", str(REPO / "benchmarks" / "trial_phases.py"), "--tiny", "--set", "compile=false",
                           "--csv", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with out.open(newline="") as fh:
        values = {r["name"]: float(r["value"]) for r in csv.DictReader(fh)}
    for trial in ("trial0", "trial1"):
        assert values[f"{trial}/steps"] > 0 and values[f"{trial}/evaluation"] > 0 and values[f"{trial}/build"] > 0
        assert 0 <= values[f"{trial}/rest"] < values[f"{trial}/wall"]
        assert 0 < values[f"{trial}/outside_steps"] < 1
    assert "| share outside training steps |" in done.stdout
