"""An orbit of cameras around what a run's cameras look at (paper 001 scores 120 renders around the subject)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.render import camera

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras


def look_at_point(c2ws: Tensor) -> Tensor:
    """`[3]` least-squares point closest to every camera's optical axis (nerfstudio c2w `[N, 3, 4]`, OpenGL).

    Minimises sum_k |(I - f_k f_kᵀ)(x - c_k)|² over x, with c_k the camera centre and f_k its viewing direction.
    """
    centres = c2ws[:, :3, 3].double()
    forward = -c2ws[:, :3, 2].double()
    forward = forward / forward.norm(dim=-1, keepdim=True)
    projectors = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
    A = projectors.sum(dim=0)
    b = (projectors @ centres[:, :, None]).sum(dim=0)[:, 0]
    eigenvalues = torch.linalg.eigvalsh(A)
    if float(eigenvalues[0]) < 1e-3 * float(eigenvalues[-1]):
        raise UserInputError(
            "the run's cameras do not converge on a common point (forward-facing capture?), so there is no orbit "
            "to render for --portrait; portrait metrics need an object-centred (turntable-like) capture"
        )
    return torch.linalg.solve(A, b)


def orbit_around(c2ws: Tensor, num_views: int) -> Tensor:
    """`[num_views, 3, 4]` OpenGL c2w poses evenly spaced in azimuth around the cameras' common look-at point.

    The orbit's axis is the cameras' mean up vector; its radius and elevation are the median of the input
    cameras', and azimuth 0 is the first camera's, so an input turntable is reproduced.
    """
    centre = look_at_point(c2ws)
    up = c2ws[:, :3, 1].double().mean(dim=0)
    up = up / up.norm()
    offsets = c2ws[:, :3, 3].double() - centre
    radius = offsets.norm(dim=-1).median()
    elevation = torch.arcsin((offsets @ up / offsets.norm(dim=-1)).clamp(-1.0, 1.0)).median()
    azimuths = camera.ring(num_views, dtype=torch.float64)
    elevations = torch.rad2deg(elevation).expand(num_views)
    poses = camera.orbit_poses(azimuths, elevations, radius, centre, up, azimuth_zero=offsets[0], dtype=torch.float64)
    return poses.to(c2ws.dtype)


def orbit_around_cameras(c2ws: Tensor, template: Cameras, num_views: int) -> Cameras:
    """nerfstudio `Cameras [num_views]` on :func:`orbit_around`, with the intrinsics of `template` (one camera)."""
    from nerfstudio.cameras.cameras import Cameras

    poses = orbit_around(c2ws, num_views)
    expand = lambda t: t.reshape(1, -1)[:, :1].expand(num_views, 1).clone()  # noqa: E731
    return Cameras(
        camera_to_worlds=poses,
        fx=expand(template.fx),
        fy=expand(template.fy),
        cx=expand(template.cx),
        cy=expand(template.cy),
        width=expand(template.width),
        height=expand(template.height),
        camera_type=expand(template.camera_type),
    )
