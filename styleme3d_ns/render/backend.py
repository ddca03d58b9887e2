"""``rasterize``: gsplat.rasterization's signature, dispatching to gsplat (CUDA) or our torch rasteriser."""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from .torch_rasterizer import rasterize_torch

Backend = Literal["auto", "gsplat", "torch"]


@functools.cache
def gsplat_cuda_status() -> tuple[bool, str]:
    """Whether gsplat's compiled CUDA ops load and run here, as ``(usable, reason_if_not)``.

    Checked once per process (cached): imports ``gsplat.cuda._backend`` and runs a tiny
    spherical-harmonics op on the GPU. Any failure - missing extension, a CUDA toolkit that
    is present but cannot build/load it, driver errors - means "not usable".
    """
    if not torch.cuda.is_available():
        return False, "torch.cuda is not available"
    try:
        from gsplat.cuda._backend import _C

        if _C is None:
            return False, "gsplat's CUDA extension is not built (no CUDA toolkit found)"
        from gsplat.cuda._wrapper import spherical_harmonics

        dirs = torch.tensor([[0.0, 0.0, 1.0]], device="cuda")
        spherical_harmonics(0, dirs, torch.zeros(1, 1, 3, device="cuda"))
        torch.cuda.synchronize()
    except Exception as err:  # deliberately broad: ImportError/OSError/RuntimeError/CalledProcessError from JIT, ...
        lines = str(err).strip().splitlines()
        return False, f"{type(err).__name__}: {lines[0] if lines else ''}"
    return True, ""


def resolve_backend(backend: Backend, device: torch.device) -> Literal["gsplat", "torch"]:
    """Pick the implementation for tensors on ``device``.

    "auto" -> gsplat only for CUDA tensors with working gsplat CUDA ops, else torch;
    "gsplat" -> gsplat or a one-line ``RuntimeError``; "torch" -> torch.
    """
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_cuda_status()[0] else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise RuntimeError(f"backend='gsplat' needs CUDA tensors, got device '{device}'; use backend='torch'")
        usable, reason = gsplat_cuda_status()
        if not usable:
            raise RuntimeError(f"backend='gsplat' is unusable: {reason}; use backend='torch'")
        return "gsplat"
    raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: Literal["pinhole", "ortho", "fisheye"] = "pinhole",
    covars: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Rasterise N 3D Gaussians into C images; a drop-in for ``gsplat.rasterization`` (1.4.0).

    All arguments before ``backend`` have gsplat's names, defaults and meaning.

    Args:
        means: Gaussian centres, world space. [N, 3]
        quats: Rotations as quaternions (w, x, y, z); normalised internally. [N, 4]
        scales: Axis scales (post-activation, > 0). [N, 3]
        opacities: Opacities (post-sigmoid) in [0, 1]. [N]
        colors: Without ``sh_degree``: colours / features [N, D] or per-camera [C, N, D].
            With ``sh_degree``: SH coefficients [N, K, 3] or [C, N, K, 3], K >= (sh_degree + 1)^2.
        viewmats: World-to-camera transforms. [C, 4, 4]
        Ks: Pinhole intrinsics (not differentiated). [C, 3, 3]
        width: Image width in pixels.
        height: Image height in pixels.
        near_plane: Gaussians with camera z < near_plane are culled. Default 0.01.
        far_plane: Gaussians with camera z > far_plane are culled. Default 1e10.
        radius_clip: Gaussians whose pixel radius is <= this are culled. Default 0.0.
        eps2d: Low-pass added to the 2D covariance diagonal (pixels^2). Default 0.3.
        sh_degree: SH degree in [0, 3] (torch backend) to evaluate; None for plain colours.
            SH colours are ``clamp_min(SH(dirs) . coeffs + 0.5, 0)`` with dirs = means - camera centre.
        packed: If True, ``info`` tensors are packed to the visible (camera, Gaussian) pairs [nnz, ...]
            with ``camera_ids``/``gaussian_ids``; else they are [C, N, ...]. Default True.
        tile_size: Tile edge in pixels. Default 16.
        backgrounds: Background colours blended as ``render + (1 - alpha) * bg``. [C, D]
        render_mode: "RGB" colours; "D" accumulated z-depth sum_i w_i z_i; "ED" expected depth
            D / alpha; "RGB+D" / "RGB+ED" append that depth as the last channel.
        sparse_grad: gsplat only (sparse COO grads for means/quats/scales with packed=True);
            the torch backend raises ValueError.
        absgrad: If True, after backward ``info["means2d"].absgrad`` holds, per (camera, Gaussian),
            the sum over pixels of |dL/d means2d| of each pixel's contribution (AbsGS). [C, N, 2] / [nnz, 2]
        rasterize_mode: "classic", or "antialiased" (opacities times sqrt(det(cov2d) / det(cov2d + eps2d I))).
        channel_chunk: gsplat's channel batching; the torch backend composites all channels at once.
        distributed: gsplat only (multi-GPU); the torch backend raises ValueError.
        camera_model: "pinhole" or "ortho" ("fisheye": gsplat backend only).
        covars: Optional world covariances replacing quats/scales. [N, 3, 3] or upper triangle [N, 6]
        backend: "auto" (gsplat when the tensors are on CUDA and its compiled ops work, else torch),
            "gsplat" (force; one-line RuntimeError if unusable) or "torch" (pure PyTorch, any device).

    Returns:
        render_colors: [C, height, width, X]; X = D for "RGB", 1 for "D"/"ED", D + 1 for "RGB+D"/"RGB+ED".
        render_alphas: Accumulated opacity 1 - T_final in [0, 1]. [C, height, width, 1]
        info: dict with
            - ``camera_ids``, ``gaussian_ids``: [nnz] int64 if packed, else None.
            - ``radii``: integer 3-sigma pixel radius, 0 = culled. [C, N] or [nnz], int32
            - ``means2d``: projected centres (pixels); non-leaf, ``.retain_grad()`` works. [C, N, 2] / [nnz, 2]
            - ``depths``: camera-space z. [C, N] / [nnz]
            - ``conics``: inverse 2D covariance (a, b, c). [C, N, 3] / [nnz, 3]
            - ``opacities``: per-view opacities (after anti-aliasing compensation). [C, N] / [nnz]
            - ``tile_width``, ``tile_height``, ``tile_size``, ``width``, ``height``, ``n_cameras``: ints.
            - ``tiles_per_gauss``: tiles touched by each Gaussian's radius box. [C, N] / [nnz], int32
            - gsplat backend only: ``isect_ids``, ``flatten_ids`` [n_isects] and ``isect_offsets``
              [C, tile_height, tile_width] (the torch backend bins differently and omits them).
    """
    if resolve_backend(backend, means.device) == "gsplat":
        from gsplat.rendering import rasterization as gsplat_rasterization

        raster = gsplat_rasterization
    else:
        raster = rasterize_torch
    return raster(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=packed,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode=render_mode,
        sparse_grad=sparse_grad,
        absgrad=absgrad,
        rasterize_mode=rasterize_mode,
        channel_chunk=channel_chunk,
        distributed=distributed,
        camera_model=camera_model,
        covars=covars,
    )
