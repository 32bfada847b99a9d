"""The embedded benchmark: moving shapes rendered from a seed and written as H.264 MP4.

A class is a (shape, motion) pair, e.g. ``circle_right``; the default 2 shapes x 4 motions gives
8 classes. Colours, object size, speed, start position and the background are random per video, so
no single cue but shape + direction of motion identifies the class. Each object stays inside the
frame and crosses 60-100% of the room it has over the video, i.e. at the default 64 px / 40 frames
a single object moves 8-17 px in 16 frames: visible in an 8-frame view at stride 2.

Default: 8 classes x 32 videos (24 train + 8 test per class), 40 frames of 64x64 at 25 fps, three
objects of the class per video over the ``mosaic`` background (:data:`VARIANTS`): the design on
which matched random crops show a sweet spot of view disparity (README "The benchmark"). The first
benchmark, one object over a smooth background, is ``synthetic:variant=smooth,objects=1``
(:data:`FIRST_DESIGN`). Generated in a few seconds on one core, and ``TrainClips(frames=16,
stride=2, size=64)`` reads it without resizing.

Cache layout: ``<cache root>/synthetic-v<GENERATOR_VERSION>-<config hash>/`` holding
``train/<class>/<index>.mp4``, ``test/<class>/<index>.mp4`` (so ``folder:`` can read it too) and
``manifest.json``, written last. The cache root is ``cache_dir`` if given, else ``$PARAMCROP_CACHE``,
else the platform cache folder (``~/.cache/paramcrop`` on Linux). Generation writes into a hidden
temporary folder beside the target and renames it at the end, so an interrupted run leaves nothing
that is later taken for a dataset; bump :data:`GENERATOR_VERSION` whenever the output changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import cache_root
from .records import DatasetSpec, VideoRecord
from .video import write_mp4

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SHAPES = ("circle", "triangle", "square", "cross")
MOTIONS = {  # name -> (dx, dy) in image coordinates (y points down)
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "down_right": (1, 1), "up_left": (-1, -1), "down_left": (-1, 1), "up_right": (1, -1),
}
FPS = 25
PATCHWORK_CELLS, MOSAIC_BLOCK = 4, 4
FIRST_DESIGN = {"variant": "smooth", "objects": 1}
"""The options of the first benchmark (the default until the sweet-spot studies): a config with these
values hashes without them, so its cache folder is the one it had before the options existed."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the benchmark; classes = ``shapes`` x ``motions`` (first ones of
    :data:`SHAPES` and :data:`MOTIONS`)."""

    seed: int = 0
    shapes: int = 2
    motions: int = 4
    videos_per_class: int = 32
    frames: int = 40
    size: int = 64
    test_fraction: float = 0.25
    variant: str = "mosaic"  # one of VARIANTS
    objects: int = 3  # objects per video, all of the class's shape and motion (radius / sqrt(objects))

    def __post_init__(self) -> None:
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}"),
            (1 <= self.shapes <= len(SHAPES), f"shapes must be 1..{len(SHAPES)}"),
            (1 <= self.motions <= len(MOTIONS), f"motions must be 1..{len(MOTIONS)}"),
            (self.videos_per_class >= 1, "videos_per_class must be >= 1"),
            (1 <= self.objects <= 8, "objects must be 1..8"),
            (self.frames >= 2, "frames must be >= 2"),
            (self.size >= 16 and self.size % 2 == 0, "size must be even (yuv420p) and >= 16"),
            (0 <= self.test_fraction < 1, "test_fraction must be in [0, 1)"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ValueError(f"bad synthetic config {self}: " + "; ".join(errors))

    @classmethod
    def from_options(cls, text: str) -> "SyntheticConfig":
        """Parse ``"key=value,..."`` (the part after ``synthetic:``); empty gives the default."""
        defaults = cls()
        values: dict[str, int | float] = {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in {f.name for f in dataclasses.fields(cls)}:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"unknown synthetic option {key!r}; valid: {names}")
            try:
                values[key] = type(getattr(defaults, key))(value)
            except ValueError:
                expected = type(getattr(defaults, key)).__name__
                raise ValueError(f"synthetic option {key}={value!r}: expected a value of type {expected}") from None
        return cls(**values)

    @property
    def classes(self) -> list[str]:
        return [f"{shape}_{motion}" for shape in SHAPES[: self.shapes] for motion in list(MOTIONS)[: self.motions]]

    @property
    def test_per_class(self) -> int:
        """Videos per class in the test split (the last ones by index)."""
        wanted = round(self.videos_per_class * self.test_fraction)
        return min(max(wanted, 1 if self.test_fraction > 0 else 0), self.videos_per_class - 1)

    @property
    def dirname(self) -> str:
        """``synthetic-v<version>-<hash of the config>``: any change gives a new folder."""
        fields = dataclasses.asdict(self)
        for key, first in FIRST_DESIGN.items():
            if fields[key] == first:
                del fields[key]  # the first designs keep the folders they had before these options existed
        text = json.dumps(fields, sort_keys=True)
        return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Scene:
    """One video's random draw: ``centers (T, 2)`` as (x, y) pixels, ``radius`` of the shape in
    pixels, object ``color (3,)`` and ``background (S, S, 3)`` (static) or ``(T, S, S, 3)``, float 0-255;
    ``others``: the ``(centers, radius)`` of further objects of the same shape, motion and colour."""

    shape: str
    centers: np.ndarray
    radius: float
    color: np.ndarray
    background: np.ndarray
    others: tuple[tuple[np.ndarray, float], ...] = ()


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """``(size, size)`` bilinear upsampling of a random ``(cells + 1)^2`` grid, values in [0, 1]."""
    position = (np.arange(size) + 0.5) * cells / size
    low = np.minimum(position.astype(int), cells - 1)
    weights = np.zeros((size, cells + 1))
    weights[np.arange(size), low] = 1 - (position - low)
    weights[np.arange(size), low + 1] = position - low
    return weights @ rng.random((cells + 1, cells + 1)) @ weights.T


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size)`` stripes in [0, 1]: a steep sigmoid of a sine at a random angle, 3-8 cycles
    per frame side and a random phase (the ``textures`` variant's background)."""
    angle, cycles, phase = rng.uniform(0, np.pi), rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
    pixel = (np.arange(size) + 0.5) / size
    wave = np.sin(2 * np.pi * cycles * (pixel[None, :] * np.cos(angle) + pixel[:, None] * np.sin(angle)) + phase)
    return 1 / (1 + np.exp(-6 * wave))


