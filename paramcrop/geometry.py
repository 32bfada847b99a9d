"""View geometry: cubes, their overlap and distance, and differentiable cropping.

A *cube* describes where a view was cut from its clip: a float tensor ``(..., 6)`` =
``(cx, cy, ct, hx, hy, ht)``, the center and half-extent per axis (x = width, y = height,
t = time) in normalised video coordinates, ``-1`` = outer edge of the first pixel/frame and
``+1`` = outer edge of the last (``align_corners=False``). The whole clip is
``(0, 0, 0, 1, 1, 1)``. Every crop method, random or learned, produces cubes, so the
disparity between views is measured identically for all of them.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_AXES = {"x": 0, "y": 1, "t": 2}
FULL_CUBE = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)


def _axis_indices(axes: str) -> list[int]:
    if not axes or any(a not in _AXES for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"axes must be a non-empty combination of 'x', 'y', 't' (e.g. 'xyt'), got {axes!r}")
    return [_AXES[a] for a in axes]


def _check_cubes(cubes: Tensor, name: str = "cubes") -> None:
    if cubes.shape[-1:] != (6,):
        raise ValueError(f"{name} must have shape (..., 6) = (cx, cy, ct, hx, hy, ht), got {tuple(cubes.shape)}")


def view_iou(a: Tensor, b: Tensor, axes: str = "xyt") -> Tensor:
    """Volume IoU of two boxes: ``(..., 6), (..., 6) -> (...)``.

    The intersection is the product of per-axis overlaps over ``axes`` ("xyt" volume,
    "xy" spatial area, "t" temporal length). Differentiable almost everywhere.
    """
    _check_cubes(a, "a")
    _check_cubes(b, "b")
    idx = _axis_indices(axes)
    ca, ha = a[..., idx], a[..., [i + 3 for i in idx]]
    cb, hb = b[..., idx], b[..., [i + 3 for i in idx]]
    lo = torch.maximum(ca - ha, cb - hb)
    hi = torch.minimum(ca + ha, cb + hb)
    inter = (hi - lo).clamp(min=0).prod(-1)
    vol_a = (2 * ha).prod(-1)
    vol_b = (2 * hb).prod(-1)
    return inter / (vol_a + vol_b - inter)


def center_distance(a: Tensor, b: Tensor, axes: str = "xyt") -> Tensor:
    """Euclidean distance of the two cube centers over ``axes``: ``(..., 6), (..., 6) -> (...)``."""
    _check_cubes(a, "a")
    _check_cubes(b, "b")
    idx = _axis_indices(axes)
    # sqrt of a sum of squares, written out so the gradient at distance 0 is 0 rather than NaN
    sq = (a[..., idx] - b[..., idx]).pow(2).sum(-1)
    return torch.where(sq > 0, sq.clamp(min=torch.finfo(sq.dtype).tiny).sqrt(), sq)


def view_disparity(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """The six view metrics (:mod:`paramcrop.sinks`) as batch means (scalar tensors), keyed by metric name."""
    out = {}
    for suffix, axes in (("", "xyt"), ("_xy", "xy"), ("_t", "t")):
        out[f"view/iou{suffix}"] = view_iou(a, b, axes).mean()
        out[f"view/center_distance{suffix}"] = center_distance(a, b, axes).mean()
    return out


def cube_spread(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """The sample standard deviation (ddof 1) over the batch of each cube parameter of both views
    ``(B, 6)``, as 0-d tensors keyed by :func:`paramcrop.sinks.cube_std_metric` (``train/cube_std/view1/cx``, ...)."""
    from paramcrop.sinks import CUBE_PARAMS, cube_std_metric

    return {cube_std_metric(view, name): value for view, cubes in ((1, a), (2, b))
            for name, value in zip(CUBE_PARAMS, cubes.std(0))}


def cube_to_theta(cubes: Tensor) -> Tensor:
    """Affine matrices for ``F.affine_grid`` on 5-D input: ``(..., 6) -> (..., 3, 4)``.

    Row order follows ``affine_grid``'s (x, y, t) grid coordinates: an output coordinate ``u``
    samples the input at ``c + h * u`` per axis.
    """
    _check_cubes(cubes)
    theta = cubes.new_zeros(*cubes.shape[:-1], 3, 4)
    for axis in range(3):
        theta[..., axis, axis] = cubes[..., axis + 3]
        theta[..., axis, 3] = cubes[..., axis]
    return theta


def crop_video_reference(video: Tensor, cubes: Tensor, size: Sequence[int]) -> Tensor:
    """``crop_video`` through ``F.affine_grid`` + ``F.grid_sample`` (the definition of a cube's crop)."""
    t, h, w = _check_size(size)
    x = video if video.is_floating_point() else video.float()  # grid_sample needs a float input
    theta = cube_to_theta(cubes).to(x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], t, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check_size(size: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be (t, h, w) with positive entries, got {tuple(size)}")
    return int(size[0]), int(size[1]), int(size[2])


def _interp_taps(center: Tensor, half: Tensor, n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Two-tap linear interpolation along one axis, exactly as ``grid_sample`` computes it.

    ``center, half: (B,)`` -> ``i0: (B, n_out) long``, ``w0, w1: (B, n_out)`` with the output
    sample ``w0 * x[i0] + w1 * x[i0 + 1]`` (``i0 + 1`` is valid whenever ``w1`` can be non-zero).
    Border padding clamps the source coordinate; like ``grid_sample`` the clamped coordinate has
    zero gradient at and beyond the border.
    """
    # output voxel centers in normalised coordinates (affine_grid, align_corners=False)
    u = (torch.arange(n_out, device=center.device, dtype=center.dtype) * 2 + 1) / n_out - 1
    g = center[:, None] + half[:, None] * u  # (B, n_out) normalised source coordinate
    pos = ((g + 1) * n_in - 1) / 2  # unnormalise to pixel index space
    inside = (pos > 0) & (pos < n_in - 1)
    pos = torch.where(inside, pos, pos.detach().clamp(0, n_in - 1))
    if n_in == 1:
        i0 = torch.zeros_like(pos, dtype=torch.long)
        return i0, torch.ones_like(pos), torch.zeros_like(pos)
    i0 = pos.detach().floor().clamp(max=n_in - 2).long()
    w1 = pos - i0
    return i0, 1 - w1, w1


def _lerp(r0: Tensor, r1: Tensor, w1: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(r0 + (r1 - r0) * w1, r1 - r0)`` for the two freshly gathered taps, in ``dtype``.

    Two passes over the data, in place in the two buffers (``w0 * r0 + w1 * r1`` would take three
    and allocate; fresh large buffers cost page faults on CPU).
    """
    r0, r1 = r0.to(dtype), r1.to(dtype)
    d = r1.sub_(r0)
    return r0.addcmul_(d, w1), d


def _rows_pair(x: Tensor, i0: Tensor, n_in: int) -> tuple[Tensor, Tensor]:
    """Rows ``i0`` and ``i0 + 1`` along dim 2 of ``x (B, P, n_in, Q)``, each ``(B, P, n_out, Q)``.

    One ``index_select`` of whole contiguous rows per tap (cheap, no expanded index).
    """
    B, P, _, Q = x.shape
    n_out = i0.shape[1]
    base = (torch.arange(B * P, device=x.device) * n_in).view(B, P, 1)
    idx0 = (base + i0[:, None, :]).reshape(-1)
    idx1 = idx0 + (1 if n_in > 1 else 0)
    rows = x.reshape(B * P * n_in, Q)
    return rows.index_select(0, idx0).view(B, P, n_out, Q), rows.index_select(0, idx1).view(B, P, n_out, Q)


def _last_pair(x: Tensor, i0: Tensor, n_in: int) -> tuple[Tensor, Tensor]:
    """Entries ``i0`` and ``i0 + 1`` along the last dim of ``x (B, P, n_in)``, each ``(B, P, n_out)``."""
    B, P, _ = x.shape
    idx0 = i0[:, None, :].expand(B, P, i0.shape[1])
    return x.gather(2, idx0), x.gather(2, idx0 + (1 if n_in > 1 else 0))


def _interp_rows(x: Tensor, i0: Tensor, w1: Tensor, n_in: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Interpolate along dim 2 of ``x (B, P, n_in, Q)`` -> ``(B, P, n_out, Q)`` with per-sample taps;
    also returns the tap difference ``x[i0 + 1] - x[i0]`` (the derivative in the tap position)."""
    r0, r1 = _rows_pair(x, i0, n_in)
    return _lerp(r0, r1, w1[:, None, :, None], dtype)


def _interp_last(x: Tensor, i0: Tensor, w1: Tensor, n_in: int) -> tuple[Tensor, Tensor]:
    """Interpolate along the last dim of ``x (B, P, n_in)`` -> ``(B, P, n_out)`` (``gather``), and
    the tap difference."""
    r0, r1 = _last_pair(x, i0, n_in)
    return _lerp(r0, r1, w1[:, None, :], x.dtype)


def crop_video(video: Tensor, cubes: Tensor, size: Sequence[int]) -> Tensor:
    """Cut each clip to its cube by trilinear resampling: ``(B, C, T, H, W) -> (B, C, t, h, w)``.

    Args:
        video: ``(B, C, T, H, W)``, uint8 or floating point.
        cubes: ``(B, 6)`` cubes in normalised coordinates (see module docstring).
        size: output ``(t, h, w)``.

    Returns:
        float32 for uint8 input (values on the input's 0-255 scale, not rescaled), otherwise the
        input's dtype. Equal, in value and in gradient with respect to ``cubes``, to
        ``grid_sample(video, affine_grid(cube_to_theta(cubes)), mode="bilinear",
        padding_mode="border", align_corners=False)`` (:func:`crop_video_reference`).

    Two exact implementations; the faster one for the case is used (``benchmarks/crop.py``):
    for CPU clips (uint8, float32, float64) without a gradient to the video, the separable form
    (three 1-D two-tap passes; uint8 is converted to float only for the frames it needs) with an
    analytic backward to the cubes only (:class:`_SeparableCrop`; measured 2026-12-01 against
    ``grid_sample``: 0.5-0.8x its time forward, 0.7-1.0x forward+backward, at the quickstart's and
    ``benchmarks/crop.py``'s sizes); otherwise (CUDA: one fused kernel launch; a gradient to the
    video) ``grid_sample``. Training with ``compile: true`` cuts on CPU with the compiled
    :func:`crop_video_taps` instead (0.24-0.35x forward, 0.8x forward+backward).
    """
    _check_crop_args(video, cubes, size)
    if video.dtype in _SEPARABLE_DTYPES and not video.is_cuda and not (video.requires_grad and
                                                                       torch.is_grad_enabled()):
        dtype = video.dtype if video.is_floating_point() else torch.float32
        return _SeparableCrop.apply(video, cubes.to(dtype), _check_size(size))
    return crop_video_reference(video, cubes, size)


_SEPARABLE_DTYPES = (torch.uint8, torch.float32, torch.float64)


def _check_crop_args(video: Tensor, cubes: Tensor, size: Sequence[int]) -> None:
    if video.dim() != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
    _check_cubes(cubes)
    if cubes.shape[:-1] != video.shape[:1]:
        raise ValueError(f"cubes must be (B, 6) with B = {video.shape[0]}, got {tuple(cubes.shape)}")
    _check_size(size)


def crop_video_separable(video: Tensor, cubes: Tensor, size: Sequence[int]) -> Tensor:
    """:func:`crop_video` as three separable 1-D two-tap passes (time, height, width), the first
    two gathering whole contiguous rows. Differentiable with respect to ``cubes`` (and ``video``);
    uint8 input is converted only after the temporal pass has picked the frames it needs."""
    _check_crop_args(video, cubes, size)
    t, h, w = _check_size(size)
    dtype = video.dtype if video.is_floating_point() else torch.float32
    cubes = cubes.to(dtype)
    B, C, T, H, W = video.shape
    cx, cy, ct, hx, hy, ht = cubes.unbind(-1)
    i0, _, w1 = _interp_taps(ct, ht, T, t)  # time: (B, C, T, H*W) -> (B, C, t, H*W)
    x, _ = _interp_rows(video.reshape(B, C, T, H * W), i0, w1, T, dtype)
    i0, _, w1 = _interp_taps(cy, hy, H, h)  # height: (B, C*t, H, W) -> (B, C*t, h, W)
    x, _ = _interp_rows(x.reshape(B, C * t, H, W), i0, w1, H, dtype)
    i0, _, w1 = _interp_taps(cx, hx, W, w)  # width: (B, C*t*h, W) -> (B, C*t*h, w)
    x, _ = _interp_last(x.reshape(B, C * t * h, W), i0, w1, W)
    return x.reshape(B, C, t, h, w)


def crop_taps(cubes: Tensor, n_in: tuple[int, int, int], n_out: tuple[int, int, int]) -> list[tuple[Tensor, Tensor]]:
    """``(i0, w1)`` of the two-tap interpolation for time, height and width, each ``(B, n_out)``,
    for ``cubes (B, 6)`` on a clip of ``n_in = (T, H, W)`` cut to ``n_out = (t, h, w)``."""
    cx, cy, ct, hx, hy, ht = cubes.unbind(-1)
    return [_interp_taps(c, half, n, m)[::2] for c, half, n, m in zip((ct, cy, cx), (ht, hy, hx), n_in, n_out)]


def crop_video_taps(video: Tensor, cubes: Tensor, size: Sequence[int], taps=crop_taps) -> Tensor:
    """:func:`crop_video` gathering each output voxel's eight trilinear taps: the form ``torch.compile``
    fuses into a loop over the output (the CPU crop when ``compile`` is on, :meth:`CropMethod.fuse
    <paramcrop.crops.base.CropMethod.fuse>`, through :func:`traceable_crop_video_taps`; eagerly this
    form is slower than the separable one, as it materialises the four time-height taps).
    ``(B, C, T, H, W)`` uint8 or float, ``(B, 6)`` -> ``(B, C, t, h, w)``, float32 for uint8 input;
    differentiable with respect to ``cubes`` and ``video``, with ``grid_sample``'s values and
    gradients to float rounding."""
    _check_crop_args(video, cubes, size)
    t, h, w = _check_size(size)
    B, C, T, H, W = video.shape
    dtype = video.dtype if video.is_floating_point() else torch.float32
    (it, wt), (iy, wy), (ix, wx) = taps(cubes.to(dtype), (T, H, W), (t, h, w))
    b = torch.arange(B, device=video.device).view(B, 1, 1, 1)
    c = torch.arange(C, device=video.device).view(1, C, 1, 1)
    it, iy, wy = it.view(B, 1, t, 1), iy.view(B, 1, 1, h), wy.view(B, 1, 1, h, 1)
    dt, dy, dx = int(T > 1), int(H > 1), int(W > 1)  # the second tap (its weight is 0 on a length-1 axis)

    def rows(ti: Tensor, yi: Tensor) -> Tensor:  # whole source rows (B, C, t, h, W)
        return video[b, c, ti, yi].to(dtype)

    def lerp(a: Tensor, b: Tensor, weight: Tensor) -> Tensor:  # not torch.lerp: its weight gradient fuses worse
        return a + (b - a) * weight

    near = lerp(rows(it, iy), rows(it, iy + dy), wy)
    far = lerp(rows(it + dt, iy), rows(it + dt, iy + dy), wy)
    x = lerp(near, far, wt.view(B, 1, t, 1, 1))
    idx = ix.view(B, 1, 1, 1, w).expand(B, C, t, h, w)
    return lerp(x.gather(4, idx), x.gather(4, idx + dx), wx.view(B, 1, 1, 1, w))


def traceable_crop_video_taps() -> Callable[[Tensor, Tensor, Sequence[int]], Tensor]:
    """:func:`crop_video_taps` for ``torch.compile``: its taps computed outside the graph
    (``torch.compiler.disable``; inlined, inductor recomputes them for every voxel and the compiled
    crop is slower than the eager one). Imports ``torch._dynamo`` (1 s), hence a function."""
    return functools.partial(crop_video_taps, taps=torch.compiler.disable(crop_taps))


def _pos_scales(center: Tensor, half: Tensor, n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """``d pos / d center`` and ``d pos / d half``, ``(B, n_out)`` each, zero where clamped."""
    u = (torch.arange(n_out, device=center.device, dtype=center.dtype) * 2 + 1) / n_out - 1
    pos = ((center[:, None] + half[:, None] * u + 1) * n_in - 1) / 2
    d_center = ((pos > 0) & (pos < n_in - 1)).to(center.dtype) * (n_in / 2)
    return d_center, d_center * u


_CHUNK_ELEMENTS = 1 << 19  # clips per chunk: about this many floats (2 MiB) after the time pass


def _chunks(B: int, per_clip: int) -> list[tuple[int, int]]:
    """Batch slices for :class:`_SeparableCrop`: working in cache-sized chunks of clips keeps the
    intermediates small, so they are reused from the allocator's heap instead of being fresh
    (page-faulting) allocations and stay in cache between the passes."""
    step = max(1, _CHUNK_ELEMENTS // max(per_clip, 1))
    return [(b0, min(b0 + step, B)) for b0 in range(0, B, step)]


class _SeparableCrop(torch.autograd.Function):
    """The separable crop with an analytic gradient to the cubes only (the video gets none).

    Per axis the output is ``w0 * x[i0] + w1 * x[i0 + 1]`` with ``w1 = pos - i0``, so
    ``d out / d pos = x[i0 + 1] - x[i0]`` along that axis with the other two axes interpolated.
    The backward recomputes the passes chunk by chunk, keeping each pass's tap difference
    (time: then interpolated in height and width; height: then in width; width: as is), contracts
    them with the upstream gradient, then ``d pos / d c = n / 2``, ``d pos / d h = n u / 2`` (zero
    where the coordinate is clamped at the border). Nothing but the inputs is kept for it.
    """

    @staticmethod
    def forward(ctx, video: Tensor, cubes: Tensor, size: tuple[int, int, int]) -> Tensor:
        t, h, w = size
        B, C, T, H, W = video.shape
        dtype = cubes.dtype
        cx, cy, ct, hx, hy, ht = cubes.unbind(-1)
        it, _, wt = _interp_taps(ct, ht, T, t)
        iy, _, wy = _interp_taps(cy, hy, H, h)
        ix, _, wx = _interp_taps(cx, hx, W, w)
        out = torch.empty(B, C * t * h, w, dtype=dtype, device=video.device)
        for b0, b1 in _chunks(B, C * t * H * W):
            n = b1 - b0
            x, _ = _interp_rows(video[b0:b1].reshape(n, C, T, H * W), it[b0:b1], wt[b0:b1], T, dtype)
            x, _ = _interp_rows(x.reshape(n, C * t, H, W), iy[b0:b1], wy[b0:b1], H, dtype)
            r0, r1 = _last_pair(x.reshape(n, C * t * h, W), ix[b0:b1], W)
            r0, r1 = r0.to(dtype), r1.to(dtype)
            torch.addcmul(r0, r1.sub_(r0), wx[b0:b1, None, :], out=out[b0:b1])
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(video, cubes, it, iy, ix, wt, wy, wx)
        return out.view(B, C, t, h, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        video, cubes, it, iy, ix, wt, wy, wx = ctx.saved_tensors
        B, C, T, H, W = video.shape
        _, _, t, h, w = grad.shape
        dtype = cubes.dtype
        grad = grad.reshape(B, C * t * h, w)
        gpos_x = cubes.new_empty(B, w)
        gpos_y = cubes.new_empty(B, h)
        gpos_t = cubes.new_empty(B, t)
        for b0, b1 in _chunks(B, C * t * H * W):
            n, g = b1 - b0, grad[b0:b1]
            x, d_t = _interp_rows(video[b0:b1].reshape(n, C, T, H * W), it[b0:b1], wt[b0:b1], T, dtype)
            x, d_y = _interp_rows(x.reshape(n, C * t, H, W), iy[b0:b1], wy[b0:b1], H, dtype)
            e_t, _ = _interp_rows(d_t.reshape(n, C * t, H, W), iy[b0:b1], wy[b0:b1], H, dtype)
            r0, r1 = _last_pair(x.reshape(n, C * t * h, W), ix[b0:b1], W)
            torch.sum(r1.sub_(r0).mul_(g), 1, out=gpos_x[b0:b1])
            e_y, _ = _interp_last(d_y.reshape(n, C * t * h, W), ix[b0:b1], wx[b0:b1], W)
            torch.sum(e_y.mul_(g).view(n, C * t, h, w), (1, 3), out=gpos_y[b0:b1])
            e_t, _ = _interp_last(e_t.reshape(n, C * t * h, W), ix[b0:b1], wx[b0:b1], W)
            torch.sum(e_t.mul_(g).view(n, C, t, h * w), (1, 3), out=gpos_t[b0:b1])
        cx, cy, ct, hx, hy, ht = cubes.unbind(-1)
        grads = []
        for gpos, (c, hh, n, m) in zip((gpos_x, gpos_y, gpos_t), ((cx, hx, W, w), (cy, hy, H, h), (ct, ht, T, t))):
            s_c, s_h = _pos_scales(c, hh, n, m)
            grads.append(((gpos * s_c).sum(1), (gpos * s_h).sum(1)))
        grad_cubes = torch.stack([grads[0][0], grads[1][0], grads[2][0], grads[0][1], grads[1][1], grads[2][1]], -1)
        return None, grad_cubes, None

