"""Supervised ceiling of the quickstart setting: is the benchmark learnable at this size, in this time?

    python benchmarks/supervised_ceiling.py [--seconds 120] [--data synthetic] [--width 32] [--flip]

Trains ``tiny3d`` + a linear classifier with labels (cross-entropy, AdamW, warm-up + cosine over the
time budget) on the train split at the quickstart view size, then reports the classifier's test
top-1 and the weighted-kNN / linear-probe top-1 of its frozen features through
:func:`paramcrop.evaluation.evaluate`, i.e. exactly the pipeline that scores the self-supervised
runs (same evaluation clips, normalisation, kNN k and temperature). The random-init features are
scored first, as the floor.

Training clips have the evaluation clips' geometry (``view.frames`` frames at the evaluation
stride ``data.stride * data.frames // view.frames``, ``view.size`` px) at a random start, with
no crop and no appearance augmentation (``--flip`` adds horizontal flips, which swap the
left/right motion classes of the synthetic benchmark: expect a lower ceiling with it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from paramcrop.backbones import create_backbone  # noqa: E402
from paramcrop.config import TrainConfig  # noqa: E402
from paramcrop.data import EvalClips, TrainClips, resolve_source  # noqa: E402
from paramcrop.evaluation import evaluate  # noqa: E402
from paramcrop.train import EpochBatches, normalize_clips, seed_everything  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget (default 120)")
    parser.add_argument("--data", default="synthetic", help="data source (default synthetic)")
    parser.add_argument("--width", type=int, default=32, help="tiny3d width (default 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--flip", action="store_true", help="random horizontal flips (swap left/right motion)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = TrainConfig().with_overrides({"data.source": args.data})  # quickstart sizes are the defaults
    e = cfg.eval
    seed_everything(args.seed)
    dataset = resolve_source(cfg.data.source)
    stride = max(1, cfg.data.stride * cfg.data.frames // cfg.view.frames)  # the trainer's evaluation stride
    train_set = TrainClips(dataset.train, cfg.view.frames, stride, cfg.view.size, seed=args.seed)
    eval_sets = [EvalClips(split, cfg.view.frames, stride, cfg.view.size, e.clips_per_video)
                 for split in (dataset.train, dataset.test)]
    n_classes = len(dataset.classes)

    backbone = create_backbone("tiny3d", width=args.width)
    classifier = nn.Linear(backbone.feature_dim, n_classes)
    params = [*backbone.parameters(), *classifier.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=cfg.optim.weight_decay)

    def score(tag: str) -> tuple[dict[str, float], torch.Tensor]:
        loaders = [DataLoader(ds, batch_size=e.batch_size) for ds in eval_sets]
        metrics = evaluate(backbone, *loaders, device="cpu", normalize=normalize_clips, knn_k=e.knn_k,
                           knn_temperature=e.knn_temperature, linear=True, retrieval=False)
        backbone.eval()
        confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)  # true x predicted
        with torch.no_grad():
            for clips, labels in loaders[1]:
                logits = classifier(backbone(normalize_clips(clips.flatten(0, 1))))
                pred = logits.view(clips.shape[0], clips.shape[1], -1).softmax(-1).mean(1).argmax(1)
                confusion.index_put_((labels.long(), pred), torch.ones_like(pred), accumulate=True)
        metrics["classifier_top1"] = confusion.trace().item() / confusion.sum().item()
        print(f"{tag}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
        return metrics, confusion

    print(f"{len(train_set)} train / {len(eval_sets[1])} test videos, {n_classes} classes, clips "
          f"{cfg.view.frames}x{cfg.view.size}x{cfg.view.size} at stride {stride}, tiny3d width {args.width}, "
          f"{args.seconds:.0f} s budget", flush=True)
    score("random init")
    sampler = iter(EpochBatches(len(train_set), args.batch_size, args.seed))
    labels_of = torch.tensor([r.label for r in train_set.records])
    warmup_s = 0.1 * args.seconds
    start, step, loss_sum = time.perf_counter(), 0, 0.0
    backbone.train()
    while (elapsed := time.perf_counter() - start) < args.seconds:
        if elapsed < warmup_s:
            lr_factor = (elapsed + 1e-3) / warmup_s
        else:
            lr_factor = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (elapsed - warmup_s) / (args.seconds - warmup_s)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor
        indices = next(sampler)
        clips = torch.stack([train_set[i] for i in indices])  # uint8 (B, 3, T, S, S)
        y = labels_of[torch.tensor(indices) % len(train_set)]
        x = normalize_clips(clips)
        if args.flip:
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(classifier(backbone(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        step += 1
        if step % 25 == 0:
            print(f"step {step} ({elapsed:.0f} s): train loss {loss_sum / 25:.3f}", flush=True)
            loss_sum = 0.0
    print(f"trained {step} steps of batch {args.batch_size} in {time.perf_counter() - start:.0f} s", flush=True)
    _, confusion = score("supervised")
    width = max(len(c) for c in dataset.classes)
    print("classifier confusion on the test split (rows: true class, columns: predicted)", flush=True)
    for name, row in zip(dataset.classes, confusion.tolist()):
        print(f"  {name:>{width}}  " + " ".join(f"{v:3d}" for v in row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
