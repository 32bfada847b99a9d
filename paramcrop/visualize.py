"""Crop visualisation: a strip of frames of a raw clip with both views' cubes drawn on it,
followed by the frames of the two views. Written as PNG with matplotlib (Agg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def save_crop_strip(clip: Tensor, cube1: Tensor, cube2: Tensor, view1: Tensor, view2: Tensor,
                    path: Path, title: str = "", n_frames: int = 4) -> Path:
    """Draw one sample: ``clip (C, T, H, W)`` uint8 or float 0-255, ``cube* (6,)``,
    ``view* (C, t, h, w)`` on the same scale. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    def frames(x: Tensor, n: int) -> list[np.ndarray]:
        idx = np.linspace(0, x.shape[1] - 1, n).round().astype(int)
        arr = x.detach().float().clamp(0, 255).cpu().numpy().astype(np.uint8)
        return [arr[:, i].transpose(1, 2, 0) for i in idx], idx

    T, H, W = clip.shape[1:]
    src, src_idx = frames(clip, n_frames)
    fig, axes = plt.subplots(3, n_frames, figsize=(1.6 * n_frames, 5.0), squeeze=False)
    colours = ("tab:orange", "tab:cyan")
    for col, (img, t_idx) in enumerate(zip(src, src_idx)):
        ax = axes[0, col]
        ax.imshow(img)
        t_norm = (2 * t_idx + 1) / T - 1  # frame center in normalised time
        for cube, colour in zip((cube1, cube2), colours):
            cx, cy, ct, hx, hy, ht = (float(v) for v in cube)
            if abs(t_norm - ct) > ht:  # this frame is outside the view's time span
                continue
            x0, y0 = (cx - hx + 1) / 2 * W - 0.5, (cy - hy + 1) / 2 * H - 0.5
            ax.add_patch(Rectangle((x0, y0), hx * W, hy * H, fill=False, lw=1.5, ec=colour))
        ax.set_title(f"frame {t_idx}", fontsize=7)
    for row, (view, name, colour) in enumerate(((view1, "view 1", colours[0]), (view2, "view 2", colours[1])), 1):
        for col, (img, t_idx) in enumerate(zip(*frames(view, n_frames))):
            axes[row, col].imshow(img)
            axes[row, col].set_title(f"{name}, frame {t_idx}", fontsize=7, color=colour)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
