"""Supervised ceiling of the quickstart setting: is the benchmark learnable at this size, in this time?

    python benchmarks/supervised_ceiling.py [--steps 600] [--data synthetic] [--width 32]

Trains ``tiny3d`` from random initialisation + a linear classifier with labels, through
:func:`paramcrop.evaluation.finetune` (what ``eval.finetune_steps`` runs after pretraining: AdamW,
warm-up + cosine, the evaluation clips' geometry at random positions, no crop or appearance
augmentation), then reports the classifier's test top-1 and the weighted-kNN / linear-probe top-1
of its frozen features through :func:`paramcrop.evaluation.evaluate`, i.e. exactly the pipeline
that scores the self-supervised runs (same evaluation clips, normalisation, kNN k and temperature).
The random-init features are scored first, as the floor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "OMP_WAIT_POLICY" not in os.environ:  # as cli.py: OpenMP threads spin briefly, then sleep
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from paramcrop.backbones import create_backbone  # noqa: E402
from paramcrop.config import TrainConfig  # noqa: E402
from paramcrop.data import EvalClips, TrainClips, resolve_source  # noqa: E402
from paramcrop.evaluation import evaluate, finetune, predict_videos  # noqa: E402
from paramcrop.checkpoint import seed_everything  # noqa: E402
from paramcrop.data.batches import EpochBatches, normalize_clips  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="supervised training steps (default 600)")
    parser.add_argument("--data", default="synthetic", help="data source (default synthetic)")
    parser.add_argument("--width", type=int, default=32, help="tiny3d width (default 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = TrainConfig().with_overrides({"data.source": args.data})  # quickstart sizes are the defaults
    e = cfg.eval
    seed_everything(args.seed)
    dataset = resolve_source(cfg.data.source)
    stride = max(1, cfg.data.stride * cfg.data.frames // cfg.view.frames)  # the trainer's evaluation stride
    train_set = TrainClips(dataset.train, cfg.view.frames, stride, cfg.view.size, seed=args.seed, labelled=True)
    view = (cfg.view.frames, stride, cfg.view.size, e.clips_per_video)
    loaders = [DataLoader(EvalClips(train_set.records, *view, infos=train_set.infos), batch_size=e.batch_size),
               DataLoader(EvalClips(dataset.test, *view), batch_size=e.batch_size)]
    print(f"{len(train_set)} train / {len(loaders[1].dataset)} test videos, {len(dataset.classes)} classes, clips "
          f"{cfg.view.frames}x{cfg.view.size}x{cfg.view.size} at stride {stride}, tiny3d width {args.width}, "
          f"{args.steps} steps of batch {args.batch_size}", flush=True)

    def score(tag: str, backbone) -> None:
        metrics = evaluate(backbone, *loaders, device="cpu", normalize=normalize_clips, knn_k=e.knn_k,
                           knn_temperature=e.knn_temperature, linear=True, retrieval=False)
        print(f"{tag}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)

    backbone = create_backbone("tiny3d", width=args.width)
    score("random init features", backbone)
    batches = DataLoader(train_set, batch_sampler=EpochBatches(len(train_set), args.batch_size, args.seed),
                         generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    model = finetune(backbone, iter(batches), num_classes=len(dataset.classes), steps=args.steps, device="cpu",
                     normalize=normalize_clips, lr=args.lr, weight_decay=cfg.optim.weight_decay)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    score("supervised features", model[0])
    pred, labels = predict_videos(model, loaders[1], device="cpu", normalize=normalize_clips)
    print(f"classifier test top-1 {(pred == labels).float().mean().item():.3f}", flush=True)
    confusion = torch.zeros(len(dataset.classes), len(dataset.classes), dtype=torch.long)  # true x predicted
    confusion.index_put_((labels, pred), torch.ones_like(pred), accumulate=True)
    width = max(len(c) for c in dataset.classes)
    print("classifier confusion on the test split (rows: true class, columns: predicted)", flush=True)
    for name, row in zip(dataset.classes, confusion.tolist()):
        print(f"  {name:>{width}}  " + " ".join(f"{v:3d}" for v in row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
