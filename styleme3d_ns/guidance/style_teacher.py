"""The offline style teacher: stylise the renders with a 2D network, make the views agree, solve the colours, repeat.

Iterative dataset update as Instruct-NeRF2NeRF does with its 2D editor (Haque et al. 2023), with the Magenta
arbitrary-style network of Ghiasi et al. 2017 ("Exploring the structure of a real-time, arbitrary neural artistic
stylization network") as the editor and an exact least-squares colour fit instead of thousands of optimiser steps.
For the frozen geometry (one :class:`~styleme3d_ns.render.colour_map.ColourMap` per training view), first (with
``prematch``) give the splat's colours, and the content the ridge pulls towards, the style image's colour statistics
(one affine map, exact on SH), then each round:

1. render every view with the current colours (``ColourMap.render``);
2. stylise each render with the style image's vector at the scale of the strokes (``stroke_size``: the network
   runs where a stroke spans its trained size and paints a canvas grain anchored on the surface, see
   :mod:`~styleme3d_ns.guidance.stroke_scale`), then move the stylised targets' colour statistics towards the style
   image's (``colour_match``; one affine colour map for all views together, so it adds no disagreement between them);
3. optionally make the stylised targets agree across neighbouring views (paper 004 eq. 7,
   :func:`~styleme3d_ns.guidance.disparity.harmonise_targets`);
4. solve the colours that best reproduce all targets at once, ridge-pulled to the base colours
   (:func:`~styleme3d_ns.render.colour_solve.solve_colours`; SH DC only by default, so the views' disagreement cannot
   become view-dependent colour).

No nerfstudio here: the model builds the maps and calls :meth:`StyleTeacher.fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from styleme3d_ns.core.config_defaults import DefaultsOnLoad
from styleme3d_ns.guidance.colour_transfer import apply_colour_transfer_to_sh, fit_colour_transfer
from styleme3d_ns.guidance.disparity import harmonise_targets, neighbour_pairs
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks, luma
from styleme3d_ns.guidance.stroke_scale import canvas_grain, network_size, stroke_wavelength
from styleme3d_ns.render.colour_map import ColourMap
from styleme3d_ns.render.colour_solve import ColourSolution, solve_colours


@dataclass
class StyleTeacherConfig(DefaultsOnLoad):
    """Options of :class:`StyleTeacher` (the offline teacher + exact colour solve)."""

    rounds: int = 2
    """Rounds of render -> stylise -> solve; each round stylises the previous round's result."""
    strength: float = 1.0
    """Style strength in [0, 1]: the network's style vector is strength * style + (1 - strength) * the view's own, and
    the target is strength * stylised + (1 - strength) * render; 0 returns the base colours unchanged."""
    preserve_colour: bool = False
    """Keep each view's own colours (chroma) and take only luminance (strokes, shading) from the style."""
    colour_match: float = 1.0
    """How far colour statistics move to the style image's, in [0, 1]: each round's stylised targets, and with
    prematch the splat before the first round (0: off; 1: exactly the style's RGB mean and covariance, or its
    luminance mean and spread with preserve_colour). The network alone leaves the palette paler than the style."""
    prematch: bool = True
    """Before the first round, map the splat's colours, and the content the ridge pulls towards, to the style's
    colour statistics (StylizedGS's colour transfer, exact on SH; amount colour_match x strength): the network then
    stylises the scene in the style's palette."""
    ridge: float = 0.02
    """Content weight: pull of every Gaussian's solved SH coefficients towards the base colours (prematched ones with
    prematch; per Gaussian, relative to the mean squared pixel error of the fit)."""
    sh_degree: int = 0
    """Highest SH degree the solve fits (0: view-independent DC only; higher bands keep their base values)."""
    harmonise: bool = True
    """Make neighbouring views' stylised targets agree before the solve (paper 004 eq. 7; needs depths and cameras)."""
    harmonise_weight: float = 1.0
    """Weight of cross-view agreement against each view's own stylisation in the harmonisation (>= 0)."""
    harmonise_iterations: int = 2
    """Jacobi iterations of the harmonisation."""
    neighbours: int = 2
    """Views each view is harmonised with (nearest viewing directions)."""
    stroke_size: float = 1 / 16
    """Brush-stroke size as a fraction of the content's extent in the view (the box of the pixels the splat covers;
    the whole view when the scene fills it), the same at any view resolution: larger is bolder. The network runs where
    such a stroke spans its trained size and paints a canvas grain of that wavelength on the surface
    (guidance/stroke_scale.py; docs/styleme3d.md, "Stroke size"). 0: the network runs at teacher_size, no grain."""
    grain: float = 0.06
    """Amplitude (RGB standard deviation) of the canvas grain added to what the network sees, never to the splat;
    0: none (with stroke_size > 0 the network still runs at the stroke's scale)."""
    teacher_size: int | None = None
    """Only with stroke_size 0: longer side (px) the style network runs at, renders resized to it and back; None:
    the render's own size (the teacher before stroke_size; on smooth content it paints a regular crosshatch)."""
    batch_size: int = 4
    """Views stylised per network call (memory vs speed)."""
    cg_tolerance: float = 1e-5
    """Relative residual at which the colour solve's conjugate gradients stop."""
    cg_max_iterations: int = 300
    """Conjugate-gradient iterations per solve pass."""

    def check(self) -> None:
        """Raise a one-line ValueError for values outside their ranges."""
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if not 0.0 <= self.colour_match <= 1.0:
            raise ValueError(f"colour_match must be in [0, 1], got {self.colour_match}")
        if self.ridge < 0 or self.harmonise_weight < 0:
            raise ValueError(f"ridge and harmonise_weight must be >= 0, got {self.ridge} and {self.harmonise_weight}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in [0, 3], got {self.sh_degree}")
        if not (self.stroke_size >= 0 and self.grain >= 0):  # also refuses NaN
            raise ValueError(f"stroke_size and grain must be >= 0, got {self.stroke_size} and {self.grain}")


