"""A study on a real PostgreSQL server (Optuna's RDB storage): two workers share a grid, one of
them is SIGKILLed mid-trial and the other one retries its trial (RDB heartbeats); then
``study list`` / ``show`` / ``analyze importance`` read the same storage, and the password in
the URL is never printed nor logged to MLflow.

Needs ``PARAMCROP_TEST_POSTGRES_URL=postgresql://user:password@127.0.0.1:PORT/db`` (``.ci/run``
starts a throwaway server and sets it); skipped without it.
"""
import json
import os
import re
import signal
import uuid

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from paramcrop import sinks
from studies.runner import RUN_ATTR
from studies.storage import open_storage, redact
from test_faults import Worker, assert_one_run_per_trial, by_role, grid_points, load, tiny_spec, write_spec

PG_URL = os.environ.get("PARAMCROP_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server: set PARAMCROP_TEST_POSTGRES_URL="
                                "postgresql://USER:PASSWORD@127.0.0.1:PORT/DB (.ci/run starts one)")


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
    password = re.match(r"[^:]+://[^:]+:([^@]+)@", PG_URL)[1]
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
    assert not [o for o in outputs if password in o]
    for run in runs:
        logged = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in logged if password in v], run.info.run_id
    assert all(r.data.tags.get(sinks.TAG_STUDY) == pg_study for r in runs)