def _normalised(texture: np.ndarray) -> np.ndarray:
    return (texture - texture.min()) / (np.ptp(texture) + 1e-9)


def _two_colours(rng: np.random.Generator, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``texture (S, S)`` in [0, 1] painted between two random colours: ``(S, S, 3)`` and the palette ``(2, 3)``."""
    palette = rng.uniform(0, 255, (2, 3))
    return palette[0] + (palette[1] - palette[0]) * texture[..., None], palette


def _smooth_background(rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    return _two_colours(rng, _normalised(0.7 * _smooth_noise(rng, 4, size) + 0.3 * _smooth_noise(rng, 12, size)))


def _stripes_background(rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    return _two_colours(rng, _normalised(_stripes(rng, size)))


def _mosaic_background(rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = -(-size // MOSAIC_BLOCK)
    shades = np.kron(rng.random((blocks, blocks)), np.ones((MOSAIC_BLOCK, MOSAIC_BLOCK)))[:size, :size]
    return _two_colours(rng, shades)


def _patchwork_cells(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S, S)`` grating values in [0, 1] and ``(S, S)`` cell index of a :data:`PATCHWORK_CELLS` grid."""
    pixel = (np.arange(size) + 0.5) / size
    row = np.minimum((pixel * PATCHWORK_CELLS).astype(int), PATCHWORK_CELLS - 1)
    cell = row[:, None] * PATCHWORK_CELLS + row[None, :]
    n = PATCHWORK_CELLS**2
    angle, cycles, phase = rng.uniform(0, np.pi, n), rng.uniform(6, 12, n), rng.uniform(0, 2 * np.pi, n)
    along = pixel[None, :] * np.cos(angle[cell]) + pixel[:, None] * np.sin(angle[cell])
    wave = np.sin(2 * np.pi * cycles[cell] * along + phase[cell])
    return 1 / (1 + np.exp(-6 * wave)), cell


def _patchwork_background(rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    texture, cell = _patchwork_cells(rng, size)
    colours = rng.uniform(0, 255, (PATCHWORK_CELLS**2, 2, 3))
    low, high = colours[cell, 0], colours[cell, 1]
    return low + (high - low) * texture[..., None], colours.reshape(-1, 3)


def _patchwork_drift_background(rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    texture, cell = _patchwork_cells(rng, size)
    start, end = rng.uniform(0, 255, (2, PATCHWORK_CELLS**2, 2, 3))
    fade = np.linspace(0, 1, frames)[:, None, None, None]
    colours = start + (end - start) * fade  # (T, cells, 2, 3)
    low, high = colours[:, cell, 0], colours[:, cell, 1]  # (T, S, S, 3)
    return low + (high - low) * texture[None, ..., None], np.concatenate([start, end]).reshape(-1, 3)


BACKGROUNDS = {
    "smooth": _smooth_background, "textures": _stripes_background, "patchwork": _patchwork_background,
    "patchwork-drift": _patchwork_drift_background, "mosaic": _mosaic_background,
}
"""variant -> ``(rng, size, frames) -> (background (S, S, 3) | (T, S, S, 3), palette (K, 3))``, float 0-255."""
VARIANTS = tuple(BACKGROUNDS)
"""The background of every video (the classes are the same in each):

- ``smooth``: a smooth two-colour texture (the first benchmark's);
- ``textures``: sharp two-colour stripes at a random angle and frequency (a transfer target: what
  changes is the appearance, not the classes);
- ``patchwork``: a 4 x 4 grid of cells, each a sharp grating with its own two colours, angle,
  frequency (6-12 cycles per frame side) and phase: high-frequency and spatially non-stationary, so
  two views share background only where they overlap;
- ``patchwork-drift``: ``patchwork`` whose cell colours fade linearly from one random pair to another
  over the video, so temporally distant views differ too;
- ``mosaic``: 4 x 4-pixel blocks of random shades between two colours (a fine pattern unique to
  each place of each video; its colours are the video's, wherever a view is cut).

The last three give overlapping views a per-video nuisance that distant views do not share (the
shortcut that view disparity removes, as the backgrounds of InfoMin's Colorful Moving MNIST)."""


def sample_scene(config: SyntheticConfig, label: int, index: int, stream: int = 0) -> Scene:
    """The random draw of video ``index`` of class ``label``; depends only on (seed, label, index,
    stream). ``stream`` 0 is the benchmark's own videos; an evaluation draw has its own stream
    (:data:`DRAW_STREAMS`), whose seed sequences never coincide with the benchmark's."""
    rng = np.random.default_rng([config.seed, label, index] + ([stream] if stream else []))
    size, frames = config.size, config.frames
    shape = SHAPES[label // config.motions]
    direction = np.array(list(MOTIONS.values())[label % config.motions], dtype=float)

    def trajectory() -> tuple[np.ndarray, float]:
        radius = rng.uniform(0.15, 0.22) * size / np.sqrt(config.objects)
        displacement = direction * rng.uniform(0.6, 1.0) * (size - 2 * radius)
        low = radius + np.maximum(0, -displacement)
        high = size - radius - np.maximum(0, displacement)
        start = rng.uniform(low, high)
        return start + displacement * np.linspace(0, 1, frames)[:, None], radius

    centers, radius = trajectory()
    background, palette = BACKGROUNDS[config.variant](rng, size, frames)
    # Object colour: of 16 random candidates, the one farthest from every background colour.
    candidates = rng.uniform(0, 255, (16, 3))
    distance = np.linalg.norm(candidates[:, None] - palette[None], axis=2).min(axis=1)
    others = tuple(trajectory() for _ in range(config.objects - 1))
    return Scene(shape, centers, radius, candidates[distance.argmax()], background, others)


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (approximate outside corners) to ``shape`` in units of its radius."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == "circle":
        return np.hypot(x, y) - 1
    if shape == "square":
        return np.maximum(ax, ay) - 0.8
    if shape == "cross":
        return np.minimum(np.maximum(ax - 1, ay - 0.35), np.maximum(ax - 0.35, ay - 1))
    # triangle pointing up, circumradius 1.2, centred in its bounding box (y from -0.9 to 0.9):
    # three half-planes at inradius 0.6
    y = y - 0.3
    return np.maximum(y, np.maximum(-0.5 * y + 0.866 * x, -0.5 * y - 0.866 * x)) - 0.6


SHAPE_EXTENT = 1.2
"""The farthest any shape reaches from its center, in units of its radius (the triangle's circumradius)."""


def render(scene: Scene) -> np.ndarray:
    """The frames of ``scene``: ``uint8 (T, S, S, 3)`` RGB, shape edges anti-aliased over one pixel.

    Each object's coverage is computed per frame only in a box around it wide enough that the
    coverage outside is exactly 0 (``SHAPE_EXTENT`` radii + 2 px: the signed distance there exceeds
    half a pixel), so the frames equal blending the whole frame (``tests/test_data_synthetic.py``)."""
    frames = np.array(np.broadcast_to(scene.background, (len(scene.centers), *scene.background.shape[-3:])))
    size = frames.shape[1]
    for centers, radius in ((scene.centers, scene.radius), *scene.others):
        reach = SHAPE_EXTENT * radius + 2
        for t, (cx, cy) in enumerate(centers):
            x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)), size)
            y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)), size)
            x = (np.arange(x0, x1) + 0.5 - cx) / radius
            y = (np.arange(y0, y1) + 0.5 - cy) / radius
            alpha = np.clip(0.5 - _signed_distance(scene.shape, x[None, :], y[:, None]) * radius, 0, 1)[..., None]
            box = frames[t, y0:y1, x0:x1]
            frames[t, y0:y1, x0:x1] = box * (1 - alpha) + scene.color * alpha
    return np.rint(frames).astype(np.uint8)


