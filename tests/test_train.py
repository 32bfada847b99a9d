"""The training loop on a tiny synthetic set (CPU): learning, the adversary, resume, failures, MLflow."""
import pytest
import torch

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.train import NonFiniteLossError, Trainer, train
from conftest import TINY_DRAWS, TINY_SOURCE

pytestmark = pytest.mark.usefixtures("tiny_cache")


def tiny_config(**overrides) -> TrainConfig:
    base = {"data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1, "data.size": 32,
            "view.frames": 8, "view.size": 32,
            "batch_size": 8, "steps": 30, "log_every": 1, "visualize_at": 0, "optim.warmup_steps": 2,
            "eval.linear": False, "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS, "augment.blur_p": 0.0}
    base.update(overrides)
    return TrainConfig().with_overrides(base)


def losses(sink: sinks.MemorySink) -> list[float]:
    return [v for _, v in sink.series(sinks.TRAIN_LOSS)]


def test_loss_decreases_and_all_metrics_are_logged(tmp_path):
    sink = sinks.MemorySink()
    result = train(tiny_config(**{"crop.method": "random", "optim.lr": 3e-3}), sink, tmp_path, progress=False)
    curve = losses(sink)
    assert len(curve) == 30
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.05
    names = {name for _, name, _ in sink.history}
    assert set(sinks.VIEW_METRICS) | {sinks.TRAIN_LR, sinks.TRAIN_CLIPS_PER_S, sinks.TRAIN_STRENGTH,
                                      sinks.EVAL_KNN_TOP1} <= names
    assert [s for s, _ in sink.series(sinks.VIEW_IOU)] == list(range(30))
    assert 0 <= result.eval_metrics[sinks.EVAL_KNN_TOP1] <= 1
    assert (tmp_path / "trajectory.csv").read_text().count("\n") == 31
    assert sink.params["crop.method"] == "random"


@pytest.mark.parametrize("strength,moves", [(1.0, True), (0.0, False)])
def test_generator_trains_only_when_lambda_positive(tmp_path, strength, moves):
    cfg = tiny_config(**{"crop.method": "paramcrop", "crop.strength": strength, "steps": 5})
    trainer = Trainer(cfg, tmp_path, progress=False)
    before = [p.detach().clone() for p in trainer.crop.parameters()]
    trainer.fit()
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.crop.parameters()))
    assert changed is moves


def test_adversarial_strength_scales_the_generator_steps(tmp_path):
    # Adam cancels the reversal layer's scale, so lambda must reach the generator's step size
    # through its learning rate: lambda 0.1 and 1 used to train it identically.
    moved = {}
    for strength in (0.1, 1.0):
        trainer = Trainer(tiny_config(**{"crop.method": "paramcrop", "crop.strength": strength, "steps": 3}),
                          tmp_path / str(strength), progress=False)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.crop.parameters()])
        trainer.fit()
        after = torch.cat([p.detach().flatten() for p in trainer.crop.parameters()])
        moved[strength] = (after - before).norm().item()
    assert 5 < moved[1.0] / moved[0.1] < 20


def test_same_seed_same_curve_and_resume_equals_straight_run(tmp_path):
    cfg = tiny_config(**{"crop.method": "paramcrop", "steps": 16, "eval.every": 0})
    straight, again = sinks.MemorySink(), sinks.MemorySink()
    train(cfg, straight, tmp_path / "a", progress=False)
    train(cfg, again, tmp_path / "b", progress=False)
    assert losses(straight) == losses(again)

    first, second = sinks.MemorySink(), sinks.MemorySink()
    Trainer(cfg, tmp_path / "c", sink=first, progress=False).fit(until=8)  # stopped at step 8, as if preempted
    resumed = Trainer(cfg, tmp_path / "c", sink=second, progress=False)  # a fresh process would rebuild it like this
    resumed.fit(resume=True)
    assert [s for s, _ in second.series(sinks.TRAIN_LOSS)] == list(range(8, 16))
    torch.testing.assert_close(torch.tensor(losses(first)[:8] + losses(second)),
                               torch.tensor(losses(straight)), rtol=1e-4, atol=1e-5)


def test_every_metric_uses_the_last_completed_step_and_lr_is_the_rate_the_step_used(tmp_path):
    """The step convention (docs/DESIGN.md): train metrics of step s at s, train/lr the rate step s
    used (linear warmup (s + 1) / warmup, then cosine), evaluations after s + 1 steps at s."""
    import math

    cfg = tiny_config(**{"steps": 6, "eval.every": 3, "optim.warmup_steps": 2, "optim.min_lr_ratio": 0.0})
    sink = sinks.MemorySink()
    train(cfg, sink, tmp_path / "run", progress=False)
    lr = cfg.optim.lr
    want = [lr * 0.5, lr * 1.0] + [lr * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 6)]
    got = sink.series(sinks.TRAIN_LR)
    assert [s for s, _ in got] == list(range(6))
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor(want), rtol=1e-6, atol=0)
    assert [s for s, _ in sink.series(sinks.EVAL_KNN_TOP1)] == [2, 5]  # after 3 steps, and the final one


