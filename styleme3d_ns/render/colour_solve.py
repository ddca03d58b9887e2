"""The exact colour solve: fit SH colours to per-view target images with geometry and opacity frozen.

With means, scales, quats and opacities fixed, view v renders (see :class:`~styleme3d_ns.render.colour_map.ColourMap`)

    I_v(c) = W_v f_v(c) + (1 - A_v) bg,      f_v(c) = max(B_v c + 0.5, 0)   per Gaussian and channel,

with W_v [pixels, Gaussians] the compositing weights and B_v the view's SH basis. Fitting targets T_v is then

    E(c) = 1/S sum_v sum_p m_vp ||I_v(c)_p - T_vp||^2  +  ridge/N sum_i ||c_i - c_base,i||^2     (S = sum m_vp)

over the SH bands up to ``sh_degree`` (higher bands stay as they are). Without the clamp E is quadratic, and its
minimiser solves the normal equations

    (sum_v L_v^T M_v L_v + ridge S/N I) x = sum_v L_v^T M_v (T_v - b_v) + ridge S/N x_base,

L_v x = W_v (B_v,s x) the linear part, b_v everything that does not depend on the solved bands. We solve them with
Jacobi-preconditioned conjugate gradients, matrix-free (two CSR mat-muls per view per iteration), one system per
colour channel. The clamp max(., 0) is piecewise linear: each pass freezes which (view, Gaussian, channel) colours are
clamped at the current colours (their Jacobian is zero there) and solves the linear system of the others; a few passes
are Gauss-Newton on the clamped model. :attr:`ColourSolution.clamped_fraction` reports how much the clamp is active.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .colour_map import ColourMap
from .sh import num_sh_bases


@dataclass(frozen=True)
class ColourSolution:
    """Result of :func:`solve_colours`."""

    colours: Tensor
    """[N, K, 3] SH coefficients: bands up to the solved degree replaced, the others as given."""
    iterations: int
    """Conjugate-gradient iterations, summed over the clamp passes."""
    relative_residual: float
    """||normal-equation residual|| / ||right-hand side|| of the last pass (largest over the channels)."""
    clamped_fraction: float
    """Share of (view, visible Gaussian, channel) colours that the clamp max(., 0) holds at 0 at the solution."""
    objective: float
    """E(c) of the returned colours, rendered with the clamp (:func:`colour_objective`)."""


def _check(maps: Sequence[ColourMap], targets: Sequence[Tensor], colours: Tensor, sh_degree: int) -> int:
    """Validate shapes; return the number of solved SH bands."""
    if len(maps) == 0 or len(maps) != len(targets):
        raise ValueError(f"need one target per colour map, got {len(maps)} maps and {len(targets)} targets")
    if colours.dim() != 3 or colours.shape[-1] != 3:
        raise ValueError(f"colours must be SH coefficients [N, K, 3], got {tuple(colours.shape)}")
    bands = num_sh_bases(sh_degree)
    if bands > colours.shape[1]:
        raise ValueError(f"sh_degree {sh_degree} needs {bands} SH bands, colours have {colours.shape[1]}")
    for cmap, target in zip(maps, targets, strict=True):
        if cmap.basis is None or cmap.basis.shape[-1] < bands:
            raise ValueError(f"solving SH degree {sh_degree} needs ColourMaps built with sh_degree >= {sh_degree}")
        if tuple(target.shape) != (cmap.height, cmap.width, 3):
            raise ValueError(f"target {tuple(target.shape)} does not match its view [{cmap.height}, {cmap.width}, 3]")
    return bands


def colour_objective(
    maps: Sequence[ColourMap],
    targets: Sequence[Tensor],
    colours: Tensor,
    base_colours: Tensor,
    background: Tensor | None = None,
    *,
    sh_degree: int = 0,
    ridge: float = 0.01,
    pixel_weights: Sequence[Tensor] | None = None,
) -> Tensor:
    """E(c) of the module docstring, rendered exactly (with the clamp); differentiable w.r.t. ``colours``.

    Args:
        maps: one :class:`ColourMap` per view, built with an SH degree.
        targets: per view [H_v, W_v, 3] in [0, 1].
        colours, base_colours: [N, K, 3] SH coefficients; the ridge acts on bands up to ``sh_degree``.
        background: [3] in [0, 1] or None (black).
        sh_degree: highest SH degree the ridge covers (the bands being fitted).
        ridge: weight of the pull towards ``base_colours`` per Gaussian (content weight), >= 0.
        pixel_weights: per view [H_v, W_v] >= 0, or None for 1 everywhere.

    Returns:
        scalar >= 0.
    """
    bands = num_sh_bases(sh_degree)
    data = colours.new_zeros(())
    total = colours.new_zeros(())
    for v, (cmap, target) in enumerate(zip(maps, targets, strict=True)):
        image, _ = cmap.render(colours, background)
        weight = torch.ones_like(target[..., 0]) if pixel_weights is None else pixel_weights[v].to(colours)
        data = data + (weight[..., None] * (image - target.to(image)) ** 2).sum()
        total = total + weight.sum()
    prior = ((colours[:, :bands] - base_colours[:, :bands].to(colours)) ** 2).sum() / colours.shape[0]
    return data / total.clamp_min(1e-12) + ridge * prior


class _ViewSystem:
    """One view's share of the normal equations, with the clamp pattern frozen at given colours."""

    def __init__(
        self,
        cmap: ColourMap,
        target: Tensor,
        weight: Tensor,
        colours: Tensor,
        background: Tensor | None,
        bands: int,
    ) -> None:
        dtype = colours.dtype
        mat, mat_t = cmap.matrix
        self.mat, self.mat_t = mat.to(dtype), mat_t.to(dtype)
        self.used = cmap.used
        basis = cmap.basis.to(dtype)  # [U, K_map]
        self.basis_s = basis[:, :bands]  # [U, bands]: the solved bands
        picked = colours.index_select(0, self.used)  # [U, K, 3]
        pre = (basis[:, :, None] * picked[:, : basis.shape[1]]).sum(1) + 0.5  # [U, 3] colour before the clamp
        self.active = (pre > 0).to(dtype)  # [U, 3]: where the clamp passes the colour through
        fixed = (basis[:, bands:, None] * picked[:, bands : basis.shape[1]]).sum(1) + 0.5  # [U, 3]
        offset = self.mat @ (self.active * fixed)  # [P, 3]
        if background is not None:
            offset = offset + (1.0 - cmap.alpha.to(dtype))[:, None] * background.to(dtype)
        self.weight = weight.reshape(-1, 1).to(dtype)  # [P, 1] = m_vp
        self.rhs_pixels = self.weight * (target.reshape(-1, 3).to(dtype) - offset)  # M_v (T_v - b_v)

    def lift(self, pixels: Tensor, out: Tensor) -> None:
        """out[used] += L_v^T pixels for pixels [P, 3] (W^T, the clamp mask, then B_s^T); out [N, bands, 3]."""
        per_gaussian = self.active * (self.mat_t @ pixels)  # [U, 3]
        out.index_add_(0, self.used, self.basis_s[:, :, None] * per_gaussian[:, None, :])

    def apply(self, x: Tensor, out: Tensor) -> None:
        """out += L_v^T M_v L_v x for x [N, bands, 3]."""
        per_gaussian = self.active * (self.basis_s[:, :, None] * x.index_select(0, self.used)).sum(1)  # [U, 3]
        self.lift(self.weight * (self.mat @ per_gaussian), out)

    def add_diagonal(self, out: Tensor) -> None:
        """out += diag(L_v^T M_v L_v): sum_p m_p W_pi^2 B_ik^2 (active) for the Jacobi preconditioner."""
        sq = _csr_squared(self.mat_t)
        coverage = sq @ self.weight  # [U, 1]
        out.index_add_(0, self.used, self.basis_s[:, :, None] ** 2 * (coverage * self.active)[:, None, :])