def _write_video(job: tuple[SyntheticConfig, Path, int, int, int]) -> None:
    """Render and encode one video: ``(config, path, label, index, stream)``."""
    config, path, label, index, stream = job
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, render(sample_scene(config, label, index, stream)), fps=FPS)


def _build(target: Path, config: SyntheticConfig, videos: list[dict], what: str, progress: bool,
           streams: dict[str, int]) -> None:
    """Write ``videos`` (manifest entries: ``path``, ``label``, ``split``, ``index``) into a temporary
    folder beside ``target`` (each split's draw from its stream in ``streams``), in parallel over the
    cores (each video is rendered and encoded alone, so the bytes do not depend on the workers), then
    the manifest last, then rename the folder to ``target``. If another process finished ``target``
    first, keep its copy."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from rich.console import Console
    from rich.progress import Progress

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / MANIFEST).is_file():
        raise ValueError(f"{target} exists but has no {MANIFEST} (an incomplete copy?); delete it and retry")
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        partial.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        jobs = [(config, partial / v["path"], v["label"], v["index"], streams[v["split"]]) for v in videos]
        workers = min(len(jobs) // 64 + 1, os.cpu_count() or 1)  # small builds do not pay for starting workers
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
        try:
            with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
                task = bar.add_task(what, total=len(jobs))
                for _ in pool.map(_write_video, jobs, chunksize=16) if pool else map(_write_video, jobs):
                    bar.advance(task)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "config": dataclasses.asdict(config),
            "classes": config.classes,
            "videos": [{k: v[k] for k in ("path", "label", "split")} for v in videos],
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(partial, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def build_synthetic(config: SyntheticConfig, target: Path, *, progress: bool = True) -> None:
    """Render and encode the benchmark's videos into ``target`` (:func:`_build`): per class, the
    first videos by index train, the last :attr:`SyntheticConfig.test_per_class` test."""
    n_train = config.videos_per_class - config.test_per_class
    videos = [{"path": f"{split}/{name}/{index:04d}.mp4", "label": label, "split": split, "index": index}
              for label, name in enumerate(config.classes) for index in range(config.videos_per_class)
              for split in ["train" if index < n_train else "test"]]
    _build(target, config, videos, "Generating synthetic videos", progress, {"train": 0, "test": 0})


DRAW_STREAMS = {"val": 2, "test": 3}
"""Evaluation draw -> its random stream (:func:`sample_scene`); stream 0 is the benchmark's own videos."""
DRAWS_MARK = "draws"


