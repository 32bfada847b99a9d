"""TrainClips / EvalClips on real MP4 files: window positions, resizing, broken input, workers,
the dataset check, and the real clips in ../shared/videos.

Most videos here are flat grey frames whose level encodes the frame index (16 + 6 t), so the
frame indices a clip holds can be read back from its pixels.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from cli import app
from paramcrop.data import EvalClips, TrainClips, VideoRecord, check_dataset, resolve_source
from paramcrop.data.video import VideoInfo, decord_width_ok, probe_video, read_frames, write_mp4

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
UCF_STYLE = SHARED_VIDEOS / "ucf_style_320x240_mpeg4_audio.avi"
KINETICS_STYLE = SHARED_VIDEOS / "kinetics_style_340x256_h264.mp4"


def grey_video(path: Path, num_frames: int, height: int = 32, width: int = 32) -> VideoRecord:
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = 16 + 6 * np.arange(num_frames, dtype=np.uint8)
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy())
    return VideoRecord(path, 0)


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Frame indices of a grey clip ``(3, T, S, S)``; checks every frame is flat."""
    assert clip.dtype == torch.uint8 and clip.shape[0] == 3
    levels = clip.float().mean(dim=(0, 2, 3))
    assert (clip.float() - levels[None, :, None, None]).abs().max() <= 3
    return ((levels - 16) / 6).round().int().tolist()


def write_broken_files(folder: Path, good: VideoRecord) -> dict[str, str]:
    """Broken files of every kind in ``folder``: name -> expected reason (a prefix of it)."""
    data = good.path.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video\n" * 50)
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "garbage.mp4").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    import av

    with av.open(str(folder / "no_frames.mp4"), "w") as container:  # a video stream, zero frames
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return {
        "zero.mp4": "empty file (0 bytes)",
        "notes.txt": "its first frame cannot be decoded",  # FFmpeg does open text (as a raw stream)
        "truncated.mp4": "cannot be opened as a video",
        "garbage.mp4": "cannot be opened as a video",
        "no_frames.mp4": "no decodable video stream",
    }


def test_train_clips_window_and_stride(tmp_path):
    dataset = TrainClips([grey_video(tmp_path / "v.mp4", 40)], frames=8, stride=3, size=32, seed=0)
    starts = set()
    for _ in range(30):
        indices = frame_indices(dataset[0])
        assert indices == [indices[0] + 3 * k for k in range(8)]
        starts.add(indices[0])
    assert starts <= set(range(0, 40 - 21)) and len(starts) >= 8  # uniform over the 19 possible starts


