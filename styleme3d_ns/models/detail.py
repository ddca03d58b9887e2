"""Detail beyond the base's Gaussians: split the Gaussians whose colour cannot hold the stylised detail they cover.

Colour-only stylisation paints one colour per Gaussian, so where the base has a few large Gaussians a stroke becomes a
blotch. G-Style and StylizedGS split Gaussians while stylising for this reason. Here, after the offline teacher's
solve (off by default: ``--pipeline.model.detail.enabled``):

1. **where**: each Gaussian's share of what the fit misses, ``e_i = sum_v sum_p w_vpi r_vp^2`` with ``w_vpi`` its
   compositing weight in pixel p of view v and ``r_vp`` the target minus the fitted render (:func:`missed_detail`):
   large Gaussians under varied targets score highest;
2. **split**: the highest-scoring share of them (within the budget of ``max_growth`` x the base's count) each become
   two children on the parent's longest axis, inside its footprint (:func:`split_children`): centres at
   ``+-a sigma`` along the axis, that axis' scale ``s sigma`` with ``a^2 + s^2 = 1`` (the pair has the parent's
   mean and covariance), the other axes and the orientation kept, so the surface and the silhouette stay where they
   were and no Gaussian leaves the parent's ellipsoid; each child's opacity ``o'`` makes the pair cover as much as the
   parent (:func:`child_opacity`): its alpha ``1 - (1 - o' g_1)(1 - o' g_2)`` integrated over the parent's plane (the
   split axis and the next one) equals the parent's ``o g``. Matching the alpha at the centre only would let an
   opaque pair cover up to 1.4x the parent along the axis and darken what lies behind. Children take the parent's
   colours in every colour set (live, base, palette: one call, ``GuidedSplatModel.resize_gaussians``), so at style
   strength 0 the split splat renders as the base did (measured in docs/styleme3d.md);
3. **solve**: the teacher fits every style again on the split geometry, the children's colours in the same
   least-squares solve as everyone else's; repeated ``levels`` times.

What stays identical: every unsplit Gaussian, bit for bit, and the surface the children sit on. What does not: the
Gaussian count (up to ``max_growth`` x), and so the exported file's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from styleme3d_ns.core.config_defaults import DefaultsOnLoad
from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.render.colour_map import ColourMap

OFFSET = 0.5
"""a: the children's distance from the parent's centre in units of its longest axis' scale."""
SHRINK = math.sqrt(1.0 - OFFSET**2)
"""s: the children's scale on that axis relative to the parent's (a^2 + s^2 = 1: the pair's covariance is the
parent's)."""


@dataclass
class DetailConfig(DefaultsOnLoad):
    """Options of the detail split (models/detail.py); off by default because it changes the Gaussian count."""

    enabled: bool = False
    """After the offline teacher, split the Gaussians whose single colour misses the most stylised detail into two
    children inside their footprint and fit again (needs the offline teacher)."""
    max_growth: float = 2.0
    """Budget: the split splat holds at most this many times the base's Gaussians (> 1)."""
    levels: int = 2
    """Rounds of score -> split -> fit (each costs one more teacher fit of every style)."""
    share: float = 0.5
    """Share of the current Gaussians split in one round at most (the highest scores first), in (0, 1]."""
    stroke_size: float | None = 1 / 32
    """The teacher's stroke size while detail is on, replacing --pipeline.model.teacher.stroke-size (a fraction of
    the content's extent in view): strokes finer than the default 1/16, which split Gaussians can hold and the base's
    cannot; None: the teacher's own."""

    def check(self) -> None:
        """Raise a one-line UserInputError for values outside their ranges."""
        if not self.max_growth > 1.0:
            raise UserInputError(f"--pipeline.model.detail.max-growth must be above 1 (got {self.max_growth}); try 2")
        if self.stroke_size is not None and not self.stroke_size > 0.0:  # also refuses NaN
            raise UserInputError(f"--pipeline.model.detail.stroke-size must be above 0 (got {self.stroke_size}); "
                                 "try 0.03125, or None for the teacher's own")  # fmt: skip
        if self.levels < 1 or not 0.0 < self.share <= 1.0:
            raise UserInputError(f"--pipeline.model.detail.levels must be >= 1 and --pipeline.model.detail.share in "
                                 f"(0, 1] (got {self.levels} and {self.share})")  # fmt: skip


@torch.no_grad()
def missed_detail(
    maps: Sequence[ColourMap], targets: Tensor, colours: Tensor, background: Tensor | None, num_gaussians: int
) -> Tensor:
    """Per-Gaussian energy of what the fit misses, ``e_i = sum_v sum_p w_vpi r_vp^2`` (module docstring), ``[N]``.

    Args:
        maps: one ColourMap per view; targets: ``[V, 3, H, W]`` in [0, 1]; colours: ``[N, K, 3]`` the fitted SH.
        background: ``[3]`` or None, as the fit composited it.
    """
    energy = torch.zeros(num_gaussians, dtype=torch.float64)
    for cmap, target in zip(maps, targets, strict=True):
        render, alpha = cmap.render(colours, background)
        residual = ((target.permute(1, 2, 0) - render) ** 2).sum(-1) * alpha[..., 0]  # [H, W]: covered pixels only
        _, mat_t = cmap.matrix
        per_used = mat_t.to(torch.float64) @ residual.reshape(-1, 1).to(torch.float64)  # [U, 1]
        energy.index_add_(0, cmap.used.cpu(), per_used[:, 0].cpu())
    return energy


