"""``crop.grad_fraction``: the cube gradient from a random part of the batch. At 1 the step is
today's bit for bit; below 1 the views are the same, the other clips' cubes get no gradient, the subset's
gradient is scaled to an unbiased estimate of the whole batch's (against a loop over clips), resume stays
exact, and bad values are refused."""
import signal

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TINY_DRAWS, TINY_SOURCE
from paramcrop import ParamCrop, Views, create_crop, crop_video, sinks
from paramcrop.augment import ClipAugment
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.crops.base import grad_subset_size
from paramcrop.frameworks import nt_xent_loss
from paramcrop.geometry import crop_video_reference
from paramcrop.checkpoint import CHECKPOINT_NAME
from paramcrop.train import Trainer, two_views

pytestmark = pytest.mark.usefixtures("tiny_cache")

SIZE = (4, 12, 12)
BATCH = 8
# sigma 0.27-2.1 px at 12 px: every part of a batch has its own largest sigma (the blur's radius is the batch's)
AUGMENT = dict(blur_sigma=(5.0, 40.0))


def clips_and_encoder(seed: int = 0):
    torch.manual_seed(seed)
    clips = torch.randint(0, 256, (BATCH, 3, 8, 24, 24), dtype=torch.uint8)
    encoder = nn.Sequential(nn.Conv3d(3, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 8))
    return clips, encoder


def generator(fraction: float = 1.0) -> ParamCrop:
    torch.manual_seed(1)  # the same weights whatever the fraction
    return ParamCrop(SIZE, grad_fraction=fraction, init_extent=0.5, init_std=0.5)


def loss_of(encoder, x1, x2):
    return nt_xent_loss(encoder(x1), encoder(x2), temperature=0.5)


def generator_grad(crop, loss) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, crop.generator_parameters())])


# --- subset ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction,batch,size", [(0.25, 32, 8), (0.5, 5, 3), (0.3, 10, 3), (0.01, 8, 1),
                                                 (0.7, 3, 2), (1.0, 8, 8), (0.99, 8, 8)])
def test_the_subset_is_round_f_times_b_half_up_and_at_least_one_clip(fraction, batch, size):
    assert grad_subset_size(batch, fraction) == size
    crop = ParamCrop(SIZE, grad_fraction=fraction)
    state = torch.get_rng_state()
    subset = crop.grad_subset(batch, torch.device("cpu"))
    if size == batch:  # the whole batch: the exact path, nothing drawn
        assert subset is None and torch.equal(torch.get_rng_state(), state)
    else:
        assert subset.tolist() == sorted(set(subset.tolist())) and len(subset) == size
        assert 0 <= int(subset.min()) and int(subset.max()) < batch


def test_subsets_are_drawn_uniformly_from_the_global_rng():
    crop = ParamCrop(SIZE, grad_fraction=0.25)
    torch.manual_seed(4)
    draws = torch.stack([crop.grad_subset(BATCH, torch.device("cpu")) for _ in range(4000)])
    torch.manual_seed(4)
    assert torch.equal(crop.grad_subset(BATCH, torch.device("cpu")), draws[0])  # the run's stream, reproducible
    counts = torch.bincount(draws.flatten(), minlength=BATCH).float()
    # each clip in a subset 2 / 8 of the time: 1000 of 4000, binomial sd ~27
    assert (counts - 1000).abs().max() < 120, counts
    assert len({tuple(d.tolist()) for d in draws}) == 28  # every pair of 8 clips occurs


def test_the_other_crops_have_no_subset_and_refuse_the_key():
    assert create_crop("random", SIZE).grad_subset(BATCH, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="unknown key.*'grad_fraction' for crop method 'random'"):
        create_crop("random", SIZE, grad_fraction=0.5)


