"""Kill, stop and resume, for real: per-rank RNG streams, a SIGKILLed or SIGTERMed `paramcrop train`
and its `--resume`, a study trial killed at a shared checkpoint/eval step, a study whose creator
died before its parent run existed, and `study run --set` overrides."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from mlflow.tracking import MlflowClient

from conftest import TEST_SYNTHETIC_CACHE, TINY_DRAWS, TINY_SOURCE
from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.artifacts import TRAJECTORY_NAME
from paramcrop.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, rank_seed
from paramcrop.train import Trainer

TINY_SETS = {"data.frames": 16, "data.stride": 1, "data.size": 32, "view.frames": 8, "view.size": 32,
             "batch_size": 8, "log_every": 1, "visualize_at": 3, "eval.linear": False, "eval.retrieval": False,
             "eval.draw_per_class": TINY_DRAWS,              "augment.blur_p": 0.0}


def ckpt_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


class Train:
    """``paramcrop train ...`` in a subprocess, output in a file."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.log = workdir / f"train-{time.monotonic_ns()}.log"
        sets = [a for k, v in TINY_SETS.items() for a in ("--set", f"{k}={v}")]
        command = [sys.executable, "-m", "cli", "train", "--data", TINY_SOURCE, "--device", "cpu", "--no-progress",
                   "--experiment", "resume", *sets, *args]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, predicate, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"paramcrop train exited ({self.proc.returncode}) before {what}:\n{self.output}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.output}")

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)


def the_run(workdir: Path):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("resume")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, runs


def trajectory_steps(run_dir: Path) -> list[int]:
    import csv

    with (run_dir / TRAJECTORY_NAME).open(newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def only_run_dir(workdir: Path) -> Path:
    (run_dir,) = (workdir / "paramcrop-runs" / "resume").iterdir()
    return run_dir


# --- 1. per-rank RNG streams -----------------------------------------------------------------------
def test_rank_seeds_differ_are_reproducible_and_rank_0_keeps_the_seed():
    seeds = [rank_seed(7, r) for r in range(8)]
    assert seeds[0] == 7 and len(set(seeds)) == 8
    assert seeds == [rank_seed(7, r) for r in range(8)]
    assert rank_seed(8, 1) != rank_seed(7, 1)


def _rank_worker(rank: int, port: int, run_dir: str, cache: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), PARAMCROP_CACHE=cache)
    torch.set_num_threads(1)
    cfg = TrainConfig().with_overrides({**TINY_SETS, "data.source": TINY_SOURCE, "batch_size": 4, "steps": 6,
                                        "visualize_at": 0, "crop.method": "paramcrop"})
    try:
        trainer = Trainer(cfg, Path(run_dir), progress=False)
        trainer.fit(until=2)  # stops at step 2 with a checkpoint, as if preempted
        after_stop = torch.rand(4).tolist()  # this rank's stream right after the checkpoint
        dist.barrier()  # rank 0's checkpoint is written
        resumed = Trainer(cfg, Path(run_dir), progress=False)
        resumed.load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
        out[rank] = (after_stop, torch.rand(4).tolist(), resumed.step)
    finally:
        dist.destroy_process_group()


def test_each_ddp_rank_draws_its_own_stream_and_a_resume_restores_each_ranks_own(tmp_path):
    """2 gloo ranks: their draws differ, and after loading the checkpoint each rank continues its
    own stream (not rank 0's)."""
    from test_distributed import free_port

    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(free_port(), str(tmp_path / "run"), str(TEST_SYNTHETIC_CACHE), out), nprocs=2,
             join=True)
    (stop0, resumed0, step0), (stop1, resumed1, step1) = out[0], out[1]
    assert step0 == step1 == 2
    assert stop0 != stop1  # each rank its own stream
    assert resumed0 == stop0 and resumed1 == stop1  # each rank's own stream restored
    assert (tmp_path / "run" / "rng-rank1.pt").exists()


