"""Data-loading benchmark (a script, not a test).

For each case: clips per second of ``TrainClips`` against raw decord (``VideoReader`` with the
same decode size + ``get_batch`` of the same kind of window) on the same files, alternating the two
clip by clip so that load from other processes hits both alike (target: ratio >= 0.8), then
DataLoader throughput with 0, 1 and 2 workers (and 0 workers with one torch thread). Cases: the real clips in ../shared/videos (or ``--source``) as 16-frame clips at 128 px
short side, and the synthetic default as TrainClips(frames=16, stride=2, size=64).

    .venv/bin/python benchmarks/data.py [--source SOURCE] [--videos 48] [--rounds 3]

``--against-step [--device cuda] [--tiny] [--csv results.csv]`` measures instead whether decoding
keeps up with training: the clips/s of the training DataLoader at the quickstart size (batch 32,
16x64x64 clips at stride 2 from the synthetic default, ``data.workers: auto`` and 0 workers) over
the clips/s of the quickstart's full training step (tiny3d, random crop) on the device; a ratio
>= 1 means the step never waits for data. ``--tiny``: a tiny synthetic set and batch 4, seconds.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import decord
import numpy as np
import torch
from torch.utils.data import DataLoader

from paramcrop.data import TrainClips, VideoRecord, resolve_source
from paramcrop.data.video import decode_size, window_indices

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


def raw_decord(dataset: TrainClips, i: int, rng: np.random.Generator) -> None:
    """Plain decord on video ``i`` of the dataset: same decode size, a random window."""
    info = dataset.infos[i]
    height, width = decode_size(info, dataset.size)
    start = int(rng.integers(0, max(info.frames - dataset.span, 0) + 1))
    indices = window_indices(info.frames, dataset.frames, dataset.stride, start)
    reader = decord.VideoReader(str(dataset.records[i].path), width=width, height=height, num_threads=1)
    reader.get_batch(list(indices)).asnumpy()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def interleaved_pass(dataset: TrainClips, rng: np.random.Generator) -> tuple[float, float]:
    """One pass over the dataset, raw decord and TrainClips on each video, taking turns at going
    first: ``(raw, ours)`` clips/s."""
    raw = ours = 0.0
    for i in range(len(dataset)):
        if i % 2:
            ours += timed(dataset.__getitem__, i)
            raw += timed(raw_decord, dataset, i, rng)
        else:
            raw += timed(raw_decord, dataset, i, rng)
            ours += timed(dataset.__getitem__, i)
    return len(dataset) / raw, len(dataset) / ours


def loader_clips_per_second(dataset: TrainClips, workers: int, batch_size: int) -> float:
    """Clips/s over one shuffled epoch, timed from the first batch on (worker start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    batches = iter(loader)
    next(batches)
    start, clips = time.perf_counter(), 0
    for batch in batches:
        clips += len(batch)
    return clips / (time.perf_counter() - start)


def run_case(name: str, records: list[VideoRecord], size: int, rounds: int, batch_size: int) -> None:
    dataset = TrainClips(records, frames=16, stride=2, size=size, seed=0)
    rng = np.random.default_rng(0)
    raw, ours = zip(*(interleaved_pass(dataset, rng) for _ in range(rounds)))
    ours_median, raw_median = statistics.median(ours), statistics.median(raw)
    print(f"\n{name}: {len(dataset)} videos, 16 frames at stride 2, size {size}, {len(dataset.skipped)} skipped")
    print(f"  raw decord get_batch : {raw_median:7.1f} clips/s  (rounds: {', '.join(f'{x:.1f}' for x in raw)})")
    print(f"  TrainClips           : {ours_median:7.1f} clips/s  (rounds: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"  ratio                : {ours_median / raw_median:7.2f}  (target >= 0.8)")
    for workers in (0, 1, 2):
        rate = loader_clips_per_second(dataset, workers, batch_size)
        print(f"  DataLoader, {workers} worker(s), batch {batch_size}: {rate:7.1f} clips/s")
    # collation runs in the main process with 0 workers; multi-threaded torch.stack can be very
    # slow on an oversubscribed CPU, so show it with one torch thread as well
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rate = loader_clips_per_second(dataset, 0, batch_size)
    torch.set_num_threads(threads)
    print(f"  DataLoader, 0 workers, 1 torch thread : {rate:7.1f} clips/s")


def against_step(device: str, tiny: bool, csv_path: str | None, videos: int) -> None:
    """Decoding clips/s over training-step clips/s on ``device`` (see the module docstring)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _timing import Results, compare
    from train import make_trainer

    from paramcrop.plan import resolve_workers

    results = Results("data", csv_path)
    source, batch, raw, view = (("synthetic:videos_per_class=4,frames=24,size=32,shapes=2,motions=2", 4, (8, 32),
                                 (4, 24)) if tiny else ("synthetic", 32, (16, 64), (8, 48)))
    records = resolve_source(source).train
    dataset = TrainClips((records * videos)[:max(videos, 3 * batch)], frames=raw[0], stride=2 if not tiny else 1,
                         size=raw[1], seed=0)
    auto = resolve_workers("auto", torch.device(device))
    trainer = make_trainer("random", "tiny3d", batch, raw, view, device)
    clips = torch.randint(0, 256, (batch, 3, raw[0], raw[1], raw[1]), dtype=torch.uint8, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step_s = compare({"step": lambda: (trainer.train_step(clips), sync())}, repeats=3 if tiny else 10, warmup=1)["step"]
    step_rate = results.add("step_clips_per_s", batch / step_s, "clips_per_s")
    print(f"{device}: full training step (tiny3d, random crop, batch {batch}): {step_rate:.0f} clips/s")
    for workers in sorted({0, auto}):
        rate = results.add(f"loader_{workers}_workers_clips_per_s", loader_clips_per_second(dataset, workers, batch),
                           "clips_per_s")
        ratio = results.add(f"loader_{workers}_workers_over_step", rate / step_rate, "ratio")
        print(f"  DataLoader, {workers} worker(s){' (auto)' if workers == auto else ''}: {rate:7.1f} clips/s = "
              f"{ratio:.2f} x the step (>= 1: decoding keeps up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="data source string for the 128 px case [default: ../shared/videos clips]")
    parser.add_argument("--videos", type=int, default=48, help="videos per case (files repeated if fewer)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--against-step", action="store_true", help="decoding clips/s over the training step's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--csv", help="append the results to this CSV (benchmark,name,value,kind)")
    args = parser.parse_args()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), decord {decord.__version__}")
    if args.against_step:
        against_step(args.device, args.tiny, args.csv, args.videos)
        return

    if args.source:
        real = resolve_source(args.source).train
        label = args.source
    elif SHARED_VIDEOS.is_dir():
        real = [VideoRecord(p, 0) for p in sorted(SHARED_VIDEOS.iterdir()) if p.suffix in (".avi", ".mp4")]
        label = f"real clips in {SHARED_VIDEOS} ({', '.join(r.path.name for r in real)})"
    else:
        real, label = [], ""
        print(f"\n(no {SHARED_VIDEOS} and no --source: real-clip case skipped)")
    if real:
        run_case(label, (real * args.videos)[: args.videos], 128, args.rounds, args.batch_size)
    synthetic = resolve_source("synthetic").train
    run_case("synthetic default", (synthetic * args.videos)[: args.videos], 64, args.rounds, args.batch_size)


if __name__ == "__main__":
    main()
