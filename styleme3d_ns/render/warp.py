"""Depth warping between two rendered views: which pixel of view i shows the surface point seen at pixel p of j.

Used by the cross-view disparity loss (guidance/disparity.py, paper 004 eq. 7) and the warped consistency error
(eval/consistency.py). Each target pixel is unprojected with the target's rendered camera-space depth and projected
into the source:

    X = w2c_j⁻¹ · (d_j(p) K_j⁻¹ [p, 1])     (world point seen at pixel p of j; OpenCV camera axes, gsplat's viewmat)
    (q, z_i) = π(K_i, w2c_i · X)            (where, and at which depth, view i sees X)
    warped(p) = bilinear(image_i, q)

A pixel corresponds only if X is in front of camera i and q inside its frame, view i sees X and not something in
front of it (`|z_i - d_i(q)| <= tol · z_i`, the disocclusion test), and both views are opaque there (alpha >= 0.5).
Geometry is computed in float64; the warped colours are differentiable w.r.t. the source image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DEPTH_TOLERANCE = 0.03
"""Relative depth disagreement above which a pixel counts as occluded in the source view (3% of its depth)."""
MIN_ALPHA = 0.5
"""Pixels less opaque than this (background, soft silhouettes) carry no surface to compare."""


def pixel_centres(width: int, height: int, device: torch.device | str = "cpu") -> Tensor:
    """`[H, W, 2]` continuous (x, y) coordinates of the pixel centres, float64 (pixel (x, y) spans [x, x + 1))."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.stack([xs + 0.5, ys + 0.5], dim=-1)


def unproject(depth: Tensor, K: Tensor, viewmat: Tensor) -> Tensor:
    """World points `[H, W, 3]` (float64) seen at each pixel centre at camera-space z `depth [H, W, 1]`.

    Args:
        K: `[3, 3]` intrinsics in pixels; viewmat: `[4, 4]` world-to-camera (OpenCV axes), as the rasteriser takes.
    """
    K = K.double()
    height, width = depth.shape[:2]
    xy = pixel_centres(width, height, depth.device)
    z = depth[..., 0].double()
    x = (xy[..., 0] - K[0, 2]) / K[0, 0] * z
    y = (xy[..., 1] - K[1, 2]) / K[1, 1] * z
    points = torch.stack([x, y, z], dim=-1)
    c2w = torch.linalg.inv(viewmat.double())  # invert the rasteriser's own matrix: both directions share one convention
    return points @ c2w[:3, :3].T + c2w[:3, 3]


def project(points: Tensor, K: Tensor, viewmat: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points `[..., 3]` with intrinsics `K [3, 3]` and world-to-camera `viewmat [4, 4]`.

    Returns:
        continuous pixel coordinates `[..., 2]` (centre of pixel (x, y) at (x + 0.5, y + 0.5)) and camera-space
        z `[...]` (positive in front of the camera).
    """
    w2c = viewmat.double()
    cam = points.double() @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[..., 2]
    K = K.double()
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    u = K[0, 0] * cam[..., 0] / safe_z + K[0, 2]
    v = K[1, 1] * cam[..., 1] / safe_z + K[1, 2]
    return torch.stack([u, v], dim=-1), z


def sample_bilinear(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinearly sample `image [H, W, C]` at continuous pixel coordinates `uv [h, w, 2]`; returns `[h, w, C]`."""
    height, width = image.shape[:2]
    # align_corners=False: -1 and 1 are the outer edges of the border pixels, i.e. coordinates 0 and W
    grid = torch.stack([2.0 * uv[..., 0] / width - 1.0, 2.0 * uv[..., 1] / height - 1.0], dim=-1)
    sampled = F.grid_sample(
        image.double().permute(2, 0, 1)[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[0].permute(1, 2, 0)


def warp_to_view(
    src_rgb: Tensor,
    src_depth: Tensor,
    src_K: Tensor,
    src_viewmat: Tensor,
    dst_depth: Tensor,
    dst_K: Tensor,
    dst_viewmat: Tensor,
    *,
    src_alpha: Tensor | None = None,
    dst_alpha: Tensor | None = None,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
    min_alpha: float = MIN_ALPHA,
) -> tuple[Tensor, Tensor]:
    """Warp source view i into target view j using j's depth and both cameras.

    Args:
        src_rgb: `[H_i, W_i, C]` source image; src_depth `[H_i, W_i, 1]` its rendered camera-space z.
        src_K, dst_K: `[3, 3]` intrinsics; src_viewmat, dst_viewmat: `[4, 4]` world-to-camera (OpenCV axes).
        dst_depth: `[H_j, W_j, 1]` the target view's camera-space z.
        src_alpha, dst_alpha: `[H, W, 1]` opacities in [0, 1]; None treats every pixel as opaque.
        depth_tolerance: relative depth disagreement allowed before a pixel counts as occluded in the source.

    Returns:
        the warped source `[H_j, W_j, C]` (``src_rgb``'s dtype, differentiable w.r.t. it; meaningless where invalid)
        and the valid mask `[H_j, W_j]` bool.
    """
    points = unproject(dst_depth, dst_K, dst_viewmat)
    uv, z = project(points, src_K, src_viewmat)
    channels = src_rgb.shape[-1]
    geometry = [src_depth] + ([src_alpha] if src_alpha is not None else [])
    sampled = sample_bilinear(torch.cat([src_rgb.double(), *(g.detach().double() for g in geometry)], dim=-1), uv)
    warped, seen_depth = sampled[..., :channels], sampled[..., channels]
    width, height = src_rgb.shape[1], src_rgb.shape[0]
    # the half-pixel margin keeps every bilinear tap inside the source frame
    inside = (uv[..., 0] >= 0.5) & (uv[..., 0] <= width - 0.5) & (uv[..., 1] >= 0.5) & (uv[..., 1] <= height - 0.5)
    valid = inside & (z > 1e-6) & torch.isfinite(points).all(dim=-1) & (dst_depth[..., 0] > 0)
    valid &= (z - seen_depth).abs() <= depth_tolerance * z
    if src_alpha is not None:
        valid &= sampled[..., channels + 1] >= min_alpha
    if dst_alpha is not None:
        valid &= dst_alpha[..., 0] >= min_alpha
    return warped.to(src_rgb.dtype), valid.detach()
