"""Closed-form colour pre-match: give a point set the mean and covariance of the style image's colours.

StylizedGS matches the RGB distribution of the scene to the style image before optimising, so the palette is right
from step 0 (measured to help: docs/styleme3d.md, "Why these EfficientNet taps"). The map is affine,
``c' = A c + b`` with

    A = Σ_s^{1/2} Σ_c^{-1/2},   b = μ_s - A μ_c

(symmetric square roots via eigendecomposition), which gives ``c'`` exactly mean ``μ_s`` and covariance
``A Σ_c A^T = Σ_s``. Because it is affine it also applies to Gaussian-splat spherical harmonics, see
:func:`apply_colour_transfer_to_sh`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleme3d_ns.render.sh import SH_C0

# Eigenvalue floor for Σ_c^{-1/2}: a flat or greyscale scene has a singular colour covariance (rank < 3), and the
# inverse square root must stay finite there. Far below the variance of any real 8-bit image channel (~1e-3).
_EIG_FLOOR = 1e-10


def _sym_power(cov: Tensor, power: float) -> Tensor:
    """``cov ** power`` for a symmetric PSD matrix ``[3, 3]`` via eigendecomposition (eigenvalues floored)."""
    evals, evecs = torch.linalg.eigh(cov)
    return evecs @ torch.diag(evals.clamp_min(_EIG_FLOOR).pow(power)) @ evecs.T


def _mean_cov(points: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[3]`` and population covariance ``[3, 3]`` of ``points`` ``[N, 3]``."""
    mean = points.mean(dim=0)
    centred = points - mean
    return mean, centred.T @ centred / points.shape[0]


def fit_colour_transfer(colours: Tensor, style_pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Fit ``A`` ``[3, 3]`` and ``b`` ``[3]`` so that ``colours @ A.T + b`` has the style's mean and covariance.

    Args:
        colours: Source RGB points ``[N, 3]`` in [0, 1] (e.g. per-Gaussian DC colours), N >= 1.
        style_pixels: Target RGB samples ``[M, 3]`` in [0, 1] (e.g. ``style_image[0].reshape(3, -1).T``), M >= 1.
            One sample (a 1x1 style image) or a flat image has zero covariance: every colour then maps to the style's
            mean colour (A ~ 0), the limit of matching mean and covariance.

    Returns:
        ``(A, b)`` in the dtype of ``colours``; computed in float64 so the match holds to ~1e-6.
    """
    for name, t in (("colours", colours), ("style_pixels", style_pixels)):
        if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] < 1:
            raise ValueError(f"{name} must be [N, 3] RGB points with N >= 1, got {tuple(t.shape)}.")
    mu_c, cov_c = _mean_cov(colours.detach().double())
    mu_s, cov_s = _mean_cov(style_pixels.detach().to(colours.device).double())
    a = _sym_power(cov_s, 0.5) @ _sym_power(cov_c, -0.5)
    b = mu_s - a @ mu_c
    return a.to(colours.dtype), b.to(colours.dtype)


def apply_colour_transfer_to_sh(
    features_dc: Tensor, features_rest: Tensor | None, a: Tensor, b: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Apply ``c' = A c + b`` to 3DGS spherical-harmonic colour coefficients.

    Args:
        features_dc: DC coefficients ``[N, 3]``; the base colour is ``c = 0.5 + SH_C0 * dc``.
        features_rest: Higher-order coefficients ``[N, K, 3]`` (or ``None``). View-dependent colour is linear in
            them, so the affine map's offset only affects the DC term and the rest transform as ``A rest``.
        a: ``[3, 3]`` from :func:`fit_colour_transfer`.
        b: ``[3]`` from :func:`fit_colour_transfer`.

    Returns:
        ``(dc' [N, 3], rest' [N, K, 3] | None)``.
    """
    colour = 0.5 + SH_C0 * features_dc
    new_dc = (colour @ a.T + b - 0.5) / SH_C0
    new_rest = None if features_rest is None else features_rest @ a.T
    return new_dc, new_rest
