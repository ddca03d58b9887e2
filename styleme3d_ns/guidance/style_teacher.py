"""The offline style teacher: stylise the renders with a 2D network, make the views agree, solve the colours, repeat.

Iterative dataset update as Instruct-NeRF2NeRF does with its 2D editor (Haque et al. 2023), with the Magenta
arbitrary-style network of Ghiasi et al. 2017 ("Exploring the structure of a real-time, arbitrary neural artistic
stylization network") as the editor and an exact least-squares colour fit instead of thousands of optimiser steps.
Each round, for the frozen geometry (one :class:`~styleme3d_ns.render.colour_map.ColourMap` per training view):

1. render every view with the current colours (``ColourMap.render``);
2. stylise each render with the style image's vector (at the render's size unless ``teacher_size`` says otherwise);
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

import torch
from torch import Tensor

from styleme3d_ns.config_defaults import DefaultsOnLoad
from styleme3d_ns.guidance.disparity import harmonise_targets, neighbour_pairs
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks
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
    ridge: float = 0.01
    """Content weight: pull of every Gaussian's solved SH coefficients towards the base colours (per Gaussian,
    relative to the mean squared pixel error of the fit)."""
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
    teacher_size: int | None = None
    """Longer side (px) the style network runs at, renders resized to it and back; None: the render's own size.
    Seen on a 128 px plane: upsampling renders to 384 gave a regular stroke grid, the render size clean painterly
    strokes; for strokes at the size the network learnt (384 px), build the colour maps near 384 px instead."""
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
        if self.ridge < 0 or self.harmonise_weight < 0:
            raise ValueError(f"ridge and harmonise_weight must be >= 0, got {self.ridge} and {self.harmonise_weight}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in [0, 3], got {self.sh_degree}")


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
        with torch.no_grad():
            self.style_vector = networks.style_vector(style_image)  # [1, 100]

    @classmethod
    def load(cls, config: StyleTeacherConfig, style_image: Tensor, device: torch.device | str = "cpu") -> StyleTeacher:
        """Load the packaged Magenta networks (MissingStyleNetworksError without the ``style`` extra)."""
        return cls(config, MagentaStyleNetworks.load(device), style_image)

    @torch.no_grad()
    def stylise(self, renders: Tensor) -> Tensor:
        """Targets [V, 3, H, W] in [0, 1] for renders [V, 3, H, W] in [0, 1] (strength blend included)."""
        cfg = self.config
        out = []
        for batch in renders.split(cfg.batch_size):
            stylised = self.networks.stylise(
                batch, self.style_vector, cfg.strength, cfg.preserve_colour, size=cfg.teacher_size
            ).to(batch)
            out.append(cfg.strength * stylised + (1.0 - cfg.strength) * batch)
        return torch.cat(out)

    @torch.no_grad()
    def fit(
        self,
        maps: Sequence[ColourMap],
        colours: Tensor,
        base_colours: Tensor,
        background: Tensor | None = None,
        depths: Tensor | None = None,
        viewmats: Tensor | None = None,
        Ks: Tensor | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Run ``config.rounds`` rounds of render -> stylise -> harmonise -> solve.

        Args:
            maps: one ColourMap per training view (same size, built with an SH degree >= ``config.sh_degree``).
            colours: [N, K, 3] SH coefficients to start from (usually the base).
            base_colours: [N, K, 3] the content the ridge pulls towards.
            background: [3] in [0, 1] composited behind the splat (as training renders it), or None (black).
            depths: [V, 1, H, W] rendered camera-space depth of each view (needed when ``config.harmonise``).
            viewmats: [V, 4, 4] world-to-camera (OpenCV axes); Ks: [V, 3, 3] intrinsics (for the harmonisation).
            progress: called after each round (:data:`Progress`).

        Returns:
            new [N, K, 3] colours (``colours``' dtype and device); ``base_colours`` themselves when strength is 0.
        """
        cfg = self.config
        if cfg.strength == 0.0:
            return base_colours.clone()  # nothing to transfer: the base, exactly
        harmonising = cfg.harmonise and cfg.harmonise_weight > 0 and len(maps) > 1
        if harmonising and (depths is None or viewmats is None or Ks is None):
            raise ValueError("harmonise needs depths [V, 1, H, W], viewmats [V, 4, 4] and Ks [V, 3, 3] of the views")
        alphas = torch.stack([m.alpha.reshape(1, m.height, m.width) for m in maps]).to(colours.dtype)  # [V, 1, H, W]
        current = colours.detach()
        for index in range(cfg.rounds):
            renders = torch.stack([m.render(current, background)[0] for m in maps]).permute(0, 3, 1, 2)
            targets = self.stylise(renders.clamp(0.0, 1.0))
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
        return current
