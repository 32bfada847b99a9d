"""Data layer: source strings, the embedded synthetic benchmark, decord-backed clip datasets.

``resolve_source(source)`` -> :class:`DatasetSpec` (classes, train and test :class:`VideoRecord`
lists); :class:`TrainClips` and :class:`EvalClips` turn records into clip tensors.
"""
from .check import CheckReport, check_dataset
from .datasets import EvalClips, TrainClips
from .records import DatasetSpec, VideoRecord
from .sources import resolve_source
from .synthetic import SyntheticConfig, ensure_synthetic

__all__ = [
    "CheckReport",
    "DatasetSpec",
    "EvalClips",
    "SyntheticConfig",
    "TrainClips",
    "VideoRecord",
    "check_dataset",
    "ensure_synthetic",
    "resolve_source",
]
