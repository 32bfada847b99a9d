"""The probe cache of :func:`paramcrop.data.video.scan_videos`: same answers as a fresh probe, invalidated
by a changed file, shared safely, tolerant of a corrupt file, and a second scan opens no video."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import paramcrop.data.video as video
from paramcrop.data.sources import parse_folder
from paramcrop.data.video import PROBE_CACHE_NAME, ProbeCache, VideoInfo, probe_video, scan_videos, write_mp4

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"  # real clips, where the checkout has them


def clip(path: Path, frames: int, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, rng.integers(0, 255, (frames, size, size + 16, 3), dtype=np.uint8))
    return path


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PARAMCROP_CACHE", str(folder))
    return folder


@pytest.fixture()
def probes(monkeypatch):
    """The paths scan_videos really opened (cache misses)."""
    opened = []
    real = video.probe_video
    monkeypatch.setattr(video, "probe_video", lambda path: opened.append(Path(path)) or real(path))
    return opened


def test_cached_scan_returns_what_a_fresh_probe_returns(tmp_path, cache_dir, probes):
    paths = [clip(tmp_path / "a.mp4", 12), clip(tmp_path / "b.mp4", 20, size=48)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    paths += [broken, tmp_path / "missing.mp4"]
    paths += sorted(SHARED.glob("*.mp4")) + sorted(SHARED.glob("*.avi"))
    first = scan_videos(paths)
    assert (cache_dir / PROBE_CACHE_NAME).is_file()
    opened_first = list(probes)
    second = scan_videos(paths)
    assert second == first
    fresh = []
    for path in paths:
        try:
            fresh.append(probe_video(path))
        except video.UnreadableVideo:
            fresh.append(None)
    assert second[0] == fresh
    assert second[0][:2] == [VideoInfo(12, 32, 48), VideoInfo(20, 48, 64)]
    assert [p for p, _ in second[1]] == [broken, tmp_path / "missing.mp4"]
    # the second scan opened only the unreadable file (those are never cached; a missing one is not opened)
    assert probes[len(opened_first):] == [broken, tmp_path / "missing.mp4"]
    assert len(ProbeCache().entries) == len(paths) - 2


def test_a_changed_file_is_probed_again(tmp_path, cache_dir, probes):
    path = clip(tmp_path / "v.mp4", 12)
    assert scan_videos([path])[0] == [VideoInfo(12, 32, 48)]
    assert scan_videos([path])[0] == [VideoInfo(12, 32, 48)] and probes == [path]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touch: same content, new mtime
    assert scan_videos([path])[0] == [VideoInfo(12, 32, 48)] and probes == [path, path]
    path.chmod((path.stat().st_mode & 0o777) ^ 0o040)  # a permission change (may make it unreadable): probed again
    assert scan_videos([path])[0] == [VideoInfo(12, 32, 48)] and probes == [path, path, path]
    probes.clear()
    clip(path, 30, seed=1)  # rewritten: another video under the same name
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # even with the old mtime: size differs
    assert scan_videos([path])[0] == [VideoInfo(30, 32, 48)] and probes == [path]
    path.write_bytes(b"garbage")  # now unreadable: reported, not served from the cache
    infos, skipped = scan_videos([path])
    assert infos == [None] and skipped[0][0] == path


def test_a_second_scan_of_many_links_opens_no_video(tmp_path, cache_dir, probes, monkeypatch):
    sources = [clip(tmp_path / "src" / f"{i}.mp4", 10 + i, seed=i) for i in range(3)]
    root = tmp_path / "links"
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(50):
            (root / f"class{c}" / f"{i:04d}.mp4").symlink_to(sources[(c + i) % 3])
    spec = parse_folder(root)
    paths = [r.path for r in spec.train + spec.test]
    assert len(paths) == 200
    first = scan_videos(paths)
    assert len(probes) == 200 and first[1] == []
    probes.clear()
    monkeypatch.setattr(video, "_reader", lambda *a, **k: pytest.fail("a video was opened on the second scan"))
    again = scan_videos([r.path for r in parse_folder(root).train + parse_folder(root).test])
    assert probes == [] and again == first
    assert {info.frames for info in again[0]} == {10, 11, 12}


def test_corrupt_cache_file_is_an_empty_cache_and_is_replaced(tmp_path, cache_dir, probes):
    path = clip(tmp_path / "v.mp4", 12)
    cache_dir.mkdir()
    for garbage in ('{"version": 1, "entries": {"x": [1, 2', "[1, 2, 3]", '{"version": 99, "entries": {}}',
                    json.dumps({"version": 1, "entries": {os.path.abspath(path): ["a", 1, 2, 3, 4, 5]}})):
        (cache_dir / PROBE_CACHE_NAME).write_text(garbage)
        probes.clear()
        assert scan_videos([path])[0] == [VideoInfo(12, 32, 48)] and probes == [path]
        data = json.loads((cache_dir / PROBE_CACHE_NAME).read_text())  # rewritten whole
        assert data["version"] == 1 and list(data["entries"]) == [os.path.abspath(path)]
    assert [p.name for p in cache_dir.iterdir()] == [PROBE_CACHE_NAME]  # no temporary file left


def test_processes_merge_and_an_unwritable_folder_only_disables_the_cache(tmp_path, cache_dir, probes):
    a, b = clip(tmp_path / "a.mp4", 12), clip(tmp_path / "b.mp4", 14)
    one, two = ProbeCache(), ProbeCache()  # two processes that loaded the same (empty) file
    scan_videos([a], cache=one)
    scan_videos([b], cache=two)  # saves after `one`: merges, does not drop a
    assert set(ProbeCache().entries) == {os.path.abspath(a), os.path.abspath(b)}
    a.unlink()
    scan_videos([clip(tmp_path / "c.mp4", 16)])
    assert os.path.abspath(a) not in ProbeCache().entries  # a saving scan forgets files that are gone
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    probes.clear()
    readonly = ProbeCache(blocked / PROBE_CACHE_NAME)
    assert scan_videos([b], cache=readonly)[0] == [VideoInfo(14, 32, 48)] and probes == [b]
    shutil.rmtree(cache_dir)
