"""What the evaluation costs in a trial: the end-of-training evaluation's share of a run's wall time,
the online evaluations, the one-time generation and decoding of the evaluation draws, peak RSS.

    python benchmarks/evaluation.py [--steps 400] [--crop matched] [--set KEY=VALUE ...] [--fresh-cache DIR]

Trains one run with the `controls` study's settings (tiny3d + SimCLR on the default benchmark, 400
steps, batch 32, online evaluation every 50 steps; the crop a matched random crop at IoU 0.8) in
this process, without MLflow, with timers around the trainer's evaluations. ``--fresh-cache DIR``
first generates the benchmark and its evaluation draws into the empty folder DIR and decodes the
draws' windows once (the one-time costs, reported apart); without it the cache in use
(``PARAMCROP_CACHE``) is expected to hold them already, as it does for every trial after a
machine's first.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONTROLS = {"augment.flip_p": 0.0, "augment.jitter_scale": 0.5, "steps": 400, "batch_size": 32, "log_every": 5,
            "eval.every": 50, "visualize_at": 0, "snapshot_every": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--crop", default="matched", help="crop.method (default matched, at crop.iou 0.8)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--fresh-cache", type=Path, help="an empty folder: time generating the draws there first")
    args = parser.parse_args()

    from paramcrop import sinks
    from paramcrop.config import TrainConfig
    from paramcrop.keys import parse_override
    from paramcrop.train import Trainer

    overrides = {**CONTROLS, "steps": args.steps, "crop.method": args.crop}
    if args.crop == "matched":
        overrides["crop.iou"] = 0.8
    overrides.update(dict(parse_override(o) for o in args.set))
    cfg = TrainConfig().with_overrides(overrides)
    if args.fresh_cache is not None:
        from paramcrop.data import EvalClips
        from paramcrop.data.sources import evaluation_draws
        from paramcrop.transfer import eval_stride

        os.environ["PARAMCROP_CACHE"] = str(args.fresh_cache)
        t0 = time.perf_counter()
        draws = evaluation_draws(cfg.data.source, cfg.eval.draw_per_class)
        generated = time.perf_counter() - t0
        view = (cfg.view.frames, eval_stride(cfg), cfg.view.size, cfg.eval.clips_per_video)
        t0 = time.perf_counter()
        for records in (draws.val, draws.test):
            EvalClips(records, *view, persist=draws.folder)[0]
        print(f"one-time: draws generated in {generated:.1f} s ({len(draws.val) + len(draws.test)} videos), "
              f"their windows decoded in {time.perf_counter() - t0:.1f} s", flush=True)

    timings: list[tuple[bool, float]] = []
    evaluate = Trainer.evaluate

    def timed(self, final: bool = True):
        t0 = time.perf_counter()
        try:
            return evaluate(self, final)
        finally:
            timings.append((final, time.perf_counter() - t0))

    Trainer.evaluate = timed
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", sink=sinks.MemorySink(), progress=False)
        built = time.perf_counter() - t0
        result = trainer.fit()
        wall = time.perf_counter() - t0
    final = sum(s for f, s in timings if f)
    online = [s for f, s in timings if not f]
    queries = {name: len(ds) for name, ds in (("test", trainer.eval_sets[1]), ("val", trainer.val_set)) if ds}
    print(f"run: {args.steps} steps, crop {args.crop}, queries {queries}, bank {len(trainer.eval_sets[0])}")
    print(f"wall {wall:.1f} s (build {built:.1f} s); final evaluation {final:.1f} s = {100 * final / wall:.1f} % "
          f"of the run; {len(online)} online evaluations {sum(online):.1f} s = {100 * sum(online) / wall:.1f} %")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.eval_metrics.items()) if "top1" in k))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
