"""Data source strings and the parsers that turn them into labelled train/test lists.

| source | layout |
|---|---|
| ``synthetic[:key=value,...]`` | the embedded benchmark, generated into the cache on first use (:mod:`.synthetic`) |
| ``folder:DIR`` | ``DIR/<class>/<video>``: split 80/20 by a hash of ``<class>/<file name>``, so a video's split never changes when others are added; or ``DIR/train/<class>/...`` and ``DIR/test/<class>/...`` when both exist. Every non-hidden file in a class folder counts (unreadable ones are reported later). |
| ``ucf101:ROOT[:SPLIT]`` | split files ``ROOT/ucfTrainTestlist/{classInd.txt,trainlist0N.txt,testlist0N.txt}``; videos under ``ROOT/UCF-101/`` if it exists, else ``ROOT/`` (as in the official archives) |
| ``hmdb51:ROOT[:SPLIT]`` | split files ``ROOT/testTrainMulti_7030_splits/<class>_test_splitN.txt`` (1 = train, 2 = test, 0 = unused); videos under ``ROOT/hmdb51_org/`` if it exists, else ``ROOT/<class>/`` |
| ``kinetics:CSV:ROOT`` | CSV ``label,youtube_id,time_start,time_end,split``; files ``<youtube_id>_<start:06d>_<end:06d>.mp4`` found by name anywhere under ROOT. Rows with split ``train`` train, other labelled rows (``val``, ``validate``, ``test``) test. |

Parsers do not open videos. A listed file that is absent stays in the lists and is reported as
skipped ("file not found") by the dataset scan, like an unreadable one; a list in which *no* file
exists is an error (wrong ROOT). Every source's validation split is carved the same way
(:meth:`.records.DatasetSpec.with_validation`).
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

from .records import DatasetSpec, VideoRecord
from .synthetic import EvaluationDraws, SyntheticConfig, ensure_draws, ensure_synthetic

SOURCE_FORMS = (
    "synthetic[:key=value,...]",
    "folder:DIR",
    "ucf101:ROOT[:SPLIT]",
    "hmdb51:ROOT[:SPLIT]",
    "kinetics:CSV:ROOT",
)
FOLDER_TEST_PERCENT = 20
OFFICIAL_SPLITS = (1, 2, 3)


SYNTHETIC_AUGMENT = {"flip_p": 0.0, "jitter_scale": 0.5}
"""The synthetic benchmark's augmentation defaults: its classes include left vs right motion (a
horizontal flip swaps them), and half-strength colour jitter suits its 32-48 px clips."""


def resolve_source(source: str, *, cache_dir: Path | str | None = None) -> DatasetSpec:
    """Parse a data source string; ``synthetic`` is generated into ``cache_dir`` (see
    :func:`.cache.cache_root`) when missing. Raises ``ValueError`` naming the problem."""
    scheme, _, rest = source.partition(":")
    if scheme == "synthetic":
        spec = ensure_synthetic(SyntheticConfig.from_options(rest), cache_dir)
        spec.augment_defaults = dict(SYNTHETIC_AUGMENT)
        return spec
    if scheme in ("folder", "ucf101", "hmdb51", "kinetics") and rest:
        if scheme == "folder":
            return parse_folder(Path(rest))
        if scheme == "kinetics":
            match = re.fullmatch(r"(.+?\.csv):(.+)", rest, flags=re.IGNORECASE)
            if not match:
                raise ValueError(f"bad data source {source!r}: expected kinetics:CSV:ROOT with CSV a .csv file")
            return parse_kinetics(Path(match[1]), Path(match[2]))
        match = re.fullmatch(r"(.+?)(?::(\d+))?", rest)
        split = int(match[2] or 1)
        return (parse_ucf101 if scheme == "ucf101" else parse_hmdb51)(Path(match[1]), split)
    raise ValueError(f"bad data source {source!r}: expected one of " + ", ".join(SOURCE_FORMS))


def evaluation_draws(source: str, per_class: int, *, cache_dir: Path | str | None = None
                     ) -> EvaluationDraws | None:
    """The fresh evaluation draws of a ``synthetic`` source's design (``per_class`` videos per class
    for each of ``val`` and ``test``, disjoint from its pretraining videos and from each other,
    :func:`.synthetic.ensure_draws`); ``None`` for a source that cannot draw (real datasets keep
    their own splits) or for ``per_class`` 0."""
    scheme, _, rest = source.partition(":")
    if scheme != "synthetic" or per_class == 0:
        return None
    return ensure_draws(SyntheticConfig.from_options(rest), per_class, cache_dir)


def split_of(source: str) -> int | None:
    """The split number of a ``ucf101:`` / ``hmdb51:`` source, ``None`` when it names none
    (``resolve_source`` then reads split 1; a downstream evaluation reads all three)."""
    scheme, _, rest = source.partition(":")
    if scheme not in ("ucf101", "hmdb51") or not rest:
        return None
    match = re.fullmatch(r"(.+?)(?::(\d+))?", rest)
    return int(match[2]) if match[2] else None


def official_splits(source: str) -> list[str] | None:
    """A split-less ``ucf101:ROOT`` / ``hmdb51:ROOT`` as its three split sources
    (``ucf101:ROOT:1`` ...); ``None`` for any other source."""
    scheme = source.partition(":")[0]
    if scheme not in ("ucf101", "hmdb51") or not source.partition(":")[2] or split_of(source) is not None:
        return None
    return [f"{source}:{n}" for n in OFFICIAL_SPLITS]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what} {path} is not a directory (missing or misspelt?)")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what} {path} not found")
    return path


def _require_some_exist(records: list[VideoRecord], listed_in: Path, video_root: Path) -> None:
    if records and not any(r.path.exists() for r in records):
        raise ValueError(
            f"none of the {len(records)} videos listed in {listed_in} exists under {video_root} "
            f"(expected e.g. {records[0].path}); is ROOT right?"
        )


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _files(path: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))


def _check_split(split: int, source: str) -> None:
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"{source} split must be one of {OFFICIAL_SPLITS}, got {split}")


def folder_split_is_test(class_name: str, file_name: str) -> bool:
    """The ``folder:`` rule: test iff the first 4 bytes of sha1(``class/file``) mod 100 < 20."""
    digest = hashlib.sha1(f"{class_name}/{file_name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < FOLDER_TEST_PERCENT


def parse_folder(root: Path) -> DatasetSpec:
    """``folder:DIR``: one sub-folder per class, optionally under ``train/`` and ``test/``."""
    _require_dir(root, "folder dataset")
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    split_dirs = [root / "train", root / "test"] if presplit else [root]
    classes = sorted({c for d in split_dirs for c in _subdirs(d)})
    if not classes:
        where = " or ".join(str(d) for d in split_dirs)
        raise ValueError(f"folder dataset {root} has no class sub-folders (expected {where}/<class>/<video>)")
    spec = DatasetSpec(classes)
    for label, name in enumerate(classes):
        if presplit:
            for part, records in (("train", spec.train), ("test", spec.test)):
                if (root / part / name).is_dir():
                    records.extend(VideoRecord(p, label) for p in _files(root / part / name))
        else:
            for path in _files(root / name):
                (spec.test if folder_split_is_test(name, path.name) else spec.train).append(VideoRecord(path, label))
    if not spec.train and not spec.test:
        raise ValueError(f"folder dataset {root}: the class folders {classes} contain no files")
    return spec


def _video_root(root: Path, official_name: str) -> Path:
    return root / official_name if (root / official_name).is_dir() else root


def parse_ucf101(root: Path, split: int = 1) -> DatasetSpec:
    """``ucf101:ROOT[:SPLIT]`` from ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``."""
    _check_split(split, "ucf101")
    lists = _require_dir(_require_dir(root, "UCF101 root") / "ucfTrainTestlist", "UCF101 split-file folder")
    index = {}
    for line in _require_file(lists / "classInd.txt", "UCF101 class index").read_text().splitlines():
        if line.strip():
            number, name = line.split()
            index[name] = int(number) - 1
    classes = sorted(index, key=index.get)
    video_root = _video_root(root, "UCF-101")
    spec = DatasetSpec(classes)
    for part, records in (("train", spec.train), ("test", spec.test)):
        list_file = _require_file(lists / f"{part}list{split:02d}.txt", f"UCF101 {part} list")
        for line in list_file.read_text().splitlines():
            if not line.strip():
                continue
            relative = line.split()[0]  # "Class/v_Class_g08_c01.avi" (train lines add " <label>")
            class_name = relative.split("/")[0]
            if class_name not in index:
                raise ValueError(f"{list_file}: class {class_name!r} of {relative!r} is not in classInd.txt")
            records.append(VideoRecord(video_root / relative, index[class_name]))
        _require_some_exist(records, list_file, video_root)
    return spec


def parse_hmdb51(root: Path, split: int = 1) -> DatasetSpec:
    """``hmdb51:ROOT[:SPLIT]`` from ``<class>_test_splitN.txt`` files (1 = train, 2 = test, 0 = unused)."""
    _check_split(split, "hmdb51")
    lists = _require_dir(_require_dir(root, "HMDB51 root") / "testTrainMulti_7030_splits", "HMDB51 split-file folder")
    suffix = f"_test_split{split}.txt"
    list_files = sorted(p for p in lists.iterdir() if p.name.endswith(suffix))
    if not list_files:
        raise ValueError(f"no HMDB51 split files {lists}/<class>{suffix}")
    classes = [p.name[: -len(suffix)] for p in list_files]
    video_root = _video_root(root, "hmdb51_org")
    spec = DatasetSpec(classes)
    for label, (name, list_file) in enumerate(zip(classes, list_files)):
        for line in list_file.read_text().splitlines():
            if not line.strip():
                continue
            video, membership = line.split()
            if membership in ("1", "2"):
                (spec.train if membership == "1" else spec.test).append(VideoRecord(video_root / name / video, label))
            elif membership != "0":
                raise ValueError(f"{list_file}: expected 0, 1 or 2 after {video!r}, got {membership!r}")
    _require_some_exist(spec.train + spec.test, lists, video_root)
    return spec


def kinetics_file_name(youtube_id: str, start: float, end: float) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>.mp4``, the name used by the usual Kinetics downloaders."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}.mp4"


def parse_kinetics(csv_path: Path, root: Path) -> DatasetSpec:
    """``kinetics:CSV:ROOT`` from the annotation CSV; videos are found by file name anywhere under ROOT."""
    _require_file(csv_path, "Kinetics annotation CSV")
    _require_dir(root, "Kinetics video root")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"label", "youtube_id", "time_start", "time_end", "split"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)} (expected label,youtube_id,time_start,time_end,split)")
    found = {}
    for directory, _, names in sorted(os.walk(root)):
        for name in names:
            found.setdefault(name, Path(directory) / name)
    rows = [r for r in rows if r["label"].strip()]
    classes = sorted({r["label"] for r in rows})
    label_of = {name: i for i, name in enumerate(classes)}
    spec = DatasetSpec(classes)
    for row in rows:
        name = kinetics_file_name(row["youtube_id"], row["time_start"], row["time_end"])
        record = VideoRecord(found.get(name, root / row["label"] / name), label_of[row["label"]])
        (spec.train if row["split"] == "train" else spec.test).append(record)
    _require_some_exist(spec.train + spec.test, csv_path, root)
    return spec


def dataset_root(records: list[VideoRecord]) -> Path:
    """The deepest folder holding every video of ``records`` (the dataset's location)."""
    if not records:
        raise ValueError("no videos given: an empty list has no folder")
    return Path(os.path.commonpath([str(r.path.absolute().parent) for r in records]))


def dataset_digest(records: list[VideoRecord]) -> str:
    """A stable digest of a video list, 16 hex digits: sha256 of the sorted ``(path relative to
    :func:`dataset_root`, size in bytes)`` pairs (an absent file counts as size -1). The same files
    give the same digest wherever the dataset lives; a file more, less, renamed or resized gives
    another. Contents are not read (a same-size edit keeps the digest)."""
    root = dataset_root(records)
    entries = sorted((r.path.absolute().relative_to(root).as_posix(),
                      r.path.stat().st_size if r.path.exists() else -1) for r in records)
    text = "\n".join(f"{path}\t{size}" for path, size in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