def style_colour_map(
    pixels: Tensor, style_pixels: Tensor, amount: float = 1.0, luminance_only: bool = False
) -> tuple[Tensor, Tensor]:
    """The affine colour map ``c' = A c + b`` moving the statistics of ``pixels`` towards the style's.

    RGB: StylizedGS's colour transfer (:func:`~styleme3d_ns.guidance.colour_transfer.fit_colour_transfer`: the
    style's mean and covariance), taken ``amount`` of the way: ``A' = (1 - amount) I + amount A``, ``b' = amount b``.
    Luminance only: the luma moves ``amount`` of the way to ``mu_s + (Y - mu) sigma_s / sigma`` and every channel
    gets the same change, so chroma is kept (as :func:`~styleme3d_ns.guidance.magenta.keep_colour`):
    ``A = I + amount (sigma_s / sigma - 1) 1 w^T``, ``b = amount (mu_s - mu sigma_s / sigma) 1``, w the luma weights.

    Args:
        pixels: [P, 3] RGB in [0, 1] (P >= 2); style_pixels: [M, 3] RGB in [0, 1] (M >= 1).
        amount: in [0, 1]; 0 gives the identity.
        luminance_only: match the luma's mean and standard deviation only.

    Returns:
        ``A`` [3, 3], ``b`` [3] in ``pixels``' dtype; apply as ``pixels @ A.T + b``.
    """
    eye = torch.eye(3, dtype=pixels.dtype, device=pixels.device)
    style_pixels = style_pixels.to(pixels)
    if luminance_only:
        weights = luma(eye[:, :, None, None]).reshape(3)  # w: the luma of each RGB primary
        y, y_style = pixels @ weights, style_pixels @ weights
        spread = y_style.std() if y_style.numel() > 1 else y_style.new_zeros(())  # a 1x1 style image: one grey level
        ratio = spread / y.std().clamp_min(1e-6)
        a = eye + amount * (ratio - 1.0) * torch.ones_like(eye) * weights[None, :]
        return a, amount * (y_style.mean() - ratio * y.mean()) * torch.ones(3, dtype=pixels.dtype)
    a, b = fit_colour_transfer(pixels, style_pixels)
    return amount * a + (1.0 - amount) * eye, amount * b


