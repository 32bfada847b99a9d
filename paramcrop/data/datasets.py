"""Clip datasets over video records: :class:`TrainClips` (random windows) and :class:`EvalClips`
(evenly spaced windows, labelled).

Construction probes every file (:func:`.video.scan_videos`; files unchanged since an earlier scan come
from its :class:`.video.ProbeCache` without being opened): unreadable ones are left out and listed
in ``skipped`` as ``(path, reason)``; ``len()`` counts readable videos; a dataset with nothing
readable raises ``ValueError``. A file that passes the probe but fails later while decoding is
warned about and replaced by the next readable video (and, in the main process, added to
``skipped``). Datasets hold paths and metadata only and open a decord reader per item, so they
pickle into DataLoader workers.

A window is ``frames`` frames ``stride`` apart; a video shorter than the window loops
(:func:`.video.window_indices`). Frames are decoded with the short side at ``size`` (decord
resizes while decoding) and center-cropped to ``size x size``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .records import VideoRecord
from .video import UnreadableVideo, VideoInfo, probe_video, read_frames, scan_videos, window_indices, window_span


def check_window_fits(records: Sequence[VideoRecord], frames: int, stride: int) -> None:
    """Refuse a window (``frames`` frames ``stride`` apart) longer than *every* readable video.

    Shorter videos loop (:func:`.video.window_indices`), which is fine for a few of them, but a
    dataset where no video holds one window would train on looped clips only: a setting error.
    Probes the videos in order and returns at the first one that is long enough (so usually after
    one probe); raises ``ValueError`` naming the window, the longest video and the fix otherwise.
    """
    span = window_span(frames, stride)
    longest, readable = 0, 0
    for record in records:
        try:
            info = probe_video(record.path)
        except UnreadableVideo:
            continue
        if info.frames >= span:
            return
        readable += 1
        longest = max(longest, info.frames)
    if not readable:
        raise ValueError(f"none of the {len(records)} videos is readable")
    raise ValueError(f"a clip of data.frames={frames} at data.stride={stride} spans {span} frames, longer than "
                     f"every video ({readable} readable, the longest has {longest} frames): lower data.frames "
                     f"or data.stride")


KEPT_SPLITS = 4
"""Decoded splits a process keeps after their datasets are gone (the most recently made ones): a
study's next trial over the same videos slices them from memory instead of decoding them again."""
_KEPT: OrderedDict[tuple, dict[int, np.ndarray]] = OrderedDict()


def _decoded_split(records: Sequence[VideoRecord], size: int) -> dict[int, np.ndarray]:
    """The dict of decoded videos (index in ``records`` -> ``uint8 (frames, size, size, 3)``) shared by
    every dataset of this process over the same files, unchanged (path, bytes, modification time),
    at the same ``size``: empty for the first one. Keeps the last :data:`KEPT_SPLITS` splits."""
    stats = [r.path.stat() for r in records]
    key = (size, tuple((str(r.path.absolute()), st.st_size, st.st_mtime_ns) for r, st in zip(records, stats)))
    decoded = _KEPT.pop(key, None)
    _KEPT[key] = decoded = {} if decoded is None else decoded
    while len(_KEPT) > KEPT_SPLITS:
        _KEPT.popitem(last=False)
    return decoded


