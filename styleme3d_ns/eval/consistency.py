"""Multi-view consistency: warp one view into another with rendered depth and score what disagrees.

The short-/long-range warped error of StyleGaussian and SGSST: a stylisation that is 3D-consistent paints a
surface point the same colour in every view, so view i re-projected into view j should match view j wherever
j's surface is visible in i. They warp with optical flow between video frames; we have the exact geometry, so
each target pixel is unprojected with the target view's rendered expected depth and projected into the source:

    X = c2w_j · (d_j(p) K_j⁻¹ [p, 1])       (world point seen at pixel p of j; OpenCV camera axes)
    (q, z_i) = π(K_i, w2c_i · X)            (where, and at which depth, view i sees X)
    warped(p) = bilinear(image_i, q)

A pixel is compared only if X is in front of camera i and q inside its frame, view i sees X and not something in
front of it (`|z_i - d_i(q)| <= tol · z_i`, the disocclusion test), and both views are opaque there (alpha >= 0.5).
The error of a pair is the RMSE over those pixels, in [0, 1] image units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.eval.render import RenderedViews
from styleme3d_ns.render.camera import viewmat_from_c2w

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

DEFAULT_DEPTH_TOLERANCE = 0.03
"""Relative depth disagreement above which a pixel counts as occluded in the source view (3% of its depth)."""
MIN_ALPHA = 0.5
"""Pixels less opaque than this (background, soft silhouettes) carry no surface to compare."""


@dataclass(frozen=True)
class PinholeCamera:
    """One pinhole camera, as nerfstudio stores it and our rasteriser uses it."""

    K: Tensor
    """`[3, 3]` intrinsics in pixels; pixel (x, y) spans [x, x + 1) so its centre is x + 0.5 (gsplat's convention)."""
    c2w: Tensor
    """`[3, 4]` camera-to-world pose in nerfstudio's OpenGL axes (x right, y up, looking down -z)."""
    width: int
    height: int

    @classmethod
    def from_cameras(cls, camera: Cameras) -> PinholeCamera:
        """From a nerfstudio `Cameras` holding one camera (`[1]` or `[]`); distortion is ignored, as the rasteriser."""
        K = camera.get_intrinsics_matrices().reshape(3, 3)
        return cls(
            K,
            camera.camera_to_worlds.reshape(3, 4),
            int(camera.width.reshape(-1)[0]),
            int(camera.height.reshape(-1)[0]),
        )

    def world_to_camera(self) -> Tensor:
        """`[4, 4]` world-to-camera in OpenCV axes (x right, y down, z forward): the rasteriser's `viewmat`."""
        return viewmat_from_c2w(self.c2w[None].double())[0]


def pixel_centres(width: int, height: int) -> Tensor:
    """`[H, W, 2]` continuous (x, y) coordinates of the pixel centres, float64."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([xs + 0.5, ys + 0.5], dim=-1)


def unproject(depth: Tensor, camera: PinholeCamera) -> Tensor:
    """World points `[H, W, 3]` (float64) seen at each pixel centre of `camera` at camera-space z `depth [H, W, 1]`."""
    K = camera.K.double()
    xy = pixel_centres(camera.width, camera.height)
    z = depth[..., 0].double()
    x = (xy[..., 0] - K[0, 2]) / K[0, 0] * z
    y = (xy[..., 1] - K[1, 2]) / K[1, 1] * z
    points = torch.stack([x, y, z], dim=-1)
    # invert the rasteriser's own view matrix so both directions share one convention
    c2w = torch.linalg.inv(camera.world_to_camera())
    return points @ c2w[:3, :3].T + c2w[:3, 3]


def project(points: Tensor, camera: PinholeCamera) -> tuple[Tensor, Tensor]:
    """Project world points `[..., 3]` into `camera`.

    Returns:
        continuous pixel coordinates `[..., 2]` (centre of pixel (x, y) at (x + 0.5, y + 0.5)) and camera-space
        z `[...]` (positive in front of the camera).
    """
    w2c = camera.world_to_camera()
    cam = points.double() @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[..., 2]
    K = camera.K.double()
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    u = K[0, 0] * cam[..., 0] / safe_z + K[0, 2]
    v = K[1, 1] * cam[..., 1] / safe_z + K[1, 2]
    return torch.stack([u, v], dim=-1), z


def _sample(image: Tensor, uv: Tensor) -> Tensor:
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
    src_camera: PinholeCamera,
    dst_depth: Tensor,
    dst_camera: PinholeCamera,
    *,
    src_alpha: Tensor | None = None,
    dst_alpha: Tensor | None = None,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
    min_alpha: float = MIN_ALPHA,
) -> tuple[Tensor, Tensor]:
    """Warp source view i into target view j using j's depth and both cameras.

    Args:
        src_rgb: `[H_i, W_i, 3]` source image in [0, 1]; src_depth `[H_i, W_i, 1]` its rendered camera-space z.
        dst_depth: `[H_j, W_j, 1]` the target view's camera-space z.
        src_alpha, dst_alpha: `[H, W, 1]` opacities in [0, 1]; None treats every pixel as opaque.
        depth_tolerance: relative depth disagreement allowed before a pixel counts as occluded in the source.

    Returns:
        the warped source `[H_j, W_j, 3]` (float32; meaningless where invalid) and the valid mask `[H_j, W_j]` bool.
    """
    points = unproject(dst_depth, dst_camera)
    uv, z = project(points, src_camera)
    channels = [src_rgb, src_depth] + ([src_alpha] if src_alpha is not None else [])
    sampled = _sample(torch.cat(channels, dim=-1), uv)
    warped, seen_depth = sampled[..., :3], sampled[..., 3]
    # the half-pixel margin keeps every bilinear tap inside the source frame
    inside = (uv[..., 0] >= 0.5) & (uv[..., 0] <= src_camera.width - 0.5)
    inside &= (uv[..., 1] >= 0.5) & (uv[..., 1] <= src_camera.height - 0.5)
    valid = inside & (z > 1e-6) & torch.isfinite(points).all(dim=-1) & (dst_depth[..., 0] > 0)
    valid &= (z - seen_depth).abs() <= depth_tolerance * z
    if src_alpha is not None:
        valid &= sampled[..., 4] >= min_alpha
    if dst_alpha is not None:
        valid &= dst_alpha[..., 0] >= min_alpha
    return warped.float(), valid


def masked_rmse(a: Tensor, b: Tensor, valid: Tensor) -> float | None:
    """RMSE in [0, 1] over the valid pixels (`[H, W]` bool) of images `[H, W, 3]`; None if no pixel is valid."""
    if not bool(valid.any()):
        return None
    return float(torch.sqrt(((a.double() - b.double()) ** 2)[valid].mean()))


@dataclass(frozen=True)
class ViewPair:
    """Source view i warped into target view j (ids of a camera pool)."""

    target: int
    source: int
    angle_deg: float
    """Angle between the two cameras' viewing directions."""


def viewing_angles(c2ws: Tensor) -> Tensor:
    """`[N, N]` angles in degrees between the viewing directions (-z of OpenGL c2w `[N, 3, 4]`) of all cameras."""
    forward = -c2ws[:, :3, 2].double()
    forward = forward / forward.norm(dim=-1, keepdim=True)
    return torch.rad2deg(torch.arccos((forward @ forward.T).clamp(-1.0, 1.0)))


def select_pairs(c2ws: Tensor, targets: Sequence[int], angle_deg: float) -> list[ViewPair]:
    """For each target camera, the other camera whose viewing direction is closest to `angle_deg` away.

    `angle_deg=0` gives short-range pairs (the nearest view, as consecutive video frames in StyleGaussian);
    90 gives long-range pairs. Cameras at the target's own pose are never paired with it.

    Args:
        c2ws: `[N, 3, 4]` nerfstudio poses of every candidate camera.
        targets: ids (rows of `c2ws`) to find partners for.
    """
    angles = viewing_angles(c2ws)
    centres = c2ws[:, :3, 3].double()
    pairs = []
    for t in targets:
        same_pose = (angles[t] < 1e-3) & ((centres - centres[t]).norm(dim=-1) < 1e-6)
        cost = (angles[t] - angle_deg).abs().masked_fill(same_pose, float("inf"))
        if not bool(torch.isfinite(cost).any()):
            continue
        source = int(cost.argmin())
        pairs.append(ViewPair(int(t), source, float(angles[t, source])))
    return pairs


@dataclass(frozen=True)
class PairError:
    """Warped error of one pair."""

    pair: ViewPair
    rmse: float | None
    """RMSE in [0, 1] over valid pixels; None when no pixel survives the masks."""
    valid_fraction: float
    """Share of the target's pixels that were compared."""
    lpips: float | None = None
    """LPIPS of the masked warped source vs the masked target (None when LPIPS is unavailable)."""


def pair_errors(
    views: RenderedViews,
    cameras: Mapping[int, PinholeCamera],
    pairs: Sequence[ViewPair],
    *,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
    lpips: nn.Module | None = None,
) -> list[PairError]:
    """Warped error of each pair, warping with the renders' own depth (a run is scored on its own geometry)."""
    errors = []
    for pair in pairs:
        src, dst = views.select([pair.source]), views.select([pair.target])
        warped, valid = warp_to_view(
            src.rgb[0], src.depth[0], cameras[pair.source], dst.depth[0], cameras[pair.target],
            src_alpha=None if src.alpha is None else src.alpha[0],
            dst_alpha=None if dst.alpha is None else dst.alpha[0],
            depth_tolerance=depth_tolerance,
        )  # fmt: skip
        target = dst.rgb[0]
        score = None
        if lpips is not None and bool(valid.any()):
            mask = valid[..., None].float()
            with torch.no_grad():
                score = float(lpips((warped * mask).permute(2, 0, 1)[None], (target * mask).permute(2, 0, 1)[None]))
        errors.append(PairError(pair, masked_rmse(warped, target, valid), float(valid.float().mean()), score))
    return errors


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
