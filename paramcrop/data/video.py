"""Video file I/O: probing and clip decoding with decord, writing H.264 MP4 with PyAV.

decord reports broken input with ``RuntimeError`` *or* ``decord._ffi.base.DECORDError`` (which
is not a ``RuntimeError``), and a video without frames with an ``AssertionError``;
:data:`DECODE_ERRORS` catches all three. Readers are opened per call and never stored, so
everything here is safe in DataLoader worker processes.

:func:`scan_videos` remembers what it probed in a :class:`ProbeCache` (a small file in the cache
folder), so a second build of a large dataset opens no video: only files that changed are probed
again.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import decord
import numpy as np
from decord._ffi.base import DECORDError

from .cache import cache_root

DECODE_ERRORS = (RuntimeError, DECORDError, AssertionError)
PROBE_CACHE_NAME = "probe-cache.json"
PROBE_CACHE_VERSION = 1


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learned about a readable video: frame count and native resolution."""

    frames: int
    height: int
    width: int


class UnreadableVideo(Exception):
    """A file that cannot be used as a video; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _reader(path: Path, height: int = -1, width: int = -1) -> decord.VideoReader:
    # -1: native size. One decoding thread: parallelism comes from DataLoader workers.
    return decord.VideoReader(str(path), width=width, height=height, num_threads=1)


def _reason(error: Exception) -> str:
    """decord's error in a few words (its messages carry a timestamp and a C++ source location)."""
    text = str(error).strip()
    if text.startswith("Error reading"):
        return "cannot be opened as a video (not one, truncated or corrupt)"
    if "cannot find video stream" in text:
        return "no decodable video stream (none, or one without frames)"
    if "Failed to seek" in text:
        return "its first frame cannot be decoded"
    line = text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (where FFmpeg and decord print their own errors) for a moment."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def probe_video(path: Path) -> VideoInfo:
    """Open ``path`` with decord and decode its first frame; raise :class:`UnreadableVideo` if that fails."""
    path = Path(path)
    if not path.exists():
        raise UnreadableVideo(path, "file not found")
    if not path.is_file():
        raise UnreadableVideo(path, "not a regular file")
    if path.stat().st_size == 0:
        raise UnreadableVideo(path, "empty file (0 bytes)")
    try:  # decord reports a file it may not open as "not a video"; say what it is
        with open(path, "rb"):
            pass
    except OSError as error:
        raise UnreadableVideo(path, "permission denied" if isinstance(error, PermissionError)
                              else f"cannot be opened ({error.strerror or error})") from None
    try:
        with _quiet_stderr():
            reader = _reader(path)
            height, width, _ = reader[0].shape  # right even where decord_width_ok(width) is False
    except DECODE_ERRORS as error:
        raise UnreadableVideo(path, _reason(error)) from None
    return VideoInfo(frames=len(reader), height=height, width=width)


class ProbeCache:
    """What :func:`probe_video` found for readable videos, keyed by absolute path (links are not
    followed for the key) and valid while the file's size, modification time (ns) and mode (of the
    link's target) are the recorded ones: a touched, rewritten, replaced or chmod-ed file is probed
    again.
    Unreadable files are not cached (they are re-probed, and reported, on every scan).

    One JSON file, ``path`` (default ``cache_root() / "probe-cache.json"``, see
    :func:`.cache.cache_root`). Several processes may share it: :meth:`save` merges the new
    entries into the file's current ones and writes a temporary file that it renames over the old one,
    so a reader sees the old or the new file, never a torn one (two processes saving at the same
    moment can drop each other's new entries: they are probed again next time). A missing, unreadable
    or corrupt file reads as an empty cache and is replaced at the next save; a cache folder that
    cannot be written leaves scans uncached, never failing. Saving drops the entries of files that no
    longer exist, so the file stays as large as the datasets in use."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            path = cache_root() / PROBE_CACHE_NAME
        self.path = Path(path)
        self.entries = self._read()
        self._added: dict[str, list[int]] = {}

    def _read(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) and data.get("version") == PROBE_CACHE_VERSION else None
        if not isinstance(entries, dict):
            return {}
        return {key: value for key, value in entries.items()
                if isinstance(value, list) and len(value) == 6 and all(type(v) is int for v in value)}

    @staticmethod
    def stamp(path: Path) -> tuple[str, list[int]] | None:
        """``(absolute path, [size, mtime_ns, mode])`` of ``path``, None when it cannot be stat'ed."""
        key = os.path.abspath(path)
        try:
            stat = os.stat(key)
        except OSError:
            return None
        return key, [stat.st_size, stat.st_mtime_ns, stat.st_mode]

    def get(self, stamp: tuple[str, list[int]]) -> VideoInfo | None:
        """The cached probe of a :meth:`stamp`, None when absent or the file changed since."""
        key, version = stamp
        entry = self.entries.get(key)
        return VideoInfo(*entry[3:]) if entry is not None and entry[:3] == version else None

    def put(self, stamp: tuple[str, list[int]], info: VideoInfo) -> None:
        """Record the probe of a file whose :meth:`stamp` was taken before probing it."""
        key, version = stamp
        self.entries[key] = self._added[key] = [*version, info.frames, info.height, info.width]

    def save(self) -> None:
        """Write the entries added since loading (nothing to do without any), merged as described above."""
        if not self._added:
            return
        merged = {key: value for key, value in {**self._read(), **self._added}.items() if os.path.exists(key)}
        text = json.dumps({"version": PROBE_CACHE_VERSION, "entries": merged}, separators=(",", ":"))
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache folder: the scan still worked, it just is not remembered
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        self.entries, self._added = merged, {}


