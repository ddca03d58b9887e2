"""Camera conversions between nerfstudio (OpenGL c2w) and the rasteriser (OpenCV w2c)."""

from __future__ import annotations

import torch
from torch import Tensor

# nerfstudio cameras look down -Z with +Y up (OpenGL); gsplat expects OpenCV (+Z forward, +Y down).
_OPENGL_TO_OPENCV = (1.0, -1.0, -1.0)


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