# --- 2. a SIGKILLed run loses no step ---------------------------------------------------------------
def test_sigkilled_train_resumed_holds_every_step_once_in_mlflow_and_trajectory(workdir):
    steps = 24
    args = ("--steps", str(steps), "--set", "checkpoint_every=3")
    first = Train(workdir, *args)
    first.wait_for(lambda: (workdir / "paramcrop-runs" / "resume").is_dir() and
                   ckpt_step(only_run_dir(workdir) / CHECKPOINT_NAME) >= 6, "the second checkpoint")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    run_dir = only_run_dir(workdir)
    killed_at = ckpt_step(run_dir / CHECKPOINT_NAME)
    assert 6 <= killed_at < steps
    client, (run,) = the_run(workdir)
    # everything up to the checkpoint was flushed with it; trajectory.csv too
    assert set(range(killed_at)) <= {m.step for m in client.get_metric_history(run.info.run_id, sinks.TRAIN_LOSS)}
    assert trajectory_steps(run_dir)[:killed_at] == list(range(killed_at))

    again = Train(workdir, *args, "--resume")
    assert again.wait() == 0, again.output
    client, (run,) = the_run(workdir)
    assert run.info.status == "FINISHED"
    for key in (sinks.TRAIN_LOSS, sinks.TRAIN_LR, sinks.VIEW_IOU):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(steps)), key
    assert [m.step for m in client.get_metric_history(run.info.run_id, sinks.EVAL_KNN_TOP1)] == [steps - 1]
    assert trajectory_steps(run_dir) == list(range(steps))


# --- 4. a stop leaves a checkpoint; --resume without one is refused ---------------------------------
def test_sigterm_without_checkpoint_every_leaves_a_checkpoint_and_resume_logs_each_step_once(workdir):
    steps = 24
    first = Train(workdir, "--steps", str(steps))
    first.wait_for(lambda: _logged_any(workdir), "the first logged steps")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 143, first.output
    run_dir = only_run_dir(workdir)
    stopped_at = ckpt_step(run_dir / CHECKPOINT_NAME)
    assert 0 < stopped_at < steps, first.output
    assert "--resume" in first.output
    client, (run,) = the_run(workdir)
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, sinks.TRAIN_LOSS)) == \
        list(range(stopped_at))

    again = Train(workdir, "--steps", str(steps), "--resume")
    assert again.wait() == 0, again.output
    client, (run,) = the_run(workdir)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, sinks.TRAIN_LOSS)) == list(range(steps))
    assert trajectory_steps(run_dir) == list(range(steps))


def _logged_any(workdir: Path) -> bool:
    """A train step was sent to MLflow (a crop image is logged at step 0, which flushes)."""
    client, runs = the_run(workdir)
    return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, sinks.TRAIN_LOSS))


def test_resume_without_a_checkpoint_is_refused_with_exit_2_and_logs_nothing(workdir):
    first = Train(workdir, "--steps", "200")
    first.wait_for(lambda: _logged_any(workdir), "the first logged steps")
    first.proc.send_signal(signal.SIGKILL)  # killed before any checkpoint
    first.wait()
    run_dir = only_run_dir(workdir)
    assert not (run_dir / CHECKPOINT_NAME).exists()
    client, (run,) = the_run(workdir)
    before = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}

    again = Train(workdir, "--steps", "200", "--resume")
    assert again.wait() == 2, again.output
    assert "nothing to resume" in again.output and "drop --resume" in " ".join(again.output.split())
    client, (run,) = the_run(workdir)
    assert {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics} == before
    assert run.info.status == "RUNNING"  # untouched: what the SIGKILL left


