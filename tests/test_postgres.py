"""A study on a real PostgreSQL server (Optuna's RDB storage): two workers share a grid, one of
them is SIGKILLed mid-trial and the other one retries its trial (RDB heartbeats); then
``study list`` / ``show`` / ``analyze importance`` read the same storage, and the password in
the URL is never printed nor logged to MLflow. The server restarted mid-study: the study rides
the outage out; an outage longer than ``PARAMCROP_STORAGE_RETRY_S``: the workers stop resumable.

Needs ``PARAMCROP_TEST_POSTGRES_URL=postgresql://user:password@127.0.0.1:PORT/db`` (``.ci/run``
starts a throwaway server and sets it); skipped without it. The restarts also need
``PARAMCROP_TEST_POSTGRES_CTL``, the server's ``pg_ctl`` command line (``.ci/run`` sets it).
"""
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from paramcrop import sinks
from studies.runner import RUN_ATTR
from studies.storage import open_storage, redact
from test_faults import (Worker, assert_one_run_per_trial, by_role, checkpoint_step, grid_points, load, steps_of,
                         tiny_spec, write_spec)

PG_URL = os.environ.get("PARAMCROP_TEST_POSTGRES_URL")
PG_CTL = os.environ.get("PARAMCROP_TEST_POSTGRES_CTL")
PASSWORD = re.match(r"[^:]+://[^:]+:([^@]+)@", PG_URL)[1] if PG_URL else None
pytestmark = pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server: set PARAMCROP_TEST_POSTGRES_URL="
                                "postgresql://USER:PASSWORD@127.0.0.1:PORT/DB (.ci/run starts one)")
needs_restart = pytest.mark.skipif(not PG_CTL, reason="cannot restart the PostgreSQL server: set "
                                   "PARAMCROP_TEST_POSTGRES_CTL to its pg_ctl command line (.ci/run sets it)")


@pytest.fixture()
def pg_study(workdir):
    """A study name of its own in the shared database, deleted afterwards."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=open_storage(PG_URL))
    except KeyError:
        pass


def test_two_workers_on_postgresql_one_killed_the_other_finishes_the_grid(workdir, pg_study):
    spec = tiny_spec(pg_study, {"steps": 12, "checkpoint_every": 3}, seeds=[0, 1],  # 4 grid points
                     objective={"metric": "train/loss", "direction": "minimize"})  # varies: importances exist
    path = write_spec(workdir, spec)
    victim = Worker(workdir, str(path), "--storage", PG_URL, tag="victim")
    survivor = Worker(workdir, str(path), "--storage", PG_URL, tag="survivor")
    # kill the victim after the first checkpoint of a trial it runs
    started = []
    victim.wait_for(lambda: started.extend(re.findall(r"trial (\d+) ", victim.output)) or started, "a trial")
    checkpoint = workdir / "paramcrop-runs" / pg_study / f"trial-{int(started[0]):04d}" / "checkpoint.pt"
    victim.wait_for(checkpoint.exists, "the victim's first checkpoint")
    victim.proc.send_signal(signal.SIGKILL)
    assert survivor.wait() == 0, survivor.output
    output = survivor.output
    assert f"trial {started[0]} lost its worker" in output
    assert "database is locked" not in output and "Traceback" not in output

    study, client, runs = load(pg_study, workdir, storage=PG_URL)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 4 and len(states) == 5
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(grid_points(complete))) == 4  # the whole grid, each point once
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.number == int(started[0])
    assert client.get_run(failed.user_attrs[RUN_ATTR]).info.status == "FAILED"
    assert_one_run_per_trial(study, runs, states=("COMPLETE", "FAIL"))
    assert len(by_role(runs, "trial")) == 5

    # list / show / analyze read the same storage; the password shows nowhere
    outputs = [survivor.output, victim.output]
    listed = CliRunner().invoke(app, ["study", "list", "--storage", PG_URL])
    assert listed.exit_code == 0 and pg_study in listed.output
    shown = CliRunner().invoke(app, ["study", "show", pg_study, "--storage", PG_URL, "--format", "json"])
    assert shown.exit_code == 0
    assert [r["state"] for r in json.loads(shown.output)] == states
    analyzed = CliRunner().invoke(app, ["analyze", "importance", "--study", pg_study, "--storage", PG_URL,
                                        "--out", str(workdir / "analysis"), "--no-log"])
    assert analyzed.exit_code == 0, analyzed.output
    assert (workdir / "analysis" / "importance.csv").exists()
    outputs += [listed.output, shown.output, analyzed.output]
    assert redact(PG_URL) in " ".join(survivor.output.split())
    assert not [o for o in outputs if PASSWORD in o]
    for run in runs:
        logged = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in logged if PASSWORD in v], run.info.run_id
    assert all(r.data.tags.get(sinks.TAG_STUDY) == pg_study for r in runs)


def pg_ctl(*args: str) -> None:
    subprocess.run([*shlex.split(PG_CTL), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture()
def server_back():
    """The server is running again after the test, whatever happened."""
    yield
    if subprocess.run([*shlex.split(PG_CTL), "status"], capture_output=True).returncode != 0:
        pg_ctl("-w", "start")


def restart_study(workdir, name, steps):
    """Two workers (``--workers 2``) on a 2-point grid, each point checkpointing every 3 steps."""
    path = write_spec(workdir, tiny_spec(name, {"steps": steps, "checkpoint_every": 3}))
    checkpoints = [workdir / "paramcrop-runs" / name / f"trial-{n:04d}" / "checkpoint.pt" for n in (0, 1)]
    return path, checkpoints


def assert_complete_once(name, workdir, steps):
    """Every grid point COMPLETE once, no run RUNNING, every step of every complete trial's run logged once."""
    study, client, runs = load(name, workdir, storage=PG_URL)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and len(set(grid_points(complete))) == 2, [t.state.name for t in study.trials]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for trial in complete:
        assert steps_of(client, trial.user_attrs[RUN_ATTR]) == list(range(steps))
    return study