def scan_videos(
    paths: Sequence[Path], *, progress: bool = False, cache: ProbeCache | None = None
) -> tuple[list[VideoInfo | None], list[tuple[Path, str]]]:
    """Probe every path in order: ``(infos, skipped)``, ``infos[i]`` is None where ``paths[i]`` is unreadable
    and ``skipped`` lists ``(path, reason)`` for those. Readable files that have not changed since an
    earlier scan come from ``cache`` (default: the :class:`ProbeCache` in the cache folder) without
    being opened; the new probes are saved to it at the end."""
    from rich.progress import track

    cache = cache if cache is not None else ProbeCache()
    infos: list[VideoInfo | None] = []
    skipped: list[tuple[Path, str]] = []
    for path in track(paths, description="Scanning videos", disable=not progress, transient=True):
        stamp = ProbeCache.stamp(path)  # before probing: a file that changes meanwhile is probed again next time
        info = cache.get(stamp) if stamp is not None else None
        if info is None:
            try:
                info = probe_video(path)
            except UnreadableVideo as bad:
                skipped.append((bad.path, bad.reason))
            else:
                if stamp is not None:
                    cache.put(stamp, info)
        infos.append(info)
    cache.save()
    return infos, skipped


def window_indices(num_frames: int, frames: int, stride: int, start: int) -> np.ndarray:
    """Frame indices ``(frames,)`` of the window ``start, start + stride, ...``.

    Short-video rule: indices past the last frame wrap around to the start (the video loops),
    as in mmaction2's default, so a video shorter than ``(frames - 1) * stride + 1`` still gives
    a full clip.
    """
    return (start + stride * np.arange(frames)) % num_frames


CHUNK_FRAMES = 64  # frames :func:`read_frames` asks decord for at a time


def window_span(frames: int, stride: int) -> int:
    """Number of source frames a window of ``frames`` frames at ``stride`` covers."""
    return (frames - 1) * stride + 1


def decord_width_ok(width: int) -> bool:
    """False for the output widths (16, 24, 48, 72, ...) that decord 0.6 mangles: FFmpeg pads RGB rows
    to ``3 * ceil(width / 32) * 32`` bytes, and when that is a multiple of ``width`` decord takes the
    padding for extra channels, so frames come out ``(H, W, 4)`` and ``get_batch`` fails."""
    padded = -(-width // 32) * 32
    return padded == width or 3 * padded % width != 0


def decode_size(info: VideoInfo, short_side: int) -> tuple[int, int]:
    """``(height, width)`` to decode at: the short side scaled to ``short_side``, aspect ratio kept,
    bumped by a pixel or two where the width would hit :func:`decord_width_ok`."""
    side = short_side
    while True:
        if info.height <= info.width:
            height, width = side, max(side, round(info.width * side / info.height))
        else:
            height, width = max(side, round(info.height * side / info.width)), side
        if decord_width_ok(width):
            return height, width
        side += 1


def read_frames(path: Path, info: VideoInfo, indices: Iterable[int], short_side: int) -> np.ndarray:
    """Decode frames ``indices`` of ``path`` at short side ``short_side`` (resized by decord while
    decoding) and center-crop them: ``uint8 (len(indices), short_side, short_side, 3)`` RGB.

    Every frame from the last keyframe at or before the first index to the last index is decoded
    in order, in chunks of :data:`CHUNK_FRAMES` (so memory stays bounded), and the frames asked for
    are kept: decord 0.6 is never asked to skip frames. When it skips some (``get_batch`` with gaps,
    or a window that starts after a keyframe), its one-thread decoder sometimes hands back the frame
    it returned before instead of the last one of the video (dmlc/decord#195). On the MPEG-4 test
    clip's last window under load, 50 and 42 reads of 600 came back wrong with gaps and with a
    gapless span, none of 600 from the keyframe (``benchmarks/decord_skips.py``). So the frames are
    the same whichever others are asked for, and the decoded-video cache changes nothing; reading
    costs 9-13 % more than decord's skipping (``benchmarks/data.py``).

    Raises :class:`UnreadableVideo` when decoding fails.
    """
    indices = np.fromiter(indices, dtype=np.int64)
    if not len(indices):
        raise ValueError("no frame indices given")
    first, last = int(indices.min()), int(indices.max())
    height, width = decode_size(info, short_side)
    top, left = (height - short_side) // 2, (width - short_side) // 2
    frames = np.empty((len(indices), short_side, short_side, 3), dtype=np.uint8)
    try:
        reader = _reader(path, height, width)
        key = max((k for k in reader.get_key_indices() if k <= first), default=0)
        for begin in range(key, last + 1, CHUNK_FRAMES):
            chunk = reader.get_batch(list(range(begin, min(begin + CHUNK_FRAMES, last + 1)))).asnumpy()
            inside = (indices >= begin) & (indices < begin + len(chunk))
            frames[inside] = chunk[indices[inside] - begin, top : top + short_side, left : left + short_side]
    except DECODE_ERRORS as error:
        raise UnreadableVideo(Path(path), f"decoding failed: {_reason(error)}") from None
    return frames


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = 25, qp: int = 18, keyframe_every: int = 250) -> None:
    """Write ``uint8 (T, H, W, 3)`` RGB frames as H.264 (libx264, yuv420p) MP4; H and W must be even.
    ``keyframe_every``: the longest run of frames between keyframes (x264's ``keyint``).

    The output is the same bytes on every run: one encoder thread and a constant quantiser ``qp``
    (x264's multi-threading and its rate control's macroblock tree both made a few percent of
    encodes differ from run to run on a busy machine).
    """
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qp": str(qp), "preset": "veryfast", "threads": "1", "g": str(keyframe_every)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
