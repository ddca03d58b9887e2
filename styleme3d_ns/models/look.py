"""The look a user dials on a stylised splat: which style, how strong, blended, colour-preserved, confined to a box.

A stylised run keeps its base colours and a palette of S stylised colour sets over one frozen geometry. Because a
render is linear in the Gaussian colours, every control here is a per-Gaussian colour operation applied at render
time, never a retrain:

    s   = (1 - b) P[style] + b P[blend_to]                  two-style interpolation (s = P[style] without blend_to)
    t   = base + (Y(s) - Y(base)) 1   "base-colour"          base chroma, style luminance (StylizedGS colour control)
    t   = s + (Y(base) - Y(s)) 1      "style-colour"         style chroma, base luminance
    out = base + k (t - base)  inside the region,  out = base  outside

with Y = 0.299 R + 0.587 G + 0.114 B (BT.601 luma, the Y of both YUV and YIQ) and k the strength. Adding a grey
(1, 1, 1) offset changes only Y because both chroma rows of YUV/YIQ sum to zero, so the chroma of t is exactly the
preserved one's and the luminance exactly the other's (Gatys et al. 2016, "Preserving Color in Neural Artistic
Style Transfer", luminance-only transfer; StylizedGS, Zhang et al. 2024, colour control).

All of it is affine with weights summing to one, so the same operations on SH coefficients (`apply_look_sh`, for
`ns-export`) equal the colour-space look wherever the SH colour is not clamped at 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.configs.base_config import PrintableConfig
from nerfstudio.data.scene_box import OrientedBox
from torch import Tensor

from styleme3d_ns.core.config_defaults import DefaultsOnLoad
from styleme3d_ns.core.errors import UserInputError

ColourPreservation = Literal["off", "base-colour", "style-colour"]
Region = Literal["all", "inside", "outside"]
COLOUR_PRESERVATION: tuple[ColourPreservation, ...] = ("off", "base-colour", "style-colour")
REGIONS: tuple[Region, ...] = ("all", "inside", "outside")

LUMA_BT601 = (0.299, 0.587, 0.114)
"""RGB weights of Y in YUV and YIQ (ITU-R BT.601)."""

Palette = Tensor | Sequence[Tensor] | Mapping[int, Tensor]
"""Per-style colours or coefficients: a [S, N, ..., 3] tensor, S tensors [N, ..., 3], or {index: [N, ..., 3]} holding
at least `styles_used(look)` (only those entries are read, so a caller evaluates SH for them alone)."""


@dataclass
class LookConfig(DefaultsOnLoad, PrintableConfig):
    """The look shown, rendered and exported: a palette entry, its strength, a second style, colour and region."""

    style: int = 0
    """Palette index of the style shown (0 = the first style given)."""
    strength: float = 1.0
    """How much of the style to show, in [0, 1]: 0 = the base colours exactly, 1 = the style exactly."""
    blend_to: int | None = None
    """Palette index of a second style to interpolate towards (None = no interpolation)."""
    blend: float = 0.0
    """Interpolation from `style` (0) to `blend_to` (1), in [0, 1]; ignored without blend-to."""
    preserve_colour: ColourPreservation = "off"
    """base-colour: the base's chroma with the style's luminance detail; style-colour: the reverse; off: the style."""
    region: Region = "all"
    """Where the style applies: all, inside or outside the box; elsewhere the base colours are kept exactly."""
    box_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Centre of the region box in world (nerfstudio) units, as the viewer's crop center."""
    box_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Full side lengths of the region box along its own axes, as the viewer's crop scale."""
    box_rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Roll, pitch, yaw of the region box in radians, as the viewer's crop rotation."""

    def box(self) -> OrientedBox:
        """The region box as nerfstudio's OrientedBox (the viewer's crop-box convention)."""
        return OrientedBox.from_params(self.box_center, self.box_rotation, self.box_size)


LOOK_FLAG = "--pipeline.model.look"
"""Prefix of the look's command-line options (ns-train, styleme3d-render, styleme3d-export)."""


def check_look(look: LookConfig, num_styles: int, stored_in: Path | str | None = None) -> None:
    """Raise UserInputError (one line naming the value and the fix) if `look` does not fit a palette of `num_styles`.

    Args:
        look: the look to check (from the command line, a config.yml, or the viewer).
        num_styles: entries of the palette it indexes (1 for a run with one style, or none).
        stored_in: the config.yml the look was read from, when it was (rendering or exporting a finished run): the
            message then says the value lives there and names the flag that overrides it.
    """

    def bad(name: str, value: object, problem: str, allowed: str) -> UserInputError:
        if stored_in is None:
            return UserInputError(f"look {name} {value} {problem}; set {LOOK_FLAG}.{name} to {allowed}")
        return UserInputError(
            f"look {name} {value} stored in {stored_in} {problem}; override it with {LOOK_FLAG}.{name} ({allowed}) "
            "on styleme3d-render or styleme3d-export, or edit that file"
        )

    if num_styles < 1:
        raise UserInputError("the look needs at least one style in the palette: give --pipeline.model.style-image")
    held = f"the palette holds {num_styles} style{'s' * (num_styles != 1)}"
    indices = "0" if num_styles == 1 else f"0..{num_styles - 1}"
    for name, index in (("style", look.style), ("blend-to", look.blend_to)):
        if index is not None and not 0 <= index < num_styles:
            raise bad(name, index, f"is not a palette index ({held})", indices)
    for name, value in (("strength", look.strength), ("blend", look.blend)):
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise bad(name, value, "is not in [0, 1]", "a value from 0 to 1")
    if look.preserve_colour not in COLOUR_PRESERVATION:
        raise bad("preserve-colour", repr(look.preserve_colour), "is unknown", f"one of {COLOUR_PRESERVATION}")
    if look.region not in REGIONS:
        raise bad("region", repr(look.region), "is unknown", f"one of {REGIONS}")
    for name in ("box_center", "box_size", "box_rotation"):
        value = tuple(getattr(look, name))
        if len(value) != 3 or not all(math.isfinite(v) for v in value):
            raise bad(name.replace("_", "-"), value, "is not three finite numbers", "x y z")
    if look.region != "all" and min(look.box_size) <= 0:
        raise bad("box-size", tuple(look.box_size), "must be positive on every axis to hold anything",
                  "three sizes above 0")  # fmt: skip