def test_train_clips_reproducible_from_seed(tmp_path):
    records = [grey_video(tmp_path / f"{i}.mp4", 40) for i in range(2)]

    def draws(seed):
        dataset = TrainClips(records, frames=4, stride=2, size=32, seed=seed)
        return [frame_indices(dataset[i % 2])[0] for i in range(12)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_short_video_loops(tmp_path):
    dataset = TrainClips([grey_video(tmp_path / "short.mp4", 10)], frames=8, stride=2, size=32)
    assert frame_indices(dataset[0]) == [0, 2, 4, 6, 8, 0, 2, 4]
    assert len(list(dataset)) == 1  # iteration stops, although indices past the end are valid


def test_eval_clips_evenly_spaced_and_labelled(tmp_path):
    record = VideoRecord(grey_video(tmp_path / "v.mp4", 40).path, label=3)
    dataset = EvalClips([record], frames=8, stride=2, size=32, clips_per_video=3)
    clips, label = dataset[0]
    assert clips.shape == (3, 3, 8, 32, 32) and label == 3
    # window span 15 frames: starts at 0, 12.5 (rounded half to even) and 25
    assert [frame_indices(c)[0] for c in clips] == [0, 12, 25]
    assert torch.equal(dataset[0][0], clips)


def test_resize_to_short_side_then_center_crop(tmp_path):
    """A 64x48 (w x h) horizontal ramp, value 4x at column x, read at size 32: decoded at 43x32,
    columns 5..36 kept, so output column c shows source column (c + 5.5) * 64 / 43 - 0.5."""
    ramp = np.broadcast_to((4 * np.arange(64, dtype=np.uint8))[None, None, :, None], (4, 48, 64, 3)).copy()
    write_mp4(tmp_path / "ramp.mp4", ramp)
    clip = TrainClips([VideoRecord(tmp_path / "ramp.mp4", 0)], frames=2, stride=1, size=32)[0]
    assert clip.shape == (3, 2, 32, 32)
    expected = 4 * ((np.arange(32) + 5.5) * 64 / 43 - 0.5)
    measured = clip.float().mean(dim=(0, 1, 2)).numpy()
    assert np.abs(measured - expected).max() < 4


def test_every_output_size_decodes(tmp_path):
    """decord 0.6 mangles some output widths (48, ...); decode_size steps around them."""
    assert not decord_width_ok(48) and decord_width_ok(49) and decord_width_ok(64)
    record = grey_video(tmp_path / "v.mp4", 4, height=64, width=64)
    info = probe_video(record.path)
    assert info == VideoInfo(frames=4, height=64, width=64)
    for size in range(8, 97):
        frames = read_frames(record.path, info, [0, 3], size)
        assert frames.shape == (2, size, size, 3), size
        assert abs(frames[1].mean() - 34) < 3


def test_read_frames_decodes_in_order_from_the_keyframe_and_never_asks_decord_to_skip(tmp_path, monkeypatch):
    """decord 0.6 sometimes returns the frame before after skipping frames (dmlc/decord#195,
    benchmarks/decord_skips.py): ``read_frames`` asks it for every frame from the last keyframe at
    or before the window, in chunks of CHUNK_FRAMES, and picks the window's frames."""
    from paramcrop.data import video

    levels = 16 + 6 * np.arange(30, dtype=np.uint8)
    path = tmp_path / "v.mp4"
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (30, 32, 32, 3)).copy(), keyframe_every=8)
    info = probe_video(path)
    asked: list[list[int]] = []
    opened = video._reader

    class Recording:
        def __init__(self, *args):
            self.reader = opened(*args)
            self.get_key_indices = self.reader.get_key_indices

        def get_batch(self, indices):
            asked.append(list(indices))
            return self.reader.get_batch(indices)

    monkeypatch.setattr(video, "_reader", Recording)
    monkeypatch.setattr(video, "CHUNK_FRAMES", 5)
    keys = opened(path).get_key_indices()
    assert len(keys) >= 3 and keys[0] == 0  # x264 places them at most 8 frames apart
    for indices in ([10, 13, 16, 19], [27, 29, 1, 3], [5], [9, 9, 2], list(range(30))):
        asked.clear()
        frames = torch.from_numpy(read_frames(path, info, indices, 32)).permute(3, 0, 1, 2)
        assert frame_indices(frames) == indices
        key = max(k for k in keys if k <= min(indices))
        assert sum(asked, []) == list(range(key, max(indices) + 1))
        assert all(len(batch) <= 5 for batch in asked)