def draws_dirname(config: SyntheticConfig, per_class: int) -> str:
    """``<benchmark folder>-draws<per class>``: the evaluation draws of ``config``'s design."""
    return f"{config.dirname}-{DRAWS_MARK}{per_class}"


def build_draws(config: SyntheticConfig, per_class: int, target: Path, *, progress: bool = True) -> None:
    """Render and encode the evaluation draws of ``config``'s design into ``target``: for each
    split of :data:`DRAW_STREAMS`, ``per_class`` fresh videos per class (``<split>/<class>/<index>.mp4``)."""
    videos = [{"path": f"{split}/{name}/{index:04d}.mp4", "label": label, "split": split, "index": index}
              for split in DRAW_STREAMS for label, name in enumerate(config.classes) for index in range(per_class)]
    _build(target, config, videos, f"Generating evaluation draws ({len(videos)} videos, once)", progress,
           DRAW_STREAMS)


def _load_manifest(directory: Path) -> dict:
    manifest = json.loads((directory / MANIFEST).read_text())
    if manifest["generator_version"] != GENERATOR_VERSION:
        raise ValueError(
            f"{directory} was made by synthetic generator v{manifest['generator_version']}, this is v{GENERATOR_VERSION}"
        )
    return manifest


def _records(directory: Path, manifest: dict, split: str) -> list[VideoRecord]:
    return [VideoRecord(directory / v["path"], v["label"]) for v in manifest["videos"] if v["split"] == split]


