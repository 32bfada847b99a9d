"""crop_video against the plain grid_sample reference, and a ParamCrop step against a random-crop step.

    python benchmarks/crop.py [--device cpu|cuda] [--repeats 20]

16 clips of 3x16x128x128 cut to 8x64x64 (issue 2). Ratios < 1 mean crop_video is faster.
Forward is timed with cubes that need no gradient (random/CVRL crops, evaluation), forward+backward
with cubes that do (ParamCrop). On CPU crop_video is the separable form with an analytic backward to
the cubes; the separable form differentiated by autograd is shown for comparison.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import compare  # noqa: E402

from paramcrop import ParamCrop, RandomCubicCrop, crop_video  # noqa: E402
from paramcrop.geometry import crop_video_reference, crop_video_separable  # noqa: E402

SIZE = (8, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    clips_u8 = torch.randint(0, 256, (16, 3, 16, 128, 128), dtype=torch.uint8, device=device)
    clips_f32 = clips_u8.float()
    half = torch.rand(16, 3, device=device) * 0.5 + 0.5
    fixed_cubes = torch.cat([(torch.rand(16, 3, device=device) * 2 - 1) * (1 - half), half], -1)
    learned_cubes = fixed_cubes.clone().requires_grad_()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()
        return run

    def fwd(f, x):
        return timed(lambda: f(x, fixed_cubes, SIZE))

    def fwd_bwd(f, x):
        return timed(lambda: f(x, learned_cubes, SIZE).sum().backward())

    print(f"device={device}, threads={torch.get_num_threads()}, clips 16x3x16x128x128 -> 8x64x64, "
          f"median of {args.repeats} interleaved repeats")
    for dtype, x in (("float32", clips_f32), ("uint8", clips_u8)):
        t = compare({"crop_video": fwd(crop_video, x), "grid_sample": fwd(crop_video_reference, x)}, args.repeats)
        tb = compare({"crop_video": fwd_bwd(crop_video, x), "grid_sample": fwd_bwd(crop_video_reference, x),
                      "separable": fwd_bwd(crop_video_separable, x)}, args.repeats)
        print(f"  {dtype:7s} forward          crop_video {t['crop_video'] * 1e3:7.1f} ms  grid_sample "
              f"{t['grid_sample'] * 1e3:7.1f} ms  ratio {t['crop_video'] / t['grid_sample']:.2f}")
        print(f"  {dtype:7s} forward+backward crop_video {tb['crop_video'] * 1e3:7.1f} ms  grid_sample "
              f"{tb['grid_sample'] * 1e3:7.1f} ms  ratio {tb['crop_video'] / tb['grid_sample']:.2f}  (separable form "
              f"{tb['separable'] * 1e3:.1f} ms, ratio {tb['separable'] / tb['grid_sample']:.2f})")

    learned = ParamCrop(SIZE).to(device)
    random_crop = RandomCubicCrop(SIZE)

    def paramcrop_step():
        views = learned(clips_u8)
        (views.x1.mean() + views.x2.mean()).backward()  # generator + two crops + backward to the generator

    def random_step():
        random_crop(clips_u8)

    t = compare({"paramcrop": timed(paramcrop_step), "random": timed(random_step)}, args.repeats)
    print(f"  crop step (uint8 clips) ParamCrop {t['paramcrop'] * 1e3:7.1f} ms  random {t['random'] * 1e3:7.1f} ms"
          f"  ratio {t['paramcrop'] / t['random']:.2f}")


if __name__ == "__main__":
    main()