def pick_parents(scores: Tensor, count: int, base_count: int, config: DetailConfig) -> Tensor:
    """Indices of the Gaussians to split this round: the highest positive scores, at most ``share`` of the ``count``
    Gaussians and as many as keep the splat within ``max_growth`` x ``base_count`` (each split adds one)."""
    room = int(config.max_growth * base_count) - count
    take = min(room, int(config.share * count), int((scores > 0).sum()))
    if take <= 0:
        return torch.zeros(0, dtype=torch.long)
    return scores.topk(take).indices


def split_children(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, parents: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Split each parent into two children on its longest axis, inside its footprint (module docstring).

    Args:
        means ``[N, 3]``, scales ``[N, 3]`` (log), quats ``[N, 4]`` (wxyz, any norm), opacities ``[N, 1]`` (logit):
            the splat, as splatfacto stores it; parents: ``[P]`` distinct indices.

    Returns:
        ``source [N + P]``: the Gaussian each new one copies its colours from (the kept ones first, in their order,
        the parents' two children at the parent's place and at the end), and the new geometry by splatfacto's names
        (``means``, ``scales``, ``quats``, ``opacities``), unsplit Gaussians bit-identical.
    """
    n = means.shape[0]
    source = torch.arange(n, device=means.device)
    source = torch.cat([source, parents.to(means.device)])
    new = {"means": means.clone(), "scales": scales.clone(), "quats": quats.clone(), "opacities": opacities.clone()}
    new = {k: torch.cat([v, v[parents]]) for k, v in new.items()}
    sigma = torch.exp(scales[parents])  # [P, 3]
    axis = sigma.argmax(dim=1)  # [P]: the longest axis of each parent
    rotation = _rotation(quats[parents])  # [P, 3, 3], columns: the local axes in world
    direction = rotation[torch.arange(len(parents)), :, axis]  # [P, 3]
    step = OFFSET * sigma.gather(1, axis[:, None]) * direction  # [P, 3]
    first, second = parents.to(means.device), torch.arange(n, n + len(parents), device=means.device)
    new["means"][first] = means[parents] + step
    new["means"][second] = means[parents] - step
    shrunk = scales[parents].clone()
    shrunk[torch.arange(len(parents)), axis] += math.log(SHRINK)
    new["scales"][first] = shrunk
    new["scales"][second] = shrunk
    child = child_opacity(torch.sigmoid(opacities[parents])).clamp(1e-4, 0.999)
    new["opacities"][first] = torch.logit(child)
    new["opacities"][second] = torch.logit(child)
    return source, new


def child_opacity(opacity: Tensor) -> Tensor:
    """Each child's opacity `[P]` for parents of opacity `opacity` `[P]` in [0, 1]: the pair's alpha, integrated over
    the parent's plane, equals the parent's (module docstring).

    The match depends on the parent's opacity alone (the offsets and scales are fixed fractions of the parent's), so
    it is solved once, by bisection on a table of opacities, and interpolated.
    """
    table = _child_opacity_table().to(opacity)
    position = opacity.clamp(0.0, 1.0) * (len(table) - 1)
    low = position.floor().long().clamp(max=len(table) - 2)
    return torch.lerp(table[low], table[low + 1], position - low)


@functools.cache
def _child_opacity_table(entries: int = 129, step: float = 0.1) -> Tensor:
    """Child opacities `[entries]` for parent opacities linspace(0, 1, entries), float64, by bisection on a grid of
    `step` (in units of the parent's scales) over +-5 sigma."""
    x = torch.arange(-5.0, 5.0 + step / 2, step, dtype=torch.float64)
    across = torch.exp(-(x**2) / 2)  # the other axis: shared by parent and children
    first = torch.exp(-((x - OFFSET) ** 2) / (2 * SHRINK**2))[:, None] * across  # [X, Y]
    second = torch.exp(-((x + OFFSET) ** 2) / (2 * SHRINK**2))[:, None] * across
    parent = (torch.exp(-(x**2) / 2)[:, None] * across).sum()
    wanted = torch.linspace(0.0, 1.0, entries, dtype=torch.float64) * parent  # [E]: the parent's integrated alpha
    low, high = torch.zeros(entries, dtype=torch.float64), torch.ones(entries, dtype=torch.float64)
    for _ in range(30):
        mid = (low + high) / 2
        pair = 1 - (1 - mid[:, None, None] * first) * (1 - mid[:, None, None] * second)
        above = pair.sum(dim=(1, 2)) > wanted
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    return (low + high) / 2


def _rotation(quats: Tensor) -> Tensor:
    """Rotation matrices ``[P, 3, 3]`` of wxyz quaternions ``[P, 4]`` (normalised here), as the rasteriser uses."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)  # fmt: skip