# --- f = 1: today's step, bit for bit --------------------------------------------------------------------
def views_without_the_option(crop, augment, clips, step):
    """The trainer's crop and augmentation before ``crop.grad_fraction`` existed (eager)."""
    cubes1, cubes2 = crop.cubes(clips, step)
    x1, x2 = crop_video(clips.float(), cubes1, crop.size), crop_video(clips.float(), cubes2, crop.size)
    return Views(x1, x2, cubes1, cubes2), augment(x1 / 255.0), augment(x2 / 255.0)


def tiny_trainer(path, **overrides) -> Trainer:
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": 8, "data.stride": 1, "data.size": 32, "view.frames": 4,
        "view.size": 24, "batch_size": BATCH, "crop.method": "paramcrop", "device": "cpu", "steps": 10,
        "visualize_at": 0, "eval.draw_per_class": TINY_DRAWS, **overrides})
    return Trainer(cfg, path, progress=False)


def test_at_fraction_1_cubes_views_losses_and_both_steps_equal_the_path_without_the_option(tmp_path, monkeypatch):
    trainers = [tiny_trainer(tmp_path / "new", **{"crop.grad_fraction": 1.0}), tiny_trainer(tmp_path / "old")]
    assert trainers[0].crop.grad_fraction == 1.0 and trainers[0].cfg.flatten()["crop.grad_fraction"] == 1.0
    clips, _ = clips_and_encoder()
    results = []
    for k, trainer in enumerate(trainers):
        if k == 1:
            monkeypatch.setattr("paramcrop.train.two_views", views_without_the_option)
        steps = []
        for step in range(3):
            torch.manual_seed(10 + step)
            loss, _, views = trainer.train_step(clips)
            trainer.step += 1
            steps.append([loss, views.cubes1, views.cubes2, views.x1, views.x2, *trainer.crop.parameters(),
                          *list(trainer.framework.parameters())[:4]])
        results.append([t.detach() for s in steps for t in s])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert not torch.equal(results[0][5], results[0][5 + 10])  # the generator moved between the steps


# --- f < 1: the same views, no gradient to the other clips' cubes, the subset's scaled -------------------
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_below_1_the_views_are_the_same_and_only_the_subsets_cubes_get_the_gradient_times_b_over_n(
        fraction, compiled):
    clips, encoder = clips_and_encoder()
    augment = ClipAugment(**AUGMENT)
    results, subsets = {}, []
    for f in (1.0, fraction):
        crop = generator(f)
        if compiled:
            crop.fuse()
            augment.fuse()
        drawn = crop.grad_subset
        crop.grad_subset = lambda *args: subsets.append(drawn(*args)) or subsets[-1]
        torch.manual_seed(3)
        views, (a1, p1), (a2, p2) = two_views(crop, augment, clips, 0)
        assert a1.requires_grad and views.x1.requires_grad
        grads = torch.autograd.grad(loss_of(encoder, a1, a2), [views.cubes1, views.cubes2])
        results[f] = (views, a1, a2, p1, grads)
        assert not compiled or (crop._fused.active and augment._fused.active)
    (full, full_a1, full_a2, full_p, full_grads), (part, part_a1, part_a2, part_p, part_grads) = results.values()
    subset = subsets[-1]
    assert subsets[0] is None and len(subset) == grad_subset_size(BATCH, fraction)
    assert bool((full_p.blur_sigma > 0).any())  # the blur is in the comparison
    exact = dict(rtol=0, atol=1e-5 if compiled else 0)
    for a, b in ((full.cubes1, part.cubes1), (full.x1, part.x1), (full.x2, part.x2), (full_a1, part_a1),
                 (full_a2, part_a2), (full_p.hue, part_p.hue)):
        torch.testing.assert_close(b, a, **exact)
    others = torch.ones(BATCH, dtype=torch.bool)
    others[subset] = False
    for g_full, g_part in zip(full_grads, part_grads):
        assert torch.equal(g_part[others], torch.zeros_like(g_part[others]))  # exactly zero
        torch.testing.assert_close(g_part[subset], BATCH / len(subset) * g_full[subset], rtol=1e-4, atol=1e-6)
        assert g_full[subset].abs().max() > 1e-3  # the comparison is not of zeros


