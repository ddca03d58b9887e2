"""The detail split: children inside the parent's footprint, rendering like the parent with its colours."""

from __future__ import annotations

import math

import pytest
import torch

from styleme3d_ns.models.detail import (
    OFFSET,
    SHRINK,
    DetailConfig,
    child_opacity,
    missed_detail,
    pick_parents,
    split_children,
)
from styleme3d_ns.render import ColourMap
from styleme3d_ns.render.sh import SH_C0
from tests.plane_scene import side_by_side_cameras, textured_plane

SIZE = 64


@pytest.fixture(scope="module")
def plane() -> dict:
    """Anisotropic Gaussians on a plane (randomly turned in it) seen by three 64 px cameras, logit/log parameters."""
    means, _, scales, opacities, red_green = textured_plane(20, 0.09, 3.0)
    n = len(means)
    generator = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=generator) * math.pi
    quats = torch.stack([torch.cos(angle / 2), torch.zeros(n), torch.zeros(n), torch.sin(angle / 2)], 1)
    scales = scales.clone()
    scales[:, 0] *= 1.0 + torch.rand(n, generator=generator)  # the longest axis varies per Gaussian
    colours = torch.zeros(n, 1, 3)
    colours[:, 0] = (torch.cat([red_green, torch.full((n, 1), 0.4)], 1) - 0.5) / SH_C0
    viewmats, Ks = side_by_side_cameras(40.0, SIZE)
    return {"means": means, "scales": scales.log(), "quats": quats, "opacities": torch.logit(opacities[:, None]),
            "colours": colours, "viewmats": viewmats, "Ks": Ks}  # fmt: skip


def _maps(g: dict, p: dict) -> list[ColourMap]:
    return [
        ColourMap.build(g["means"], g["quats"], g["scales"].exp(), torch.sigmoid(g["opacities"])[:, 0],
                        p["viewmats"][v], p["Ks"][v], SIZE, SIZE, sh_degree=0)
        for v in range(3)
    ]  # fmt: skip


def test_children_sit_inside_the_parent_and_keep_its_mean_and_covariance(plane) -> None:
    parents = torch.tensor([3, 10, 200])
    source, new = split_children(plane["means"], plane["scales"], plane["quats"], plane["opacities"], parents)
    n = len(plane["means"])
    assert source.tolist() == [*range(n), 3, 10, 200]
    kept = torch.ones(n, dtype=torch.bool)
    kept[parents] = False
    for key in ("means", "scales", "quats", "opacities"):
        assert torch.equal(new[key][:n][kept], plane[key][kept]), key  # unsplit Gaussians bit-identical
    for k, parent in enumerate(parents.tolist()):
        first, second = parent, n + k
        sigma = plane["scales"][parent].exp()
        assert torch.allclose((new["means"][first] + new["means"][second]) / 2, plane["means"][parent], atol=1e-6)
        assert float((new["means"][first] - plane["means"][parent]).norm()) == pytest.approx(0.5 * float(sigma.max()))
        # the pair's covariance along the split axis: child variance + offset^2 = the parent's (a^2 + s^2 = 1)
        child, axis = new["scales"][first].exp(), int(sigma.argmax())
        assert float(child[axis] ** 2 + (0.5 * sigma[axis]) ** 2) == pytest.approx(float(sigma[axis] ** 2), rel=1e-4)
        assert torch.equal(new["quats"][first], plane["quats"][parent])


def test_a_split_splat_with_its_parents_colours_renders_like_the_base(plane) -> None:
    """Strength 0 after the split: the children take the parents' colours; the renders match the unsplit splat."""
    n = len(plane["means"])
    source, new = split_children(plane["means"], plane["scales"], plane["quats"], plane["opacities"], torch.arange(n))
    before = torch.stack([m.render(plane["colours"])[0] for m in _maps(plane, plane)])
    after = torch.stack([m.render(plane["colours"][source])[0] for m in _maps(new, plane)])
    psnr = -10 * torch.log10(((before - after) ** 2).mean())
    # every Gaussian split at once, the worst case: measured 41.7 dB (30.8 dB when the children's opacity matched the
    # parent's alpha at its centre only, which lets an opaque pair cover more than its parent)
    assert psnr > 38.0, float(psnr)


