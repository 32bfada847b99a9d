"""crop_video against the plain grid_sample reference, and a ParamCrop step against a random-crop step.

    python benchmarks/crop.py [--device cpu|cuda] [--repeats 20] [--tiny] [--csv results.csv]

16 clips of 3x16x128x128 cut to 8x64x64 (``--tiny``: 4 clips of 3x8x32x32 cut to 4x16x16,
for a CI smoke run). Ratios < 1 mean crop_video is faster.
Forward is timed with cubes that need no gradient (random/CVRL crops, evaluation), forward+backward
with cubes that do (ParamCrop). On CPU crop_video is the separable form with an analytic backward to
the cubes; the separable form differentiated by autograd is shown for comparison, and so is the
training path with ``compile: true`` (``traceable_crop_video_taps`` compiled; CPU only, skipped
with ``PARAMCROP_COMPILE=0``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import Results, compare  # noqa: E402

from paramcrop import ParamCrop, RandomCubicCrop, crop_video  # noqa: E402
from paramcrop.geometry import crop_video_reference, crop_video_separable, traceable_crop_video_taps  # noqa: E402
from paramcrop.runtime import Compiled  # noqa: E402
from paramcrop.plan import COMPILE_ENV  # noqa: E402

SIZE = (8, 64, 64)
TINY_SIZE = (4, 16, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="CI-sized: tiny clips, seconds")
    parser.add_argument("--csv", help="append the results to this CSV (benchmark,name,value,kind)")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = Results("crop", args.csv)
    torch.manual_seed(0)
    n, raw, size = (4, (8, 32), TINY_SIZE) if args.tiny else (16, (16, 128), SIZE)
    clips_u8 = torch.randint(0, 256, (n, 3, raw[0], raw[1], raw[1]), dtype=torch.uint8, device=device)
    clips_f32 = clips_u8.float()
    half = torch.rand(n, 3, device=device) * 0.5 + 0.5
    fixed_cubes = torch.cat([(torch.rand(n, 3, device=device) * 2 - 1) * (1 - half), half], -1)
    learned_cubes = fixed_cubes.clone().requires_grad_()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()
        return run

    def fwd(f, x):
        return timed(lambda: f(x, fixed_cubes, size))

    def fwd_bwd(f, x):
        return timed(lambda: f(x, learned_cubes, size).sum().backward())

    print(f"device={device}, threads={torch.get_num_threads()}, clips {n}x3x{raw[0]}x{raw[1]}x{raw[1]} -> "
          f"{'x'.join(map(str, size))}, "
          f"median of {args.repeats} interleaved repeats")
    compiled = (Compiled(traceable_crop_video_taps(), "the crop", eager=crop_video)
                if device.type == "cpu" and os.environ.get(COMPILE_ENV) != "0" else None)
    for dtype, x in (("float32", clips_f32), ("uint8", clips_u8)):
        extra = {"compiled": fwd(compiled, x)} if compiled else {}
        t = compare({"crop_video": fwd(crop_video, x), "grid_sample": fwd(crop_video_reference, x), **extra},
                    args.repeats)
        extra = {"compiled": fwd_bwd(compiled, x)} if compiled else {}
        tb = compare({"crop_video": fwd_bwd(crop_video, x), "grid_sample": fwd_bwd(crop_video_reference, x),
                      "separable": fwd_bwd(crop_video_separable, x), **extra}, args.repeats)
        if compiled:
            for name, times in (("forward", t), ("forward_backward", tb)):
                results.add(f"{dtype}/{name}/compiled_over_grid_sample", times["compiled"] / times["grid_sample"],
                            "ratio")
            print(f"  {dtype:7s} compiled (compile: true)  forward {t['compiled'] * 1e3:7.1f} ms, ratio "
                  f"{t['compiled'] / t['grid_sample']:.2f}; forward+backward {tb['compiled'] * 1e3:7.1f} ms, ratio "
                  f"{tb['compiled'] / tb['grid_sample']:.2f}")
        results.add(f"{dtype}/forward/crop_video_over_grid_sample", t["crop_video"] / t["grid_sample"], "ratio")
        results.add(f"{dtype}/forward_backward/crop_video_over_grid_sample", tb["crop_video"] / tb["grid_sample"],
                    "ratio")
        results.add(f"{dtype}/forward_backward/crop_video_ms", tb["crop_video"] * 1e3, "ms")
        print(f"  {dtype:7s} forward          crop_video {t['crop_video'] * 1e3:7.1f} ms  grid_sample "
              f"{t['grid_sample'] * 1e3:7.1f} ms  ratio {t['crop_video'] / t['grid_sample']:.2f}")
        print(f"  {dtype:7s} forward+backward crop_video {tb['crop_video'] * 1e3:7.1f} ms  grid_sample "
              f"{tb['grid_sample'] * 1e3:7.1f} ms  ratio {tb['crop_video'] / tb['grid_sample']:.2f}  (separable form "
              f"{tb['separable'] * 1e3:.1f} ms, ratio {tb['separable'] / tb['grid_sample']:.2f})")

    learned = ParamCrop(size).to(device)
    random_crop = RandomCubicCrop(size)

    def paramcrop_step():
        views = learned(clips_u8)
        (views.x1.mean() + views.x2.mean()).backward()  # generator + two crops + backward to the generator

    def random_step():
        random_crop(clips_u8)

    t = compare({"paramcrop": timed(paramcrop_step), "random": timed(random_step)}, args.repeats)
    results.add("crop_step/paramcrop_over_random", t["paramcrop"] / t["random"], "ratio")
    print(f"  crop step (uint8 clips) ParamCrop {t['paramcrop'] * 1e3:7.1f} ms  random {t['random'] * 1e3:7.1f} ms"
          f"  ratio {t['paramcrop'] / t['random']:.2f}")


if __name__ == "__main__":
    main()
