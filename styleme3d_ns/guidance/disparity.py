"""Paper 004's disparity loss between views, and the harmonisation of per-view targets it suggests.

Paper 004 ("Rendering and Reconstruction Based 3D Portrait Stylization") makes two stylised views agree where they
see the same surface with a disparity loss, eq. 7:

    L_disp(I_l, I_r) = sum_p |I_l(T_{r->l}(p)) - I_r(p)| / N

over the N target pixels p of the right view that the mapping T reaches. The paper maps pixels through the
landmark-warped stereo rig; we have rendered depth and exact cameras, so T is the depth warp of
:mod:`styleme3d_ns.render.warp` (unproject with the target's depth, project into the source, occlusion test by
depth, both views opaque).

:func:`harmonise_targets` uses it where it does the most good in the offline teacher: before the colour solve it makes
the per-view stylised targets agree, minimising the squared form of eq. 7 over neighbouring view pairs plus a
fidelity term to each view's own stylisation,

    E(T) = sum_j ||T_j - T0_j||^2 + w sum_(i,j) sum_p v_ij(p) ||T_j(p) - T_i(T_{j->i}(p))||^2,

by Jacobi iterations (each target pixel moves to the weighted mean of its own stylisation and what its neighbours
show there). Shapes: V views of [3, H, W] in [0, 1], depths [V, 1, H, W] camera-space z, viewmats [V, 4, 4]
world-to-camera (OpenCV axes, as the rasteriser takes), Ks [V, 3, 3].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from styleme3d_ns.render.warp import DEFAULT_DEPTH_TOLERANCE, warp_to_view


def neighbour_pairs(viewmats: Tensor, neighbours: int = 2) -> list[tuple[int, int]]:
    """(target, source) pairs: each view with its ``neighbours`` cameras whose viewing directions are closest.

    Args:
        viewmats: [V, 4, 4] world-to-camera (OpenCV: the camera looks along +z, i.e. world direction ``R[2]``).
    """
    forward = viewmats[:, 2, :3].double()
    forward = forward / forward.norm(dim=-1, keepdim=True)
    angles = torch.arccos((forward @ forward.T).clamp(-1.0, 1.0))
    angles.fill_diagonal_(float("inf"))
    count = min(neighbours, len(viewmats) - 1)
    if count <= 0:
        return []
    nearest = angles.topk(count, dim=1, largest=False).indices
    return [(j, int(i)) for j in range(len(viewmats)) for i in nearest[j]]


def _hwc(image: Tensor) -> Tensor:
    """[C, H, W] -> [H, W, C]."""
    return image.permute(1, 2, 0)


def _warp_pair(
    images: Tensor, depths: Tensor, viewmats: Tensor, Ks: Tensor, alphas: Tensor | None, target: int, source: int,
    depth_tolerance: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """View ``source`` warped into ``target``: [3, H, W] and the valid mask [H, W]."""
    warped, valid = warp_to_view(
        _hwc(images[source]), _hwc(depths[source]), Ks[source], viewmats[source],
        _hwc(depths[target]), Ks[target], viewmats[target],
        src_alpha=None if alphas is None else _hwc(alphas[source]),
        dst_alpha=None if alphas is None else _hwc(alphas[target]),
        depth_tolerance=depth_tolerance,
    )  # fmt: skip
    return warped.permute(2, 0, 1), valid


def disparity_loss(
    images: Tensor,
    depths: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    alphas: Tensor | None = None,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
) -> Tensor:
    """Paper 004 eq. 7 averaged over view pairs: mean |I_source(T(p)) - I_target(p)| over corresponding pixels.

    Args:
        images: [V, 3, H, W] in [0, 1] (differentiable); depths [V, 1, H, W]; viewmats [V, 4, 4]; Ks [V, 3, 3].
        pairs: (target, source) view indices; default :func:`neighbour_pairs` (two nearest views each).
        alphas: [V, 1, H, W] opacities in [0, 1], or None (every pixel opaque).
        depth_tolerance: relative depth disagreement above which a pixel counts as occluded.

    Returns:
        scalar >= 0 in image units (0 when every pair's corresponding pixels agree, or no pixel corresponds).
    """
    pairs = neighbour_pairs(viewmats) if pairs is None else pairs
    terms = []
    for target, source in pairs:
        warped, valid = _warp_pair(images, depths, viewmats, Ks, alphas, target, source, depth_tolerance)
        if bool(valid.any()):
            terms.append((warped - images[target]).abs()[:, valid].mean())  # paper 004 eq. 7
    return torch.stack(terms).mean() if terms else images.new_zeros(())


@torch.no_grad()
def harmonise_targets(
    targets: Tensor,
    depths: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    *,
    weight: float = 1.0,
    iterations: int = 2,
    pairs: Sequence[tuple[int, int]] | None = None,
    alphas: Tensor | None = None,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
) -> Tensor:
    """Make per-view targets agree where views see the same surface (module docstring), returning new targets.

    Args:
        targets: [V, 3, H, W] in [0, 1], e.g. each view's stylisation; not modified.
        depths, viewmats, Ks, alphas, depth_tolerance: as :func:`disparity_loss`.
        weight: w >= 0, the disparity term against the fidelity term (0 returns the targets unchanged; large values
            average corresponding pixels over the neighbours).
        iterations: Jacobi iterations (each spreads agreement one neighbour further).
        pairs: (target, source) pairs; default each view with its two nearest views.

    Returns:
        [V, 3, H, W] in [0, 1].
    """
    if weight < 0 or iterations < 0:
        raise ValueError(f"weight and iterations must be >= 0, got {weight} and {iterations}")
    pairs = neighbour_pairs(viewmats) if pairs is None else pairs
    current = targets.clone()
    if weight == 0 or not pairs:
        return current
    for _ in range(iterations):
        total = targets.clone()  # fidelity: T0_j with weight 1
        count = torch.ones_like(targets[:, :1])
        for target, source in pairs:
            warped, valid = _warp_pair(current, depths, viewmats, Ks, alphas, target, source, depth_tolerance)
            mask = valid.to(targets.dtype)[None] * weight
            total[target] += mask * warped
            count[target] += mask
        current = (total / count).clamp(0.0, 1.0)  # Jacobi step of E(T): weighted mean over corresponding pixels
    return current
