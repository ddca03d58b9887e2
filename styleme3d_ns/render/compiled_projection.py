"""Compiled (numba) EWA projection with a hand-written backward: the CPU fast path of ``project_gaussians``.

Same equations as :func:`styleme3d_ns.render.torch_rasterizer.project_gaussians` (gsplat's
``fully_fused_projection``), for the common training case: pinhole cameras, quaternions and scales (no ``covars``),
no anti-aliasing compensation, cameras not optimised. The torch version stays the reference and handles the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import compiled_composite


def _kernels():  # noqa: ANN202 - numba dispatchers
    module = compiled_composite.load_kernels("_projection_kernels")
    return module.forward, module.backward


def covers(viewmats: Tensor, covars: Tensor | None, camera_model: str, compensations: bool) -> bool:
    """Whether the compiled projection handles this call (given CPU tensors and numba; else the torch one runs)."""
    return covars is None and camera_model == "pinhole" and not compensations and not viewmats.requires_grad


class CompiledProjection(torch.autograd.Function):
    """(means [N, 3], quats [N, 4], scales [N, 3]) -> means2d [C, N, 2], conics [C, N, 3], depths [C, N].

    Also returns the blurred 2D covariance (c00, c01, c11) [C, N, 3] without gradient, for radii and culling.
    ``lims`` [C, 4] are gsplat's clamp bounds of x/z and y/z (negative x, positive x, negative y, positive y).
    """

    @staticmethod
    def forward(
        ctx,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        viewmats: Tensor,
        Ks: Tensor,
        lims: Tensor,
        eps2d: float,
        near: float,
        far: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        C, N, dtype = viewmats.shape[0], means.shape[0], means.dtype
        inputs = [t.detach().to(dtype).contiguous() for t in (means, quats, scales, viewmats, Ks, lims)]
        means2d, conics = means.new_empty(C, N, 2), means.new_empty(C, N, 3)
        depths, cov2d = means.new_empty(C, N), means.new_empty(C, N, 3)
        forward = _kernels()[0]
        forward(*(t.numpy() for t in inputs), eps2d, near, far, *(t.numpy() for t in (means2d, conics, depths, cov2d)))
        ctx.inputs, ctx.eps2d, ctx.near, ctx.far = inputs, eps2d, near, far
        ctx.mark_non_differentiable(cov2d)
        return means2d, conics, depths, cov2d

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_means2d: Tensor, g_conics: Tensor, g_depths: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        means, quats, scales, viewmats, Ks, lims = ctx.inputs
        z = viewmats[:, None, 2, :3] @ means.T + viewmats[:, 2:3, 3:4]  # [C, 1, N] camera z
        # only pairs whose projection is defined pass gradient (the torch path guards the same ops with where)
        live = ((z >= ctx.near) & (z <= ctx.far) & (z != 0)).squeeze(1)
        grads = [g.to(means.dtype).contiguous() for g in (g_means2d, g_conics, g_depths)]
        d_means, d_quats, d_scales = torch.zeros_like(means), torch.zeros_like(quats), torch.zeros_like(scales)
        backward = _kernels()[1]
        arrays = (t.numpy() for t in (means, quats, scales, viewmats, Ks, lims))
        backward(*arrays, ctx.eps2d, live.numpy(), *(g.numpy() for g in grads), d_means.numpy(), d_quats.numpy(),
                 d_scales.numpy())  # fmt: skip
        return d_means, d_quats, d_scales, None, None, None, None, None, None
