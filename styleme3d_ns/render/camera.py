"""Camera poses, once for the package: look-at, orbits (as poses or square pinhole cameras), and the nerfstudio
(OpenGL) to rasteriser (OpenCV) switch.

Every pose here is a nerfstudio camera-to-world matrix `[V, 3, 4]` in OpenGL axes: columns are the camera's right
(+x), up (+y) and backward (+z) directions in world coordinates, then its position; the camera looks down its -z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

# nerfstudio cameras look down -Z with +Y up (OpenGL); gsplat expects OpenCV (+Z forward, +Y down).
_OPENGL_TO_OPENCV = (1.0, -1.0, -1.0)

Vector = Tensor | Sequence[float]


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera matrices for the rasteriser.

    Args:
        c2w: nerfstudio camera-to-world poses `[C, 3, 4]` (OpenGL axes).

    Returns:
        `[C, 4, 4]` world-to-camera matrices in OpenCV axes, as gsplat's `viewmats`.

    Same maths as splatfacto's `get_viewmat`, without its `torch.compile` (which needs a
    compiler toolchain on CPU and recompiles per shape).
    """
    rot = c2w[:, :3, :3] * c2w.new_tensor(_OPENGL_TO_OPENCV)[None, None, :]
    trans = c2w[:, :3, 3:4]
    rot_inv = rot.transpose(1, 2)
    viewmat = torch.zeros(c2w.shape[0], 4, 4, device=c2w.device, dtype=c2w.dtype)
    viewmat[:, 3, 3] = 1.0
    viewmat[:, :3, :3] = rot_inv
    viewmat[:, :3, 3:4] = -torch.bmm(rot_inv, trans)
    return viewmat


def homogeneous(c2w: Tensor) -> Tensor:
    """`[V, 4, 4]` poses from `[V, 3, 4]` ones (bottom row 0, 0, 0, 1)."""
    bottom = c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(c2w.shape[0], 1, 4)
    return torch.cat([c2w, bottom], dim=1)


def look_at(eyes: Vector, target: Vector, up: Vector = (0.0, 0.0, 1.0), *, dtype: torch.dtype | None = None) -> Tensor:
    """nerfstudio camera-to-world poses `[V, 3, 4]` (OpenGL) at `eyes` looking at `target`.

    Args:
        eyes: camera positions `[V, 3]` (or one `[3]`).
        target: the point looked at, `[3]` or one per camera `[V, 3]`.
        up: world up `[3]`; each camera's +y lies in the plane of `up` and its viewing direction.
        dtype: of the computation and result (default: `eyes`' when it is a float tensor, else float32).

    Raises:
        ValueError: a camera looks along `up` (straight down or up), where its roll is undefined.
    """
    if dtype is None:
        dtype = eyes.dtype if isinstance(eyes, Tensor) and eyes.is_floating_point() else torch.float32
    eyes = torch.as_tensor(eyes, dtype=dtype).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=dtype, device=eyes.device)
    back = eyes - target  # the camera's +z points away from what it looks at
    back = back / back.norm(dim=-1, keepdim=True)
    world_up = torch.as_tensor(up, dtype=dtype, device=eyes.device).expand_as(back)
    right = torch.linalg.cross(world_up, back, dim=-1)
    if bool((right.norm(dim=-1) < 1e-6).any()):
        raise ValueError("look_at: a camera looks along the up vector (straight up or down); its roll is undefined")
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.linalg.cross(back, right, dim=-1)
    return torch.stack([right, cam_up, back, eyes], dim=-1)


def _azimuth_zero(up: Tensor, azimuth_zero: Vector | None) -> Tensor:
    """Unit direction of azimuth 0, orthogonal to the unit `up`: the given one, else the world axis after `up`'s
    largest component in the cycle x -> y -> z -> x (+z up: +x; +y up: +z; +x up: +y)."""
    if azimuth_zero is None:
        zero = torch.zeros_like(up)
        zero[(int(up.abs().argmax()) + 1) % 3] = 1.0
    else:
        zero = torch.as_tensor(azimuth_zero, dtype=up.dtype, device=up.device)
    zero = zero - (zero @ up) * up  # Gram-Schmidt; exact when already orthogonal
    return zero / zero.norm()


