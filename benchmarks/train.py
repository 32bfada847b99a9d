"""Training-step costs, as ratios measured side by side in one run.

    python benchmarks/train.py [--device cpu|cuda] [--repeats 10] [--skip-r3d] [--precision fp32 bf16]
                               [--r3d-batch 32] [--tiny] [--csv results.csv]

1. Pipeline overhead: a full training step (crop + augmentation + framework + optimisers + view
   metrics + logging) over the bare backbone forward+backward+step on the same two views.
2. ParamCrop step over random-crop step, same backbone and batch; ParamCrop also at
   ``crop.grad_fraction`` 0.5 and 0.25 (the cube gradient from a random half / quarter of the clips).
   Ratios are medians of the round-by-round ratios of interleaved repeats, with their range. The
   hardest-views step (``crop.method: hardest``, K = 4 candidate pairs scored by one extra forward
   pass) over random-crop step, the same way. The backbone's input gradient (the floor and every
   learned crop) as the backbone computes it (``backbones.InputConv3d``: its stem's input gradient as
   one stride-1 convolution over the stride's phases) against oneDNN's transposed convolution (the
   stem a plain ``nn.Conv3d``): "floor / floor-onednn" and "ParamCrop / ParamCrop-onednn". Both for tiny3d at the quickstart size (batch 32, 16x64x64 clips -> 8x48x48 views) and for
   r3d_18 at 16x112x112 views (batch 4 on CPU, 32 on CUDA; ``--r3d-batch``), in each ``--precision``
   (bf16 = autocast; the bare step autocast alike). The floor of a learned-crop step is the bare
   step that also computes the gradient to its input (the adversary needs it): "ParamCrop / floor".
3. Metrics logging time over training time for a 500-step run logging every 10 steps (MLflow,
   local SQLite store, batched).
4. Peak memory (max RSS) after the quickstart-size measurements; clips/s of each full step.

``--tiny`` (CI smoke run, seconds): tiny3d in both cases at batch 4, 8x32 clips -> 4x24 views, no
logging measurement.
"""
from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:  # as cli.py: OpenMP threads spin briefly, then sleep
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import Results, interleaved, ratio_spread  # noqa: E402

from paramcrop import sinks  # noqa: E402
from paramcrop.backbones import InputConv3d  # noqa: E402
from paramcrop.config import TrainConfig  # noqa: E402
from paramcrop.data.batches import to_input  # noqa: E402
from paramcrop.train import Trainer  # noqa: E402

TINY_SOURCE = "synthetic:videos_per_class=6,frames=40,size=32,shapes=2,motions=2"  # construction only
GRAD_FRACTIONS = (0.5, 0.25)  # ParamCrop's crop.grad_fraction below 1, each a candidate of its own
CROPS = {"random": {"crop.method": "random"}, "paramcrop": {"crop.method": "paramcrop"},
         **{f"paramcrop-f{f:g}": {"crop.method": "paramcrop", "crop.grad_fraction": f} for f in GRAD_FRACTIONS},
         "hardest": {"crop.method": "hardest"}}


def make_trainer(crop: str, backbone: str, batch: int, raw: tuple[int, int], view: tuple[int, int],
                 device: str, precision: str = "fp32") -> Trainer:
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": raw[0], "data.size": raw[1], "view.frames": view[0],
        "view.size": view[1], **CROPS[crop], "backbone.name": backbone, "batch_size": batch,
        "device": device, "precision": precision, "steps": 10_000,
        "eval.draw_per_class": 0,  # steps are timed, never evaluated: no evaluation draws to generate
    })
    return Trainer(cfg, Path(tempfile.mkdtemp()), progress=False)