def test_periodic_evaluation_and_finetuning_change_no_training_result(tmp_path):
    """The online kNN every 2 steps and the final fine-tuning run on a forked RNG and a copy of
    the backbone: the loss curve and the frozen-feature metrics equal those of a plain run."""
    cfg = tiny_config(**{"crop.method": "paramcrop", "steps": 6})
    plain, watched = sinks.MemorySink(), sinks.MemorySink()
    result = train(cfg, plain, tmp_path / "plain", progress=False)
    watched_cfg = cfg.with_overrides({"eval.every": 2, "eval.finetune_steps": 4})
    watched_result = train(watched_cfg, watched, tmp_path / "watched", progress=False)
    assert losses(watched) == losses(plain)
    assert [s for s, _ in watched.series(sinks.EVAL_KNN_TOP1)] == [1, 3, 5]  # after 2, 4, 6 steps
    assert watched_result.eval_metrics[sinks.EVAL_KNN_TOP1] == result.eval_metrics[sinks.EVAL_KNN_TOP1]
    assert 0 <= watched_result.eval_metrics[sinks.EVAL_FINETUNE_TOP1] <= 1
    assert [s for s, _ in watched.series(sinks.EVAL_FINETUNE_TOP1)] == [5]  # at the end (steps - 1) only
    assert sinks.EVAL_FINETUNE_TOP1 not in result.eval_metrics


def test_each_video_is_probed_once_for_training_evaluation_and_finetuning(tmp_path, monkeypatch):
    """The train split is scanned once; its evaluation and fine-tuning datasets reuse that scan."""
    from collections import Counter

    import paramcrop.data.datasets as datasets
    import paramcrop.data.video as video

    probed: Counter = Counter()

    def counting(path, *args, **kwargs):
        probed[path] += 1
        return probe(path, *args, **kwargs)

    probe = video.probe_video
    monkeypatch.setattr(video, "PROBE_CACHE_NAME", "cold-probe-cache.json")  # earlier tests filled the cache
    monkeypatch.setattr(video, "probe_video", counting)
    monkeypatch.setattr(datasets, "probe_video", counting)
    trainer = Trainer(tiny_config(**{"steps": 1, "eval.finetune_steps": 1}), tmp_path, progress=False)
    trainer.finetune_top1(torch.utils.data.DataLoader(trainer.eval_sets[1], batch_size=8))
    train_paths = [r.path for r in trainer.train_set.records]
    # one scan, plus check_window_fits' probe of the first video (long enough: it stops there)
    assert sum(probed[p] for p in train_paths) == len(train_paths) + 1
    assert trainer.eval_sets[0].records == trainer.train_set.records
    with pytest.raises(ValueError, match=f"infos must be the scan of the {len(train_paths)} records"):
        datasets.TrainClips(trainer.train_set.records, 8, 1, 32, infos=trainer.train_set.infos[:-1])


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    trainer = Trainer(tiny_config(steps=5), tmp_path, progress=False)
    forward = trainer.framework.forward

    def poisoned(*views):
        out = forward(*views)
        out.loss = out.loss * float("nan")
        return out

    trainer.framework.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*step 0"):
        trainer.fit()


def test_checkpoint_loads_with_weights_only(tmp_path):
    trainer = Trainer(tiny_config(steps=2), tmp_path, progress=False)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and "framework" in state and "crop" in state


def test_synthetic_source_sets_its_augmentation_defaults_unless_the_config_does(tmp_path):
    """The synthetic benchmark's left/right motion classes cannot take a flip: ``paramcrop train``
    with no flags gets the quickstart's ``flip_p 0`` / ``jitter_scale 0.5``, logged as the params used;
    a key the user set wins, and a ``folder:`` source (the same videos) keeps the CVRL defaults."""
    from paramcrop.data import resolve_source

    base = TrainConfig().with_overrides({"data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1,
                                         "data.size": 32, "view.frames": 8, "view.size": 32, "batch_size": 8,
                                         "steps": 1, "visualize_at": 0, "eval.linear": False,
                                         "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS})
    assert "flip_p" not in base.augment  # the user set no augmentation key
    sink = sinks.MemorySink()
    trainer = Trainer(base, tmp_path / "a", sink=sink, progress=False)
    assert (trainer.augment.flip_p, trainer.cfg.augment["jitter_scale"]) == (0.0, 0.5)
    trainer.fit()
    assert (sink.params["augment.flip_p"], sink.params["augment.jitter_scale"]) == (0.0, 0.5)
    assert "flip_p: 0.0" in (tmp_path / "a" / "config.yaml").read_text()

    assert Trainer(base.with_overrides({"augment.flip_p": 0.3}), tmp_path / "b", progress=False).augment.flip_p == 0.3

    root = resolve_source(TINY_SOURCE).train[0].path.parents[2]  # <cache>/train/<class>/<video>
    folder = Trainer(base.with_overrides({"data.source": f"folder:{root}"}), tmp_path / "c", progress=False)
    assert (folder.augment.flip_p, folder.cfg.augment) == (0.5, {})
