"""Brute-force reference for the tile rasteriser: every pixel against every Gaussian.

Deliberately naive and loop-free: a dense [C, pixels, N] evaluation with a cumprod over
depth-sorted Gaussians. Projection and SH come from gsplat's own pure-torch
implementation (``gsplat.cuda._torch_impl``) so that the reference shares no code with
``styleme3d_ns.render``. The compositing rules are gsplat 1.4.0's CUDA kernel
(``rasterize_to_pixels_fwd``):

* a Gaussian is only considered for pixels in the tiles its integer 3-sigma radius touches;
* alpha = min(0.999, opacity * exp(-sigma)); skipped when sigma < 0 or alpha < 1/255;
* a pixel stops at the first Gaussian whose next transmittance would be <= 1e-4, and that
  Gaussian is not added.

Shared by ``tests/test_render.py`` and ``scripts/bench_render.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def reference_project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> dict[str, Tensor]:
    """Project with gsplat's torch reference; returns [C, N, ...] tensors incl. per-camera colours."""
    C, N = viewmats.shape[0], means.shape[0]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, comps = _fully_fused_projection(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )
    opac = opacities[None].expand(C, N)
    if comps is not None:
        opac = opac * comps
    if sh_degree is not None:
        campos = torch.inverse(viewmats)[:, None, :3, 3]  # [C, 1, 3]
        coeffs = colors if colors.dim() == 4 else colors[None].expand(C, -1, -1, -1)
        rgb = torch.clamp_min(_spherical_harmonics(sh_degree, means[None] - campos, coeffs) + 0.5, 0.0)
    else:
        rgb = colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)
    if render_mode in ("D", "ED"):
        rgb = depths[..., None]
    elif render_mode in ("RGB+D", "RGB+ED"):
        rgb = torch.cat([rgb, depths[..., None]], dim=-1)
    return {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac, "colors": rgb}


