"""Where a quickstart training step spends its time, by phase (torch.profiler).

    python benchmarks/profile_step.py [--device cpu|cuda] [--steps 6] [--warmup 8]
                                      [--crops random paramcrop paramcrop-f0.5 paramcrop-f0.25]
                                      [--no-eval] [--tiny] [--markdown]

The quickstart spec's configuration (tiny3d, SimCLR, batch 32, 16x64x64 clips at stride 2 -> 8x48x48
views, the synthetic benchmark, decoding in the main process) for each crop method. Phases are the
``paramcrop:*`` regions of :meth:`paramcrop.train.Trainer.train_step` (crop, augment, framework,
losses, backward, optimizer, generator, metrics), ``data`` (the loader: decoding + collation) and
``logging`` (the sink call) around it here, and two regions added here by module hooks: ``backbone``
(inside ``framework``) and ``generator net`` (inside ``crop``, ParamCrop's MLPs). The backward is split
by the region whose forward op each autograd node belongs to (``sequence_nr``): "backward: augment" is
the augmentation's backward. ``online evaluation`` (kNN, linear probe, retrieval on validation and
test) is timed twice: its first call, which decodes the evaluation splits into the cache, and a later
one, also shown amortised over ``eval.every`` steps. Times are CPU time (on CUDA: device time) per
step, in ms and as a share of the step's wall time; nested rows ("of which") are part of the row above.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:  # as cli.py: OpenMP threads spin briefly, then sleep
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from paramcrop import sinks  # noqa: E402
from paramcrop.train import PHASE_PREFIX, Trainer, phase  # noqa: E402

CROPS = {"random": {"crop.method": "random"}, "paramcrop": {"crop.method": "paramcrop", "crop.strength": 1.0},
         **{f"paramcrop-f{f:g}": {"crop.method": "paramcrop", "crop.strength": 1.0, "crop.grad_fraction": f}
            for f in (0.5, 0.25)}}  # crop.grad_fraction: the cube gradient from part of the batch
TINY = {"data.source": "synthetic:videos_per_class=4,frames=24,size=32,shapes=2,motions=2", "batch_size": 4,
        "data.frames": 8, "data.stride": 1, "data.size": 32, "view.frames": 4, "view.size": 24}


def quickstart_config(crop: str, device: str, tiny: bool):
    from studies.spec import load_spec

    overrides = {**CROPS[crop], "device": device, "data.workers": 0, "visualize_at": 0,
                 "eval.draw_per_class": 0, **(TINY if tiny else {})}  # steps only: no evaluation draws
    return load_spec("quickstart").base_config().with_overrides(overrides)


def wrap_region(obj: object, method: str, name: str) -> None:
    """A profiler region ``paramcrop:NAME`` around every call of ``obj.method`` (this instance only;
    frameworks call ``backbone.forward_features`` directly, which module hooks do not see)."""
    inner = getattr(obj, method)

    def wrapped(*args, **kwargs):
        with phase(name):
            return inner(*args, **kwargs)

    setattr(obj, method, wrapped)


def region_of(event) -> str | None:
    """The innermost ``paramcrop:*`` region an event ran in (its name without the prefix), or None."""
    while event is not None:
        if event.name.startswith(PHASE_PREFIX):
            return event.name[len(PHASE_PREFIX):]
        event = event.cpu_parent
    return None


def breakdown(events, cuda: bool) -> dict[str, float]:
    """Microseconds per phase over the profiled steps: each region's inclusive time, and the backward
    split by the forward region of each autograd node."""
    spent = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)
    forward_region: dict[tuple[int, int], str] = {}
    totals: dict[str, float] = defaultdict(float)
    # an op that creates no autograd node records the number the next node will get: the op that owns
    # a number is the last one (in start order) that recorded it
    for e in sorted(events, key=lambda e: e.time_range.start):
        if e.name.startswith(PHASE_PREFIX):
            totals[e.name[len(PHASE_PREFIX):]] += spent(e)
        elif e.sequence_nr >= 0 and not e.name.startswith("autograd::engine") and "Backward" not in e.name:
            region = region_of(e)
            if region is not None and region != "backward":
                forward_region[e.thread, e.sequence_nr] = region
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            if e.sequence_nr < 0:
                totals["backward: accumulate grads"] += spent(e)
                continue
            # backward runs on the forward thread on CPU, on a device thread on CUDA: match either
            region = forward_region.get((e.fwd_thread, e.sequence_nr)) or forward_region.get((e.thread, e.sequence_nr))
            totals[f"backward: {region or 'other'}"] += spent(e)
    return totals


ROWS = [  # (phase, label, nested under the row above)
    ("data", "data (decode + collate)", False), ("crop", "crop", False), ("generator net", "generator net", True),
    ("augment", "augmentation forward", False), ("framework", "framework forward", False),
    ("backbone", "backbone forward", True), ("losses", "losses", False), ("backward", "backward", False),
    ("backward: framework", "backward: head + loss", True),
    ("backward: backbone", "backward: backbone", True), ("backward: augment", "backward: augmentation", True),
    ("backward: crop", "backward: crop", True), ("backward: generator net", "backward: generator net", True),
    ("backward: accumulate grads", "backward: accumulate grads", True),
    ("optimizer", "optimizer step + target update", False), ("generator", "generator update", False),
    ("metrics", "view metrics", False), ("logging", "logging (sink)", False),
]


def profile_crop(crop: str, args) -> tuple[dict[str, float], float, tuple[float, float], int, tuple[float, float]]:
    """(ms per step by phase, profiled wall ms per step, (evaluation ms of the first call, of a later one),
    eval.every, (unprofiled wall ms per step, minor page faults per step)) for one crop method."""
    cfg = quickstart_config(crop, args.device, args.tiny)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), progress=False)
    for method in ("forward", "forward_features"):
        wrap_region(trainer.framework.backbone, method, "backbone")
    for net in getattr(trainer.crop, "generator", None) or []:  # ParamCrop's MLPs
        wrap_region(net, "forward", "generator net")
    sink = sinks.MemorySink()
    batches = trainer._loader()
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    trainer.framework.train()

    def one_step():
        with phase("data"):
            clips = next(batches).to(trainer.device, non_blocking=True)
        loss, metrics, _ = trainer.train_step(clips)
        trainer.step += 1
        with phase("logging"):
            sink.log_metrics({sinks.TRAIN_LOSS: float(loss), **{k: float(v) for k, v in metrics.items()}}, 0)
        sync()

    for _ in range(args.warmup):
        one_step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(args.steps):  # unprofiled: the wall time and page faults without the profiler's overhead
        one_step()
    plain = ((time.perf_counter() - start) * 1e3 / args.steps,
             (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            one_step()
        wall = (time.perf_counter() - start) / args.steps
    per_step = {k: v / 1e3 / args.steps for k, v in breakdown(prof.events(), cuda).items()}
    eval_ms = (0.0, 0.0)  # the first call (decodes the evaluation splits into the cache), a later one
    if not args.no_eval:
        calls = []
        for _ in range(2):
            start = time.perf_counter()
            trainer.evaluate(final=False)
            sync()
            calls.append((time.perf_counter() - start) * 1e3)
        eval_ms = tuple(calls)
    return per_step, wall * 1e3, eval_ms, cfg.eval.every, plain


def table(results: dict[str, tuple], markdown: bool) -> str:
    crops = list(results)
    header = ["phase", *(f"{c} ms" for c in crops), *(f"{c} %" for c in crops)]
    lines = []
    fmt = (lambda cells: "| " + " | ".join(cells) + " |") if markdown else (lambda cells: "  ".join(
        f"{c:>13s}" if i else f"{c:56s}" for i, c in enumerate(cells)))
    lines.append(fmt(header))
    if markdown:
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for key, label, nested in ROWS:
        values = [results[c][0].get(key) for c in crops]
        if all(v is None or v < 0.005 for v in values):
            continue
        shares = [None if v is None else 100 * v / results[c][1] for v, c in zip(values, crops)]
        cells = [("  of which " if nested else "") + label, *("" if v is None else f"{v:.1f}" for v in values),
                 *("" if s is None else f"{s:.0f}" for s in shares)]
        lines.append(fmt(cells))
    lines.append(fmt(["step wall time (profiled)", *(f"{results[c][1]:.1f}" for c in crops), *("100" for _ in crops)]))
    lines.append(fmt(["step wall time without the profiler", *(f"{results[c][4][0]:.1f}" for c in crops),
                      *("" for _ in crops)]))
    lines.append(fmt(["minor page faults per step (without the profiler)", *(f"{results[c][4][1]:.0f}" for c in crops),
                      *("" for _ in crops)]))
    if any(results[c][2][0] for c in crops):
        lines.append(fmt(["online evaluation, first call (decodes the evaluation splits)",
                          *(f"{results[c][2][0]:.0f}" for c in crops), *("" for _ in crops)]))
        lines.append(fmt(["online evaluation, a later call", *(f"{results[c][2][1]:.0f}" for c in crops),
                          *("" for _ in crops)]))
        lines.append(fmt([f"later calls amortised over eval.every={results[crops[0]][3]} steps",
                          *(f"{results[c][2][1] / max(1, results[c][3]):.1f}" for c in crops),
                          *(f"{100 * results[c][2][1] / max(1, results[c][3]) / results[c][1]:.0f}" for c in crops)]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=8,
                        help="unmeasured steps first: 8 cover an epoch of the quickstart's training videos, so "
                             "decoding is measured in its steady state (the decoded-video cache filled)")
    parser.add_argument("--crops", nargs="+", default=["random", "paramcrop"], choices=list(CROPS))
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation row")
    parser.add_argument("--tiny", action="store_true", help="CI-sized: tiny clips and batch, seconds")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    print(f"device={args.device}, torch threads={torch.get_num_threads()}, {args.steps} profiled steps after "
          f"{args.warmup} warm-up steps, quickstart config{' (tiny)' if args.tiny else ''}")
    results = {crop: profile_crop(crop, args) for crop in args.crops}
    print(table(results, args.markdown))
    if "random" in results and "paramcrop" in results:
        print(f"ParamCrop / random step wall time: {results['paramcrop'][1] / results['random'][1]:.2f}")


if __name__ == "__main__":
    main()