@needs_restart
def test_the_server_restarted_mid_study_the_same_command_completes(workdir, pg_study, server_back):
    steps = 30
    path, checkpoints = restart_study(workdir, pg_study, steps)
    command = Worker(workdir, str(path), "--storage", PG_URL, "--workers", "2")
    command.wait_for(lambda: all(c.exists() for c in checkpoints), "both trials' first checkpoint")
    pg_ctl("stop", "-m", "fast")
    time.sleep(10)  # both trials train on meanwhile
    pg_ctl("-w", "start")
    assert command.wait() == 0, command.output
    study = assert_complete_once(pg_study, workdir, steps)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # no trial taken for stale, none retried
    logs = [command.output, *(p.read_text() for p in (workdir / "paramcrop-runs" / pg_study).glob("worker-*.log"))]
    said = " ".join(" ".join(logs).split())
    assert f"the study storage {redact(PG_URL)} is unreachable" in said and "is back" in said
    assert "Traceback" not in said and "lost its worker" not in said
    assert not [log for log in logs if PASSWORD in log]


@needs_restart
def test_a_trial_alive_through_an_outage_is_not_taken_for_stale(pg_study, server_back):
    """Its heartbeats could not be written during the outage: no trial is stale until the storage has
    answered for a whole grace period (3 heartbeats), in which a live worker beats again."""
    import threading

    storage = open_storage(PG_URL, heartbeat=1)  # a trial is stale after 3 s without a heartbeat
    study = optuna.create_study(study_name=pg_study, storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    pg_ctl("stop", "-m", "fast")
    restart = threading.Timer(5, pg_ctl, ("-w", "start"))
    restart.start()
    assert storage._get_stale_trial_ids(study._study_id) == []  # waited for the server: 5+ s since the beat
    restart.join()
    time.sleep(3)  # a grace period with the storage answering and no heartbeat: now the trial is stale
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


@needs_restart
def test_an_outage_longer_than_the_limit_stops_the_workers_resumable(workdir, pg_study, server_back):
    steps = 45
    path, checkpoints = restart_study(workdir, pg_study, steps)
    command = Worker(workdir, str(path), "--storage", PG_URL, "--workers", "2",
                     env={"PARAMCROP_STORAGE_RETRY_S": "3"})
    command.wait_for(lambda: all(c.exists() for c in checkpoints), "both trials' first checkpoint")
    pg_ctl("stop", "-m", "fast")
    assert command.wait() == 1, command.output
    said = " ".join(command.output.split())
    assert f"the study storage {redact(PG_URL)} did not answer" in said
    assert "resume with: paramcrop study run" in said.lower() and "Traceback" not in said
    stopped = [checkpoint_step(c) for c in checkpoints]
    assert all(0 < s < steps for s in stopped)  # both stopped mid-trial, with a checkpoint
    pg_ctl("-w", "start")
    again = Worker(workdir, str(path), "--storage", PG_URL, "--workers", "2")
    assert again.wait() == 0, again.output
    study = assert_complete_once(pg_study, workdir, steps)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    _, client, runs = load(pg_study, workdir, storage=PG_URL)
    retried = {int(client.get_run(t.user_attrs[RUN_ATTR]).data.tags["paramcrop.resumed_at_step"])
               for t in study.trials if t.state.name == "COMPLETE"}
    assert retried == set(stopped)  # each resumed from where it stopped
    assert_one_run_per_trial(study, runs, states=("COMPLETE", "FAIL"))
