"""Offline priors of `sas-portrait`: what keeps a one-photo head solid and its face recognisable without diffusion.

On a GPU, SAS (paper 001 eq. 9-14) and MVDream (eq. 15) tell every random view what a head looks like. Offline
only the photo's front view is supervised, so nothing asks the sides and back to stay opaque, and an optional Gram
style term on the random views pulls the face toward the style image. Two small pure functions answer that:

- :func:`template_silhouette` is where the head template (paper 001 IV.A.1, the splat's own initial points) covers a
  view; :class:`SilhouettePrior` penalises ``1 - alpha`` inside it on the random views, so the splat keeps at least
  the template's silhouette from every side;
- :func:`front_cone_mask` tells which guidance views are within a cone around the photo's camera, where the photo
  (not the style image) should decide the colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from styleme3d_ns.guidance.base import Guidance, GuidanceConfig
from styleme3d_ns.models.surface_densify import knn_indices
from styleme3d_ns.render.camera import viewmat_from_c2w

NEAR_PLANE = 0.01
"""Points closer to the camera than this are not projected (the rasteriser's near plane)."""


def template_silhouette(points: Tensor, c2w: Tensor, K: Tensor, width: int, height: int, spacing: float) -> Tensor:
    """Where the template surface covers a view: `[H, W]` bool.

    The template is a dense sample of a closed surface, so its projected points cover its silhouette up to gaps of
    about one point spacing. Each point is drawn as one pixel, and a morphological closing (dilate, then erode, by
    the spacing in pixels at the nearest point's depth) fills the gaps without growing the outline.

    Args:
        points: `[N, 3]` surface samples in world space (the head template).
        c2w: `[3, 4]` nerfstudio camera-to-world pose (OpenGL axes).
        K: `[3, 3]` pinhole intrinsics in pixels.
        width, height: image size in pixels.
        spacing: typical distance between neighbouring points (world units), e.g. the mean nearest-neighbour
            distance; it sets the closing radius.
    """
    viewmat = viewmat_from_c2w(c2w[None].to(points))[0]  # OpenCV: +z forward
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    cam = cam[cam[:, 2] > NEAR_PLANE]
    mask = torch.zeros(height, width, device=points.device)
    if cam.shape[0] == 0:
        return mask.bool()
    K = K.to(points)
    u = torch.floor(K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]).long()
    v = torch.floor(K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]).long()
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    mask[v[inside], u[inside]] = 1.0
    radius = max(1, math.ceil(float(K[0, 0]) * spacing / float(cam[:, 2].min())))
    size = 2 * radius + 1
    closed = F.max_pool2d(mask[None, None], size, stride=1, padding=radius)
    closed = -F.max_pool2d(-closed, size, stride=1, padding=radius)  # erosion; the border pads as "covered"
    return closed[0, 0] > 0.5


def silhouette_loss(alpha: Tensor, mask: Tensor) -> Tensor:
    """Mean ``1 - alpha`` over the pixels of `mask` (`[H, W]` bool); `alpha` `[H, W]` or `[H, W, 1]` in [0, 1].

    Zero when the render is opaque wherever the template is; pixels outside the template cost nothing (hair and
    shoulders may grow past it). An empty mask gives zero.
    """
    alpha = alpha.reshape(mask.shape)
    return (1.0 - alpha)[mask].sum() / mask.sum().clamp_min(1)


def azimuth_from_front_deg(c2w: Tensor, target: Tensor | None = None) -> Tensor:
    """`[V]` absolute azimuth in degrees (0 to 180) of cameras `[V, 3, 4]` about +y, measured from the front (+z).

    The portrait frame is +y up with the photo's camera on +z (:mod:`styleme3d_ns.data.portrait`); `target` `[3]`
    is the point the cameras orbit (default the origin, the head's centre).
    """
    offset = c2w[:, :3, 3] - (target if target is not None else torch.zeros(3, device=c2w.device, dtype=c2w.dtype))
    return torch.rad2deg(torch.atan2(offset[:, 0], offset[:, 2])).abs()


def front_cone_mask(c2w: Tensor, cone_deg: float) -> Tensor:
    """`[V]` bool: which cameras `[V, 3, 4]` are less than `cone_deg` degrees of azimuth from the photo's camera."""
    return azimuth_from_front_deg(c2w) < cone_deg


@dataclass
class SilhouettePriorConfig(GuidanceConfig):
    """Template-silhouette prior: mean ``1 - alpha`` over the template's pixels (0 to 1, like the front L1)."""


class SilhouettePrior(Guidance):
    """Keeps the splat at least as opaque as the head template from every random view (ours, offline)."""

    config: SilhouettePriorConfig

    def __init__(self, config: SilhouettePriorConfig, template_points: Tensor) -> None:
        """``template_points`` `[N, 3]`: the head template (the splat's initial points)."""
        super().__init__(config)
        self.register_buffer("points", template_points.detach().clone(), persistent=False)
        nearest = knn_indices(template_points, 1)[:, 0]
        # a uniform random sample leaves gaps up to ~2x its mean nearest-neighbour distance: closing by that much
        # fills the projected silhouette (no holes at 128-1024 px) without growing its outline
        self.spacing = 2.0 * float((template_points - template_points[nearest]).norm(dim=-1).mean())

    def forward(self, images: Tensor, step: int, *, alphas: Tensor, cameras: Cameras) -> dict[str, Tensor]:
        """``alphas`` `[V, H, W]` of the renders ``images`` `[V, 3, H, W]` from ``cameras`` (V views)."""
        height, width = alphas.shape[1:]
        K = cameras.get_intrinsics_matrices()
        terms = [
            silhouette_loss(alphas[i], template_silhouette(self.points, cameras.camera_to_worlds[i], K[i], width,
                                                           height, self.spacing))
            for i in range(alphas.shape[0])
        ]  # fmt: skip
        loss = torch.stack(terms).mean()
        return {"loss": self.config.weight * loss, "uncovered": loss.detach()}
