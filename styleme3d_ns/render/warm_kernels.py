"""Compile the CPU rasteriser's numba kernels once, at install time, so that the first run does not pause for it.

numba compiles a kernel on its first call and caches the machine code on disk (``cache=True``); with an empty cache
the first training step of a process waits about 13 s on 2 cores (docs/performance.md). ``scripts/install.sh`` runs
``python -m styleme3d_ns.render.warm_kernels``, which calls every kernel once, with the argument types a training
run uses (float32 tensors, unpacked, SH colours, a depth channel, a backward pass, the colour map's weights), on a
tiny random splat. Without numba there is nothing to compile, and it says so.
"""

from __future__ import annotations

import time

import torch

from . import compiled_composite
from .torch_rasterizer import composite_weights, rasterize_torch


def warm(num_gaussians: int = 256, size: int = 32, seed: int = 0) -> None:
    """Forward and backward through the compiled projection and compositing, and the colour-map weights, once.

    Args:
        num_gaussians: N random Gaussians in front of the camera; size: the square view's width and height (px).
    """
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(num_gaussians, 3, generator=gen) - 0.5) * torch.tensor([2.0, 2.0, 1.0])
    means[:, 2] += 3.0  # in front of the identity camera
    quats = torch.randn(num_gaussians, 4, generator=gen)
    scales = torch.full((num_gaussians, 3), 0.08)
    opacities = torch.full((num_gaussians,), 0.6)
    colours = torch.randn(num_gaussians, 16, 3, generator=gen) * 0.2  # SH degree 3, as splatfacto's
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]]])
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, colours)]
    render, alpha, _ = rasterize_torch(
        *params, viewmats=viewmat, Ks=K, width=size, height=size, sh_degree=3, packed=False, render_mode="RGB+ED"
    )
    (render.sum() + alpha.sum()).backward()
    with torch.no_grad():
        composite_weights(means, quats, scales, opacities, viewmat, K, size, size)


def main() -> None:
    if not compiled_composite.available():
        print("CPU rasteriser kernels: numba is not in use here (nothing to compile)")
        return
    start = time.perf_counter()
    warm()
    print(f"CPU rasteriser kernels compiled and cached ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
