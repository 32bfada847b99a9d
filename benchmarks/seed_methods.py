"""Cost of the seed methods' options per training step, side by side in one run.

    python benchmarks/seed_methods.py [--repeats 15] [--batch 32]

tiny3d + SimCLR at the quickstart size (batch 32, 16x64x64 raw clips -> 8x48x48 views, random
crop): one full training step (crop, augmentation, framework, auxiliary losses, backward, optimiser)
with the MLP head, the CATE head, the MLP head + region contrast, the MLP head + temporal order.
Median seconds per step, the candidates interleaved; ratios against the MLP head.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:  # as cli.py: OpenMP threads spin briefly, then sleep
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import compare  # noqa: E402

from paramcrop.config import TrainConfig  # noqa: E402
from paramcrop.train import Trainer  # noqa: E402

TINY_SOURCE = "synthetic:videos_per_class=6,frames=40,size=32,shapes=2,motions=2"  # construction only
VARIANTS = {"mlp": {}, "cate": {"head.name": "cate"}, "mlp+region": {"losses.region": 1.0},
            "mlp+order": {"losses.order": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (args.batch, 3, 16, 64, 64), dtype=torch.uint8)
    steps = {}
    for name, overrides in VARIANTS.items():
        cfg = TrainConfig().with_overrides({"data.source": TINY_SOURCE, "crop.method": "random", "device": "cpu",
                                            "batch_size": args.batch, "steps": 10_000, "eval.draw_per_class": 0, **overrides})
        trainer = Trainer(cfg, Path(tempfile.mkdtemp()), progress=False)
        steps[name] = lambda trainer=trainer: trainer.train_step(clips)
    medians = compare(steps, repeats=args.repeats)
    print(f"tiny3d SimCLR step, batch {args.batch}, 8x48x48 views, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved:")
    for name, seconds in medians.items():
        print(f"  {name:<11} {seconds * 1000:7.1f} ms  x{seconds / medians['mlp']:.2f}")


if __name__ == "__main__":
    main()
