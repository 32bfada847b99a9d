"""paramcrop: learned view generation (ParamCrop and friends) for video contrastive learning.

The public API: cube geometry (:func:`view_iou`, :func:`center_distance`, :func:`cube_to_theta`),
differentiable cropping (:func:`crop_video`), the crop methods (:func:`create_crop`), their degrees
of freedom (:func:`parse_dof`), a learned crop's update (:class:`Adversary`, ``crop.adversary(lr)``) and
:func:`load_backbone` (a run's logged backbone from MLflow; MLflow is imported only when it is called).
"""
__version__ = "0.1.0"

from paramcrop.crops import (CROPS, Adversary, CropMethod, CVRLCrop, DegreesOfFreedom, ParamCrop, RandomCubicCrop,
                             Views, create_crop, parse_dof)
from paramcrop.geometry import center_distance, crop_video, cube_to_theta, view_iou
from paramcrop.transfer import load_backbone

__all__ = [
    "__version__", "CROPS", "Adversary", "CropMethod", "DegreesOfFreedom", "CVRLCrop", "ParamCrop", "RandomCubicCrop",
    "Views", "center_distance", "create_crop", "crop_video", "cube_to_theta", "load_backbone", "parse_dof", "view_iou",
]
