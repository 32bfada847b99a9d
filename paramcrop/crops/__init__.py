"""Crop methods, one file each, created by name through :func:`create_crop`."""
from paramcrop.crops.base import CROPS, CropMethod, Views, create_crop
from paramcrop.crops.cvrl import CVRLCrop, sample_power_law_interval
from paramcrop.crops.paramcrop import ParamCrop, grad_reverse, squash
from paramcrop.crops.random import RandomCubicCrop

__all__ = [
    "CROPS", "CropMethod", "Views", "create_crop", "CVRLCrop", "ParamCrop",
    "RandomCubicCrop", "grad_reverse", "sample_power_law_interval", "squash",
]
