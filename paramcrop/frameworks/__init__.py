"""Self-supervised frameworks, one file each, created by name through :func:`create_framework`."""
from torch import nn

from paramcrop.frameworks.base import (
    FRAMEWORKS, POS_SIM, Framework, FrameworkOutput, MomentumFramework, ema_update_, encode_pair, pool,
)
from paramcrop.frameworks.byol import BYOL, byol_loss
from paramcrop.frameworks.moco import MoCo, moco_infonce_loss
from paramcrop.frameworks.simclr import SimCLR, nt_xent_loss
from paramcrop.heads import MLP_HEAD, HeadSpec


def create_framework(name: str, backbone: nn.Module, head: HeadSpec = MLP_HEAD, **params) -> Framework:
    """Build a registered framework (``simclr``, ``moco``, ``byol``) around ``backbone`` with projection
    ``head`` (:class:`~paramcrop.heads.HeadSpec`, the MLP by default)."""
    return FRAMEWORKS.create(name, backbone, head, **params)


__all__ = [
    "BYOL", "FRAMEWORKS", "POS_SIM", "Framework", "FrameworkOutput", "MoCo", "MomentumFramework", "SimCLR",
    "byol_loss", "create_framework", "ema_update_", "encode_pair", "moco_infonce_loss", "nt_xent_loss", "pool",
]