def styles_used(look: LookConfig) -> tuple[int, ...]:
    """Palette indices the look reads (callers may evaluate SH for these entries only)."""
    if look.blend_to is None or look.blend_to == look.style:
        return (look.style,)
    return (look.style, look.blend_to)


def region_mask(means: Tensor, look: LookConfig) -> Tensor | None:
    """Which Gaussians the style applies to: bool [N] (None = all of them).

    A centre p is inside the box when |Rᵀ (p - c)| < size / 2 on every axis, OrientedBox.within's strict test
    without its per-call 4x4 inverse.
    """
    if look.region == "all":
        return None
    box = look.box()
    local = (means - box.T.to(means)) @ box.R.to(means)  # rows: Rᵀ (p - c)
    inside = (local.abs() < box.S.to(means) / 2).all(dim=-1)
    return inside if look.region == "inside" else ~inside


def luminance(rgb: Tensor) -> Tensor:
    """Y of [..., 3] RGB (or RGB-like SH coefficients) as [..., 1]."""
    weights = torch.tensor(LUMA_BT601, dtype=rgb.dtype, device=rgb.device)
    return (rgb * weights).sum(dim=-1, keepdim=True)


def _style_target(base: Tensor, palette: Palette, look: LookConfig) -> Tensor:
    """t: the (blended, colour-preserved) style for `base` [N, ..., 3]; same shape."""
    style = palette[look.style]
    if len(styles_used(look)) == 2 and look.blend > 0:
        style = torch.lerp(style, palette[look.blend_to], look.blend)  # exact at blend 0 and 1
    if look.preserve_colour == "base-colour":
        return base + (luminance(style) - luminance(base))
    if look.preserve_colour == "style-colour":
        return style + (luminance(base) - luminance(style))
    return style


def _mix(base: Tensor, palette: Palette, mask: Tensor | None, look: LookConfig) -> Tensor:
    """out = base + k (t - base) where `mask` [N] holds (everywhere without one), base elsewhere, bit for bit."""
    if look.strength == 0 or (mask is not None and not bool(mask.any())):
        return base
    target = _style_target(base, palette, look)
    out = target if look.strength == 1 else torch.lerp(base, target, look.strength)
    if mask is None:
        return out
    return torch.where(mask.reshape(-1, *([1] * (base.dim() - 1))), out, base)


def apply_look(base_rgb: Tensor, palette_rgb: Palette, means: Tensor, look: LookConfig) -> Tensor:
    """Per-Gaussian colours of the look for one view.

    Args:
        base_rgb: [N, 3] base colours for this view (SH evaluated and clamped as the rasteriser takes them).
        palette_rgb: [S, N, 3] the palette's colours for the same view (or a `Palette` holding only
            `styles_used(look)`, so that SH is evaluated for the entries shown alone).
        means: [N, 3] Gaussian centres (world), for the region box.
        look: the look; assumed valid (`check_look`).

    Returns:
        [N, 3] colours, linear in the inputs (no clamp, the rasteriser composites any value). With strength 0 or
        an empty region this is `base_rgb` itself; Gaussians outside the region keep `base_rgb`'s exact values.
    """
    return _mix(base_rgb, palette_rgb, region_mask(means, look), look)


def apply_look_sh(
    base_dc: Tensor,
    base_rest: Tensor,
    palette_dc: Palette,
    palette_rest: Palette,
    means: Tensor,
    look: LookConfig,
) -> tuple[Tensor, Tensor]:
    """SH coefficients of the look, for `ns-export` (what the viewer shows, as one splat).

    Args:
        base_dc: [N, 3] base DC coefficients (colour = 0.5 + SH_C0 * dc); base_rest: [N, K-1, 3] higher bands.
        palette_dc: [S, N, 3]; palette_rest: [S, N, K-1, 3] (or sequences of per-style tensors).
        means: [N, 3] Gaussian centres, for the region box.
        look: the look; assumed valid (`check_look`).

    Returns:
        (dc [N, 3], rest [N, K-1, 3]). Blend, strength and region are affine per coefficient with weights summing
        to one, and colour preservation adds a grey offset ΔY (1, 1, 1): both commute with SH evaluation, so the
        same operations are applied to the DC and to every rest band. The exported view-dependent colour therefore
        keeps the preserved chroma in every direction (rest bands take the luminance of their band, not only of
        the DC), and equals `apply_look` on the evaluated colours wherever those are not clamped at 0.
    """
    mask = region_mask(means, look)
    return _mix(base_dc, palette_dc, mask, look), _mix(base_rest, palette_rest, mask, look)
