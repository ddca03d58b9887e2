"""Strokes that scale with the scene, not with the pixels: the scale at which the style network paints a view.

Magenta's transformer (:mod:`~styleme3d_ns.guidance.magenta`) paints at a fixed size in its own pixels, and on
content that is smooth at that size (a plain surface, a render upsampled or simply seen at 512 px) it paints its
own repeating pattern instead of strokes: the crosshatch and bands measured in docs/styleme3d.md ("Stroke size").
The offline teacher therefore fixes the stroke size on the object, as a fraction of the content's extent in the view
(``stroke_size``), and derives from it

- the **network's working resolution** (:func:`network_size`): each view is resized so that one stroke spans
  :data:`STROKE_PX` of the network's pixels, whatever the view's own resolution, and the result resized back;
- a **canvas grain** (:func:`canvas_grain`): a smooth random colour field on the Gaussians, with the stroke's
  wavelength on the surface, added to what the network sees (never to the splat). The network paints that grain
  into strokes instead of its pattern, and because the grain lives on the surface every view sees the same grain:
  the strokes agree between views, so the multi-view colour solve keeps them.

The extent is the box of the pixels the splat covers (alpha > 0.5), the median over the views (the whole view for a
scene that fills it), so bold or fine strokes mean the same on a 128 px and a 1080 px view.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

STROKE_PX = 32
"""Length, in the network's pixels, at which one stroke (one grain wavelength) is painted: the size of the strokes
the network paints on its own at its trained resolution (measured in docs/styleme3d.md)."""
NETWORK_SIZE_RANGE = (64, 1024)
"""Smallest and largest longer side (px) the network runs at (memory and time grow with its square)."""


def content_extent(alphas: Tensor) -> float:
    """Median over views of the longer side (px) of the box holding the covered pixels (alpha > 0.5) of alphas
    `[V, 1, H, W]`; a view that covers nothing counts as its whole frame."""
    extents = []
    for alpha in alphas[:, 0]:
        rows, cols = torch.nonzero(alpha > 0.5, as_tuple=True)
        if len(rows) == 0:
            extents.append(float(max(alpha.shape)))
            continue
        extents.append(float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)))
    return float(torch.tensor(extents).median())


def network_size(stroke_size: float, alphas: Tensor) -> int:
    """Longer side (px) the network runs views of alphas `[V, 1, H, W]` at, so that a stroke of `stroke_size` x the
    content's extent spans :data:`STROKE_PX` network pixels (clamped to :data:`NETWORK_SIZE_RANGE`)."""
    longest = max(alphas.shape[-2:])
    size = longest * STROKE_PX / (stroke_size * content_extent(alphas))
    return int(min(max(round(size), NETWORK_SIZE_RANGE[0]), NETWORK_SIZE_RANGE[1]))


def stroke_wavelength(stroke_size: float, alphas: Tensor, depths: Tensor, Ks: Tensor) -> float:
    """A stroke's length on the surface, in world units: `stroke_size` x the content's extent (px), times the pixel's
    size at the content's median depth (depth / focal length), median over views.

    Args:
        alphas: `[V, 1, H, W]` in [0, 1]; depths: `[V, 1, H, W]` camera-space depth; Ks: `[V, 3, 3]` intrinsics.
    """
    extent = content_extent(alphas)
    sizes = []
    for alpha, depth, K in zip(alphas, depths, Ks, strict=True):
        covered = depth[alpha > 0.5]
        if len(covered):
            sizes.append(float(covered.median()) / float(K[0, 0]))
    pixel = float(torch.tensor(sizes).median()) if sizes else 1.0 / float(Ks[0, 0, 0])
    return stroke_size * extent * pixel


def canvas_grain(means: Tensor, wavelength: float, amplitude: float, seed: int = 0, features: int = 128) -> Tensor:
    """A smooth random RGB field on the Gaussians: `[N, 3]` offsets of standard deviation `amplitude` per channel.

    A sum of `features` cosines of random directions, phases and colours, their spatial frequencies spread over an
    octave around 2 pi / `wavelength` (random Fourier features of a band-limited Gaussian field), so it has no
    single period for the network to lock onto. Deterministic for a seed.

    Args:
        means: `[N, 3]` Gaussian centres (world units); wavelength: > 0, world units.
    """
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(features, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    spread = 0.7 + 0.7 * torch.rand(features, 1, generator=generator, dtype=torch.float64)  # an octave
    frequency = (2 * math.pi / wavelength) * spread
    phases = 2 * math.pi * torch.rand(features, generator=generator, dtype=torch.float64)
    colours = torch.randn(features, 3, generator=generator, dtype=torch.float64)
    waves = torch.cos(means.detach().double().cpu() @ (directions * frequency).T + phases)  # [N, features]
    return (amplitude * (waves @ colours) / math.sqrt(features / 2)).to(means)
