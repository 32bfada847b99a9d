"""Training-step costs, as ratios measured side by side in one run (issue 4).

    python benchmarks/train.py [--device cpu|cuda] [--repeats 10] [--skip-r3d]

1. Pipeline overhead: a full training step (crop + augmentation + framework + optimisers + view
   metrics + logging) over the bare backbone forward+backward+step on the same two views.
2. ParamCrop step over random-crop step, same backbone and batch.
   Both for tiny3d at the quickstart size (batch 32, 16x64x64 clips -> 8x48x48 views) and for
   r3d_18 at 16x112x112 views (batch 4 on CPU, 16 on CUDA).
3. Metrics logging time over training time for a 500-step run logging every 10 steps (MLflow,
   local SQLite store, batched).
4. Peak memory (max RSS) after the quickstart-size measurements; on CUDA also r3d_18 clips/s
   with and without bf16 autocast.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import compare  # noqa: E402

from paramcrop import sinks  # noqa: E402
from paramcrop.config import TrainConfig  # noqa: E402
from paramcrop.train import Trainer, to_input  # noqa: E402

TINY_SOURCE = "synthetic:videos_per_class=6,frames=40,size=32,shapes=2,motions=2"  # construction only


def make_trainer(crop: str, backbone: str, batch: int, raw: tuple[int, int], view: tuple[int, int],
                 device: str, precision: str = "fp32") -> Trainer:
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": raw[0], "data.size": raw[1], "view.frames": view[0],
        "view.size": view[1], "crop.method": crop, "backbone.name": backbone, "batch_size": batch,
        "device": device, "precision": precision, "steps": 10_000,
    })
    return Trainer(cfg, Path(tempfile.mkdtemp()), progress=False)


def measure_backbone(backbone: str, batch: int, raw, view, device: str, repeats: int) -> dict[str, float]:
    clips = torch.randint(0, 256, (batch, 3, raw[0], raw[1], raw[1]), dtype=torch.uint8, device=device)
    trainers = {crop: make_trainer(crop, backbone, batch, raw, view, device) for crop in ("random", "paramcrop")}
    sink = sinks.MemorySink()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def full(trainer):
        def run():
            loss, metrics, _ = trainer.train_step(clips)
            sink.log_metrics({"train/loss": float(loss), **{k: float(v) for k, v in metrics.items()}}, 0)
            sync()
        return run

    views = trainers["random"].crop(clips)
    x = torch.cat([to_input(views.x1 / 255), to_input(views.x2 / 255)]).detach()
    backbone_module = trainers["random"].framework.backbone
    bare_opt = torch.optim.AdamW(backbone_module.parameters(), lr=1e-4)

    def bare():
        bare_opt.zero_grad(set_to_none=True)
        backbone_module(x).float().pow(2).mean().backward()
        bare_opt.step()
        sync()

    t = compare({"full-random": full(trainers["random"]), "full-paramcrop": full(trainers["paramcrop"]),
                 "bare": bare}, repeats=repeats, warmup=2)
    return t


def measure_logging(step_seconds: float) -> tuple[float, float]:
    """Seconds to log 50 batches of the step metrics to a fresh SQLite MLflow store (500 steps, every 10)."""
    from studies.tracking import MlflowSink, client_for

    with tempfile.TemporaryDirectory() as tmp:
        client = client_for(f"sqlite:///{tmp}/mlflow.db")
        run = client.create_run(client.create_experiment("bench"))
        sink = MlflowSink(client, run.info.run_id)
        names = [*sinks.VIEW_METRICS, sinks.TRAIN_LOSS, sinks.TRAIN_LR, sinks.TRAIN_CLIPS_PER_S, sinks.TRAIN_LAMBDA]
        start = time.perf_counter()
        for step in range(0, 500, 10):
            sink.log_metrics({n: 0.5 for n in names}, step)
        sink.flush()
        logging = time.perf_counter() - start
    return logging, 500 * step_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-r3d", action="store_true")
    args = parser.parse_args()
    print(f"device={args.device}, torch threads={torch.get_num_threads()}, medians of {args.repeats} interleaved repeats")

    cases = [("tiny3d", 32, (16, 64), (8, 48))]
    if not args.skip_r3d:
        cases.append(("r3d_18", 16 if args.device.startswith("cuda") else 4, (16, 128), (16, 112)))
    tiny_step = None
    for backbone, batch, raw, view in cases:
        t = measure_backbone(backbone, batch, raw, view, args.device, args.repeats)
        if backbone == "tiny3d":
            tiny_step = t["full-paramcrop"]
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{backbone} batch {batch}, {raw[0]}x{raw[1]}px clips -> {view[0]}x{view[1]}px views:")
        print(f"  bare backbone fwd+bwd+step {t['bare'] * 1e3:8.1f} ms")
        print(f"  full step, random crop     {t['full-random'] * 1e3:8.1f} ms   overhead ratio "
              f"{t['full-random'] / t['bare']:.3f}")
        print(f"  full step, ParamCrop       {t['full-paramcrop'] * 1e3:8.1f} ms   overhead ratio "
              f"{t['full-paramcrop'] / t['bare']:.3f}")
        print(f"  ParamCrop / random step    {t['full-paramcrop'] / t['full-random']:.3f}")
    logging, training = measure_logging(tiny_step)
    print(f"logging, 500 steps every 10 (MLflow SQLite, batched): {logging:.3f} s over {training:.1f} s of "
          f"training = {100 * logging / training:.2f}%")
    print(f"peak memory (max RSS) after the quickstart-size measurements: {peak_mb:.0f} MiB")

    if args.device.startswith("cuda") and not args.skip_r3d:
        clips = torch.randint(0, 256, (16, 3, 16, 128, 128), dtype=torch.uint8, device=args.device)
        for precision in ("fp32", "bf16"):
            trainer = make_trainer("paramcrop", "r3d_18", 16, (16, 128), (16, 112), args.device, precision)
            t = compare({"step": lambda: (trainer.train_step(clips), torch.cuda.synchronize())}, args.repeats)
            print(f"r3d_18 on {args.device}, {precision}: {16 / t['step']:.0f} clips/s")


if __name__ == "__main__":
    main()
