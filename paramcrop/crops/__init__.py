"""Crop methods, one file each, created by name through :func:`create_crop`."""
from paramcrop.crops.adversary import Adversary
from paramcrop.crops.base import CROPS, CropMethod, Views, create_crop, method_label
from paramcrop.crops.curriculum import CurriculumCrop
from paramcrop.crops.cvrl import CVRLCrop, sample_power_law_interval
from paramcrop.crops.dof import PARAMETERS as DOF_PARAMETERS
from paramcrop.crops.dof import PRESETS as DOF_PRESETS
from paramcrop.crops.dof import DegreesOfFreedom, parse_dof
from paramcrop.crops.hardest import HardestViews
from paramcrop.crops.matched import MatchedRandomCrop
from paramcrop.crops.paramcrop import ParamCrop, clip_summary, grad_reverse, squash
from paramcrop.crops.random import RandomCubicCrop
from paramcrop.crops.replay import ReplayCrop

__all__ = [
    "CROPS", "DOF_PARAMETERS", "DOF_PRESETS", "Adversary", "CropMethod", "DegreesOfFreedom", "Views",
    "create_crop", "method_label", "CurriculumCrop", "CVRLCrop", "HardestViews", "MatchedRandomCrop", "ParamCrop", "RandomCubicCrop",
    "ReplayCrop",
    "clip_summary", "grad_reverse", "parse_dof", "sample_power_law_interval", "squash",
]