def with_onednn_input_grad(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with each :class:`InputConv3d` replaced by a plain ``nn.Conv3d`` on the same parameters."""
    for name, child in module.named_children():
        if isinstance(child, InputConv3d):
            plain = torch.nn.Conv3d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                    child.padding, bias=False)
            plain.weight = child.weight
            setattr(module, name, plain)
        else:
            with_onednn_input_grad(child)
    return module


def measure_backbone(backbone: str, batch: int, raw, view, device: str, repeats: int,
                     precision: str = "fp32") -> dict[str, list[float]]:
    """Seconds of each interleaved round of ``full-<crop>`` (each of :data:`CROPS`), ``bare`` and ``floor``
    (bare + input gradient), ``full-paramcrop-onednn`` and ``floor-onednn`` (the stem's input gradient by oneDNN)."""
    # each case compiles its own graphs: without the reset, the cases before count against torch.compile's
    # recompile limit (8 per function), and the crop and colour functions fell back to eager in the r3d cases
    torch.compiler.reset()
    clips = torch.randint(0, 256, (batch, 3, raw[0], raw[1], raw[1]), dtype=torch.uint8, device=device)
    trainers = {crop: make_trainer(crop, backbone, batch, raw, view, device, precision) for crop in CROPS}
    trainers["paramcrop-onednn"] = make_trainer("paramcrop", backbone, batch, raw, view, device, precision)
    with_onednn_input_grad(trainers["paramcrop-onednn"].framework)
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

    autocast = trainers["random"].autocast
    x_grad = x.clone().requires_grad_()

    onednn_module = with_onednn_input_grad(copy.deepcopy(backbone_module))
    onednn_opt = torch.optim.AdamW(onednn_module.parameters(), lr=1e-4)

    def bare_step(inputs, backbone_module=backbone_module, bare_opt=bare_opt):
        def run():
            bare_opt.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                out = backbone_module(inputs)
            out.float().pow(2).mean().backward()
            bare_opt.step()
            inputs.grad = None
            sync()
        return run

    return interleaved({**{f"full-{name}": full(trainer) for name, trainer in trainers.items()},
                        "bare": bare_step(x), "floor": bare_step(x_grad),
                        "floor-onednn": bare_step(x_grad, onednn_module, onednn_opt)}, repeats=repeats, warmup=2)


def measure_logging(step_seconds: float) -> tuple[float, float]:
    """Seconds to log 50 batches of the step metrics to a fresh SQLite MLflow store (500 steps, every 10)."""
    from studies.mlflow_sink import MlflowSink
    from studies.tracking import client_for

    with tempfile.TemporaryDirectory() as tmp:
        client = client_for(f"sqlite:///{tmp}/mlflow.db")
        run = client.create_run(client.create_experiment("bench"))
        sink = MlflowSink(client, run.info.run_id)
        names = [*sinks.VIEW_METRICS, sinks.TRAIN_LOSS, sinks.TRAIN_LR, sinks.TRAIN_CLIPS_PER_S, sinks.TRAIN_STRENGTH]
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
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--r3d-batch", type=int, help="[default: 32 on CUDA, 4 on CPU]")
    parser.add_argument("--tiny", action="store_true", help="CI-sized: tiny3d, tiny clips, seconds")
    parser.add_argument("--csv", help="append the results to this CSV (benchmark,name,value,kind)")
    args = parser.parse_args()
    results = Results("train", args.csv)
    print(f"device={args.device}, torch threads={torch.get_num_threads()}, medians of {args.repeats} interleaved repeats")

    if args.tiny:
        cases = [("quickstart", "tiny3d", 4, (8, 32), (4, 24)), ("r3d", "tiny3d", 4, (8, 32), (4, 24))]
    else:
        r3d_batch = args.r3d_batch or (32 if args.device.startswith("cuda") else 4)
        cases = [("quickstart", "tiny3d", 32, (16, 64), (8, 48)), ("r3d", "r3d_18", r3d_batch, (16, 128), (16, 112))]
    if args.skip_r3d:
        cases = cases[:1]
    tiny_step = peak_mb = None
    speed: dict[tuple[str, str], float] = {}  # (case, precision) -> clips/s of the full random-crop step
    for precision in args.precision:
        for case, backbone, batch, raw, view in cases:
            times = measure_backbone(backbone, batch, raw, view, args.device, args.repeats, precision)
            t = {name: statistics.median(ts) for name, ts in times.items()}
            if case == "quickstart" and peak_mb is None:
                tiny_step = t["full-paramcrop"]
                peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            key = f"{case}/{precision}"
            results.add(f"{key}/full_random_over_bare", t["full-random"] / t["bare"], "ratio")
            results.add(f"{key}/full_paramcrop_over_floor", t["full-paramcrop"] / t["floor"], "ratio")
            results.add(f"{key}/paramcrop_over_random", t["full-paramcrop"] / t["full-random"], "ratio")
            results.add(f"{key}/hardest_over_random", t["full-hardest"] / t["full-random"], "ratio")
            for crop in CROPS:
                results.add(f"{key}/full_{crop}_clips_per_s", batch / t[f"full-{crop}"], "clips_per_s")
            speed[case, precision] = batch / t["full-random"]
            print(f"{backbone} ({case}) {precision} batch {batch}, {raw[0]}x{raw[1]}px clips -> {view[0]}x{view[1]}px "
                  f"views:")
            print(f"  bare backbone fwd+bwd+step {t['bare'] * 1e3:8.1f} ms")
            print(f"  floor (bare + input grad)  {t['floor'] * 1e3:8.1f} ms")
            print(f"  full step, random crop     {t['full-random'] * 1e3:8.1f} ms   overhead ratio "
                  f"{t['full-random'] / t['bare']:.3f}   {batch / t['full-random']:.0f} clips/s")
            print(f"  full step, ParamCrop       {t['full-paramcrop'] * 1e3:8.1f} ms   ratio to bare "
                  f"{t['full-paramcrop'] / t['bare']:.3f}, to floor {t['full-paramcrop'] / t['floor']:.3f}")
            print(f"  ParamCrop / random step    {t['full-paramcrop'] / t['full-random']:.3f}")
            for over, under in (("floor", "floor-onednn"), ("full-paramcrop", "full-paramcrop-onednn")):
                ratio, low, high = ratio_spread(times, over, under)
                results.add(f"{key}/{over.removeprefix('full-')}_over_onednn_input_grad", ratio, "ratio")
                print(f"  {over} / {under} {ratio:.3f} (rounds {low:.3f}-{high:.3f}): the stem's input "
                      f"gradient by phases ({t[under] * 1e3:.1f} ms with oneDNN's)")
            for name in ("paramcrop", *(f"paramcrop-f{f:g}" for f in GRAD_FRACTIONS), "hardest"):
                ratio, low, high = ratio_spread(times, f"full-{name}", "full-random")
                tag = name.replace("paramcrop-f", "paramcrop_f")
                results.add(f"{key}/{tag}_over_random_per_round", ratio, "ratio")
                print(f"  {name:<18} {t[f'full-{name}'] * 1e3:8.1f} ms   / random {ratio:.3f} (rounds "
                      f"{low:.3f}-{high:.3f})   / bare {t[f'full-{name}'] / t['bare']:.3f}")
    for case, *_ in cases:
        if (case, "bf16") in speed and (case, "fp32") in speed:  # separate interleaved sets: a coarser ratio
            ratio = results.add(f"{case}/bf16_over_fp32_clips_per_s", speed[case, "bf16"] / speed[case, "fp32"], "ratio")
            print(f"{case}: bf16 / fp32 clips/s of the full random-crop step {ratio:.2f} (target > 1 on CUDA)")
    if not args.tiny:
        logging, training = measure_logging(tiny_step)
        print(f"logging, 500 steps every 10 (MLflow SQLite, batched): {logging:.3f} s over {training:.1f} s of "
              f"training = {100 * logging / training:.2f}%")
    print(f"peak memory (max RSS) after the quickstart-size measurements: {peak_mb:.0f} MiB")
    results.add("peak_rss_mib", peak_mb, "mib")


if __name__ == "__main__":
    main()
