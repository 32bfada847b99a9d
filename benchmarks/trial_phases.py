"""Where a study trial's wall time goes: its training steps against the fixed costs around them.

    python benchmarks/trial_phases.py [--spec quickstart] [--trials 3] [--set KEY=VALUE ...] [--tiny]

Runs ``paramcrop study run SPEC --n-trials N`` in this process (one worker, as a study runs by
default) in a fresh folder (new MLflow SQLite store and journal; the benchmark cache stays
``PARAMCROP_CACHE``), with timers around the trainer's phases, and prints one column per trial:
the trial's wall time (Optuna's), the training steps (``Trainer.train_step``, compilation
excluded: the first steps' time above the median step), first-use compilation, the data (the
training loader's batches), evaluation, crop images and generator snapshots, checkpoints, model
logging, the run's build (``plan.resolve``: data scan, model) and the rest (params, datasets,
metrics, the parent run). Decoding (``read_frames``, inside data and evaluation) is shown apart.
The share outside training steps is ``1 - steps / wall``. A study's first trial also pays the
process's imports and compilation; later trials are what every further trial of a study costs.

``--tiny`` (CI smoke run): a 4-step tiny study, seconds.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:  # as cli.py: OpenMP threads spin briefly, then sleep
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _timing import Results  # noqa: E402

COMPILE_STEPS = 10
"""Steps whose time above the trial's median step counts as first-use compilation."""
TINY_SETS = ["steps=4", "batch_size=8", "data.frames=16", "data.stride=1", "data.size=32", "view.frames=8",
             "view.size=32", "eval.every=2", "eval.linear=false", "eval.retrieval=false", "eval.draw_per_class=3",
             "visualize_at=1",
             "data.source=synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2"]
PHASES = ("build", "data", "steps", "compile", "evaluation", "images", "snapshots", "checkpoints",
          "model logging")


class Timers:
    """Seconds per phase per trial; a trial starts at each ``plan.resolve``."""

    def __init__(self) -> None:
        self.trials: list[dict[str, float]] = []
        self.step_times: list[list[float]] = []

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                if phase == "build":
                    self.trials.append(defaultdict(float))
                    self.step_times.append([])
                if phase == "steps":
                    self.step_times[-1].append(elapsed)
                else:
                    self.trials[-1][phase] += elapsed

        setattr(owner, name, timed)

    def table(self) -> list[dict[str, float]]:
        """One dict per trial: every phase, ``compile`` split off the steps."""
        out = []
        for phases, steps in zip(self.trials, self.step_times):
            median = statistics.median(steps)
            compile_s = sum(max(0.0, t - median) for t in steps[:COMPILE_STEPS])
            out.append({**phases, "steps": sum(steps) - compile_s, "compile": compile_s,
                        "median step": median})
        return out


def instrument(timers: Timers) -> None:
    from paramcrop import artifacts, train
    from paramcrop.data import datasets
    from studies import runner

    timers.wrap(runner, "resolve", "build")  # a trial's run plan, through the name the runner imported
    timers.wrap(train.Trainer, "train_step", "steps")
    timers.wrap(datasets.TrainClips, "__getitem__", "data")
    timers.wrap(datasets, "read_frames", "decoding")
    timers.wrap(train.Trainer, "evaluate", "evaluation")
    timers.wrap(train.Trainer, "checkpoint", "checkpoints")
    for name, phase in (("save_crop_images", "images"), ("save_snapshot", "snapshots"),
                        ("log_models", "model logging")):
        timers.wrap(artifacts, name, phase)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="quickstart")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--csv", help="append the results to this CSV (benchmark,name,value,kind)")
    args = parser.parse_args()
    sets = [*(TINY_SETS if args.tiny else []), *args.set]
    trials = 2 if args.tiny else args.trials

    import optuna
    from typer.testing import CliRunner

    from cli import app

    timers = Timers()
    instrument(timers)
    folder = Path(tempfile.mkdtemp(prefix="trial-phases-"))
    os.chdir(folder)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["study", "run", args.spec, "--name", "phases", "--n-trials", str(trials),
                                      "--no-progress", *(a for s in sets for a in ("--set", s))])
    total = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"the study failed (exit {result.exit_code}):\n{result.output}")
    study = optuna.load_study(study_name="phases", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "paramcrop-studies.journal"))))
    walls = [t.duration.total_seconds() for t in sorted(study.trials, key=lambda t: t.number)]
    rows = timers.table()
    if len(rows) != len(walls):
        raise SystemExit(f"timed {len(rows)} trials, the study has {len(walls)}")

    out = Results("trial_phases", args.csv)
    print(f"{args.spec}, {trials} trials in one process ({total:.1f} s in all; folder {folder})")
    print("| phase | " + " | ".join(f"trial {i}" for i in range(len(rows))) + " |")
    print("|---|" + "---:|" * len(rows))
    for phase in (*PHASES, "decoding"):
        print(f"| {phase} | " + " | ".join(f"{r.get(phase, 0.0):.2f} s" for r in rows) + " |")
    for i, (row, wall) in enumerate(zip(rows, walls)):
        row["rest"] = wall - sum(row.get(p, 0.0) for p in PHASES)
        row["wall"], row["outside steps"] = wall, 1 - row["steps"] / wall
        for name in (*PHASES, "decoding", "rest", "wall"):
            out.add(f"trial{i}/{name}", row.get(name, 0.0), "s")
        out.add(f"trial{i}/outside_steps", row["outside steps"], "ratio")
    print("| rest (params, datasets, metrics, parent run) | " + " | ".join(f"{r['rest']:.2f} s" for r in rows) + " |")
    print("| median step | " + " | ".join(f"{1000 * r['median step']:.0f} ms" for r in rows) + " |")
    print("| trial wall time | " + " | ".join(f"{r['wall']:.2f} s" for r in rows) + " |")
    print("| share outside training steps | " + " | ".join(f"{100 * r['outside steps']:.1f} %" for r in rows) + " |")


if __name__ == "__main__":
    main()
