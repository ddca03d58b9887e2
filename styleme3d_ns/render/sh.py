"""Real spherical harmonics up to degree 3, in gsplat 1.4.0's convention.

The basis ordering and normalisation constants follow gsplat's ``_eval_sh_bases_fast``
(Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013), so SH coefficients
trained with gsplat / splatfacto render identically through :func:`sh_colors`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_SH_DEGREE = 3

# Normalisation constants of the real SH basis (values as used by gsplat).
SH_C0 = 0.2820947917738781
"""Y_0^0 = 1 / (2 sqrt(pi)), the degree-0 basis constant: 3DGS stores colour as c = 0.5 + SH_C0 * f_dc."""
_C1 = 0.48860251190292
_C2_XZ = 1.092548430592079
_C2_ZZ_A = 0.9461746957575601
_C2_ZZ_B = 0.3153915652525201
_C2_XY = 0.5462742152960395
_C3_ZZZ_A = 1.865881662950577
_C3_ZZZ_B = 1.119528997770346
_C3_XZZ_A = 2.285228997322329
_C3_XZZ_B = 0.4570457994644658
_C3_XXZ = 1.445305721320277
_C3_SECTORAL = 0.5900435899266435  # degree-3 sectoral bands (m = +-3): sqrt(35 / 32 pi)


def num_sh_bases(degree: int) -> int:
    """Number of SH basis functions K = (degree + 1)^2 for ``degree`` in [0, 3]."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Evaluate the real SH basis at viewing directions.

    Args:
        degree: SH degree in [0, 3].
        dirs: Viewing directions [..., 3]; any non-zero length (normalised here, as gsplat does).

    Returns:
        Basis values [..., (degree + 1)^2], ordered like gsplat (band by band, m = -l..l).
        Differentiable w.r.t. ``dirs``.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    ones = torch.ones_like(dirs[..., 0])
    cols = [SH_C0 * ones]
    if degree >= 1:
        x, y, z = F.normalize(dirs, p=2, dim=-1).unbind(-1)
        cols += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        zz = z * z
        c1 = x * x - y * y  # cos(2 phi) * sin^2(theta)
        s1 = 2.0 * x * y  # sin(2 phi) * sin^2(theta)
        p2 = _C2_ZZ_A * zz - _C2_ZZ_B
        cols += [_C2_XY * s1, -_C2_XZ * z * y, p2, -_C2_XZ * z * x, _C2_XY * c1]
    if degree >= 3:
        c2 = x * c1 - y * s1  # cos(3 phi) * sin^3(theta)
        s2 = x * s1 + y * c1  # sin(3 phi) * sin^3(theta)
        p31 = -_C3_XZZ_A * zz + _C3_XZZ_B
        p32 = _C3_XXZ * z
        cols += [
            -_C3_SECTORAL * s2,
            p32 * s1,
            p31 * y,
            z * (_C3_ZZZ_A * zz - _C3_ZZZ_B),
            p31 * x,
            p32 * c1,
            -_C3_SECTORAL * c2,
        ]
    return torch.stack(cols, dim=-1)


def eval_sh(basis: Tensor, coeffs: Tensor) -> Tensor:
    """Contract a precomputed basis with SH coefficients.

    Args:
        basis: [..., K'] from :func:`sh_basis`, K' = (degree + 1)^2.
        coeffs: [..., K, 3] SH coefficients with K >= K'; only the first K' bands are used
            (gsplat's "activate partial SH bands" behaviour).

    Returns:
        Raw SH radiance [..., 3] (no offset, no clamp).
    """
    k = basis.shape[-1]
    if coeffs.shape[-2] < k:
        raise ValueError(f"need at least {k} SH coefficients, got {coeffs.shape[-2]}")
    return (basis.unsqueeze(-1) * coeffs[..., :k, :]).sum(dim=-2)


def sh_colors(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """RGB colours from SH exactly as ``gsplat.rasterization`` does when ``sh_degree`` is set.

    Args:
        degree: SH degree in [0, 3].
        dirs: Viewing directions ``means - camera_centre`` [..., 3] (normalised here).
        coeffs: SH coefficients [..., K, 3], K >= (degree + 1)^2.

    Returns:
        Colours [..., 3], in [0, inf): ``clamp_min(SH(dirs) . coeffs + 0.5, 0)``.
    """
    return torch.clamp_min(eval_sh(sh_basis(degree, dirs), coeffs) + 0.5, 0.0)
