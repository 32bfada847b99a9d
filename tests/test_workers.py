"""Data loading off the critical path: ``data.workers`` (``auto``) and ``train/data_wait_s``."""
import types

import pytest
import torch

from paramcrop import sinks
from paramcrop.config import ConfigError, TrainConfig
from paramcrop.data import datasets
from paramcrop.train import Trainer, resolve_workers, train

TINY_SOURCE = "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2"


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PARAMCROP_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def tiny_config(**overrides) -> TrainConfig:
    base = {"data.source": TINY_SOURCE, "data.frames": 8, "data.stride": 1, "data.size": 32,
            "view.frames": 8, "view.size": 32, "crop.method": "random",
            "batch_size": 4, "steps": 6, "log_every": 2, "visualize_at": 0, "optim.warmup_steps": 2,
            "eval.linear": False, "eval.retrieval": False, "augment.blur_p": 0.0}
    base.update(overrides)
    return TrainConfig().with_overrides(base)


def first_batches(trainer: Trainer, n: int) -> list[torch.Tensor]:
    batches = trainer._loader()
    return [next(batches) for _ in range(n)]


def test_worker_decoding_equals_main_process_decoding(tmp_path, monkeypatch):
    """Batches decoded by 2 workers equal the same indices decoded in the main process.

    The window positions are seeded with ``(seed, index, draws, b)`` where ``b`` is the loader's base
    seed inside workers and 0 outside (paramcrop.data.datasets.TrainClips): the reference is the main
    process decoding with ``b`` set to the base seed that the loader's generator (seeded by ``cfg.seed``)
    draws, computed here independently of the DataLoader."""
    cfg = tiny_config(**{"data.workers": 2})
    with_workers = first_batches(Trainer(cfg, tmp_path / "w2", progress=False), 3)
    base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(cfg.seed)))
    monkeypatch.setattr(datasets, "get_worker_info", lambda: types.SimpleNamespace(seed=base_seed, id=0))
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
    trainer = Trainer(tiny_config(**{"data.workers": "auto", "device": "cpu", "steps": 2}), tmp_path, progress=False)
    assert trainer.cfg.data.workers == 2
    trainer.fit(sink)
    assert sink.params["data.workers"] == 2
    assert "workers: 2" in (tmp_path / "config.yaml").read_text()


def test_workers_config_accepts_auto_or_a_count():
    assert TrainConfig().with_overrides({"data.workers": "auto"}).data.workers == "auto"
    assert TrainConfig().with_overrides({"data.workers": 3}).data.workers == 3
    with pytest.raises(ConfigError, match="data.workers must be an integer or auto"):
        TrainConfig().with_overrides({"data.workers": "many"})
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        TrainConfig().with_overrides({"data.workers": -1})
