"""A parsed data source: its video records and their train / validation / test lists.

The **validation split** (:meth:`DatasetSpec.with_validation`, ``data.val_fraction``) is carved from
the training list of every source the same way: per class, the ``round(fraction * n)`` training
videos (at least 1, at most n - 1) whose :func:`validation_key` (sha1 of ``val/<class>/<file
name>``) is lowest. It is therefore stable (the same files give the same split on every call and
machine, whatever the order of the list; a video's split changes only when its class's training
list changes), exact per class, and disjoint from the test split by construction (it is a part of
the training list).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VideoRecord:
    """One video file and its class index."""

    path: Path
    label: int


@dataclass
class DatasetSpec:
    """A parsed data source: class names (index = label) and the train/test video lists; ``val``
    is empty until :meth:`with_validation` carves the validation videos out of ``train``.

    ``augment_defaults``: ``augment.*`` values the source needs instead of the CVRL defaults (the
    trainer applies each unless the config sets that key, and logs the values used)."""

    classes: list[str]
    train: list[VideoRecord] = field(default_factory=list)
    test: list[VideoRecord] = field(default_factory=list)
    augment_defaults: dict[str, float] = field(default_factory=dict)
    val: list[VideoRecord] = field(default_factory=list)

    def with_validation(self, fraction: float) -> "DatasetSpec":
        """A copy whose ``val`` holds ``fraction`` of each class's training videos and whose
        ``train`` keeps the rest (both in their original order; ``test`` unchanged). Per class of
        n >= 2 training videos, the ``round(fraction * n)`` ones (half up, clamped to 1 .. n - 1)
        with the lowest :func:`validation_key` go to validation; a class without training videos
        stays without. ``fraction`` 0 returns the lists unchanged. ``ValueError`` for a fraction
        outside [0, 1), a class with a single training video (it cannot keep one for each side),
        or a spec that already has a validation split."""
        if not 0 <= fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1) (0 = no validation split), got {fraction}")
        if self.val:
            raise ValueError("this dataset already has a validation split: carve it once")
        held: set[int] = set()
        if fraction > 0:
            by_class: dict[int, list[int]] = {}
            for index, record in enumerate(self.train):
                by_class.setdefault(record.label, []).append(index)
            for label, indices in sorted(by_class.items()):
                name = self.classes[label]
                if len(indices) < 2:
                    raise ValueError(
                        f"class {name!r} has {len(indices)} training video, so it cannot keep one for training "
                        f"and hold one out for validation: add training videos or set data.val_fraction=0 "
                        f"(no validation split)")
                count = min(max(int(fraction * len(indices) + 0.5), 1), len(indices) - 1)
                ranked = sorted(indices, key=lambda i: (validation_key(name, self.train[i].path.name),
                                                        str(self.train[i].path)))
                held.update(ranked[:count])
        return dataclasses.replace(self, train=[r for i, r in enumerate(self.train) if i not in held],
                                   val=[r for i, r in enumerate(self.train) if i in held])


def first_per_class(records: list[VideoRecord], per_class: int) -> list[int]:
    """Indices into ``records`` of the first ``per_class`` videos of each class, in list order."""
    seen: dict[int, int] = {}
    chosen = []
    for index, record in enumerate(records):
        if seen.get(record.label, 0) < per_class:
            seen[record.label] = seen.get(record.label, 0) + 1
            chosen.append(index)
    return chosen


def validation_key(class_name: str, file_name: str) -> bytes:
    """The validation rank of a training video: sha1 of ``val/<class>/<file name>`` (salted, so
    it is independent of :func:`.sources.folder_split_is_test`'s hash); the lowest of a class validate."""
    return hashlib.sha1(f"val/{class_name}/{file_name}".encode()).digest()
