"""Data loading off the critical path: ``data.workers`` (``auto``) and ``train/data_wait_s``."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.plan import resolve_workers
from paramcrop.train import Trainer, train
from studies.commands import worker_env
from studies.runner import RUN_ATTR
from studies.storage import DEFAULT_STORAGE, open_storage
from conftest import TINY_DRAWS, TINY_SOURCE

pytestmark = pytest.mark.usefixtures("tiny_cache")

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides) -> TrainConfig:
    base = {"data.source": TINY_SOURCE, "data.frames": 8, "data.stride": 1, "data.size": 32,
            "view.frames": 8, "view.size": 32, "crop.method": "random",
            "batch_size": 4, "steps": 6, "log_every": 2, "visualize_at": 0, "optim.warmup_steps": 2,
            "eval.linear": False, "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS, "augment.blur_p": 0.0}
    base.update(overrides)
    return TrainConfig().with_overrides(base)


def first_batches(trainer: Trainer, n: int) -> list[torch.Tensor]:
    batches = trainer._loader()
    return [next(batches) for _ in range(n)]


def test_worker_decoding_equals_main_process_decoding(tmp_path):
    """Batches decoded by 2 workers equal the same batches decoded in the main process: the window
    positions are seeded by ``(seed, index, draws)`` only (paramcrop.data.datasets.TrainClips), so
    ``data.workers`` never changes the training data."""
    cfg = tiny_config(**{"data.workers": 2})
    with_workers = first_batches(Trainer(cfg, tmp_path / "w2", progress=False), 3)
    in_main = first_batches(Trainer(tiny_config(**{"data.workers": 0}), tmp_path / "w0", progress=False), 3)
    assert [b.shape for b in with_workers] == [(4, 3, 8, 32, 32)] * 3
    for a, b in zip(with_workers, in_main):
        assert a.dtype == b.dtype == torch.uint8
        assert torch.equal(a, b)
    assert not torch.equal(with_workers[0], with_workers[1])  # distinct batches, not one repeated


def test_data_wait_is_logged_at_each_logged_step_within_the_interval(tmp_path):
    sink = sinks.MemorySink()
    cfg = tiny_config()
    train(cfg, sink, tmp_path, progress=False)
    waits = sink.series(sinks.TRAIN_DATA_WAIT_S)
    assert [s for s, _ in waits] == [s for s, _ in sink.series(sinks.TRAIN_LOSS)] == [1, 3, 5]
    for (_, wait), (_, clips_per_s) in zip(waits, sink.series(sinks.TRAIN_CLIPS_PER_S)):
        interval_s = cfg.log_every * cfg.batch_size / clips_per_s  # the interval's wall time
        assert 0 < wait <= interval_s * (1 + 1e-9)  # decoding in the main process: the wait is real


@pytest.mark.parametrize("cores, gpus, expected", [
    (1, 0, 0), (2, 0, 0), (3, 0, 2), (16, 0, 4),  # CPU: min(4, cores - 1) when cores > 2, else 0
    (16, 1, 8), (16, 4, 4), (6, 4, 1), (64, 2, 8),  # CUDA: min(8, cores // GPUs)
])
def test_auto_workers_follow_the_documented_rule(monkeypatch, cores, gpus, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    device = torch.device("cuda" if gpus else "cpu")
    assert resolve_workers("auto", device) == expected
    assert resolve_workers(3, device) == 3  # an int is used as given


def test_trainer_resolves_auto_once_and_records_the_count(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    sink = sinks.MemorySink()
    trainer = Trainer(tiny_config(**{"data.workers": "auto", "device": "cpu", "steps": 2}), tmp_path, sink=sink,
                      progress=False)
    assert trainer.cfg.data.workers == 2
    trainer.fit()
    assert sink.params["data.workers"] == 2
    assert "workers: 2" in (tmp_path / "config.yaml").read_text()


def test_workers_config_accepts_auto_or_a_count():
    assert TrainConfig().with_overrides({"data.workers": "auto"}).data.workers == "auto"
    assert TrainConfig().with_overrides({"data.workers": 3}).data.workers == 3
    with pytest.raises(ConfigError, match="data.workers must be an integer or auto"):
        TrainConfig().with_overrides({"data.workers": "many"})
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        TrainConfig().with_overrides({"data.workers": -1})


# --- paramcrop study run --workers N ------------------------------------------------------------
STUDY_CONFIG = {"steps": 4, "batch_size": 8, "log_every": 1, "visualize_at": 0,
                "data": {"frames": 16, "stride": 1, "size": 32},
                "view": {"frames": 8, "size": 32}, "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS},
                "augment": {"blur_p": 0.0}}
CROPS = {"crop": {"type": "variants", "choices": {
    "random": {"crop.method": "random"}, "paramcrop": {"crop.method": "paramcrop", "crop.strength": 1.0}}}}


def study_spec(workdir: Path, name: str, config: dict | None = None, **extra) -> Path:
    spec = {"name": name, "data": TINY_SOURCE, "config": {**STUDY_CONFIG, **(config or {})},
            "search_space": CROPS, "sampler": "grid", "heartbeat": 1, **extra}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_parent(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """``paramcrop study run ARGS`` in a subprocess, in its own process group (as a terminal's foreground
    job) with SIGINT at its default (a background job of a non-interactive shell would ignore it),
    output in a file."""
    log = workdir / f"parent-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "study", "run", *args, "--no-progress"], cwd=workdir,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, log


def load_study(workdir: Path, name: str):
    study = optuna.load_study(study_name=name, storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return study, client.search_runs([client.get_experiment_by_name(name).experiment_id])


def test_two_workers_finish_a_four_point_grid_once_each(workdir):
    path = study_spec(workdir, "pair", seeds=[0, 1])  # 2 crops x 2 seeds = 4 points
    proc, log = start_parent(workdir, str(path), "--workers", "2")
    assert proc.wait(timeout=600) == 0, log.read_text()
    study, runs = load_study(workdir, "pair")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # 4 distinct points
    children = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs[RUN_ATTR] for t in study.trials)
    assert sorted(int(r.data.tags[sinks.TAG_TRIAL]) for r in children) == [0, 1, 2, 3]  # no duplicate run
    assert all(r.info.status == "FINISHED" for r in runs)  # the parent run too
    logs = sorted((workdir / "paramcrop-runs" / "pair").glob("worker-*.log"))
    assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]
    output = log.read_text()
    for t in study.trials:  # the combined view: each trial's end, read from the storage
        assert f"trial {t.number} COMPLETE" in output


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_parent_stops_every_worker_cleanly(workdir, sig, code):
    """SIGTERM as a scheduler sends it (to the parent); SIGINT as a terminal's Ctrl-C does (to the
    parent's process group: the workers, in their own sessions, get it from the parent only)."""
    path = study_spec(workdir, "halt", {"steps": 400, "checkpoint_every": 2})  # 2 points, long enough to stop
    proc, log = start_parent(workdir, str(path), "--workers", "2")
    runs_dir = workdir / "paramcrop-runs" / "halt"
    deadline = time.monotonic() + 300
    while not all((runs_dir / f"trial-000{i}" / "checkpoint.pt").exists() for i in (0, 1)):  # both training
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=300) == code, log.read_text()
    study, runs = load_study(workdir, "halt")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["FAIL", "FAIL", "WAITING", "WAITING"], states  # both stopped and queued again
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    assert sorted(r.info.status for r in killed) == ["KILLED", "KILLED"]
    assert all(sig.name in r.data.tags[sinks.TAG_FAILURE] for r in killed)
    assert "resume with" in " ".join(log.read_text().split()).lower()


@pytest.mark.parametrize("visible, n_gpus, expected", [
    (None, 0, [None, None, None]), (None, 1, [None, None, None]),  # one GPU or none: no pinning
    (None, 2, ["0", "1", "0"]), ("3,5", 2, ["3", "5", "3"]), ("7", 1, ["7", "7", "7"]),
])
def test_each_worker_is_pinned_to_one_visible_gpu(visible, n_gpus, expected):
    environ = {"PATH": "/bin"} | ({"CUDA_VISIBLE_DEVICES": visible} if visible else {})
    assert [worker_env(i, environ, n_gpus).get("CUDA_VISIBLE_DEVICES") for i in range(3)] == expected


def test_workers_sleep_their_idle_openmp_threads_unless_the_user_chose_a_policy():
    spun = worker_env(0, {"GOMP_SPINCOUNT": "10000", "PATH": "/bin"}, 0)  # cli.py's default for one process
    assert spun["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in spun and spun["PATH"] == "/bin"
    chosen = worker_env(1, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "500"}, 0)
    assert chosen["OMP_WAIT_POLICY"] == "ACTIVE" and chosen["GOMP_SPINCOUNT"] == "500"
