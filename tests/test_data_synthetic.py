"""The embedded synthetic benchmark: determinism, fidelity of the MP4 files, cache layout, atomicity."""
from __future__ import annotations

import json

import decord
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from paramcrop.data import SyntheticConfig, ensure_synthetic, resolve_source
from paramcrop.data import synthetic
from paramcrop.data.cache import cache_root
from paramcrop.data.synthetic import MANIFEST, render, sample_scene

TINY = SyntheticConfig(shapes=2, motions=1, videos_per_class=2, frames=16, size=32)
# yuv420p halves chroma resolution, so coloured edges blur: measured mean absolute error per
# video <= 6.8 (of 255) at 32 px, <= 4.5 at the default 64 px. A different video is >= 26 away.
CODEC_TOLERANCE = 10.0


def decode_all(path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_tiny_benchmark_layout_and_manifest(tmp_path):
    spec = ensure_synthetic(TINY, tmp_path, progress=False)
    folder = tmp_path / TINY.dirname
    assert spec.classes == ["circle_right", "triangle_right"]
    assert [(r.path.relative_to(folder).as_posix(), r.label) for r in spec.train] == [
        ("train/circle_right/0000.mp4", 0), ("train/triangle_right/0000.mp4", 1)]
    assert [(r.path.relative_to(folder).as_posix(), r.label) for r in spec.test] == [
        ("test/circle_right/0001.mp4", 0), ("test/triangle_right/0001.mp4", 1)]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert manifest["config"]["size"] == 32 and len(manifest["videos"]) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_default_split_and_classes():
    config = SyntheticConfig()
    assert len(config.classes) == 8 and config.test_per_class == 8
    assert SyntheticConfig(shapes=4, motions=8).classes[-1] == "cross_up_right"


def test_generation_is_deterministic_and_seeded(tmp_path):
    # default frame size and length (x264 settings that vary from run to run did so at 64 px)
    config = SyntheticConfig(shapes=2, motions=2, videos_per_class=4)
    first = ensure_synthetic(config, tmp_path / "a", progress=False)
    second = ensure_synthetic(config, tmp_path / "b", progress=False)
    third = ensure_synthetic(SyntheticConfig(**{**config.__dict__, "seed": 1}), tmp_path / "c", progress=False)
    for a, b, c in zip(first.train + first.test, second.train + second.test, third.train + third.test):
        assert a.path.read_bytes() == b.path.read_bytes()
        frames = decode_all(a.path)
        assert frames.shape == (40, 64, 64, 3)
        np.testing.assert_array_equal(frames, decode_all(b.path))
        assert np.abs(frames.astype(int) - decode_all(c.path)).mean() > 20


def test_decoded_frames_match_rendering(tmp_path):
    spec = ensure_synthetic(TINY, tmp_path, progress=False)
    for record in spec.train + spec.test:
        decoded = decode_all(record.path).astype(float)
        index = int(record.path.stem)
        rendered = render(sample_scene(TINY, record.label, index)).astype(float)
        error = np.abs(decoded - rendered).mean()
        assert error <= CODEC_TOLERANCE
        # not merely similar: the right video, in the right frame order
        assert np.abs(decoded - rendered[::-1]).mean() > error + 5
        other = render(sample_scene(TINY, record.label, index + 5)).astype(float)
        assert np.abs(decoded - other).mean() > 2 * CODEC_TOLERANCE


def test_default_motion_and_size_are_visible_in_a_short_view():
    """Learnability: in 16 source frames (8 frames at stride 2) every object of the default three moves
    >= 8 px at 64 px, its radius is >= 5.5 px (0.15 x 64 / sqrt(3)) and it stays inside the frame;
    the direction matches the class."""
    config = SyntheticConfig()
    directions = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
    for label, name in enumerate(config.classes):
        for index in range(0, config.videos_per_class, 4):
            scene = sample_scene(config, label, index)
            assert len(scene.others) == config.objects - 1 == 2
            for centers, radius in ((scene.centers, scene.radius), *scene.others):
                step = centers[15:] - centers[:-15]
                assert np.linalg.norm(step, axis=1).min() >= 8
                assert np.sign(step[0]).tolist() == list(directions[name.split("_")[1]])
                assert radius >= 5.5
                assert (centers - radius >= 0).all() and (centers + radius <= 64).all()


def test_colour_is_not_a_class_cue():
    config = SyntheticConfig()
    colours = np.array([[sample_scene(config, label, i).color for i in range(16)] for label in range(8)])
    spread = colours.std(axis=1).mean()  # within-class colour variety
    assert spread > 50


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, frames, fps=fps)

    real_write = synthetic.write_mp4
    monkeypatch.setattr(synthetic, "write_mp4", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(TINY, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "write_mp4", real_write)
    assert len(ensure_synthetic(TINY, tmp_path, progress=False).train) == 2


def test_folder_without_manifest_is_not_taken(tmp_path):
    (tmp_path / TINY.dirname / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no manifest.json"):
        ensure_synthetic(TINY, tmp_path, progress=False)


def test_folder_name_changes_with_config_and_generator_version(monkeypatch):
    names = {TINY.dirname, SyntheticConfig(**{**TINY.__dict__, "frames": 18}).dirname}
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    names.add(TINY.dirname)
    assert len(names) == 3 and all(n.startswith("synthetic-v") for n in names)


def test_source_string_options_and_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMCROP_CACHE", str(tmp_path))
    spec = resolve_source("synthetic:shapes=2,motions=1,videos_per_class=2,frames=16,size=32")
    assert spec.train[0].path.is_relative_to(tmp_path / TINY.dirname)
    assert cache_root("/elsewhere").as_posix() == "/elsewhere"
    with pytest.raises(ValueError, match="unknown synthetic option 'colour'"):
        resolve_source("synthetic:colour=3")
    with pytest.raises(ValueError, match="size='oops': expected a value of type int"):
        resolve_source("synthetic:size=oops")
    with pytest.raises(ValueError, match="size must be even"):
        SyntheticConfig(size=33)


def test_cli_synth(tmp_path):
    runner = CliRunner()
    args = ["data", "synth", "--out", str(tmp_path), "--shapes", "2", "--motions", "1",
            "--videos-per-class", "2", "--frames", "16", "--size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"built: {tmp_path / TINY.dirname}" in result.output
    assert "2 classes, 2 train + 2 test videos" in result.output
    assert "already built" in runner.invoke(app, args).output
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--size", "33"])
    assert bad.exit_code == 2 and "size must be even" in bad.output


DESIGNS = ("patchwork", "patchwork-drift", "mosaic")  # backgrounds with a shortcut that disparity removes


@pytest.mark.parametrize("variant", DESIGNS)
def test_design_variants_are_deterministic_and_pass_data_check(tmp_path, variant):
    config = SyntheticConfig(shapes=2, motions=1, videos_per_class=2, frames=16, size=64, variant=variant)
    first = ensure_synthetic(config, tmp_path / "a", progress=False)
    second = ensure_synthetic(config, tmp_path / "b", progress=False)
    other = ensure_synthetic(SyntheticConfig(**{**config.__dict__, "seed": 1}), tmp_path / "c", progress=False)
    for a, b, c in zip(first.train + first.test, second.train + second.test, other.train + other.test):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert np.abs(decode_all(a.path).astype(int) - decode_all(c.path)).mean() > 20
        rendered = render(sample_scene(config, a.label, int(a.path.stem))).astype(float)
        assert np.abs(decode_all(a.path) - rendered).mean() <= 2 * CODEC_TOLERANCE  # sharp gratings: yuv420p
    result = CliRunner().invoke(app, ["data", "check", f"synthetic:variant={variant},shapes=2,motions=1,"
                                      "videos_per_class=2,frames=16", "--cache-dir", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert config.dirname != SyntheticConfig(**{**config.__dict__, "variant": "smooth"}).dirname


def background_views(variant: str, shift_xy: float, shift_t: float, videos: int = 12) -> float:
    """Mean over videos and colour channels of the Pearson correlation between two views of the background alone: both
    views half the clip's extent on every axis, their centres ``shift_xy`` apart along x and
    ``shift_t`` apart along t (normalised coordinates, 0 = the same view)."""
    import torch

    from paramcrop import crop_video

    config = SyntheticConfig(variant=variant)
    correlations = []
    for index in range(videos):
        background = np.broadcast_to(sample_scene(config, index % 8, index).background, (config.frames, 64, 64, 3))
        clip = torch.from_numpy(np.ascontiguousarray(background)).float().permute(3, 0, 1, 2)[None]
        cube = lambda dx, dt: torch.tensor([[dx, 0.0, dt, 0.5, 0.5, 0.5]])
        v1 = crop_video(clip, cube(-shift_xy / 2, -shift_t / 2), (8, 32, 32))[0].flatten(1)  # (C, voxels)
        v2 = crop_video(clip, cube(shift_xy / 2, shift_t / 2), (8, 32, 32))[0].flatten(1)
        correlations += [float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(v1, v2)]  # per channel
    return float(np.mean(correlations))


def test_design_backgrounds_are_shared_by_overlapping_views_only():
    """The nuisance that the designs add: two views' backgrounds agree when the views coincide and
    decorrelate within an eighth of the frame's width (the first design's smooth background stays similar
    there); patchwork-drift's also decorrelate as the views move apart in time, the static ones not at all."""
    for variant in DESIGNS:
        near, far = background_views(variant, 0.0, 0.0), background_views(variant, 0.25, 0.0)
        assert near > 0.999 and far < 0.3, (variant, near, far)
    assert background_views("smooth", 0.25, 0.0) > 0.45
    assert background_views("patchwork", 0.0, 1.0) > 0.999  # static: time changes nothing
    drift = [background_views("patchwork-drift", 0.0, t) for t in (0.0, 0.25, 0.5, 1.0)]
    assert drift[0] > 0.999 and all(a > b for a, b in zip(drift, drift[1:])) and drift[-1] < drift[1] - 0.2


def test_bad_variant_and_option_type_exit_2(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["data", "check", "synthetic:variant=checkers", "--cache-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "variant must be one of smooth, textures, patchwork" in bad.output
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--variant", "checkers"])
    assert bad.exit_code == 2 and "variant must be one of" in bad.output
    bad = runner.invoke(app, ["data", "check", "synthetic:variant=mosaic,frames=many", "--cache-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "frames='many': expected a value of type int" in bad.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_objects_option_renders_every_object_of_the_class():
    """``objects=3``: three discs of the class's motion, each where its trajectory says (the object's
    pixels against discs computed here from the scene's centres and radii), smaller by sqrt(3)."""
    config = SyntheticConfig(objects=3)
    single = sample_scene(SyntheticConfig(objects=1), 0, 0)
    scene = sample_scene(config, 0, 0)  # circle_right
    assert len(scene.others) == 2
    for centers, radius in ((scene.centers, scene.radius), *scene.others):
        assert 0.15 * 64 / np.sqrt(3) <= radius <= 0.22 * 64 / np.sqrt(3)
        assert (np.diff(centers[:, 0]) > 0).all() and np.ptp(centers[:, 1]) == 0  # moving right
    frame = render(scene)[10].astype(float)
    pixel = np.arange(64) + 0.5
    inside = np.zeros((64, 64), bool)
    for centers, radius in ((scene.centers, scene.radius), *scene.others):
        cx, cy = centers[10]
        inside |= np.hypot(pixel[None, :] - cx, pixel[:, None] - cy) < radius - 1
    coloured = np.abs(frame - scene.color).max(axis=-1) < 1
    assert coloured[inside].all() and coloured.sum() < inside.sum() * 1.5
    assert single.others == () and SyntheticConfig(objects=1).dirname != SyntheticConfig().dirname
    with pytest.raises(ValueError, match="objects must be 1..8"):
        SyntheticConfig(objects=0)


def test_the_default_is_the_sweet_spot_design_and_every_design_keeps_its_folder():
    """``synthetic`` is three objects over the mosaic; the folders (hashes of the config) are those
    the same designs had before the default changed: ``synthetic:variant=smooth,objects=1`` the old
    default's, ``synthetic`` the old ``synthetic:variant=mosaic,objects=3``'s (names from that code)."""
    default = SyntheticConfig()
    assert (default.variant, default.objects) == ("mosaic", 3)
    assert default == SyntheticConfig.from_options("") == SyntheticConfig.from_options("variant=mosaic,objects=3")
    assert default.dirname == "synthetic-v1-1a0c5d7911"
    assert SyntheticConfig.from_options("variant=smooth,objects=1").dirname == "synthetic-v1-75e442b731"