class _Clips(Dataset):
    """The scan, the decoding of windows and the fallback for videos that fail after the scan.

    ``infos``: the scan of ``records`` when another dataset over the same videos already made it
    (pass its ``records`` and ``infos``): the videos are not probed again, nothing is skipped.

    ``cache_mb``: when every readable video of the set, decoded whole at ``size``, fits in this many
    MiB, each video is decoded once (all its frames) and its windows are sliced from memory after
    that, in each process that reads it (DataLoader workers keep their own; a later dataset of the
    process over the same unchanged files at the same size reuses them, :data:`KEPT_SPLITS`);
    otherwise every window is decoded from the file. The frames are the same either way (:func:`.video.read_frames` asks
    decord for whole spans, never for frames with gaps: ``tests/test_data_datasets.py``); 0 = never
    cache."""

    def __init__(self, records: Sequence[VideoRecord], frames: int, stride: int, size: int,
                 infos: Sequence[VideoInfo] | None = None, cache_mb: float = 0) -> None:
        if min(frames, stride, size) < 1:
            raise ValueError(f"frames, stride and size must be >= 1, got {frames}, {stride}, {size}")
        records = list(records)
        if not records:
            raise ValueError("no videos given (empty train or test list)")
        if infos is None:
            infos, self.skipped = scan_videos([r.path for r in records])
        elif len(infos) != len(records) or any(info is None for info in infos):
            raise ValueError(f"infos must be the scan of the {len(records)} records, one readable video each")
        else:
            self.skipped = []
        readable = [(r, info) for r, info in zip(records, infos) if info is not None]
        if not readable:
            examples = "; ".join(f"{path}: {reason}" for path, reason in self.skipped[:3])
            raise ValueError(f"none of the {len(records)} videos is readable ({examples})")
        self.records = [r for r, _ in readable]
        self.infos = [info for _, info in readable]
        self.frames, self.stride, self.size = frames, stride, size
        self.span = window_span(frames, stride)
        self._broken: set[int] = set()
        decoded_mb = sum(info.frames for info in self.infos) * size * size * 3 / 2**20
        self._decoded = _decoded_split(self.records, size) if 0 < decoded_mb <= cache_mb else None

    def __len__(self) -> int:
        return len(self.records)

    def _windows(self, video: int, starts: Sequence[int]) -> torch.Tensor:
        """Windows starting at ``starts`` of video ``video``: ``uint8 (K, 3, T, S, S)``."""
        info = self.infos[video]
        indices = np.concatenate([window_indices(info.frames, self.frames, self.stride, s) for s in starts])
        if self._decoded is None:
            array = read_frames(self.records[video].path, info, indices, self.size)
        else:
            if video not in self._decoded:
                self._decoded[video] = read_frames(self.records[video].path, info, range(info.frames), self.size)
            array = self._decoded[video][indices]
        clips = array.reshape(len(starts), self.frames, self.size, self.size, 3)
        # numpy's transpose copy: torch's permute().contiguous() is ~40x slower on a busy CPU
        return torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3)))

    def _item(self, video: int, index: int):
        raise NotImplementedError

    def __iter__(self):
        # finite, although __getitem__ accepts indices past the end (see TrainClips)
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            video = (index + offset) % len(self)
            if video in self._broken:
                continue
            try:
                return self._item(video, index)
            except UnreadableVideo as bad:
                warnings.warn(f"skipping a video that fails to decode: {bad}", RuntimeWarning)
                self._broken.add(video)
                if get_worker_info() is None:
                    self.skipped.append((bad.path, bad.reason))
        raise RuntimeError(f"none of the {len(self)} videos could be decoded")


