"""A parametric head to start a portrait splat from (paper 001 sec. IV.A.1), since SMPL's head cannot ship.

Paper 001 samples N = 10,000 points from the head of the SMPL body model. SMPL's licence forbids redistributing its
mesh, so we build a head-shaped surface from a few axis-aligned superquadric "blobs" (cranium, lower face and jaw,
nose, two ears and a neck) and sample their union's outer surface uniformly by area.

Frame (SMPL's, and the one every styleme3d-ns portrait camera uses):

- right-handed, +y up, the face looks toward +z, the subject's left ear is on +x;
- the head (chin to crown, neck excluded) spans y in [-0.5, 0.5] and is centred on the origin, so its height is
  :data:`HEAD_HEIGHT` = 1 world unit; the neck hangs below to y = :data:`NECK_CUT_Y`;
- a nerfstudio (OpenGL: looks down its own -z, +y up) camera with identity rotation placed on +z sees the face.

Each blob is the level set ``F(x) = sum_i |(x_i - c_i) / a_i|^e_i = 1`` (inside: F < 1). A blob is star-shaped
about its centre, so it is sampled by casting a uniformly random direction ``d`` from the centre, solving
``F(c + r d) = 1`` for ``r`` by bisection, and accepting the point with probability proportional to the area
element ``r^2 / (n . d)`` per solid angle (rejection sampling). Points inside any other blob are dropped, which
leaves a uniform density on the union's boundary; a uniform subset of the requested size is returned.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from styleme3d_ns.render.sh import SH_C0

NUM_TEMPLATE_POINTS = 10_000
"""Paper 001 sec. IV.A.1: "we randomly sample N = 10,000 points from the head of the SMPL model"."""
INIT_OPACITY = 0.2
"""Paper 001 sec. IV.A.1: initial opacity alpha = 0.2."""
INIT_SCALE = 0.02
"""Paper 001 sec. IV.A.1: initial scaling factor s = (0.02, 0.02, 0.02)."""
INIT_COLOUR = 0.0
"""Paper 001 sec. IV.A.1: initial colour c = (0, 0, 0), read as RGB black (see :func:`init_gaussians`)."""
INIT_QUAT_WXYZ = (1.0, 0.0, 0.0, 0.0)
"""Paper 001 sec. IV.A.1: initial rotation r = (1, 0, 0, 0), the identity quaternion in wxyz order (gsplat's)."""
BLACK_FLOOR = 1.0 / 255.0
"""Smallest initial RGB: one 8-bit level. Exactly black sits on gsplat's ``clamp_min(sh + 0.5, 0)`` kink, whose
gradient is zero, so colours would never learn; DreamGaussian (paper 001's base, [35]) starts at ``rand() / 255``."""

HEAD_HEIGHT = 1.0
"""Chin-to-crown height of the template in world units (our choice; SMPL's head is ~0.23 m)."""
HEAD_CENTRE = (0.0, 0.0, 0.0)
"""Centre of the head's chin-to-crown box; the portrait cameras look at it."""
NECK_CUT_Y = -0.75
"""The neck is open below this height (a cut, not a cap: a portrait never sees under the neck)."""


@dataclass(frozen=True)
class Blob:
    """An axis-aligned superquadric ``sum_i |(x_i - centre_i) / radii_i|^exponents_i = 1`` (exponents >= 2)."""

    name: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    exponents: tuple[float, float, float] = (2.0, 2.0, 2.0)

    def _tensors(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        as_t = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device)
        return as_t(self.centre), as_t(self.radii), as_t(self.exponents)

    def implicit(self, points: Tensor) -> Tensor:
        """``F(points)`` `[N]` for points `[N, 3]`: < 1 inside, 1 on the surface, > 1 outside."""
        centre, radii, exponents = self._tensors(points)
        return ((points - centre) / radii).abs().pow(exponents).sum(dim=-1)

    def normal(self, points: Tensor) -> Tensor:
        """Outward unit normals `[N, 3]` (normalised gradient of F) at points `[N, 3]`."""
        centre, radii, exponents = self._tensors(points)
        u = (points - centre) / radii
        grad = exponents / radii * u.abs().pow(exponents - 1.0) * u.sign()
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def sample(self, n_candidates: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Area-uniform points on this blob's surface and their outward normals, each `[M, 3]` float64, M <= n.

        Radial parametrisation ``x = c + r(d) d``: the area element is ``r^2 / (n . d)`` per unit solid angle, so
        directions drawn uniformly on the sphere are kept with probability proportional to that weight.
        """
        directions = torch.randn(n_candidates, 3, dtype=torch.float64, generator=generator)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        radius = self._radius(directions)
        points = torch.tensor(self.centre, dtype=torch.float64) + radius[:, None] * directions
        normals = self.normal(points)
        weight = radius**2 / (normals * directions).sum(dim=-1).clamp_min(1e-6)
        keep = torch.rand(n_candidates, dtype=torch.float64, generator=generator) * weight.max() < weight
        return points[keep], normals[keep]

    @functools.cache  # noqa: B019 - blobs are frozen module-level constants; caching by value is the point
    def area(self, n_candidates: int = 100_000) -> float:
        """Monte-Carlo surface area: ``4 pi E_d[r^2 / (n . d)]`` over uniform directions (fixed seed, ~0.3% error)."""
        generator = torch.Generator().manual_seed(0)
        directions = torch.randn(n_candidates, 3, dtype=torch.float64, generator=generator)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        radius = self._radius(directions)
        normals = self.normal(torch.tensor(self.centre, dtype=torch.float64) + radius[:, None] * directions)
        return float(4.0 * math.pi * (radius**2 / (normals * directions).sum(dim=-1).clamp_min(1e-6)).mean())

    def _radius(self, directions: Tensor, iterations: int = 50) -> Tensor:
        """`[N]` distance from the centre to the surface along unit directions `[N, 3]`.

        F is homogeneous of degree e when every exponent is e, so ``r = F(d)^(-1/e)``; otherwise F still grows
        monotonically in r and bisection finds the root.
        """
        _, radii, exponents = self._tensors(directions)
        if len(set(self.exponents)) == 1:
            return (directions / radii).abs().pow(exponents).sum(dim=-1).pow(-1.0 / self.exponents[0])
        lo = torch.zeros(directions.shape[0], dtype=directions.dtype)
        hi = torch.full_like(lo, float(radii.norm()))  # F(|a| d) >= 1 for every unit d, so the root is below
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            outside = (mid[:, None] * directions / radii).abs().pow(exponents).sum(dim=-1) > 1.0
            hi = torch.where(outside, mid, hi)
            lo = torch.where(outside, lo, mid)
        return 0.5 * (lo + hi)


HEAD_BLOBS: tuple[Blob, ...] = (
    # proportions of an adult head scaled to a 1-unit chin-to-crown height: width ~0.7, front-to-back depth ~0.9
    Blob("cranium", centre=(0.0, 0.12, -0.04), radii=(0.34, 0.38, 0.43), exponents=(2.2, 2.2, 2.2)),
    Blob("face", centre=(0.0, -0.12, 0.05), radii=(0.27, 0.38, 0.32)),  # lower face and jaw; chin at y = -0.5
    Blob("nose", centre=(0.0, -0.02, 0.36), radii=(0.055, 0.12, 0.09)),  # tip at z ~ 0.45, ~0.09 proud of the face
    Blob("left_ear", centre=(0.335, 0.02, -0.02), radii=(0.05, 0.11, 0.07)),
    Blob("right_ear", centre=(-0.335, 0.02, -0.02), radii=(0.05, 0.11, 0.07)),
    Blob("neck", centre=(0.0, -0.55, -0.08), radii=(0.17, 0.35, 0.17), exponents=(2.0, 6.0, 2.0)),
)
"""The template's parts. Their union is the head; only its outer surface is sampled."""


def sample_head_template(
    n_points: int = NUM_TEMPLATE_POINTS,
    seed: int = 0,
    blobs: tuple[Blob, ...] = HEAD_BLOBS,
    cut_below_y: float | None = NECK_CUT_Y,
) -> tuple[Tensor, Tensor]:
    """Area-uniform points on the outer surface of the head template (paper 001 sec. IV.A.1, SMPL head stand-in).

    Args:
        n_points: how many points (paper 001: N = 10,000).
        seed: the sample is a deterministic function of the seed.
        blobs: the parts whose union is the head (default :data:`HEAD_BLOBS`).
        cut_below_y: drop the surface below this height (the neck's bottom); None keeps all of it.

    Returns:
        points `[n_points, 3]` and outward unit normals `[n_points, 3]`, float32, in the frame described in the
        module docstring (+y up, face toward +z, head centred on the origin, 1 unit chin to crown).
    """
    if n_points < 1:
        raise ValueError(f"n_points must be positive, got {n_points}")
    generator = torch.Generator().manual_seed(seed)
    areas = torch.tensor([blob.area() for blob in blobs], dtype=torch.float64)
    points_per_area = 2.0 * n_points / float(areas.sum())  # ~2x oversampling leaves room for the hidden parts
    kept_points: list[Tensor] = []
    kept_normals: list[Tensor] = []
    total = 0
    while total < n_points:
        for k, blob in enumerate(blobs):
            target = max(1, math.ceil(points_per_area * float(areas[k])))
            points, normals = _sample_exactly(blob, target, generator)
            visible = torch.ones(points.shape[0], dtype=torch.bool)
            for j, other in enumerate(blobs):
                if j != k:
                    visible &= other.implicit(points) >= 1.0
            if cut_below_y is not None:
                visible &= points[:, 1] >= cut_below_y
            kept_points.append(points[visible])
            kept_normals.append(normals[visible])
            total += int(visible.sum())
    points, normals = torch.cat(kept_points), torch.cat(kept_normals)
    subset = torch.randperm(points.shape[0], generator=generator)[:n_points]
    return points[subset].float(), normals[subset].float()


def _sample_exactly(blob: Blob, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` area-uniform points `[n, 3]` and normals `[n, 3]` on one blob (repeats rejection rounds until enough)."""
    points: list[Tensor] = []
    normals: list[Tensor] = []
    count = 0
    while count < n:
        p, q = blob.sample(max(4 * (n - count), 1024), generator)
        points.append(p)
        normals.append(q)
        count += p.shape[0]
    return torch.cat(points)[:n], torch.cat(normals)[:n]


def init_gaussians(
    points: Tensor,
    opacity: float = INIT_OPACITY,
    scale: float = INIT_SCALE,
    colour: float | tuple[float, float, float] | Tensor = INIT_COLOUR,
    sh_degree: int = 3,
) -> dict[str, Tensor]:
    """Splatfacto's Gaussian parameters for an initial cloud, with paper 001's initial values (sec. IV.A.1).

    Args:
        points: `[N, 3]` centres (e.g. :func:`sample_head_template`).
        opacity: initial opacity in (0, 1); paper 001: 0.2.
        scale: initial isotropic standard deviation in world units; paper 001: 0.02.
        colour: initial RGB in [0, 1]: one value for all three channels, a triple, or one per point `[N, 3]` (the
            offline prior's photo colours); paper 001: (0, 0, 0). Values below :data:`BLACK_FLOOR` are raised to it
            so the colour gradient is not exactly zero.
        sh_degree: the model's SH degree. Above 0, colours are SH coefficients (``features_dc = RGB2SH(rgb)``, as
            splatfacto); at 0, splatfacto and our frozen-colour base read ``sigmoid(features_dc)``, so it is a logit.

    Returns:
        dict of float32 tensors keyed as splatfacto's ``gauss_params``: ``means [N, 3]``, ``scales [N, 3]``
        (log), ``quats [N, 4]`` (wxyz, identity), ``opacities [N, 1]`` (logit), ``features_dc [N, 3]``,
        ``features_rest [N, (sh_degree + 1)^2 - 1, 3]`` (zeros).
    """
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    if scale <= 0.0:
        raise ValueError(f"scale must be positive, got {scale}")
    n = points.shape[0]
    rgb = torch.as_tensor(colour, dtype=torch.float32).expand(n, 3).clamp(BLACK_FLOOR, 1.0 - BLACK_FLOOR)
    if sh_degree > 0:
        dc = (rgb - 0.5) / SH_C0  # splatfacto's RGB2SH
    else:
        dc = torch.logit(rgb)
    return {
        "means": points.detach().float().clone(),
        "scales": torch.full((n, 3), math.log(scale)),
        "quats": torch.tensor(INIT_QUAT_WXYZ).repeat(n, 1),
        "opacities": torch.full((n, 1), math.log(opacity / (1.0 - opacity))),
        "features_dc": dc.clone(),
        "features_rest": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    }