def _csr_squared(mat: Tensor) -> Tensor:
    """The CSR matrix with every stored value squared."""
    return torch.sparse_csr_tensor(mat.crow_indices(), mat.col_indices(), mat.values() ** 2, size=mat.shape)


def _conjugate_gradients(
    apply: Callable[[Tensor], Tensor], rhs: Tensor, x: Tensor, inv_diag: Tensor, tolerance: float, max_iterations: int
) -> tuple[Tensor, int, float]:
    """Preconditioned CG for A x = rhs, one independent system per channel (last dim), all channels in lockstep.

    Returns the solution, the iterations run and the final relative residual (largest over channels).
    """
    dims = tuple(range(rhs.dim() - 1))
    rhs_norm = rhs.norm(dim=dims).clamp_min(1e-30)  # [3]
    r = rhs - apply(x)
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum(dims)
    rel = float((r.norm(dim=dims) / rhs_norm).max())
    it = 0
    while it < max_iterations and rel > tolerance:
        ap = apply(p)
        step = rz / (p * ap).sum(dims).clamp_min(1e-30)
        x = x + step * p
        r = r - step * ap
        rel = float((r.norm(dim=dims) / rhs_norm).max())
        it += 1
        z = inv_diag * r
        rz_new = (r * z).sum(dims)
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    return x, it, rel