# --- 3. a trial killed right after a step that is both a checkpoint and an eval step ------------------
def test_trial_killed_at_a_shared_checkpoint_and_eval_step_keeps_every_eval_point_once(workdir):
    from test_faults import RUN_ATTR, Worker, load, tiny_spec, write_spec

    steps = 12
    spec = tiny_spec("shared", {"steps": steps, "checkpoint_every": 3, "eval": {"every": 3, "linear": False,
                                                                              "retrieval": False,
                                                                              "draw_per_class": TINY_DRAWS}},
                     search_space={"crop": {"type": "variants", "choices": {"random": {"crop.method": "random"}}}})
    path = write_spec(workdir, spec)
    checkpoint = workdir / "paramcrop-runs" / "shared" / "trial-0000" / CHECKPOINT_NAME
    first = Worker(workdir, str(path))
    first.wait_for(lambda: ckpt_step(checkpoint) >= 6, "the checkpoint after 6 steps (an eval step too)")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = ckpt_step(checkpoint)
    assert 6 <= killed_at < steps

    again = Worker(workdir, str(path))
    assert again.wait() == 0, again.output
    study, client, runs = load("shared", workdir)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry = study.trials[1].user_attrs[RUN_ATTR]
    # evaluations after 3, 6, 9 steps at 2, 5, 8 and the final one at steps - 1: each exactly once
    assert sorted(m.step for m in client.get_metric_history(retry, sinks.EVAL_KNN_TOP1)) == [2, 5, 8, 11]
    assert sorted(m.step for m in client.get_metric_history(retry, sinks.TRAIN_LOSS)) == list(range(steps))


# --- 5. a study whose creator died before recording its parent run -----------------------------------
def test_a_study_whose_creator_died_after_create_study_is_completed_with_one_parent_run(workdir):
    from test_faults import Worker, by_role, load, tiny_spec, write_spec

    path = write_spec(workdir, tiny_spec("orphan", {"steps": 2}))
    dies = ("import os, sys, optuna\n"
            "create = optuna.create_study\n"
            "def create_and_die(*args, **kwargs):\n"
            "    create(*args, **kwargs)\n"
            "    os._exit(9)  # the creator dies before the parent run exists\n"
            "optuna.create_study = create_and_die\n"
            "from cli import app\n"
            f"app(['study', 'run', {str(path)!r}, '--no-progress'])\n")
    creator = subprocess.run([sys.executable, "-c", dies], cwd=workdir, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert creator.returncode == 9, creator.stdout + creator.stderr
    study, _, runs = load("orphan", workdir)
    assert not by_role(runs, "study") and not study.trials

    again = Worker(workdir, str(path))
    assert again.wait(timeout=300) == 0, again.output
    study, _, runs = load("orphan", workdir)
    (parent,) = by_role(runs, "study")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {r.data.tags[sinks.PARENT_RUN_TAG] for r in by_role(runs, "trial")} == {parent.info.run_id}
    assert [s.study_name for s in optuna_studies(workdir)] == ["orphan"]  # the claim is gone


def optuna_studies(workdir: Path):
    import optuna

    from studies.storage import DEFAULT_STORAGE, open_storage

    return optuna.get_all_study_summaries(open_storage(str(workdir / DEFAULT_STORAGE)))


# --- 6. study run --set ----------------------------------------------------------------------------------
def test_study_set_refuses_a_searched_key_and_a_resume_with_other_overrides(workdir):
    from typer.testing import CliRunner

    from cli import app
    from test_faults import load, tiny_spec, write_spec

    one = {"crop": {"type": "variants", "choices": {"random": {"crop.method": "random"}}}}
    path = str(write_spec(workdir, tiny_spec("sets", {"steps": 2}, search_space=one)))
    searched = CliRunner().invoke(app, ["study", "run", path, "--set", "crop.method=cvrl", "--no-progress"])
    assert searched.exit_code == 2, searched.output
    assert "--set crop.method" in " ".join(searched.output.split())
    assert not (workdir / "paramcrop-studies.journal").exists()  # nothing created

    done = CliRunner().invoke(app, ["study", "run", path, "--set", "optim.lr=0.002", "--no-progress"])
    assert done.exit_code == 0, done.output
    study, client, runs = load("sets", workdir)
    (trial,) = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    assert float(trial.data.params["optim.lr"]) == 0.002
    for other in (["--set", "optim.lr=0.003"], []):
        again = CliRunner().invoke(app, ["study", "run", path, *other, "--no-progress"])
        message = " ".join(again.output.split())
        assert again.exit_code == 2, again.output
        assert "--set optim.lr=0.002" in message and "same --set values" in message and "--name" in message
    assert CliRunner().invoke(app, ["study", "run", path, "--set", "optim.lr=0.002"]).exit_code == 0


# --- 6. a corrupt checkpoint: the generation before it, or a clear refusal ---------------------------
def _stopped_run(workdir: Path, *args: str) -> Path:
    """``paramcrop train *args`` SIGTERMed after its third checkpoint (every 3 steps): two generations on disk."""
    first = Train(workdir, *args)
    first.wait_for(lambda: (workdir / "paramcrop-runs" / "resume").is_dir() and
                   ckpt_step(only_run_dir(workdir) / CHECKPOINT_NAME) >= 9, "the third checkpoint")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 143, first.output
    return only_run_dir(workdir)


def test_a_truncated_checkpoint_falls_back_to_the_previous_and_a_resume_logs_every_step_once(workdir):
    steps = 24
    args = ("--steps", str(steps), "--set", "checkpoint_every=3")
    run_dir = _stopped_run(workdir, *args)
    newest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    stopped_at, before = ckpt_step(newest), ckpt_step(previous)
    assert 0 < before < stopped_at < steps
    bad = workdir / "both-bad"
    shutil.copytree(run_dir, bad)  # for the refusal below
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    again = Train(workdir, *args, "--resume", "--run-dir", str(run_dir))
    assert again.wait() == 0, again.output
    said = " ".join(again.output.split())
    assert f"checkpoint {newest} (step unreadable) does not load" in said
    assert f"resuming from {previous} (step {before}) instead" in said
    assert (run_dir / f"{CHECKPOINT_NAME}.corrupt").exists()  # kept aside, not overwritten
    client, (run,) = the_run(workdir)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, sinks.TRAIN_LOSS)) == list(range(steps))
    assert trajectory_steps(run_dir) == list(range(steps))

    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):  # no generation loads: refused, naming the file and the choices
        (bad / name).write_bytes(b"not a checkpoint")
    from typer.testing import CliRunner

    from cli import app

    sets = [a for k, v in TINY_SETS.items() for a in ("--set", f"{k}={v}")]
    refused = CliRunner().invoke(app, ["train", "--data", TINY_SOURCE, "--device", "cpu", "--no-progress", "--experiment",
                                       "resume", *sets, *args, "--resume", "--run-dir", str(bad)])
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert f"cannot resume: {bad / CHECKPOINT_NAME} does not load" in said
    assert "drop --resume to start anew" in said and "Traceback" not in said