def test_broken_files_are_skipped_and_reported(tmp_path):
    good = [grey_video(tmp_path / "data" / cls / f"{i}.mp4", 20) for cls in ("a", "b") for i in range(3)]
    expected = write_broken_files(tmp_path / "data" / "a", good[0])
    spec = resolve_source(f"folder:{tmp_path / 'data'}")
    dataset = TrainClips(spec.train + spec.test, frames=4, stride=2, size=32)
    assert len(dataset) == 6
    reasons = {path.name: reason for path, reason in dataset.skipped}
    assert sorted(reasons) == sorted(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(reason)
    assert all(len(frame_indices(dataset[i])) == 4 for i in range(len(dataset)))


def test_nothing_readable_is_a_clear_error(tmp_path):
    good = grey_video(tmp_path / "good.mp4", 8)
    write_broken_files(tmp_path / "bad" / "a", good)
    spec = resolve_source(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(ValueError, match=r"none of the 5 videos is readable \(.*: "):
        TrainClips(spec.train + spec.test, frames=4, stride=2, size=32)
    with pytest.raises(ValueError, match="no videos given"):
        EvalClips([], frames=4, stride=2, size=32)


def test_video_failing_after_the_scan_is_replaced(tmp_path):
    records = [grey_video(tmp_path / f"{i}.mp4", 20) for i in range(2)]
    dataset = TrainClips(records, frames=4, stride=1, size=32)
    records[0].path.write_text("overwritten")
    with pytest.warns(RuntimeWarning, match="fails to decode"):
        clip = dataset[0]
    assert len(frame_indices(clip)) == 4  # video 1 stood in
    assert [path for path, _ in dataset.skipped] == [records[0].path]


def test_dataloader_workers_reproducible(tmp_path):
    records = [grey_video(tmp_path / f"{i}.mp4", 30) for i in range(4)]
    dataset = TrainClips(records, frames=4, stride=2, size=32, seed=0)
    dataset[0]
    assert len(pickle.dumps(dataset)) < 10_000  # paths and metadata only, no reader

    def starts(workers, batches=((0, 1), (2, 3))):
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                            generator=torch.Generator().manual_seed(0))
        clips = [clip for batch in loader for clip in batch]
        assert [c.shape for c in clips] == [(3, 4, 32, 32)] * 2 * len(batches)
        return [frame_indices(clip)[0] for clip in clips]

    first = starts(2)
    assert all(0 <= s <= 30 - 7 for s in first)
    assert first == starts(2) == starts(1)  # the same windows whichever worker draws them
    # epoch-encoded indices (epoch * len + i): video i, a window of its own, same on a "resume"
    epoch_1 = starts(2, ((4, 5), (6, 7)))
    assert epoch_1 != first
    assert starts(2, ((6, 7),)) == epoch_1[2:]  # a run resumed at the second batch


def test_check_report_and_cli(tmp_path):
    good = [grey_video(tmp_path / "data" / cls / f"{i}.mp4", 20) for cls in ("a", "b") for i in range(3)]
    write_broken_files(tmp_path / "data" / "a", good[0])
    report = check_dataset(resolve_source(f"folder:{tmp_path / 'data'}"))
    assert report.usable and report.problems == []
    assert report.readable["train"][0] + report.readable["test"][0] == 3
    assert report.unreadable_per_class == {0: 5}
    assert sorted(report.frame_counts) == [20] * 6 and report.resolutions == {(32, 32): 6}
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "garbage.mp4" in result.output and result.output.strip().endswith("\nusable")

    write_broken_files(tmp_path / "data" / "c", good[0])  # a class with nothing readable
    report = check_dataset(resolve_source(f"folder:{tmp_path / 'data'}"))
    assert report.problems == ["class 'c' has no readable video"]
    result = runner.invoke(app, ["data", "check", f"folder:{tmp_path / 'data'}"])
    assert result.exit_code == 1 and "class 'c' has no readable video" in result.output


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"real test clips not found at {SHARED_VIDEOS}")
def test_real_clips_load(tmp_path):
    assert probe_video(UCF_STYLE) == VideoInfo(frames=164, height=240, width=320)
    assert probe_video(KINETICS_STYLE) == VideoInfo(frames=300, height=256, width=340)
    for name, source in (("ucf_style", UCF_STYLE), ("kinetics_style", KINETICS_STYLE)):
        (tmp_path / name).mkdir()
        (tmp_path / name / source.name).symlink_to(source)
    spec = resolve_source(f"folder:{tmp_path}")
    records = spec.train + spec.test
    assert sorted(r.path.name for r in records) == sorted([UCF_STYLE.name, KINETICS_STYLE.name])
    train = TrainClips(records, frames=16, stride=2, size=64)
    assert len(train) == 2 and train.skipped == []
    for i in range(2):
        clip = train[i]
        assert clip.shape == (3, 16, 64, 64) and clip.float().std() > 10
    clips, label = EvalClips(records, frames=8, stride=4, size=48, clips_per_video=2)[0]
    assert clips.shape == (2, 3, 8, 48, 48) and label == records[0].label
    assert not torch.equal(clips[0], clips[1])


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"real test clips not found at {SHARED_VIDEOS}")
def test_real_clip_resize_matches_an_independent_resize():
    """decord's resize-while-decoding + center crop vs. full-size decoding + torch bilinear resize."""
    info = probe_video(UCF_STYLE)
    ours = torch.from_numpy(read_frames(UCF_STYLE, info, [10], 96)[0]).permute(2, 0, 1).float()
    full = torch.from_numpy(read_frames(UCF_STYLE, info, [10], 240)[0]).permute(2, 0, 1).float()
    # full is the central 240x240 of the 320x240 frame; at short side 96 the frame is 128x96
    reference = torch.nn.functional.interpolate(full[None], size=(96, 96), mode="bilinear", antialias=True)[0]
    assert ours.shape == (3, 96, 96)
    assert (ours - reference).abs().mean() < 4


def _files_read(monkeypatch) -> list[int]:
    """Patch the datasets module's ``read_frames`` to count the frames each call decodes from a file."""
    from paramcrop.data import datasets

    calls: list[int] = []
    real = datasets.read_frames

    def counting(path, info, indices, size):
        indices = list(indices)
        calls.append(len(indices))
        return real(path, info, indices, size)

    monkeypatch.setattr(datasets, "read_frames", counting)
    return calls


def _cache_records(tmp_path) -> list[VideoRecord]:
    records = [grey_video(tmp_path / f"v{i}.mp4", 30 + 5 * i) for i in range(3)]
    if SHARED_VIDEOS.is_dir():  # real clips: H.264 with B-frames, MPEG-4 with audio
        records += [VideoRecord(UCF_STYLE, 1), VideoRecord(KINETICS_STYLE, 1)]
    return records


