"""Colour-only fast path: a cached sparse linear map from Gaussian colours to one view's pixels.

While geometry and opacity are frozen (colour-only stylisation stages), a rendered view is
linear in the per-Gaussian colours: ``image = W @ colours + (1 - alpha) * bg``, where ``W``
holds the rasteriser's compositing weights alpha_i * T_i. :class:`ColourMap` builds ``W`` once
per view (via :func:`composite_weights`, so it is bit-for-bit the forward pass's weights),
caches the SH basis of that view, and then renders/back-propagates with two sparse CSR
mat-muls - orders of magnitude cheaper than re-rasterising.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .sh import eval_sh, sh_basis
from .torch_rasterizer import CompositeWeights, composite_weights


class _CsrLinear(torch.autograd.Function):
    """y = A x with a constant sparse A; backward uses the cached transpose (CSR mat-muls only)."""

    @staticmethod
    def forward(ctx: Any, mat: Tensor, mat_t: Tensor, x: Tensor) -> Tensor:
        ctx.mat_t = mat_t
        return mat @ x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, ctx.mat_t @ grad.contiguous()


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """CSR matrix from unique (row, col) entries in any order."""
    order = torch.argsort(rows * shape[1] + cols)
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():  # torch flags CSR as "beta" on every construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols[order], values[order], size=shape)


class ColourMap:
    """Per-view cache of the colour -> pixel map for fixed geometry and opacity.

    Build with :meth:`build` (or from precomputed :class:`CompositeWeights`), then call
    :meth:`render` with the current colours every step. Only Gaussians that reach the view are
    touched; gradients flow to ``colours`` only.
    """

    def __init__(self, weights: CompositeWeights, sh_dirs: Tensor | None = None, sh_degree: int | None = None):
        """
        Args:
            weights: compositing weights of the view (:func:`composite_weights`).
            sh_dirs: [N, 3] view directions ``means - camera_centre`` (needed for SH colours).
            sh_degree: SH degree in [0, 3] used when rendering [N, K, 3] coefficients.
        """
        self.width, self.height = weights.width, weights.height
        self.alpha = weights.alpha  # [H * W] in [0, 1]
        # Compact to the Gaussians present in the view: smaller gathers and SH work per step.
        self.used, cols = torch.unique(weights.gaussian_ids, return_inverse=True)  # [U], [P]
        n_pix, n_used = self.width * self.height, len(self.used)
        self._mat = _csr(weights.pixel_ids, cols, weights.weights, (n_pix, n_used))
        self._mat_t = _csr(cols, weights.pixel_ids, weights.weights, (n_used, n_pix))
        self.sh_degree = sh_degree
        self.basis = None  # [U, (sh_degree + 1)^2] SH basis of this view, cached
        if sh_degree is not None:
            if sh_dirs is None:
                raise ValueError("sh_dirs is required when sh_degree is set")
            self.basis = sh_basis(sh_degree, sh_dirs.detach().index_select(0, self.used))

    @classmethod
    def build(
        cls,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        viewmat: Tensor,
        K: Tensor,
        width: int,
        height: int,
        sh_degree: int | None = None,
        **raster_kwargs: Any,
    ) -> ColourMap:
        """Build the map for one camera.

        Args:
            means [N, 3], quats [N, 4], scales [N, 3], opacities [N] in [0, 1]: frozen Gaussians
                (post-activation, as passed to ``rasterize``).
            viewmat: [4, 4] or [1, 4, 4] world-to-camera; K: [3, 3] or [1, 3, 3] intrinsics.
            width, height: image size.
            sh_degree: SH degree for [N, K, 3] colours, or None for plain [N, D] colours.
            raster_kwargs: near_plane, far_plane, radius_clip, eps2d, tile_size, rasterize_mode,
                camera_model, covars - as for ``rasterize``.
        """
        weights = composite_weights(means, quats, scales, opacities, viewmat, K, width, height, **raster_kwargs)
        dirs = None
        if sh_degree is not None:
            campos = torch.inverse(viewmat.reshape(4, 4))[:3, 3]
            dirs = means.detach() - campos
        return cls(weights, dirs, sh_degree)

    @property
    def matrix(self) -> tuple[Tensor, Tensor]:
        """The compositing weights as sparse CSR ``W`` [H * W, U] and its transpose [U, H * W] (columns: ``used``)."""
        return self._mat, self._mat_t

    @property
    def nbytes(self) -> int:
        """Memory the map holds: both CSR matrices, the SH basis, alpha and the used-Gaussian index."""
        tensors = [self._mat.crow_indices(), self._mat.col_indices(), self._mat.values(), self._mat_t.crow_indices(),
                   self._mat_t.col_indices(), self._mat_t.values(), self.alpha, self.used]  # fmt: skip
        if self.basis is not None:
            tensors.append(self.basis)
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def n_pairs(self) -> int:
        """Number of (pixel, Gaussian) weights stored."""
        return int(self._mat.values().numel())

    def render(self, colours: Tensor, background: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Render the view's colours exactly as the rasteriser would for the frozen geometry.

        Args:
            colours: [N, K, 3] SH coefficients (needs ``sh_degree``) or [N, D] colours.
            background: optional [D] background colour, blended as ``(1 - alpha) * bg``.

        Returns:
            image [H, W, D] (differentiable w.r.t. ``colours`` and ``background``) and the
            constant alpha [H, W, 1] in [0, 1].
        """
        picked = colours.index_select(0, self.used)
        if colours.dim() == 3:
            if self.basis is None:
                raise ValueError("SH colours [N, K, 3] need a ColourMap built with sh_degree")
            picked = torch.clamp_min(eval_sh(self.basis.to(picked.dtype), picked) + 0.5, 0.0)
        mat, mat_t = self._mat, self._mat_t
        if mat.dtype != picked.dtype:
            mat, mat_t = mat.to(picked.dtype), mat_t.to(picked.dtype)
        image = _CsrLinear.apply(mat, mat_t, picked)  # [H * W, D]
        if background is not None:
            image = image + (1.0 - self.alpha.to(image.dtype))[:, None] * background
        alpha = self.alpha.reshape(self.height, self.width, 1)
        return image.reshape(self.height, self.width, -1), alpha


class ColourMapCache:
    """The colour maps of up to `capacity` views (and at most `max_bytes` of them) of a frozen geometry, each built
    once, oldest dropped first: memory stays bounded however many views, at whatever resolution, a run trains on.

    A map is keyed by its view and by the geometry it was built from (each tensor's storage and in-place version
    counter), so any edit of the geometry (an optimiser step, densification, a load) makes the next look-up rebuild.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._maps: dict[tuple, ColourMap] = {}

    @property
    def nbytes(self) -> int:
        """Memory of the cached maps."""
        return sum(cmap.nbytes for cmap in self._maps.values())

    def get(self, view: tuple, geometry: tuple[Tensor, ...], build: Callable[[], ColourMap]) -> ColourMap:
        """The map of `view` (any hashable key) over `geometry`; `build()` makes it when there is none."""
        key = (view, tuple((t.data_ptr(), t._version) for t in geometry))
        cmap = self._maps.get(key)
        if cmap is None:
            cmap = build()
            while self._maps and (
                len(self._maps) >= self.capacity
                or (self.max_bytes is not None and self.nbytes + cmap.nbytes > self.max_bytes)
            ):
                self._maps.pop(next(iter(self._maps)))
            self._maps[key] = cmap
        return cmap

    def clear(self) -> None:
        """Forget every map (the geometry changed wholesale)."""
        self._maps.clear()