def match_colour_statistics(
    images: Tensor, style_image: Tensor, amount: float = 1.0, luminance_only: bool = False,
    weights: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Apply :func:`style_colour_map`, fitted on all views' pixels pooled, to every view.

    One map for all views, so it cannot make views disagree.

    Args:
        images: [V, 3, H, W] in [0, 1]; style_image: [1, 3, H_s, W_s] in [0, 1].
        amount, luminance_only: as :func:`style_colour_map` (amount 0 returns ``images`` itself).
        weights: [V, 1, H, W] in [0, 1] or None; only pixels with weight > 0.5 (e.g. alpha: covered by the splat)
            enter the statistics; all pixels are mapped.

    Returns:
        [V, 3, H, W] in [0, 1] (clamped).
    """
    if amount == 0.0:
        return images
    pixels = _pixels(images)
    counted = pixels if weights is None else pixels[(weights > 0.5).flatten()]
    a, b = style_colour_map(counted if len(counted) >= 2 else pixels, _pixels(style_image), amount, luminance_only)
    mapped = pixels @ a.T + b
    return mapped.reshape(images.shape[0], *images.shape[2:], 3).permute(0, 3, 1, 2).clamp(0.0, 1.0)


def _render(maps: Sequence[ColourMap], colours: Tensor, background: Tensor | None) -> Tensor:
    """Renders [V, 3, H, W] of SH colours [N, K, 3] through each view's colour map."""
    return torch.stack([m.render(colours, background)[0] for m in maps]).permute(0, 3, 1, 2)


def _pixels(images: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B H W, 3]."""
    return images.permute(0, 2, 3, 1).reshape(-1, 3)


Progress = Callable[[int, ColourSolution], None]
"""Called after each round with the round index (0-based) and that round's solution."""


class StyleTeacher:
    """Fits SH colours of a frozen splat to Magenta stylisations of its own renders (module docstring).

    Usage: ``teacher = StyleTeacher.load(config, style_image [1, 3, H, W], device)``; then
    ``new_colours = teacher.fit(maps, colours, base_colours, background, depths, viewmats, Ks)``.
    """

    def __init__(self, config: StyleTeacherConfig, networks: MagentaStyleNetworks, style_image: Tensor) -> None:
        """``style_image``: [1, 3, H, W] in [0, 1]; its style vector is computed once here."""
        config.check()
        self.config = config
        self.networks = networks
        self.style_image = style_image
        with torch.no_grad():
            self.style_vector = networks.style_vector(style_image)  # [1, 100]

    @classmethod
    def load(cls, config: StyleTeacherConfig, style_image: Tensor, device: torch.device | str = "cpu") -> StyleTeacher:
        """Load the packaged Magenta networks (MissingStyleNetworksError without the ``style`` extra)."""
        return cls(config, MagentaStyleNetworks.load(device), style_image)

    @torch.no_grad()
    def stylise(
        self, renders: Tensor, alphas: Tensor | None = None, grain: Tensor | None = None, size: int | None = None
    ) -> Tensor:
        """Targets [V, 3, H, W] in [0, 1] for renders [V, 3, H, W] in [0, 1] (colour match and strength blend
        included); ``alphas`` [V, 1, H, W] pick the pixels whose colours the match measures (None: all).

        ``grain`` [V, 3, H, W] is added to what the network sees (the canvas grain's renders; the strength blend uses
        the renders without it); ``size`` is the longer side the network runs at (None: ``teacher_size``)."""
        cfg = self.config
        seen = renders if grain is None else (renders + grain).clamp(0.0, 1.0)
        size = cfg.teacher_size if size is None else size
        stylised = torch.cat([
            self.networks.stylise(batch, self.style_vector, cfg.strength, cfg.preserve_colour, size=size)
            for batch in seen.split(cfg.batch_size)
        ]).to(renders)  # fmt: skip
        stylised = match_colour_statistics(stylised, self.style_image, cfg.colour_match, cfg.preserve_colour, alphas)
        return cfg.strength * stylised + (1.0 - cfg.strength) * renders

    @torch.no_grad()
    def prematch(self, maps: Sequence[ColourMap], colours: Tensor, base_colours: Tensor) -> tuple[Tensor, Tensor]:
        """``colours`` and ``base_colours`` [N, K, 3] mapped by one :func:`style_colour_map` (amount
        ``colour_match * strength``), applied to the SH exactly: colour is affine in the DC band and linear in the
        others.

        The map is fitted on the pixels the splat covers (alpha > 0.5) of the renders of ``colours`` without
        background, divided by alpha: convex combinations of Gaussian colours, which an affine map of the Gaussians'
        colours maps exactly, so those pixels get the style's statistics (``background`` is not used)."""
        cfg = self.config
        renders = _render(maps, colours, None).clamp_min(0.0)
        alphas = torch.stack([m.alpha.reshape(1, m.height, m.width) for m in maps]).to(renders)
        colour = _pixels(renders / alphas.clamp_min(1e-6))
        covered = colour[(alphas > 0.5).flatten()]
        a, b = style_colour_map(
            covered if len(covered) >= 2 else colour, _pixels(self.style_image),
            cfg.colour_match * cfg.strength, cfg.preserve_colour,
        )  # fmt: skip
        mapped = []
        for sh in (colours, base_colours):
            dc, rest = apply_colour_transfer_to_sh(sh[:, 0], sh[:, 1:], a.to(sh), b.to(sh))
            mapped.append(torch.cat([dc[:, None], rest], dim=1))
        return mapped[0], mapped[1]

    def fit(self, *args: Any, **kwargs: Any) -> Tensor:  # noqa: ANN401 - fit_targets' arguments
        """The colours of :meth:`fit_targets` (same arguments), without the targets."""
        return self.fit_targets(*args, **kwargs)[0]

    @torch.no_grad()
    def fit_targets(
        self,
        maps: Sequence[ColourMap],
        colours: Tensor,
        base_colours: Tensor,
        background: Tensor | None = None,
        depths: Tensor | None = None,
        viewmats: Tensor | None = None,
        Ks: Tensor | None = None,
        progress: Progress | None = None,
        means: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Run ``config.rounds`` rounds of render -> stylise -> harmonise -> solve.

        Args:
            maps: one ColourMap per training view (same size, built with an SH degree >= ``config.sh_degree``).
            colours: [N, K, 3] SH coefficients to start from (usually the base).
            base_colours: [N, K, 3] the content the ridge pulls towards.
            background: [3] in [0, 1] composited behind the splat (as training renders it), or None (black).
            depths: [V, 1, H, W] rendered camera-space depth of each view (needed when ``config.harmonise``).
            viewmats: [V, 4, 4] world-to-camera (OpenCV axes); Ks: [V, 3, 3] intrinsics (for the harmonisation).
            progress: called after each round (:data:`Progress`).
            means: [N, 3] Gaussian centres (for the canvas grain; needed with ``stroke_size`` and ``grain`` > 0).

        Returns:
            new [N, K, 3] colours (``colours``' dtype and device; ``base_colours`` themselves when strength is 0) and
            the last round's targets [V, 3, H, W] (None when strength is 0).
        """
        cfg = self.config
        if cfg.strength == 0.0:
            return base_colours.clone(), None  # nothing to transfer: the base, exactly
        harmonising = cfg.harmonise and cfg.harmonise_weight > 0 and len(maps) > 1
        if harmonising and (depths is None or viewmats is None or Ks is None):
            raise ValueError("harmonise needs depths [V, 1, H, W], viewmats [V, 4, 4] and Ks [V, 3, 3] of the views")
        alphas = torch.stack([m.alpha.reshape(1, m.height, m.width) for m in maps]).to(colours.dtype)  # [V, 1, H, W]
        size, grain = self._stroke_scale(maps, alphas, depths, Ks, means)
        current = colours.detach()
        if cfg.prematch and cfg.colour_match > 0:
            current, base_colours = self.prematch(maps, current, base_colours)
        for index in range(cfg.rounds):
            renders = _render(maps, current, background)
            targets = self.stylise(renders.clamp(0.0, 1.0), alphas, grain, size)
            if harmonising:
                targets = harmonise_targets(
                    targets, depths, viewmats, Ks,
                    weight=cfg.harmonise_weight, iterations=cfg.harmonise_iterations, alphas=alphas,
                    pairs=neighbour_pairs(viewmats, cfg.neighbours),
                )  # fmt: skip
            solution = solve_colours(
                maps, targets.permute(0, 2, 3, 1), current, base_colours, background,
                sh_degree=cfg.sh_degree, ridge=cfg.ridge, pixel_weights=list(alphas[:, 0]),
                tolerance=cfg.cg_tolerance, max_iterations=cfg.cg_max_iterations,
            )  # fmt: skip
            current = solution.colours
            if progress is not None:
                progress(index, solution)
        return current, targets

    def _stroke_scale(
        self, maps: Sequence[ColourMap], alphas: Tensor, depths: Tensor | None, Ks: Tensor | None,
        means: Tensor | None,
    ) -> tuple[int | None, Tensor | None]:  # fmt: skip
        """The network's working size (None: ``teacher_size``) and the canvas grain's renders [V, 3, H, W] (or None)
        for ``stroke_size`` (guidance/stroke_scale.py)."""
        cfg = self.config
        if cfg.stroke_size == 0:
            return None, None
        size = network_size(cfg.stroke_size, alphas)
        if cfg.grain == 0:
            return size, None
        if depths is None or Ks is None or means is None:
            raise ValueError("the canvas grain needs depths [V, 1, H, W], Ks [V, 3, 3] and means [N, 3] (or grain 0)")
        wavelength = stroke_wavelength(cfg.stroke_size, alphas, depths, Ks)
        per_gaussian = canvas_grain(means, wavelength, cfg.grain).to(alphas)
        return size, torch.stack([m.render(per_gaussian)[0] for m in maps]).permute(0, 3, 1, 2)
