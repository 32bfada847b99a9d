"""``paramcrop dashboard``: optuna-dashboard serves its API over HTTP on a study's journal storage."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from studies.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 60.0):
    """GET ``url`` as JSON, retrying while the server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def tiny_study(storage: str) -> dict[int, float]:
    """A finished three-trial study in ``storage`` (opened as `study run` opens it); its trial values."""
    study = optuna.create_study(study_name="tiny-dash", storage=open_storage(storage), direction="maximize")
    for x in (0.25, 0.5, 0.75):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: 1.0 - (t.suggest_float("x", 0.0, 1.0) - 0.5) ** 2, n_trials=3)
    return {t.number: t.value for t in study.trials}


@pytest.mark.parametrize("rdb", [False, True], ids=["journal", "rdb"])
def test_dashboard_serves_the_study_over_http(tmp_path, rdb):
    pytest.importorskip("optuna_dashboard")
    storage = f"sqlite:///{tmp_path / 'studies.db'}" if rdb else str(tmp_path / "paramcrop-studies.journal")
    values = tiny_study(storage)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "dashboard.log", "w")
    flags = ["--storage", storage] if rdb else []  # else the default storage: the journal file here
    proc = subprocess.Popen([sys.executable, "-m", "cli", "dashboard", "--port", str(port), *flags], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny-dash"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        served = {t["number"]: t["values"][0] for t in detail["trials"]}
        assert served == pytest.approx(values)
        assert served[1] == pytest.approx(1.0)  # x = 0.5: the maximum, computed by hand
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert f"at http://127.0.0.1:{port}" in (tmp_path / "dashboard.log").read_text()


def test_dashboard_without_the_package_or_the_storage_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dashboard"], catch_exceptions=False)
    assert result.exit_code == 2 and "run `paramcrop study run` first" in " ".join(result.output.split())
    assert not (tmp_path / "paramcrop-studies.journal").exists()  # nothing created
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    result = CliRunner().invoke(app, ["dashboard"], catch_exceptions=False)
    assert result.exit_code == 2 and "pip install 'paramcrop[dashboard]'" in " ".join(result.output.split())
