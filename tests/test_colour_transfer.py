"""Closed-form colour pre-match (StylizedGS): exact first and second moments, and consistency on SH coefficients."""

from __future__ import annotations

import torch

from styleme3d_ns.guidance.colour_transfer import (
    SH_C0,
    apply_colour_transfer_to_sh,
    fit_colour_transfer,
)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.mean(0)
    return mean, (x - mean).T @ (x - mean) / x.shape[0]


def _correlated_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.rand(3, 3, generator=g) * 0.3
    return (torch.rand(n, 3, generator=g) @ mix + 0.2 * torch.rand(3, generator=g)).clamp(0, 1)


def test_matched_colours_have_style_mean_and_covariance() -> None:
    colours = _correlated_points(5000, 0)
    style = _correlated_points(8000, 1)
    a, b = fit_colour_transfer(colours, style)
    matched = colours @ a.T + b
    mean_m, cov_m = _stats(matched)
    mean_s, cov_s = _stats(style)
    assert torch.allclose(mean_m, mean_s, atol=1e-4)
    assert torch.allclose(cov_m, cov_s, atol=1e-4)
    assert matched.shape == colours.shape and a.shape == (3, 3) and b.shape == (3,)


def test_transform_is_the_affine_map_it_returns() -> None:
    colours = _correlated_points(1000, 2)
    a, b = fit_colour_transfer(colours, _correlated_points(1000, 3))
    matched = colours @ a.T + b
    assert torch.allclose(matched, colours @ a.T + b, atol=1e-6)


def test_sh_coefficients_transform_consistently_with_colours() -> None:
    g = torch.Generator().manual_seed(4)
    dc = torch.randn(200, 3, generator=g) * 0.5
    rest = torch.randn(200, 15, 3, generator=g) * 0.1
    a, b = fit_colour_transfer(0.5 + SH_C0 * dc, _correlated_points(1000, 5))
    new_dc, new_rest = apply_colour_transfer_to_sh(dc, rest, a, b)
    assert torch.allclose(0.5 + SH_C0 * new_dc, (0.5 + SH_C0 * dc) @ a.T + b, atol=1e-5)
    # Higher bands carry no offset: a view-dependent colour delta sum_k Y_k rest_k maps by A alone.
    y = torch.randn(15, generator=g)
    assert torch.allclose(torch.einsum("k,nkc->nc", y, new_rest), torch.einsum("k,nkc->nc", y, rest) @ a.T, atol=1e-5)
    assert apply_colour_transfer_to_sh(dc, None, a, b)[1] is None


def test_greyscale_source_gives_finite_transform() -> None:
    grey = torch.rand(500, 1).repeat(1, 3)  # rank-1 covariance
    a, b = fit_colour_transfer(grey, _correlated_points(500, 6))
    matched = grey @ a.T + b
    assert torch.isfinite(matched).all() and torch.isfinite(a).all()