def orbit_poses(
    azimuth_deg: Vector,
    elevation_deg: Vector,
    radius: float | Tensor = 1.0,
    target: Vector = (0.0, 0.0, 0.0),
    up: Vector = (0.0, 0.0, 1.0),
    *,
    azimuth_zero: Vector | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """nerfstudio camera-to-world poses `[V, 3, 4]` (OpenGL) on a sphere around `target`, each looking at it.

    The camera of view v sits at `target + radius * d_v`, with
    `d_v = cos(el_v) (cos(az_v) e0 + sin(az_v) (up x e0)) + sin(el_v) up`: azimuth turns counter-clockwise seen
    from above (right-handed about `up`) starting at `e0 = azimuth_zero`, elevation lifts towards `up`.

    Args:
        azimuth_deg: `[V]` degrees about `up`.
        elevation_deg: `[V]` degrees above the plane through `target` orthogonal to `up`, in (-90, 90).
        radius: distance to the target, a float or `[V]`.
        target: the point looked at `[3]`.
        up: world up axis `[3]` (normalised here).
        azimuth_zero: direction of azimuth 0 `[3]` (made orthogonal to `up`); default the world axis after `up`
            (+z up: +x, +y up: +z, +x up: +y).
        dtype: of the computation and result.
    """
    azimuth = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=dtype).reshape(-1, 1))
    elevation = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=dtype).reshape(-1, 1))
    up_t = torch.as_tensor(up, dtype=dtype)
    up_t = up_t / up_t.norm()
    e0 = _azimuth_zero(up_t, azimuth_zero)
    e1 = torch.linalg.cross(up_t, e0, dim=-1)
    direction = torch.cos(elevation) * (torch.cos(azimuth) * e0 + torch.sin(azimuth) * e1) + torch.sin(elevation) * up_t
    radius_t = torch.as_tensor(radius, dtype=dtype).reshape(-1, 1)
    target_t = torch.as_tensor(target, dtype=dtype)
    return look_at(target_t + radius_t * direction, target_t, up_t)


def square_cameras(c2w: Tensor, image_size: int, fov_deg: float) -> Cameras:
    """Square pinhole nerfstudio `Cameras [V]` for poses `[V, 3, 4]`: `image_size` pixels, `fov_deg` field of view,
    principal point at the centre."""
    from nerfstudio.cameras.cameras import Cameras, CameraType

    n = c2w.shape[0]
    focal = 0.5 * image_size / math.tan(math.radians(fov_deg) / 2.0)
    full = lambda value: torch.full((n, 1), float(value))  # noqa: E731
    size = torch.full((n, 1), image_size, dtype=torch.long)
    centre = full(image_size / 2.0)
    return Cameras(camera_to_worlds=c2w.float(), fx=full(focal), fy=full(focal), cx=centre, cy=centre.clone(),
                   width=size, height=size.clone(), camera_type=CameraType.PERSPECTIVE)  # fmt: skip


def orbit_cameras(
    azimuth_deg: Vector, elevation_deg: Vector, radius: float | Tensor, image_size: int, fov_deg: float, **orbit: Any
) -> Cameras:
    """Square pinhole nerfstudio `Cameras [V]` on :func:`orbit_poses` (`orbit`: its target, up and azimuth_zero)."""
    return square_cameras(orbit_poses(azimuth_deg, elevation_deg, radius, **orbit), image_size, fov_deg)


def ring(num_views: int, start_deg: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """`[num_views]` azimuths (degrees) evenly spaced around the circle from `start_deg`."""
    return start_deg + torch.arange(num_views, dtype=dtype) * (360.0 / num_views)