def test_own_loop_forward_cuts_the_other_clips_without_a_cube_gradient():
    clips, encoder = clips_and_encoder()
    crop, whole = generator(0.25), generator(1.0)
    torch.manual_seed(5)
    views = crop(clips)
    torch.manual_seed(5)
    whole = whole(clips)
    torch.testing.assert_close(views.x1, whole.x1, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(loss_of(encoder, views.x1 / 255, views.x2 / 255), views.cubes1)
    assert int((grad.abs().sum(1) > 0).sum()) == 2  # round(0.25 * 8) clips carry it


# --- the estimate is unbiased: against a loop over clips -------------------------------------------------
def per_clip_gradients(crop, augment, clips, encoder, seed):
    """Generator gradients ``(B, P)``: row i with only clip i's views carrying the gradient to the cubes,
    through ``grid_sample`` and the augmentation of the whole batch (an independent path)."""
    rows = []
    for i in range(BATCH):
        torch.manual_seed(seed)
        cubes1, cubes2 = crop.cubes(clips, 0)
        p1, p2 = (augment.sample(BATCH, SIZE[1], clips.device) for _ in range(2))
        only = (torch.arange(BATCH) == i)[:, None]
        views = [crop_video_reference(clips.float(), torch.where(only, c, c.detach()), SIZE) for c in (cubes1, cubes2)]
        x1, x2 = (augment.apply(v / 255.0, p) for v, p in zip(views, (p1, p2)))
        rows.append(generator_grad(crop, loss_of(encoder, x1, x2)))
    return torch.stack(rows)


def test_the_subsets_gradient_is_an_unbiased_estimate_of_the_whole_batchs():
    clips, encoder = clips_and_encoder(2)
    augment = ClipAugment(**AUGMENT)
    seed, fraction = 7, 0.25
    per_clip = per_clip_gradients(generator(), augment, clips, encoder, seed)
    crop, whole = generator(fraction), generator(1.0)
    torch.manual_seed(seed)
    views, (a1, _), (a2, _) = two_views(whole, augment, clips, 0)
    full = generator_grad(whole, loss_of(encoder, a1, a2))
    torch.testing.assert_close(per_clip.sum(0), full, rtol=1e-3, atol=1e-6)  # the loop adds up to the batch
    drawn = crop.grad_subset
    estimates, subsets = [], []
    for k in range(300):  # the same batch, cubes and augmentation; a fresh subset each time
        crop.grad_subset = lambda *args: (torch.manual_seed(1000 + k), subsets.append(drawn(*args)))[1] or subsets[-1]
        torch.manual_seed(seed)
        views, (a1, _), (a2, _) = two_views(crop, augment, clips, 0)
        estimates.append(generator_grad(crop, loss_of(encoder, a1, a2)))
    estimates = torch.stack(estimates)
    n = grad_subset_size(BATCH, fraction)
    for s, estimate in zip(subsets[:20], estimates):  # each estimate: B / n times its clips' sum
        torch.testing.assert_close(estimate, BATCH / n * per_clip[s].sum(0), rtol=1e-3, atol=1e-6)
    mean = estimates.mean(0)
    standard_error = (estimates.var(0).sum() / len(estimates)).sqrt()
    assert (mean - full).norm() < 4 * standard_error
    assert (n / BATCH * mean - full).norm() > 6 * standard_error  # unscaled, the mean would miss by far (7.4)


# --- resume ----------------------------------------------------------------------------------------------
def test_resume_at_a_fraction_below_1_takes_the_same_steps_as_an_uninterrupted_run(workdir):
    from test_resume import Train, ckpt_step

    steps, args = 12, ("--steps", "12", "--set", "checkpoint_every=3", "--set", "crop.grad_fraction=0.5",
                       "--set", "eval.every=0")
    straight = Train(workdir, *args, "--run-dir", "straight")
    assert straight.wait() == 0, straight.output
    first = Train(workdir, *args, "--run-dir", "resumed")
    first.wait_for(lambda: ckpt_step(workdir / "resumed" / CHECKPOINT_NAME) >= 3, "the first checkpoint")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = ckpt_step(workdir / "resumed" / CHECKPOINT_NAME)
    assert 3 <= killed_at < steps, first.output
    again = Train(workdir, *args, "--run-dir", "resumed", "--resume")
    assert again.wait() == 0, again.output
    a, b = (pd.read_csv(workdir / run / "trajectory.csv") for run in ("straight", "resumed"))
    assert list(b["step"]) == list(range(steps))
    for key in (sinks.TRAIN_LOSS, sinks.VIEW_IOU, sinks.VIEW_CENTER_DISTANCE):
        assert list(a[key]) == list(b[key]), key


# --- bad input, tags, labels ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -0.5, 1.5, True, "half"])
def test_a_fraction_outside_0_1_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match=r"grad_fraction must be a number in \(0, 1\], got"):
        ParamCrop(SIZE, grad_fraction=value)
    with pytest.raises(ConfigError, match=r"crop: grad_fraction must be a number in \(0, 1\]"):
        TrainConfig().with_overrides({"crop.grad_fraction": value})


