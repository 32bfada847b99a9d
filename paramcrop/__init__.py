"""paramcrop: learned view generation (ParamCrop and friends) for video contrastive learning.

The public API: cube geometry (:func:`view_iou`, :func:`center_distance`, :func:`cube_to_theta`),
differentiable cropping (:func:`crop_video`), the crop methods (:func:`create_crop`), their degrees
of freedom (:func:`parse_dof`) and a learned crop's update (:class:`Adversary`, ``crop.adversary(lr)``).
"""
__version__ = "0.1.0"

from paramcrop.crops import (CROPS, Adversary, CropMethod, CVRLCrop, DegreesOfFreedom, ParamCrop, RandomCubicCrop,
                             Views, create_crop, parse_dof)
from paramcrop.geometry import center_distance, crop_video, cube_to_theta, view_iou

__all__ = [
    "__version__", "CROPS", "Adversary", "CropMethod", "DegreesOfFreedom", "CVRLCrop", "ParamCrop", "RandomCubicCrop",
    "Views", "center_distance", "create_crop", "crop_video", "cube_to_theta", "parse_dof", "view_iou",
]