def _depth_sorted(proj: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reorder every [C, N, ...] tensor by increasing depth per camera (stable, like gsplat's sort)."""
    order = torch.argsort(proj["depths"].detach(), dim=1, stable=True)  # [C, N]
    out = {}
    for key, val in proj.items():
        idx = order.reshape(order.shape + (1,) * (val.dim() - 2)).expand_as(val)
        out[key] = torch.gather(val, 1, idx)
    out["order"] = order
    return out


def _pixel_centres(width: int, height: int, pixel_ids: Tensor) -> tuple[Tensor, Tensor]:
    return (pixel_ids % width).double() + 0.5, (pixel_ids // width).double() + 0.5


def _composite(
    dx: Tensor,
    dy: Tensor,
    px: Tensor,
    py: Tensor,
    srt: dict[str, Tensor],
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor]:
    """Composite depth-sorted Gaussians given pixel deltas ``mean - centre`` [C, P, N].

    ``px``/``py`` are the pixel centres [P]; ``srt`` holds depth-sorted [C, N, ...] tensors.
    Returns colours [C, P, D] and final transmittance [C, P].
    """
    dtype = dx.dtype
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    # gsplat's tile rectangle per Gaussian: [floor(m/ts - r/ts), ceil(m/ts + r/ts)) clamped to the grid.
    r = srt["radii"].to(dtype) / tile_size
    m_t = srt["means2d"].detach() / tile_size
    tx0 = torch.floor(m_t[..., 0] - r).clamp(0, tile_w)
    tx1 = torch.ceil(m_t[..., 0] + r).clamp(0, tile_w)
    ty0 = torch.floor(m_t[..., 1] - r).clamp(0, tile_h)
    ty1 = torch.ceil(m_t[..., 1] + r).clamp(0, tile_h)
    ptx = torch.floor(px / tile_size)[None, :, None]
    pty = torch.floor(py / tile_size)[None, :, None]
    in_tile = (ptx >= tx0[:, None]) & (ptx < tx1[:, None]) & (pty >= ty0[:, None]) & (pty < ty1[:, None])

    a, b, c = (srt["conics"][:, None, :, i] for i in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(srt["opacities"][:, None, :] * torch.exp(-sigma), ALPHA_MAX)
    valid = in_tile & (srt["radii"] > 0)[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(valid, alpha, torch.zeros_like(alpha))

    t_incl = torch.cumprod(1.0 - alpha, dim=-1)  # transmittance after each Gaussian
    t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
    keep = t_incl > T_MIN  # exclusive stop: the Gaussian that would cross 1e-4 is dropped
    render = torch.einsum("cpn,cnd->cpd", alpha * t_excl * keep, srt["colors"])
    t_final = torch.prod(torch.where(keep, 1.0 - alpha, torch.ones_like(alpha)), dim=-1)
    return render, t_final


def reference_composite(srt: dict[str, Tensor], pixel_ids: Tensor, width: int, height: int, tile_size: int = 16):
    """Composite depth-sorted Gaussians onto the given row-major pixels [P] -> ([C, P, D], [C, P])."""
    px, py = (t.to(srt["means2d"].dtype) for t in _pixel_centres(width, height, pixel_ids))
    dx = srt["means2d"][:, None, :, 0] - px[None, :, None]  # [C, P, N]
    dy = srt["means2d"][:, None, :, 1] - py[None, :, None]
    return _composite(dx, dy, px, py, srt, width, height, tile_size)


def reference_rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Differentiable brute-force rasterisation (one dense pass; small scenes only).

    Returns render [C, H, W, D], alpha [C, H, W, 1] and a dict with the projection
    ([C, N, ...], original Gaussian order).
    """
    C = viewmats.shape[0]
    proj = reference_project(
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
        eps2d=eps2d,
        sh_degree=sh_degree,
        render_mode=render_mode,
        rasterize_mode=rasterize_mode,
    )
    srt = _depth_sorted(proj)
    pixel_ids = torch.arange(width * height, device=means.device)
    render, t_final = reference_composite(srt, pixel_ids, width, height, tile_size)
    alpha = 1.0 - t_final
    if backgrounds is not None:
        if render_mode in ("D", "ED"):
            backgrounds = torch.zeros_like(backgrounds[:, :1])
        elif render_mode in ("RGB+D", "RGB+ED"):
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], dim=-1)
        render = render + t_final[..., None] * backgrounds[:, None, :]
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha[..., None].clamp(min=1e-10)], dim=-1)
    return render.reshape(C, height, width, -1), alpha.reshape(C, height, width, 1), proj


def reference_absgrad(
    proj: dict[str, Tensor],
    width: int,
    height: int,
    grad_render: Tensor,
    grad_alpha: Tensor,
    tile_size: int = 16,
) -> Tensor:
    """Sum over pixels of |dL/d means2d| contributed by each pixel, [C, N, 2] (gsplat's absgrad).

    ``proj`` is :func:`reference_project`'s output; ``grad_render`` [C, H, W, D] and ``grad_alpha``
    [C, H, W, 1] define L = <render, g> + <alpha, ga> (before any ED normalisation / background).
    The projected tensors are treated as leaves: absgrad is a rasteriser-only quantity.
    """
    srt = _depth_sorted({k: v.detach() for k, v in proj.items()})
    C, N = srt["means2d"].shape[:2]
    P = width * height
    px, py = (t.to(srt["means2d"].dtype) for t in _pixel_centres(width, height, torch.arange(P)))
    # One copy of the means per pixel, so autograd reports each pixel's gradient separately.
    per_pixel = srt["means2d"][:, None].expand(C, P, N, 2).clone().requires_grad_(True)
    dx = per_pixel[..., 0] - px[None, :, None]
    dy = per_pixel[..., 1] - py[None, :, None]
    render, t_final = _composite(dx, dy, px, py, srt, width, height, tile_size)
    loss = (render * grad_render.reshape(C, P, -1)).sum() + ((1.0 - t_final) * grad_alpha.reshape(C, P)).sum()
    loss.backward()
    absgrad_sorted = per_pixel.grad.abs().sum(dim=1)  # [C, N, 2]
    out = torch.zeros_like(absgrad_sorted)
    out.scatter_(1, srt["order"][..., None].expand(-1, -1, 2), absgrad_sorted)
    return out


def reference_forward_backward(
    inputs: Sequence[Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    grad_render: Tensor,
    *,
    pixel_chunk: int = 256,
    max_pixels: int | None = None,
    tile_size: int = 16,
) -> Tensor:
    """Brute-force forward + backward in pixel chunks (bounded memory), RGB colours [N, 3].

    ``inputs`` = (means, quats, scales, opacities, colors), leaves requiring grad. Each pixel
    chunk is composited against all N Gaussians and back-propagated into detached projected
    tensors; the projection is back-propagated once at the end, so gradients accumulate into
    ``inputs`` exactly as one big autograd pass would. ``max_pixels`` stops early (the cost is
    exactly linear in pixels, so callers may extrapolate). Returns the rendered colours [C, P', D].
    """
    means, quats, scales, opacities, colors = inputs
    proj = reference_project(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    srt = _depth_sorted(proj)
    leaves = {k: srt[k].detach().requires_grad_(True) for k in ("means2d", "conics", "opacities", "colors")}
    n_pix = width * height if max_pixels is None else min(max_pixels, width * height)
    C = viewmats.shape[0]
    out = []
    for start in range(0, n_pix, pixel_chunk):
        ids = torch.arange(start, min(start + pixel_chunk, n_pix), device=means.device)
        render, _ = reference_composite({**srt, **leaves}, ids, width, height, tile_size)
        g = grad_render.reshape(C, width * height, -1)[:, ids]
        render.backward(g)
        out.append(render.detach())
    torch.autograd.backward([srt[k] for k in leaves], [leaves[k].grad for k in leaves])
    return torch.cat(out, dim=1)