def test_the_pair_covers_as_much_as_its_parent() -> None:
    """child_opacity: the pair's alpha integrated over the parent's plane equals the parent's, on a finer grid than
    the table's, from nearly transparent to opaque parents."""
    step = 0.02
    x = torch.arange(-6.0, 6.0 + step / 2, step, dtype=torch.float64)
    across = torch.exp(-(x**2) / 2)
    children = [torch.exp(-((x - c) ** 2) / (2 * SHRINK**2))[:, None] * across for c in (OFFSET, -OFFSET)]
    parent = torch.exp(-(x**2) / 2)[:, None] * across
    for opacity in (0.02, 0.3, 0.7, 0.95, 0.999):
        child = float(child_opacity(torch.tensor([opacity], dtype=torch.float64)))
        pair = 1 - (1 - child * children[0]) * (1 - child * children[1])
        assert float(pair.sum()) == pytest.approx(opacity * float(parent.sum()), rel=0.01), opacity


def test_missed_detail_points_at_the_gaussians_under_varied_targets(plane) -> None:
    maps = _maps(plane, plane)
    renders = torch.stack([m.render(plane["colours"])[0] for m in maps]).permute(0, 3, 1, 2)
    targets = renders.clone()
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2
    targets[:, :, 24:32, 24:32] = checker.float()  # detail one colour per Gaussian cannot hold, in one corner
    scores = missed_detail(maps, targets, plane["colours"], None, len(plane["means"]))
    top = scores.topk(10).indices
    centre = plane["means"][top, :2].mean(0)
    # the pixel block's centre back-projected to the plane (z = 3, focal 40, middle camera at x = 0)
    assert torch.allclose(centre, torch.tensor([(28 - 32) * 3 / 40, (28 - 32) * 3 / 40]), atol=0.25), centre


def test_the_split_stays_within_its_budget() -> None:
    scores = torch.arange(100.0)
    config = DetailConfig(enabled=True, max_growth=1.3, share=0.5)
    assert len(pick_parents(scores, 100, 100, config)) == 30
    assert len(pick_parents(scores, 130, 100, config)) == 0
    assert pick_parents(scores, 100, 100, DetailConfig(max_growth=2.0, share=0.1)).tolist() == list(range(99, 89, -1))


def test_detail_paints_at_its_own_finer_stroke_size(monkeypatch) -> None:
    """With detail on, every teacher fit (before and after the splits) runs at detail.stroke_size; off, or with None,
    at the teacher's own; a non-positive value is refused in one line."""
    from types import SimpleNamespace

    from styleme3d_ns.core.errors import UserInputError
    from styleme3d_ns.guidance.style_teacher import StyleTeacherConfig
    from styleme3d_ns.models import offline_teacher

    used: list[float] = []

    def fake_teach(model, config, networks, style, views, name, report):  # noqa: ANN001, ANN202 - the real signature
        used.append(config.stroke_size)
        return torch.zeros(model.num_points, 1, 3), None  # no targets: no split, the fits above are all

    monkeypatch.setattr(offline_teacher, "teach", fake_teach)
    model = SimpleNamespace(num_points=4)
    teacher = StyleTeacherConfig()
    for detail, expected in ((DetailConfig(), teacher.stroke_size), (DetailConfig(enabled=True), 1 / 32),
                             (DetailConfig(enabled=True, stroke_size=None), teacher.stroke_size)):  # fmt: skip
        used.clear()
        offline_teacher.teach_styles(model, teacher, None, [(None, "a"), (None, "b")], dict, detail, print)
        assert used == [expected, expected]
    assert teacher.stroke_size == 1 / 16  # the caller's config is not changed
    with pytest.raises(UserInputError, match="detail.stroke-size must be above 0 .got 0.0"):
        DetailConfig(enabled=True, stroke_size=0.0).check()
