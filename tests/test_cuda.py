"""The CUDA paths (CI has no GPU: these skip there; ``benchmarks/gpu.sh`` runs them with ``-m cuda``)."""
import pytest
import torch

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.geometry import crop_video, crop_video_reference
from paramcrop.train import train
from conftest import TINY_DRAWS, TINY_SOURCE

pytestmark = [pytest.mark.usefixtures("tiny_cache"), pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crop_video_on_cuda_matches_grid_sample_and_the_cpu(dtype):
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (4, 3, 16, 64, 64), dtype=torch.uint8).to(dtype)
    half = torch.rand(4, 3) * 0.5 + 0.4
    cubes = torch.cat([(torch.rand(4, 3) * 2 - 1) * (1 - half), half], -1)
    out = {}
    for name, fn, device in (("cuda", crop_video, "cuda"), ("reference", crop_video_reference, "cuda"),
                             ("cpu", crop_video, "cpu")):
        c = cubes.to(device).requires_grad_()
        y = fn(clips.to(device), c, (8, 32, 32))
        (y.float() * torch.linspace(0, 1, y.numel(), device=device).view_as(y)).sum().backward()
        out[name] = (y.detach().float().cpu(), c.grad.cpu())
    for other in ("reference", "cpu"):
        torch.testing.assert_close(out["cuda"][0], out[other][0], atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(out["cuda"][1], out[other][1], atol=1e-1, rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("crop", ["random", "paramcrop"])
def test_a_tiny_run_trains_on_cuda(tmp_path, precision, crop):
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1, "data.size": 32, "view.frames": 8,
        "view.size": 32, "batch_size": 8, "steps": 4, "log_every": 1, "visualize_at": 0, "device": "cuda",
        "precision": precision, "crop.method": crop, "data.workers": "auto", "eval.linear": False,
        "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS})
    sink = sinks.MemorySink()
    result = train(cfg, sink, tmp_path, progress=False)
    losses = [v for _, v in sink.series(sinks.TRAIN_LOSS)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(v >= 0 for _, v in sink.series(sinks.TRAIN_DATA_WAIT_S))
    assert isinstance(sink.params["data.workers"], int)
    assert 0 <= result.eval_metrics[sinks.EVAL_KNN_TOP1] <= 1


def test_compiled_augmentation_on_cuda_equals_the_eager_path():
    """``compile: true`` on CUDA compiles the colour jitter and flip with triton (the crop keeps
    grid_sample there): values and gradients against the eager path."""
    from paramcrop.augment import ClipAugment

    torch.manual_seed(0)
    eager, fused = ClipAugment(), ClipAugment()
    fused.fuse()
    x = torch.rand(6, 3, 4, 16, 16, device="cuda")
    p = eager.sample(6, 16, x.device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = eager.apply(xa, p), fused.apply(xb, p)
    assert fused._fused.active
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    upstream = torch.randn_like(a)
    (ga,) = torch.autograd.grad((a * upstream).sum(), xa)
    (gb,) = torch.autograd.grad((b * upstream).sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-4)
