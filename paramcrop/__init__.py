"""paramcrop: learned view generation (ParamCrop and friends) for video contrastive learning.

The public API: cube geometry (:func:`view_iou`, :func:`center_distance`, :func:`cube_to_theta`),
differentiable cropping (:func:`crop_video`) and the crop methods (:func:`create_crop`).
"""
__version__ = "0.1.0"

from paramcrop.crops import CROPS, CropMethod, CVRLCrop, ParamCrop, RandomCubicCrop, Views, create_crop
from paramcrop.geometry import center_distance, crop_video, cube_to_theta, view_iou

__all__ = [
    "__version__", "CROPS", "CropMethod", "CVRLCrop", "ParamCrop", "RandomCubicCrop", "Views",
    "center_distance", "create_crop", "crop_video", "cube_to_theta", "view_iou",
]