# --- 7. a full disk: one line, the last good checkpoint intact, a resume after freeing space ---------
@pytest.fixture()
def small_disk(tmp_path):
    """A 64 MB tmpfs (room for the tiny run's two checkpoint generations and a temp file), unmounted after."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_the_run_with_one_line_and_a_resume_after_freeing_space_completes(workdir, small_disk):
    from paramcrop.files import DISK_FULL_EXIT

    steps = 24
    run_dir = small_disk / "run"
    args = ("--steps", str(steps), "--set", "checkpoint_every=3", "--run-dir", str(run_dir))
    first = Train(workdir, *args)
    first.wait_for(lambda: ckpt_step(run_dir / CHECKPOINT_NAME) >= 3, "the first checkpoint")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 100_000))  # 100 KB left: no checkpoint fits
    assert first.wait() == DISK_FULL_EXIT, first.output
    lines = [line for line in first.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in first.output, first.output
    assert "No space left on device" in lines[0] and str(run_dir) in lines[0] and "free there" in lines[0]
    assert f"then run the same command plus --resume --run-dir {run_dir}" in lines[0]
    assert "writing it will likely fail" in first.output  # warned before writing a checkpoint that would not fit
    assert not list(run_dir.rglob("*.tmp"))
    last_good = ckpt_step(run_dir / CHECKPOINT_NAME)
    assert 3 <= last_good < steps  # intact: it loads
    client, (run,) = the_run(workdir)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags[sinks.TAG_FAILURE]

    filler.unlink()
    again = Train(workdir, *args, "--resume")
    assert again.wait() == 0, again.output
    client, (run,) = the_run(workdir)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, sinks.TRAIN_LOSS)) == list(range(steps))
    assert trajectory_steps(run_dir) == list(range(steps))
