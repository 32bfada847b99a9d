"""Faults a study survives, each injected for real: a worker SIGKILLed mid-trial, SIGINT/SIGTERM,
four workers on one study, a dataset full of broken files, a tracking server that dies, and the
inputs that must be refused (exit 2, nothing created). PostgreSQL: tests/test_postgres.py.

Tiny configs (a few steps on 32x32 clips), heartbeats of 1 s, subprocesses for everything that
is killed or signalled.
"""
import ast
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli import app
from paramcrop import sinks
from paramcrop.data import resolve_source
from paramcrop.artifacts import SKIPPED_NAME as SKIPPED_ARTIFACT
from studies.runner import PREVIOUS_RUN_ATTR, RUN_ATTR, TAG_RESUMED_AT, TAG_RETRY_OF
from studies.storage import DEFAULT_STORAGE, open_storage
from studies.mlflow_sink import SPOOL_PREFIX
from conftest import TINY_DRAWS, TINY_SOURCE

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = {"steps": 4, "batch_size": 8, "log_every": 1, "visualize_at": 1,
               "data": {"frames": 16, "stride": 1, "size": 32},
               "view": {"frames": 8, "size": 32}, "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS},
               "augment": {"blur_p": 0.0}}
CROPS = {"crop": {"type": "variants", "choices": {
    "random": {"crop.method": "random"},
    "paramcrop": {"crop.method": "paramcrop", "crop.strength": 1.0}}}}


def tiny_spec(name, config=None, **extra):
    spec = {"name": name, "data": TINY_SOURCE, "config": {**TINY_CONFIG, **(config or {})},
            "search_space": CROPS, "sampler": "grid", "heartbeat": 1}
    spec.update(extra)
    return spec