def test_decoded_cache_gives_the_windows_decoding_gives_and_reads_each_file_once(tmp_path, monkeypatch):
    records = _cache_records(tmp_path)
    calls = _files_read(monkeypatch)
    plain = TrainClips(records, frames=8, stride=2, size=32, seed=3)
    cached = TrainClips(records, frames=8, stride=2, size=32, seed=3, cache_mb=64)
    indices = [i + epoch * len(records) for epoch in range(3) for i in range(len(records))]
    calls.clear()
    expected = [plain[i] for i in indices]
    assert calls == [8] * len(indices)  # no cache: one window decoded per item
    calls.clear()
    got = [cached[i] for i in indices]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert calls == [cached.infos[v].frames for v in range(len(records))]  # each video once, whole
    plain_eval = EvalClips(records, frames=4, stride=3, size=24, clips_per_video=3)
    cached_eval = EvalClips(records, frames=4, stride=3, size=24, clips_per_video=3, cache_mb=64)
    for i in range(len(records)):
        (a, la), (b, lb) = plain_eval[i], cached_eval[i]
        assert torch.equal(a, b) and la == lb


def test_a_later_dataset_over_the_same_files_reuses_their_decoded_frames(tmp_path, monkeypatch):
    """A study's next trial: a new dataset over the same unchanged files at the same size decodes nothing;
    a changed file, another size or a split evicted by KEPT_SPLITS newer ones are decoded again."""
    from paramcrop.data import datasets

    records = [grey_video(tmp_path / f"v{i}.mp4", 30 + 5 * i) for i in range(3)]
    calls = _files_read(monkeypatch)
    indices = range(2 * len(records))
    expected = [TrainClips(records, frames=8, stride=2, size=32, seed=3)[i] for i in indices]
    first = TrainClips(records, frames=8, stride=2, size=32, seed=3, cache_mb=64)
    calls.clear()
    [first[i] for i in indices]
    assert calls == [30, 35, 40]
    del first
    calls.clear()
    later = [TrainClips(records, frames=8, stride=2, size=32, seed=3, cache_mb=64)[i] for i in indices]
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(expected, later))
    other_size = TrainClips(records, frames=8, stride=2, size=24, seed=3, cache_mb=64)
    [other_size[i] for i in indices]
    assert calls == [30, 35, 40]

    grey_video(records[1].path, 36)  # the same path, another video
    changed = TrainClips(records, frames=8, stride=2, size=32, seed=3, cache_mb=64)
    calls.clear()
    got = [changed[i] for i in indices]
    assert calls == [30, 36, 40]
    fresh = TrainClips(records, frames=8, stride=2, size=32, seed=3)
    assert all(torch.equal(a, fresh[i]) for a, i in zip(got, indices))

    for n in range(datasets.KEPT_SPLITS):  # newer splits push the changed one out
        TrainClips(records[:1], frames=8, stride=2, size=16 + 2 * n, cache_mb=64)
    calls.clear()
    [TrainClips(records, frames=8, stride=2, size=32, seed=3, cache_mb=64)[i] for i in indices]
    assert calls == [30, 36, 40]


def test_decoded_cache_is_off_when_the_split_does_not_fit_or_is_zero(tmp_path, monkeypatch):
    records = [grey_video(tmp_path / f"v{i}.mp4", 40) for i in range(2)]
    need_mb = 2 * 40 * 32 * 32 * 3 / 2**20  # 0.23 MiB decoded
    calls = _files_read(monkeypatch)
    for cache_mb, cached in ((0, False), (need_mb * 0.99, False), (need_mb, True)):
        dataset = TrainClips(records, frames=8, stride=2, size=32, cache_mb=cache_mb)
        calls.clear()
        dataset[0], dataset[2]
        assert calls == ([40] if cached else [8, 8]), cache_mb


def test_a_video_that_fails_on_its_first_cached_decode_is_skipped_as_without_the_cache(tmp_path):
    good = grey_video(tmp_path / "good.mp4", 40)
    bad = grey_video(tmp_path / "bad.mp4", 40)
    dataset = TrainClips([bad, good], frames=8, stride=2, size=32, cache_mb=64)
    bad.path.write_bytes(good.path.read_bytes()[:300])  # broken after the scan
    with pytest.warns(RuntimeWarning, match="fails to decode"):
        clip = dataset[0]
    assert clip.shape == (3, 8, 32, 32) and [p.name for p, _ in dataset.skipped] == ["bad.mp4"]