def test_train_cli_refuses_fraction_0_and_a_random_crops_fraction_with_exit_2(workdir):
    from typer.testing import CliRunner

    from cli import app

    for sets, message in ((["crop.grad_fraction=0"], "crop: grad_fraction must be a number in (0, 1], got 0"),
                          (["crop.method=random", "crop.grad_fraction=0.5"],
                           "unknown key(s) crop.grad_fraction for crop 'random'")):
        result = CliRunner().invoke(app, ["train", *(a for s in sets for a in ("--set", s)), "--steps", "1"])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
    assert not (workdir / "mlflow.db").exists()


def test_the_fraction_is_in_the_parameterisation_tag_and_the_analysis_never_pools_fractions():
    from analysis.groups import configurations
    from studies.tracking import run_tags

    flats = [TrainConfig().with_overrides({"crop.grad_fraction": f, "seed": s}).flatten()
             for f in (1.0, 0.5, 0.25) for s in (0, 1)]
    assert [run_tags(flat)[sinks.TAG_CROP_PARAMETERISATION] for flat in flats[::2]] == \
        ["spatiotemporal", "spatiotemporal, grad fraction 0.5", "spatiotemporal, grad fraction 0.25"]
    runs = pd.DataFrame([{"run_id": str(k), **{f"params.{key}": str(v) for key, v in flat.items()}}
                         for k, flat in enumerate(flats)])
    frame, _ = configurations(runs)
    assert list(frame["config"]) == [2, 2, 1, 1, 0, 0]  # three configurations, ordered by the fraction
    assert list(frame["configuration"][::2]) == ["ParamCrop spatiotemporal, λ=1.0",
                                                 "ParamCrop spatiotemporal, grad fraction 0.5, λ=1.0",
                                                 "ParamCrop spatiotemporal, grad fraction 0.25, λ=1.0"]


def test_the_grad_fraction_spec_is_quickstarts_setting_at_three_fractions_over_five_seeds():
    from studies.spec import load_spec

    spec, quickstart = load_spec("grad-fraction"), load_spec("quickstart")
    assert spec.grid() == {"crop.grad_fraction": [1.0, 0.5, 0.25], "seed": [0, 1, 2, 3, 4]}
    assert [o.metric for o in spec.objectives] == ["eval/val/knn_top1"] and spec.data == quickstart.data
    assert {k: v for k, v in spec.config.items() if k != "crop"} == quickstart.config
    cfg, _ = spec.config_for({"crop.grad_fraction": 0.25, "seed": 3})
    assert cfg.crop == {"method": "paramcrop", "strength": 1.0, "grad_fraction": 0.25} and cfg.seed == 3
    assert "keep grad_fraction 1.0 unless" in " ".join(spec.description.split())