def write_spec(workdir: Path, spec: dict) -> Path:
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Worker:
    """``paramcrop study run ...`` in a subprocess, output in a file (no pipe to fill up)."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None, preexec_fn=None, tag: str = "",
                 new_session: bool = False) -> None:
        self.log = workdir / f"worker{tag}-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "cli", "study", "run", *args, "--no-progress"]
        full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **(env or {})}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=preexec_fn, start_new_session=new_session)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_for(self, predicate, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited ({self.proc.returncode}) before {what}:\n{self.output}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.output}")


def load(name: str, workdir: Path, storage: str | None = None):
    study = optuna.load_study(study_name=name, storage=open_storage(storage or str(workdir / DEFAULT_STORAGE)))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return study, client, runs


def by_role(runs, role):
    return [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == role]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


def steps_of(client, run_id, key=sinks.TRAIN_LOSS) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def grid_points(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


def assert_one_run_per_trial(study, runs, states=("COMPLETE",)):
    """Exactly one child run per trial, all under the one parent, none left RUNNING."""
    parents, children = by_role(runs, "study"), by_role(runs, "trial")
    assert len(parents) == 1
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    trial_runs = [t.user_attrs[RUN_ATTR] for t in study.trials if t.state.name in states or RUN_ATTR in t.user_attrs]
    assert sorted(trial_runs) == sorted(r.info.run_id for r in children)
    assert {r.data.tags[sinks.PARENT_RUN_TAG] for r in children} == {parents[0].info.run_id}
    for t in study.trials:
        if RUN_ATTR in t.user_attrs:
            run = next(r for r in children if r.info.run_id == t.user_attrs[RUN_ATTR])
            assert run.data.tags[sinks.TAG_TRIAL] == str(t.number)


# --- SIGKILL of a worker mid-trial -------------------------------------------------------------
def test_sigkilled_worker_trial_is_failed_and_retried_from_its_checkpoint(workdir):
    steps = 12
    path = write_spec(workdir, tiny_spec("kill", {"steps": steps, "checkpoint_every": 3}))
    checkpoint = workdir / "paramcrop-runs" / "kill" / "trial-0001" / "checkpoint.pt"
    first = Worker(workdir, str(path))
    first.wait_for(checkpoint.exists, "trial 1's first checkpoint")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    killed_at = checkpoint_step(checkpoint)
    assert 0 < killed_at < steps  # the kill came mid-trial

    study, client, _ = load("kill", workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    done = study.trials[0]
    done_run = client.get_run(done.user_attrs[RUN_ATTR])
    dead_run_id = study.trials[1].user_attrs[RUN_ATTR]
    assert client.get_run(dead_run_id).info.status == "RUNNING"  # what SIGKILL leaves behind

    # the same command again: it waits out the heartbeat grace (3 x 1 s), fails and retries trial 1
    second = Worker(workdir, str(path))
    assert second.wait() == 0, second.output
    assert "trial 1 lost its worker" in second.output
    study, client, runs = load("kill", workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    dead, retry = study.trials[1], study.trials[2]
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == 1
    assert retry.user_attrs[PREVIOUS_RUN_ATTR] == dead_run_id
    assert sorted(grid_points([study.trials[0], retry])) == sorted(grid_points(study.trials[:2]))  # whole grid
    # the finished trial is untouched
    assert study.trials[0].value == done.value and study.trials[0].user_attrs[RUN_ATTR] == done_run.info.run_id
    assert client.get_run(done_run.info.run_id).info.end_time == done_run.info.end_time
    # the dead trial's run ended FAILED with the reason; the retry's run resumed at the checkpoint
    dead_run = client.get_run(dead_run_id)
    assert dead_run.info.status == "FAILED" and "worker died" in dead_run.data.tags[sinks.TAG_FAILURE]
    assert dead_run.data.tags[sinks.TAG_TRIAL_STATE] == "FAIL"
    retry_run = client.get_run(retry.user_attrs[RUN_ATTR])
    assert retry_run.info.status == "FINISHED" and retry_run.data.tags[TAG_RETRY_OF] == "1"
    resumed_at = int(retry_run.data.tags[TAG_RESUMED_AT])
    assert resumed_at == killed_at
    # metrics continue at the right steps: every step once; those before the checkpoint are the
    # dead run's own values (flushed with each checkpoint), the rest are the retry's
    dead_history = {m.step: m for m in client.get_metric_history(dead_run_id, sinks.TRAIN_LOSS)}
    assert set(range(resumed_at)) <= set(dead_history)
    history = client.get_metric_history(retry_run.info.run_id, sinks.TRAIN_LOSS)
    assert sorted(m.step for m in history) == list(range(steps))
    for m in history:
        if m.step < resumed_at:
            assert (m.value, m.timestamp) == (dead_history[m.step].value, dead_history[m.step].timestamp)
    # every param as the trainer resolved it, the synthetic source's augmentation defaults included
    assert retry_run.data.params == dead_run.data.params and retry_run.data.params["augment.flip_p"] == "0.0"
    assert checkpoint_step(checkpoint) == steps
    assert_one_run_per_trial(study, runs, states=("COMPLETE", "FAIL"))


# --- SIGINT / SIGTERM ----------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code,resume", [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, True)])
def test_signal_stops_the_trial_with_a_checkpoint_and_the_rerun_finishes_it(workdir, sig, code, resume):
    """SIGINT as a terminal sends it (to the process group, DataLoader workers included); SIGTERM
    as a scheduler does (to the main process)."""
    steps = 12
    spec = tiny_spec("stop", {"steps": steps, "checkpoint_every": 2,
                              "data": {**TINY_CONFIG["data"], "workers": 1 if sig == signal.SIGINT else 0}},
                     search_space={"crop": {"type": "variants", "choices": {"random": {"crop.method": "random"}}}})
    path = write_spec(workdir, spec)
    checkpoint = workdir / "paramcrop-runs" / "stop" / "trial-0000" / "checkpoint.pt"
    worker = Worker(workdir, str(path), new_session=True)
    worker.wait_for(checkpoint.exists, "the first checkpoint")
    if sig == signal.SIGINT:
        os.killpg(worker.proc.pid, sig)
    else:
        worker.proc.send_signal(sig)
    assert worker.wait() == code, worker.output
    output = " ".join(worker.output.split())
    assert "resume with: paramcrop study run" in output.lower() and str(path.name) in output

    study, client, runs = load("stop", workdir)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # queued again
    run = client.get_run(study.trials[0].user_attrs[RUN_ATTR])
    assert run.info.status == "KILLED" and run.data.tags[sinks.TAG_TRIAL_STATE] == "FAIL"
    assert ("SIGTERM" if sig == signal.SIGTERM else "SIGINT") in run.data.tags[sinks.TAG_FAILURE]
    # the checkpoint was written where training stopped, and the run holds exactly the steps before it
    stopped_at = checkpoint_step(checkpoint)
    assert 0 < stopped_at < steps
    assert steps_of(client, run.info.run_id) == list(range(stopped_at))
    assert not [r for r in runs if r.info.status == "RUNNING"]
    if not resume:
        return
    again = Worker(workdir, str(path))
    assert again.wait() == 0, again.output
    study, client, runs = load("stop", workdir)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry_run = client.get_run(study.trials[1].user_attrs[RUN_ATTR])
    assert int(retry_run.data.tags[TAG_RESUMED_AT]) == stopped_at
    assert steps_of(client, retry_run.info.run_id) == list(range(steps))
    assert_one_run_per_trial(study, runs, states=("COMPLETE", "FAIL"))


def test_a_trial_whose_checkpoints_do_not_load_starts_over_with_a_warning(workdir):
    """Both generations corrupt when the stopped trial is retried: it starts over, saying so, and its run
    holds every step once."""
    from paramcrop.checkpoint import PREVIOUS_NAME

    steps = 12
    spec = tiny_spec("corrupt", {"steps": steps, "checkpoint_every": 3},
                     search_space={"crop": {"type": "variants", "choices": {"random": {"crop.method": "random"}}}})
    path = write_spec(workdir, spec)
    trial_dir = workdir / "paramcrop-runs" / "corrupt" / "trial-0000"
    worker = Worker(workdir, str(path))
    worker.wait_for(lambda: (trial_dir / PREVIOUS_NAME).exists(), "two checkpoint generations")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 143, worker.output
    for name in ("checkpoint.pt", PREVIOUS_NAME):
        (trial_dir / name).write_bytes((trial_dir / name).read_bytes()[:1000])

    again = Worker(workdir, str(path))
    assert again.wait() == 0, again.output
    said = " ".join(again.output.split())
    assert "trial 1 starts over from step 0 (no checkpoint in" in said and "Traceback" not in said
    assert {p.name for p in trial_dir.glob("*.corrupt")} == {"checkpoint.pt.corrupt", f"{PREVIOUS_NAME}.corrupt"}
    study, client, runs = load("corrupt", workdir)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry_run = client.get_run(study.trials[1].user_attrs[RUN_ATTR])
    assert TAG_RESUMED_AT not in retry_run.data.tags
    assert steps_of(client, retry_run.info.run_id) == list(range(steps))
    assert_one_run_per_trial(study, runs, states=("COMPLETE", "FAIL"))


# --- several workers at once ---------------------------------------------------------------------
def test_four_workers_finish_a_grid_without_duplicates(workdir):
    path = write_spec(workdir, tiny_spec("four", seeds=[0, 1, 2, 3]))  # 2 crops x 4 seeds = 8 points
    workers = [Worker(workdir, str(path), tag=str(i)) for i in range(4)]
    codes = [w.wait() for w in workers]
    outputs = [w.output for w in workers]
    assert codes == [0, 0, 0, 0], outputs
    assert not any("database is locked" in o or "Traceback" in o for o in outputs), outputs
    study, _, runs = load("four", workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8
    assert len(set(grid_points(study.trials))) == 8  # every point once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert_one_run_per_trial(study, runs)


# --- bad data ------------------------------------------------------------------------------------
def _drop_file_read_override():
    """preexec_fn: as root, give up CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH for the child so that a
    mode-000 file is really unreadable (root keeps them otherwise)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the child after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _grey(n, shade):
    from paramcrop.data.video import write_mp4

    def write(path: Path):
        rng = np.random.default_rng(shade)
        frames = np.clip(shade + rng.integers(-20, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        write_mp4(path, frames)
        return path
    return write


def test_broken_files_are_skipped_counted_and_listed(workdir):
    root = workdir / "videos"
    for split, count in (("train", 6), ("test", 2)):
        for label, shade in (("bright", 200), ("dark", 50)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                _grey(20, shade + i)(folder / f"{label}{i}.mp4")
    bad = root / "train" / "bright"
    good = (bad / "bright0.mp4").read_bytes()
    (bad / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.txt").write_text("not a video\n")
    (bad / "locked.mp4").write_bytes(good)
    (bad / "locked.mp4").chmod(0)
    expected = {"corrupt.mp4", "truncated.mp4", "empty.mp4", "notes.txt", "locked.mp4"}

    spec = tiny_spec("bad-data", {"steps": 3, "batch_size": 4, "data": {"frames": 8, "stride": 2, "size": 32}},
                     data=f"folder:{root}",
                     search_space={"crop": {"type": "variants", "choices": {"random": {"crop.method": "random"}}}})
    path = write_spec(workdir, spec)
    preexec = _drop_file_read_override if os.geteuid() == 0 else None
    worker = Worker(workdir, str(path), preexec_fn=preexec)
    assert worker.wait() == 0, worker.output
    study, client, runs = load("bad-data", workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    run = client.get_run(study.trials[0].user_attrs[RUN_ATTR])
    assert run.data.metrics[sinks.DATA_SKIPPED] == len(expected)
    listed = Path(client.download_artifacts(run.info.run_id, SKIPPED_ARTIFACT, str(workdir))).read_text()
    rows = {Path(line.split(",")[1]).name: line for line in listed.splitlines()[1:]}
    assert set(rows) == expected
    assert "permission denied" in rows["locked.mp4"] and "empty file" in rows["empty.mp4"]
    held_out = {r.path.name for r in resolve_source(f"folder:{root}").with_validation(0.2).val}
    assert all(rows[name].startswith("val," if name in held_out else "train,") for name in rows)


# --- non-finite values: tests/test_studies.py::test_failing_trial_is_fail_in_optuna_failed_in_mlflow...


# --- the tracking server goes away ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination", str(self.root / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with (self.root / "server.log").open("a") as log:
            self.proc = subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("mlflow server did not start:\n" + (self.root / "server.log").read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture()
def mlflow_server(workdir, monkeypatch):
    root = workdir / "server"
    root.mkdir()
    server = MlflowServer(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the CLI sets them for itself
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    yield server.start()
    server.kill()


def test_tracking_server_down_when_trials_end_loses_no_metrics(workdir, mlflow_server):
    steps = 12
    path = write_spec(workdir, tiny_spec("server", {"steps": steps, "checkpoint_every": 3}))
    trial_dir = workdir / "paramcrop-runs" / "server"

    # 1. the server dies mid-trial and is back within the retry window: the trial's metrics go out late
    worker = Worker(workdir, str(path), "--n-trials", "1", env={"PARAMCROP_TRACKING_RETRY_S": "60"})
    worker.wait_for((trial_dir / "trial-0000" / "checkpoint.pt").exists, "trial 0's first checkpoint")
    mlflow_server.kill()
    worker.wait_for((trial_dir / "trial-0000" / "trajectory.csv").exists, "the end of trial 0's training")
    mlflow_server.start()
    assert worker.wait() == 0, worker.output
    assert "is unreachable" in worker.output  # it did retry at the end of the trial

    # 2. the server dies mid-trial and stays down: a clear error, everything spooled to disk, exit 1
    worker = Worker(workdir, str(path), env={"PARAMCROP_TRACKING_RETRY_S": "3"})
    worker.wait_for((trial_dir / "trial-0001" / "checkpoint.pt").exists, "trial 1's first checkpoint")
    mlflow_server.kill()
    assert worker.wait() == 1, worker.output
    output = " ".join(worker.output.split())
    assert f"the MLflow tracking store {mlflow_server.uri} did not answer" in output
    assert "resume with: paramcrop study run" in output.lower()
    spools = list((trial_dir / "trial-0001").glob(f"{SPOOL_PREFIX}*.json"))
    assert len(spools) == 1 and spools[0].name in output
    spooled = json.loads(spools[0].read_text())
    assert spooled["status"] == "FINISHED"
    spooled_steps = sorted({m[3] for m in spooled["metrics"] if m[0] == sinks.TRAIN_LOSS})
    # the steps before the kill went out with the first checkpoint; all the later ones are in the spool
    assert spooled_steps[0] > 0 and spooled_steps == list(range(spooled_steps[0], steps))
    study = optuna.load_study(study_name="server", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # the result itself is kept

    # 3. the server is back: the same command sends the spool; the study is complete
    mlflow_server.start()
    worker = Worker(workdir, str(path))
    assert worker.wait() == 0, worker.output
    assert f"sent {spools[0].name}" in " ".join(worker.output.split())
    assert not spools[0].exists()
    study, client, runs = load("server", workdir)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs[RUN_ATTR])
        assert run.info.status == "FINISHED" and run.data.tags[sinks.TAG_TRIAL_STATE] == "COMPLETE"
        for key in (sinks.TRAIN_LOSS, sinks.VIEW_IOU, sinks.VIEW_CENTER_DISTANCE):
            assert steps_of(client, run.info.run_id, key) == list(range(steps))
        assert run.data.metrics[sinks.EVAL_VAL_KNN_TOP1] == pytest.approx(trial.value)
        assert run.data.params["crop.method"] == trial.params["variant:crop"]
        assert {"config.yaml", "trajectory.csv", "crops"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert_one_run_per_trial(study, runs)


# --- inputs refused cleanly: exit 2, a message naming the problem, nothing created ---------------
def _nothing_created(workdir: Path) -> None:
    assert not (workdir / DEFAULT_STORAGE).exists()
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "paramcrop-runs").exists()


@pytest.mark.parametrize("text,message", [
    ("name: x\nconfig: {steps: [1, 2\n", "is not valid YAML"),
    ("name: x\nconfig: {steps: many}\n", "steps must be an integer, got 'many'"),
    ("name: x\nseeds: 3\n", "seeds must be a list of integers"),
    ("name: x\nheartbeat: fast\n", "heartbeat must be a positive number"),
    ("name: x\nconfig: {batch_size: 0}\n", "batch_size must be >="),
    ("name: x\nconfig: {batch_size: -8}\n", "batch_size must be >="),
    ("name: x\nconfig: {crop: {method: paramcrop, strength: -0.5}}\n", "strength must be >= 0, got -0.5"),
    ("name: x\nsearch_space:\n  crop.strength: {type: categorical, choices: [1.0, -1.0]}\n",
     "strength must be >= 0, got -1.0"),
])
def test_bad_specs_are_refused(workdir, text, message):
    path = workdir / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    _nothing_created(workdir)


def test_a_clip_longer_than_every_video_is_refused(workdir):
    # the tiny videos have 24 frames; 16 frames at stride 2 span 31
    spec = tiny_spec("long-clip", {"data": {"frames": 16, "stride": 2, "size": 32}})
    result = CliRunner().invoke(app, ["study", "run", str(write_spec(workdir, spec))])
    assert result.exit_code == 2, result.output
    assert "spans 31 frames, longer than every video" in " ".join(result.output.split())
    assert "the longest has 24 frames" in " ".join(result.output.split())
    _nothing_created(workdir)


@pytest.mark.parametrize("config,space,message", [
    ({}, {"view.size": {"type": "categorical", "choices": [32, 12]}},
     "backbone 'tiny3d' needs clips of at least 4 frames and 16x16 pixels, got 8 frames of 12x12"),
    pytest.param({"device": "cuda"}, {}, "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_a_space_point_that_cannot_run_is_refused(workdir, config, space, message):
    """Checked over the whole space before anything exists, not discovered trial after trial."""
    spec = tiny_spec("cannot-run", config, search_space={**CROPS, **space})
    result = CliRunner().invoke(app, ["study", "run", str(write_spec(workdir, spec))])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    _nothing_created(workdir)


def test_a_trial_that_cannot_be_built_ends_its_run_failed_with_the_reason(workdir, monkeypatch):
    import studies.runner as runner

    def refuse(cfg, *args, **kwargs):
        raise RuntimeError(f"cannot build {cfg.crop['method']}")

    monkeypatch.setattr(runner, "resolve", refuse)
    CliRunner().invoke(app, ["study", "run", str(write_spec(workdir, tiny_spec("unbuildable")))])
    study, client, runs = load("unbuildable", workdir)
    assert {t.params["variant:crop"] for t in study.trials} == {"random", "paramcrop"}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.FAIL
        run = client.get_run(trial.user_attrs[RUN_ATTR])
        assert run.info.status == "FAILED" and run.data.tags[sinks.TAG_TRIAL_STATE] == "FAIL"
        assert run.data.tags[sinks.TAG_FAILURE] == f"RuntimeError: cannot build {trial.params['variant:crop']}"
    assert_one_run_per_trial(study, runs)


@pytest.mark.parametrize("option,value,message", [
    ("--storage", "postgresql://paramcrop:s3cret-pw@127.0.0.1:1/studies",
     "cannot open the study storage postgresql://paramcrop:***@127.0.0.1:1/studies"),
    ("--tracking-uri", "ftp://127.0.0.1/mlruns", "unknown scheme 'ftp'"),
    ("--tracking-uri", "http://admin:s3cret-pw@127.0.0.1:1",
     "cannot reach the MLflow tracking store http://admin:***@127.0.0.1:1"),
])
def test_unreachable_or_unknown_stores_are_refused(workdir, monkeypatch, option, value, message):
    monkeypatch.setenv("PARAMCROP_TRACKING_RETRY_S", "1")
    monkeypatch.setenv("PARAMCROP_STORAGE_RETRY_S", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    path = write_spec(workdir, tiny_spec("refused"))
    result = CliRunner().invoke(app, ["study", "run", str(path), option, value])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in output and "s3cret" not in output
    _nothing_created(workdir)


# --- security -------------------------------------------------------------------------------------
def test_ui_binds_localhost_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, **kw: calls.append((command, kw)) or 0)
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", "sqlite:///x.db"])
    assert result.exit_code == 0, result.output
    (command, kwargs), = calls
    assert command[command.index("--host") + 1] == "127.0.0.1" and not kwargs.get("shell")


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def test_no_shell_no_unsafe_yaml_no_pickle_loading():
    sources = [p for d in ("paramcrop", "studies", "analysis") for p in (REPO / d).rglob("*.py")] + [REPO / "cli.py"]
    for path in sources:
        tree = ast.parse(path.read_text())
        for call in ast.walk(tree):
            if isinstance(call, ast.Call):
                for kw in call.keywords:
                    assert not (kw.arg == "shell" and getattr(kw.value, "value", False)), f"shell=True in {path}"
        for call in _calls(tree, "load"):
            owner = getattr(call.func, "value", None)
            if getattr(owner, "id", None) == "yaml":
                raise AssertionError(f"yaml.load in {path}: use yaml.safe_load")
            if getattr(owner, "id", None) == "torch":
                weights_only = [k for k in call.keywords if k.arg == "weights_only"]
                assert weights_only and weights_only[0].value.value is True, f"torch.load, no weights_only: {path}"