def load_synthetic(directory: Path) -> DatasetSpec:
    """The :class:`DatasetSpec` of a finished benchmark folder (from its manifest)."""
    manifest = _load_manifest(directory)
    return DatasetSpec(list(manifest["classes"]), train=_records(directory, manifest, "train"),
                       test=_records(directory, manifest, "test"))


def ensure_synthetic(
    config: SyntheticConfig = SyntheticConfig(), cache_dir: Path | str | None = None, *, progress: bool = True
) -> DatasetSpec:
    """The benchmark for ``config`` from the cache (:func:`cache_root`), generated first if missing."""
    target = cache_root(cache_dir) / config.dirname
    if not (target / MANIFEST).is_file():
        build_synthetic(config, target, progress=progress)
    return load_synthetic(target)


@dataclass(frozen=True)
class EvaluationDraws:
    """The fresh evaluation draws of a design: their ``folder`` and the ``val`` and ``test`` videos."""

    folder: Path
    val: list[VideoRecord]
    test: list[VideoRecord]


def ensure_draws(config: SyntheticConfig, per_class: int, cache_dir: Path | str | None = None, *,
                 progress: bool = True) -> EvaluationDraws:
    """The evaluation draws of ``config``'s design, ``per_class`` videos per class and split, from the
    cache (:func:`cache_root`), generated first if missing."""
    if per_class < 1:
        raise ValueError(f"evaluation draws need at least 1 video per class, got {per_class}")
    target = cache_root(cache_dir) / draws_dirname(config, per_class)
    if not (target / MANIFEST).is_file():
        build_draws(config, per_class, target, progress=progress)
    manifest = _load_manifest(target)
    return EvaluationDraws(target, *(_records(target, manifest, split) for split in DRAW_STREAMS))
