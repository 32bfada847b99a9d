"""How often decord returns a wrong frame after skipping frames (a script, not a test).

decord 0.6's ``get_batch`` skips the frames before and between the ones asked for; now and then,
under load, its one-thread decoder then hands back the frame it returned before instead of the
video's last one (dmlc/decord#195). :func:`paramcrop.data.video.read_frames` therefore decodes
every frame from the keyframe on. This script reads the last strided window of each clip (where
it happens) many times over, four ways taking turns at going first:
``gaps`` (``get_batch`` of the window's frames), ``span`` (``get_batch`` of every frame from the
window's first to its last), the span with FFmpeg's own decoding threads (decord's
``num_threads=0``) and ``read_frames``; each checked against the whole video decoded once
from its first frame, while ``--load`` busy processes compete for the cores (the failure needs a
decoder thread that falls behind). It prints each way's wrong reads and where they happened.

    .venv/bin/python benchmarks/decord_skips.py [--passes 600] [--load 2] [--stride 3] [--size 24]
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing
from pathlib import Path

import decord
import numpy as np

from paramcrop.data.video import decode_size, probe_video, read_frames, window_indices

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


def spin() -> None:
    while True:
        pass


def plain_decord(path: Path, info, indices, size: int, threads: int = 1) -> np.ndarray:
    """decord asked for ``indices`` as they are, center-cropped like ``read_frames``; ``threads``:
    its decoder's threads (0: FFmpeg's choice)."""
    height, width = decode_size(info, size)
    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=threads)
    batch = reader.get_batch(list(indices)).asnumpy()
    top, left = (height - size) // 2, (width - size) // 2
    return batch[:, top : top + size, left : left + size]


def span(path: Path, info, indices: np.ndarray, size: int, threads: int = 1) -> np.ndarray:
    """decord asked for every frame from the window's first to its last."""
    return plain_decord(path, info, range(indices.min(), indices.max() + 1), size, threads)[indices - indices.min()]


WAYS = {
    "gaps": plain_decord,
    "span": span,
    "span, FFmpeg's threads": lambda *args: span(*args, threads=0),
    "read_frames": read_frames,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, nargs="*",
                        default=[p for p in sorted(SHARED_VIDEOS.glob("*")) if p.suffix in (".avi", ".mp4")])
    parser.add_argument("--passes", type=int, default=600, help="reads of each clip's last window, each way")
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the reads")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--size", type=int, default=24)
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    wrong = {way: collections.Counter() for way in WAYS}
    reads = 0
    try:
        for path in args.videos:
            info = probe_video(path)
            whole = plain_decord(path, info, range(info.frames), args.size)
            last_start = info.frames - (args.frames - 1) * args.stride - 1
            indices = window_indices(info.frames, args.frames, args.stride, last_start)
            for n in range(args.passes):
                ways = list(WAYS.items())
                for way, read in ways[n % len(ways):] + ways[: n % len(ways)]:
                    if not np.array_equal(read(path, info, indices, args.size), whole[indices]):
                        wrong[way][path.name] += 1
                reads += 1
    finally:
        for hog in hogs:
            hog.terminate()
    print(f"decord {decord.__version__}; {reads} reads of last windows ({args.frames} frames at stride "
          f"{args.stride}, short side {args.size}), {args.load} busy processes beside")
    for way, counter in wrong.items():
        where = ", ".join(f"{name}: {k}" for name, k in sorted(counter.items()))
        print(f"  {way:22s}: {sum(counter.values())} of {reads} reads wrong" + (f"  ({where})" if where else ""))


if __name__ == "__main__":
    main()
