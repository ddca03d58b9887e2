"""Multi-view consistency: warp one view into another with rendered depth and score what disagrees.

The short-/long-range warped error of StyleGaussian and SGSST: a stylisation that is 3D-consistent paints a
surface point the same colour in every view, so view i re-projected into view j should match view j wherever
j's surface is visible in i. They warp with optical flow between video frames; we have the exact geometry, so each
target pixel is unprojected with the target view's rendered expected depth and projected into the source
(:mod:`styleme3d_ns.render.warp`, shared with paper 004's disparity loss), with its occlusion and opacity masks.
The error of a pair is the RMSE over the valid pixels, in [0, 1] image units; a range's error is the mean over its
pairs weighted by their valid pixels (a pair that shares 0.02% of its pixels says little about consistency).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from styleme3d_ns.eval.render import RenderedViews
from styleme3d_ns.render import warp
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.warp import DEFAULT_DEPTH_TOLERANCE, MIN_ALPHA

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras


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
    """:func:`styleme3d_ns.render.warp.warp_to_view` between two nerfstudio cameras (same arguments and returns)."""
    return warp.warp_to_view(
        src_rgb, src_depth, src_camera.K, src_camera.world_to_camera(),
        dst_depth, dst_camera.K, dst_camera.world_to_camera(),
        src_alpha=src_alpha, dst_alpha=dst_alpha, depth_tolerance=depth_tolerance, min_alpha=min_alpha,
    )  # fmt: skip


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


def mean_defined(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    """Mean of the values that are not None, weighted by ``weights`` (e.g. valid pixels) if given; None if there
    are none (or their weights sum to 0)."""
    weights = [1.0] * len(values) if weights is None else list(weights)
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)


@contextlib.contextmanager
def sh_dc_only(model: nn.Module) -> Iterator[None]:
    """Render ``model`` from its SH DC only: its higher SH bands (splatfacto's ``features_rest``, and the stored base
    colours' ``base_features_rest`` when present) are zeroed inside the block and restored after it."""
    tensors = [model.gauss_params["features_rest"]]
    if isinstance(getattr(model, "base_features_rest", None), Tensor):
        tensors.append(model.base_features_rest)
    saved = [t.detach().clone() for t in tensors]
    try:
        with torch.no_grad():
            for t in tensors:
                t.zero_()
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)


def view_dependent_share(full: Mapping[str, Any], dc_only: Mapping[str, Any]) -> dict[str, Any]:
    """How much of each range's warped error view-dependent colour adds: full / DC-only - 1, base and stylised.

    Args:
        full, dc_only: consistency summaries (``{"short_range": {"rmse_base", "rmse_stylised", ...}, ...}``) of the
            same views rendered with all SH bands and with the DC only.
    """
    share: dict[str, Any] = {}
    for name in ("short_range", "long_range"):
        if name not in full or name not in dc_only:
            continue
        share[name] = {}
        for key in ("rmse_base", "rmse_stylised"):
            a, b = full[name].get(key), dc_only[name].get(key)
            share[name][key.replace("rmse", "added")] = None if a is None or not b else a / b - 1.0
    return share
