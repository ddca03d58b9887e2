"""Paper 004 eq. 7 disparity loss on rendered views, and the harmonisation of per-view targets."""

from __future__ import annotations

import pytest
import torch

from styleme3d_ns.guidance.disparity import disparity_loss, harmonise_targets, neighbour_pairs
from styleme3d_ns.render import rasterize_torch
from tests.plane_scene import side_by_side_cameras, textured_plane

SIZE = 32


@pytest.fixture(scope="module")
def plane_views() -> dict:
    """A textured plane of Gaussians (view-independent colours) rendered by three side-by-side cameras."""
    means, quats, scales, opacities, red_green = textured_plane(48, 0.05, 2.0)
    colours = torch.cat([red_green, (0.5 + 0.2 * torch.sin(means[:, 0] + means[:, 1]))[:, None]], dim=1)
    viewmats, Ks = side_by_side_cameras(30.0, SIZE)
    with torch.no_grad():
        render, alpha, _ = rasterize_torch(
            means, quats, scales, opacities, colours, viewmats, Ks, SIZE, SIZE, render_mode="RGB+ED"
        )
    return {
        "images": render[..., :3].permute(0, 3, 1, 2).contiguous(),
        "depths": render[..., 3:].permute(0, 3, 1, 2).contiguous(),
        "alphas": alpha.permute(0, 3, 1, 2).contiguous(),
        "viewmats": viewmats,
        "Ks": Ks,
    }


def _loss(views: dict, images: torch.Tensor) -> torch.Tensor:
    return disparity_loss(images, views["depths"], views["viewmats"], views["Ks"], alphas=views["alphas"])


def test_disparity_is_zero_for_a_view_independent_splat_and_positive_for_a_colour_cast(plane_views: dict) -> None:
    consistent = _loss(plane_views, plane_views["images"])
    cast = plane_views["images"].clone()
    cast[1] = (cast[1] + 0.1).clamp(0, 1)  # one view 0.1 brighter: every corresponding pixel differs by 0.1
    inconsistent = _loss(plane_views, cast)
    # the consistent views differ only by bilinear resampling of a smooth texture (measured ~0.003)
    assert float(consistent) < 0.01
    assert float(inconsistent) > 0.05 and float(inconsistent) > 10 * float(consistent)


def test_disparity_gradient_reaches_both_views_of_a_pair(plane_views: dict) -> None:
    images = plane_views["images"].clone()
    images[0] = (images[0] + 0.1).clamp(0, 1)
    images.requires_grad_(True)
    loss = disparity_loss(images, plane_views["depths"], plane_views["viewmats"], plane_views["Ks"], pairs=[(1, 0)])
    loss.backward()
    assert images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() > 0 and images.grad[2].abs().sum() == 0


def test_harmonising_targets_removes_most_of_a_per_view_cast_and_keeps_consistent_targets(plane_views: dict) -> None:
    kw = {"alphas": plane_views["alphas"], "weight": 2.0, "iterations": 3}
    geometry = (plane_views["depths"], plane_views["viewmats"], plane_views["Ks"])
    same = harmonise_targets(plane_views["images"], *geometry, **kw)
    assert (same - plane_views["images"]).abs().mean() < 0.005  # consistent targets barely move
    cast = plane_views["images"].clone()
    cast[1] = (cast[1] + 0.15).clamp(0, 1)
    before = cast.clone()
    harmonised = harmonise_targets(cast, *geometry, **kw)
    assert torch.equal(cast, before)  # input not modified
    assert float(_loss(plane_views, harmonised)) < 0.5 * float(_loss(plane_views, cast))
    assert torch.equal(harmonise_targets(cast, *geometry, weight=0.0), cast)


def test_neighbour_pairs_are_the_closest_viewing_directions() -> None:
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 25.0, 90.0]))
    viewmats = torch.eye(4).repeat(4, 1, 1)
    viewmats[:, 2, 0], viewmats[:, 2, 2] = torch.sin(angles), torch.cos(angles)  # forward = (sin a, 0, cos a)
    pairs = neighbour_pairs(viewmats, neighbours=1)
    assert pairs == [(0, 1), (1, 0), (2, 1), (3, 2)]
