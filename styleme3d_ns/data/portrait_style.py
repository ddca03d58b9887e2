"""The portrait styled like the scenes: the offline teacher stylises the trained head from every side at once.

``styleme3d`` stylises a reconstructed scene with the offline teacher (:mod:`styleme3d_ns.guidance.style_teacher`:
Magenta stylisation of each view, harmonised across neighbouring views, then one least-squares colour solve). A
portrait's splat is a whole head from the start (:mod:`styleme3d_ns.data.portrait_prior`), so once it has trained on
the photo the same teacher styles it from a ring of views around it: every side gets the style from the same solve,
so the sides agree with each other and with the front (ours; paper 001 styles with SAS and MVDream instead).

The splat's colours here are plain RGB (sas-portrait trains at ``sh_degree`` 0, sigmoid colours); the teacher solves
SH DC coefficients, which are RGB up to ``rgb = SH_C0 * dc + 0.5``, so the colours go in and come back through it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from styleme3d_ns.data.portrait import HEAD_FRAME, PortraitRig
from styleme3d_ns.guidance.style_teacher import StyleTeacher
from styleme3d_ns.render.backend import rasterize
from styleme3d_ns.render.camera import orbit_cameras, viewmat_from_c2w
from styleme3d_ns.render.colour_map import ColourMap
from styleme3d_ns.render.sh import SH_C0

RING_ELEVATIONS_DEG = ((0.0, 8), (25.0, 4), (-20.0, 4))
"""The teacher's views: (elevation in degrees, views evenly spaced in azimuth) rings around the head."""
TEACHER_MAX_SIZE = 384
"""The teacher's views are never larger than the Magenta network's input (pixels)."""


def teacher_views(rig: PortraitRig, scale: float = 4 / 3) -> tuple[Tensor, Tensor, int]:
    """World-to-camera matrices `[V, 4, 4]` (OpenCV axes), intrinsics `[V, 3, 3]` and the side in pixels of the
    teacher's ring of views (:data:`RING_ELEVATIONS_DEG`), each `scale` times the rig's image size (capped)."""
    size = min(TEACHER_MAX_SIZE, math.ceil(rig.image_size * scale))
    azimuth, elevation = [], []
    for degrees, count in RING_ELEVATIONS_DEG:
        offset = 0.0 if degrees == 0.0 else 180.0 / count  # the tilted rings look between the level ones
        azimuth += [offset + k * 360.0 / count for k in range(count)]
        elevation += [degrees] * count
    cameras = orbit_cameras(torch.tensor(azimuth), torch.tensor(elevation), rig.radius, size, rig.fov_deg, **HEAD_FRAME)
    return viewmat_from_c2w(cameras.camera_to_worlds), cameras.get_intrinsics_matrices(), size


@torch.no_grad()
def stylise_colours(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    rgb: Tensor,
    teacher: StyleTeacher,
    rig: PortraitRig,
    background: Tensor,
) -> Tensor:
    """The teacher's colours `[N, 3]` in [0, 1] for a fixed splat seen from a ring of views around the head.

    Args:
        means `[N, 3]`, quats `[N, 4]` (wxyz), scales `[N, 3]` (> 0), opacities `[N]` in [0, 1]: the splat.
        rgb: `[N, 3]` its colours in [0, 1] (the content the teacher starts from and its ridge pulls toward).
        teacher: the offline teacher with its style image.
        rig: the portrait's cameras (distance, field of view, image size).
        background: `[3]` in [0, 1], composited behind the splat as training renders it.
    """
    viewmats, Ks, size = teacher_views(rig)
    viewmats, Ks = viewmats.to(means), Ks.to(means)
    maps, depths = [], []
    for viewmat, K in zip(viewmats, Ks, strict=True):
        maps.append(ColourMap.build(means, quats, scales, opacities, viewmat, K, size, size, sh_degree=0))
        render, _, _ = rasterize(means, quats, scales, opacities, rgb, viewmat[None], K[None], size, size,
                                 packed=False, render_mode="ED")  # fmt: skip
        depths.append(render[0].permute(2, 0, 1))
    sh = ((rgb - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3] SH DC
    solved = teacher.fit(maps, sh, sh, background, torch.stack(depths), viewmats, Ks, means=means)
    return (solved[:, 0] * SH_C0 + 0.5).clamp(0.0, 1.0)
