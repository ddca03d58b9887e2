"""A textured plane of Gaussians facing three side-by-side cameras: the small scene the cross-view tests share."""

from __future__ import annotations

import torch
from torch import Tensor


def textured_plane(side: int, sigma: float, frequency: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`side`² flat Gaussians on the plane z = 3 (x, y in [-1.6, 1.6]) with smoothly varying colours.

    Returns means `[N, 3]`, quats `[N, 4]` (identity), scales `[N, 3]` (`sigma` in-plane, 0.005 across), opacities
    `[N]` (0.95) and RGB `[N, 2]` in [0.2, 0.8]: red and green follow sin/cos of `frequency` times x and y (callers
    add their own blue channel).
    """
    xs = torch.linspace(-1.6, 1.6, side)
    x, y = torch.meshgrid(xs, xs, indexing="xy")
    means = torch.stack([x.reshape(-1), y.reshape(-1), torch.full((x.numel(),), 3.0)], dim=1)
    n = len(means)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    scales = torch.tensor([[sigma, sigma, 0.005]]).repeat(n, 1)
    opacities = torch.full((n,), 0.95)
    red_green = torch.stack([0.5 + 0.3 * torch.sin(frequency * means[:, 0]),
                             0.5 + 0.3 * torch.cos(frequency * means[:, 1])], dim=1)  # fmt: skip
    return means, quats, scales, opacities, red_green


def side_by_side_cameras(focal: float, size: int) -> tuple[Tensor, Tensor]:
    """World-to-camera `[3, 4, 4]` (cameras at x = 0.25, 0, -0.25 looking down +z) and intrinsics `[3, 3, 3]`."""
    viewmats = torch.eye(4).repeat(3, 1, 1)
    viewmats[:, 0, 3] = torch.tensor([-0.25, 0.0, 0.25])
    Ks = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]]).repeat(3, 1, 1)
    return viewmats, Ks
