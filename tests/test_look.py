"""The look (models/look.py): style, strength, two-style blend, colour preservation and region, on colours and SH."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.look import LookConfig, apply_look, apply_look_sh, check_look, region_mask, styles_used
from styleme3d_ns.render.sh import SH_C0, sh_colors

N, S = 500, 3

# BT.601 YUV, written out independently of the code under test: U = 0.436 (B - Y) / (1 - 0.114),
# V = 0.615 (R - Y) / (1 - 0.299).
_Y = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
YUV = torch.stack([_Y, 0.436 / 0.886 * (torch.eye(3, dtype=torch.float64)[2] - _Y),
                   0.615 / 0.701 * (torch.eye(3, dtype=torch.float64)[0] - _Y)])  # fmt: skip


def _yuv(rgb: torch.Tensor) -> torch.Tensor:
    return rgb.double() @ YUV.T


@pytest.fixture
def colours() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(base [N, 3], palette [S, N, 3], means [N, 3]) with colours in [0, 1] and centres in [-1, 1]^3."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(N, 3, generator=gen)
    palette = torch.rand(S, N, 3, generator=gen)
    means = torch.rand(N, 3, generator=gen) * 2 - 1
    return base, palette, means


def test_strength_zero_leaves_base_colours_bit_identical(colours) -> None:
    base, palette, means = colours
    for look in (
        LookConfig(strength=0.0),
        LookConfig(strength=0.0, blend_to=2, blend=0.3, preserve_colour="base-colour"),
    ):
        assert torch.equal(apply_look(base, palette, means, look), base)


def test_strength_one_is_the_style_exactly_and_between_is_linear(colours) -> None:
    base, palette, means = colours
    assert torch.equal(apply_look(base, palette, means, LookConfig(style=1, strength=1.0)), palette[1])
    half = apply_look(base, palette, means, LookConfig(style=2, strength=0.25))
    torch.testing.assert_close(half, 0.75 * base + 0.25 * palette[2], rtol=0, atol=1e-6)


def test_blend_endpoints_are_the_two_styles_and_midpoint_their_mean(colours) -> None:
    base, palette, means = colours
    look = LookConfig(style=0, blend_to=2)
    assert torch.equal(apply_look(base, palette, means, replace(look, blend=0.0)), palette[0])
    assert torch.equal(apply_look(base, palette, means, replace(look, blend=1.0)), palette[2])
    mid = apply_look(base, palette, means, replace(look, blend=0.5))
    torch.testing.assert_close(mid, (palette[0] + palette[2]) / 2, rtol=0, atol=1e-6)
    assert styles_used(look) == (0, 2) and styles_used(LookConfig(style=1)) == (1,)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_colour_preservation_keeps_one_sides_chroma_and_the_others_luminance(colours, strength: float) -> None:
    base, palette, means = colours
    style = palette[1]
    keep_base = apply_look(base, palette, means, LookConfig(style=1, strength=strength, preserve_colour="base-colour"))
    keep_style = apply_look(
        base, palette, means, LookConfig(style=1, strength=strength, preserve_colour="style-colour")
    )
    # chroma (U, V) of the base kept at any strength; luminance Y moves to the style's by the strength
    torch.testing.assert_close(_yuv(keep_base)[:, 1:], _yuv(base)[:, 1:], rtol=0, atol=1e-6)
    y_expected = (1 - strength) * _yuv(base)[:, 0] + strength * _yuv(style)[:, 0]
    torch.testing.assert_close(_yuv(keep_base)[:, 0], y_expected, rtol=0, atol=1e-6)
    # the reverse: base luminance, chroma moving to the style's
    torch.testing.assert_close(_yuv(keep_style)[:, 0], _yuv(base)[:, 0], rtol=0, atol=1e-6)
    uv_expected = (1 - strength) * _yuv(base)[:, 1:] + strength * _yuv(style)[:, 1:]
    torch.testing.assert_close(_yuv(keep_style)[:, 1:], uv_expected, rtol=0, atol=1e-6)
    assert (_yuv(keep_base)[:, 1:] - _yuv(style)[:, 1:]).abs().max() > 0.1  # the style's chroma really differs


def test_region_masks_by_the_rotated_box_and_keeps_the_rest_bit_identical(colours) -> None:
    base, palette, means = colours
    box = {"box_center": (0.2, -0.1, 0.0), "box_size": (0.8, 0.5, 1.2), "box_rotation": (0.3, -0.2, 0.7)}
    inside = LookConfig(style=2, region="inside", **box)
    outside = replace(inside, region="outside")
    # reference: nerfstudio's own OrientedBox test, the viewer's crop box
    with pytest.warns(UserWarning):  # OrientedBox.within copy-constructs a tensor
        expected = inside.box().within(means.double())
    assert 0 < int(expected.sum()) < N
    assert torch.equal(region_mask(means, inside), expected)
    out_in, out_out = apply_look(base, palette, means, inside), apply_look(base, palette, means, outside)
    assert torch.equal(out_in[expected], palette[2][expected]) and torch.equal(out_in[~expected], base[~expected])
    assert torch.equal(out_out[~expected], palette[2][~expected]) and torch.equal(out_out[expected], base[expected])
    far = replace(inside, box_center=(10.0, 10.0, 10.0))
    assert torch.equal(apply_look(base, palette, means, far), base)


def test_apply_look_sh_matches_apply_look_on_view_independent_colours(colours) -> None:
    base, palette, means = colours
    to_dc = lambda rgb: (rgb - 0.5) / SH_C0  # noqa: E731 - colours in [0, 1], never clamped
    zeros = torch.zeros(N, 15, 3)
    look = LookConfig(style=0, blend_to=1, blend=0.3, strength=0.7, preserve_colour="base-colour", region="outside",
                      box_size=(1.0, 1.0, 1.0))  # fmt: skip
    dc, rest = apply_look_sh(to_dc(base), zeros, to_dc(palette), zeros.expand(S, -1, -1, -1), means, look)
    assert torch.equal(rest, zeros)
    torch.testing.assert_close(0.5 + SH_C0 * dc, apply_look(base, palette, means, look), rtol=0, atol=1e-6)


def test_apply_look_sh_on_view_dependent_coefficients_equals_the_look_of_their_colours(colours) -> None:
    base, palette, means = colours
    gen = torch.Generator().manual_seed(1)
    coeffs = lambda *shape: 0.02 * torch.randn(*shape, 16, 3, generator=gen)  # noqa: E731
    base_sh, palette_sh = coeffs(N), coeffs(S, N)
    # DC colours in [0.3, 0.7]: view-dependent terms of +-0.2 at most never reach the clamp at 0
    base_sh[:, 0], palette_sh[:, :, 0] = (0.4 * base - 0.2) / SH_C0, (0.4 * palette - 0.2) / SH_C0
    look = LookConfig(style=2, blend_to=0, blend=0.6, strength=0.5, preserve_colour="style-colour")
    dirs = torch.randn(N, 3, generator=gen)
    colour = lambda sh: sh_colors(3, dirs, sh)  # noqa: E731
    pre_clamp = (colour(base_sh) > 0).all() and (colour(palette_sh) > 0).all()
    assert pre_clamp, "the SH colours must stay unclamped for the identity to be exact"
    dc, rest = apply_look_sh(base_sh[:, 0], base_sh[:, 1:], palette_sh[:, :, 0], palette_sh[:, :, 1:], means, look)
    expected = apply_look(colour(base_sh), torch.stack([colour(p) for p in palette_sh]), means, look)
    torch.testing.assert_close(colour(torch.cat([dc[:, None], rest], dim=1)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("look", "words"),
    [
        (LookConfig(style=3), "style 3"),
        (LookConfig(blend_to=-1), "blend-to -1"),
        (LookConfig(strength=1.5), "strength 1.5"),
        (LookConfig(blend=math.nan), "blend nan"),
        (LookConfig(preserve_colour="luma"), "'luma'"),  # type: ignore[arg-type]
        (LookConfig(region="inside", box_size=(1.0, 0.0, 1.0)), "box-size"),
    ],
)
def test_bad_looks_are_refused_in_one_line(look: LookConfig, words: str) -> None:
    with pytest.raises(UserInputError, match=words) as err:
        check_look(look, num_styles=S)
    assert "\n" not in str(err.value)
    check_look(LookConfig(style=2, blend_to=0), num_styles=S)