def solve_colours(
    maps: Sequence[ColourMap],
    targets: Sequence[Tensor],
    colours: Tensor,
    base_colours: Tensor,
    background: Tensor | None = None,
    *,
    sh_degree: int = 0,
    ridge: float = 0.01,
    pixel_weights: Sequence[Tensor] | None = None,
    tolerance: float = 1e-5,
    max_iterations: int = 300,
    clamp_passes: int = 2,
) -> ColourSolution:
    """Minimise E(c) (module docstring) over the SH bands up to ``sh_degree``; a pure function.

    Args:
        maps: one :class:`ColourMap` per view, built with ``sh_degree`` >= the solved degree.
        targets: per view [H_v, W_v, 3] target images in [0, 1] (a [V, H, W, 3] tensor works).
        colours: [N, K, 3] current SH coefficients: the starting point, the clamp pattern of the first pass, and
            the values of the bands that are not solved.
        base_colours: [N, K, 3] coefficients the ridge pulls towards (the content).
        background: [3] in [0, 1] composited behind the splat, or None (black).
        sh_degree: highest SH degree solved (0: the view-independent DC colour only; fitting higher bands to
            per-view targets lets each view's disagreement become view-dependent colour).
        ridge: content weight >= 0 per Gaussian (a DC change d moves the colour by 0.282 d); Gaussians no view sees
            keep their value whatever the ridge.
        pixel_weights: per view [H_v, W_v] >= 0 (e.g. alpha), or None for 1 everywhere.
        tolerance: stop when ||residual|| / ||rhs|| of the normal equations falls below it.
        max_iterations: CG iterations per clamp pass.
        clamp_passes: linear solves, each with the clamp pattern of the previous result (>= 1).

    Returns:
        :class:`ColourSolution` with the new [N, K, 3] colours (``colours``' dtype and device) and diagnostics.
    """
    bands = _check(maps, targets, colours, sh_degree)
    if ridge < 0 or clamp_passes < 1:
        raise ValueError(f"ridge must be >= 0 and clamp_passes >= 1, got {ridge} and {clamp_passes}")
    colours = colours.detach()
    base = base_colours.detach().to(colours)[:, :bands]
    weights = [torch.ones_like(t[..., 0]) if pixel_weights is None else pixel_weights[v] for v, t in enumerate(targets)]
    total_weight = float(sum(float(w.sum()) for w in weights))
    shift = ridge * total_weight / colours.shape[0]  # ridge S / N: E multiplied through by S
    x = colours[:, :bands].clone()

    def objective_at(free: Tensor) -> float:
        with torch.no_grad():
            return float(colour_objective(
                maps, targets, torch.cat([free, colours[:, bands:]], dim=1), base_colours, background,
                sh_degree=sh_degree, ridge=ridge, pixel_weights=pixel_weights,
            ))  # fmt: skip

    energy = objective_at(x)
    iterations, rel = 0, 0.0
    for _ in range(clamp_passes):
        systems = [
            _ViewSystem(cmap, target, weight, torch.cat([x, colours[:, bands:]], dim=1), background, bands)
            for cmap, target, weight in zip(maps, targets, weights, strict=True)
        ]
        proposal, its, rel = _solve_linearised(systems, shift, base, x, tolerance, max_iterations)
        iterations += its
        # Gauss-Newton step on the clamped model: colours that cross zero make the linear model wrong, so backtrack
        # until the exact objective decreases (the first pass in the linear region takes the full step).
        for t in (1.0, 0.5, 0.25, 0.125):
            trial = x + t * (proposal - x)
            trial_energy = objective_at(trial)
            if trial_energy <= energy:
                x, energy = trial, trial_energy
                break
        else:
            break
    solved = torch.cat([x, colours[:, bands:]], dim=1)
    clamped = _clamped_fraction(maps, solved)
    return ColourSolution(solved, iterations, rel, clamped, energy)


def _solve_linearised(
    systems: list[_ViewSystem], shift: float, base: Tensor, x: Tensor, tolerance: float, max_iterations: int
) -> tuple[Tensor, int, float]:
    """CG on the normal equations of the views' linear systems (clamp pattern frozen), starting from ``x``."""
    rhs = shift * base
    diag = torch.full_like(x, shift)
    for system in systems:
        system.lift(system.rhs_pixels, rhs)
        system.add_diagonal(diag)
    # Gaussians no view sees (and ridge 0) have an empty row: leave them where they are
    inv_diag = torch.where(diag > 0, 1.0 / diag.clamp_min(1e-30), torch.zeros_like(diag))

    def apply(v: Tensor) -> Tensor:
        out = shift * v
        for system in systems:
            system.apply(v, out)
        return out

    return _conjugate_gradients(apply, rhs, x, inv_diag, tolerance, max_iterations)


def _clamped_fraction(maps: Sequence[ColourMap], colours: Tensor) -> float:
    """Share of (view, visible Gaussian, channel) colours with B_v c + 0.5 <= 0, which the renderer clamps to 0."""
    clamped, count = 0, 0
    for cmap in maps:
        basis = cmap.basis.to(colours.dtype)
        picked = colours.index_select(0, cmap.used)[:, : basis.shape[1]]
        pre = (basis[:, :, None] * picked).sum(1) + 0.5
        clamped += int((pre <= 0).sum())
        count += pre.numel()
    return clamped / max(1, count)