class TrainClips(_Clips):
    """Training clips: item ``i`` is ``uint8 (3, frames, size, size)`` RGB, one window of video
    ``i % len(self)`` at a random position (with ``labelled``: the pair ``(clip, label)``, for
    supervised fine-tuning).

    The position comes from a generator seeded with ``(seed, i, n)``: ``n`` counts earlier draws of
    item ``i`` in this process. A sampler passes indices past the end, ``epoch * len(self) + i``
    (:class:`paramcrop.data.batches.EpochBatches`): each is drawn once, so the windows depend on ``seed`` and
    the index only, whichever process decodes them: ``data.workers`` (or ``auto``, which differs
    between hosts) never changes the training data, and a resumed run sees the same windows. (A
    sampler that repeats indices gets new windows per repeat in one process; in worker processes,
    which each count their own draws, repeats may see the same window again.)
    """

    def __init__(self, records: Sequence[VideoRecord], frames: int, stride: int, size: int, seed: int = 0,
                 labelled: bool = False, infos: Sequence[VideoInfo] | None = None, cache_mb: float = 0) -> None:
        super().__init__(records, frames, stride, size, infos, cache_mb)
        self.seed, self.labelled = seed, labelled
        self._draws: Counter[int] = Counter()

    def _item(self, video: int, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        # the trailing 0 was a worker term (now gone): kept, so single-process windows stay as before
        rng = np.random.default_rng([self.seed, index, self._draws[index], 0])
        self._draws[index] += 1
        start = int(rng.integers(0, max(self.infos[video].frames - self.span, 0) + 1))
        clip = self._windows(video, [start])[0]
        return (clip, self.records[video].label) if self.labelled else clip


class EvalClips(_Clips):
    """Labelled evaluation clips: item ``i`` is ``(uint8 (K, 3, frames, size, size), label)`` with
    K = ``clips_per_video`` windows evenly spaced from the first to the last possible start.

    ``persist``: a folder where every video's windows, once decoded, are kept as one array
    (``windows-<key>.npy``, ``uint8 (N, K, 3, frames, size, size)``, written to a temporary file and
    renamed) that every later dataset over the same unchanged files and geometry (the key hashes
    both) reads from, one video's windows per item (a read at its offset, not a memory map: the
    process keeps no pages of it): a large evaluation set is decoded once per machine, not once per
    run. The windows are the ones decoding gives (the array is made by decoding each video once)."""

    def __init__(
        self, records: Sequence[VideoRecord], frames: int, stride: int, size: int, clips_per_video: int = 1,
        infos: Sequence[VideoInfo] | None = None, cache_mb: float = 0, persist: Path | None = None,
    ) -> None:
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        super().__init__(records, frames, stride, size, infos, cache_mb if persist is None else 0)
        self.clips_per_video = clips_per_video
        self.persist = Path(persist) if persist is not None else None
        self._stored: tuple[Path, int, tuple[int, ...]] | None = None  # the array's file, data offset, item shape

    def _starts(self, video: int) -> np.ndarray:
        last_start = max(self.infos[video].frames - self.span, 0)
        return np.linspace(0, last_start, self.clips_per_video).round().astype(int)

    def _item(self, video: int, index: int) -> tuple[torch.Tensor, int]:
        if self.persist is None:
            return self._windows(video, self._starts(video)), self.records[video].label
        if self._stored is None:
            self._stored = self._persisted(self.persist)
        path, offset, shape = self._stored
        size = int(np.prod(shape))
        with open(path, "rb") as handle:
            handle.seek(offset + video * size)
            windows = np.frombuffer(handle.read(size), dtype=np.uint8).reshape(shape)
        return torch.from_numpy(windows.copy()), self.records[video].label

    def _persisted(self, folder: Path) -> tuple[Path, int, tuple[int, ...]]:
        """``(path, data offset, one video's shape)`` of the windows of every video (see the class doc),
        decoded and written first if missing."""
        from rich.progress import track

        stats = [(str(r.path.absolute()), r.path.stat()) for r in self.records]
        key = hashlib.sha1(repr((self.frames, self.stride, self.size, self.clips_per_video,
                                 [(path, st.st_size, st.st_mtime_ns) for path, st in stats])).encode()).hexdigest()[:16]
        path = folder / f"windows-{key}.npy"
        if not path.is_file():
            shape = (len(self), self.clips_per_video, 3, self.frames, self.size, self.size)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.stem}.", suffix=".tmp", delete=False) as tmp:
                partial = Path(tmp.name)
            try:
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
                for video in track(range(len(self)), description=f"Decoding {len(self)} evaluation videos (once)",
                                   transient=True, console=_stderr()):
                    out[video] = self._windows(video, self._starts(video)).numpy()
                out.flush()
                del out
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        array = np.load(path, mmap_mode="r")
        return path, array.offset, array.shape[1:]


def _stderr():
    from rich.console import Console

    return Console(stderr=True)
