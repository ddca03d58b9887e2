"""The head template (paper 001 sec. IV.A.1): 10k area-uniform points on a head the front camera sees face-on."""

from __future__ import annotations

import math

import pytest
import torch

from styleme3d_ns.data.head_template import (
    BLACK_FLOOR,
    HEAD_BLOBS,
    NECK_CUT_Y,
    NUM_TEMPLATE_POINTS,
    Blob,
    init_gaussians,
    sample_head_template,
)
from styleme3d_ns.data.portrait import front_camera
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.sh import sh_colors


@pytest.fixture(scope="module")
def template() -> tuple[torch.Tensor, torch.Tensor]:
    return sample_head_template()


def test_template_has_the_papers_ten_thousand_points_with_unit_normals(template) -> None:  # noqa: ANN001
    points, normals = template
    assert NUM_TEMPLATE_POINTS == 10_000
    assert points.shape == (10_000, 3) and normals.shape == (10_000, 3)
    assert points.dtype == torch.float32
    assert torch.allclose(normals.norm(dim=-1), torch.ones(10_000), atol=1e-5)
    assert torch.isfinite(points).all()


def test_points_lie_on_the_outer_surface_of_the_union(template) -> None:  # noqa: ANN001
    points, _ = template
    implicit = torch.stack([blob.implicit(points.double()) for blob in HEAD_BLOBS])  # [B, N]
    # every point is on some part's surface (F = 1) and inside none (F >= 1 for all parts)
    assert (implicit - 1.0).abs().min(dim=0).values.max() < 1e-4
    assert implicit.min() > 1.0 - 1e-4
    assert points[:, 1].min() >= NECK_CUT_Y - 1e-6


def test_normals_point_outward(template) -> None:  # noqa: ANN001
    points, normals = template
    owner = torch.stack([(blob.implicit(points.double()) - 1.0).abs() for blob in HEAD_BLOBS]).argmin(dim=0)
    for b, blob in enumerate(HEAD_BLOBS):
        sel = owner == b
        outward = points[sel] - torch.tensor(blob.centre)
        assert ((normals[sel] * outward).sum(dim=-1) > 0).all(), blob.name


def test_head_is_one_unit_chin_to_crown_and_faces_plus_z(template) -> None:  # noqa: ANN001
    points, _ = template
    head = points[points[:, 1] > -0.45]  # above the chin's lowest band: the neck is narrower and further back
    assert points[:, 1].max() == pytest.approx(0.5, abs=0.01)
    chin = HEAD_BLOBS[1].centre[1] - HEAD_BLOBS[1].radii[1]
    assert chin == pytest.approx(-0.5)
    assert head[:, 2].max() > 0.42  # the nose tip is the front-most point
    nose_tip = head[head[:, 2].argmax()]
    assert abs(float(nose_tip[0])) < 0.02 and abs(float(nose_tip[1])) < 0.1


def test_sampling_is_area_uniform_on_a_sphere() -> None:
    """Archimedes: area-uniform points on a sphere have heights uniform in [-r, r]."""
    sphere = Blob("sphere", centre=(0.0, 0.0, 0.0), radii=(1.0, 1.0, 1.0))
    points, _ = sample_head_template(20_000, seed=3, blobs=(sphere,), cut_below_y=None)
    counts = torch.histc(points[:, 2], bins=10, min=-1.0, max=1.0)
    assert (counts / 2000.0 - 1.0).abs().max() < 0.1


def test_sampling_is_area_uniform_on_a_stretched_ellipsoid() -> None:
    """A long prolate ellipsoid: equal-width bands along the axis have nearly equal area away from the tips."""
    ellipsoid = Blob("cigar", centre=(0.0, 0.0, 0.0), radii=(0.2, 0.2, 2.0))
    points, _ = sample_head_template(20_000, seed=4, blobs=(ellipsoid,), cut_below_y=None)
    # area of a band a < z < b of a prolate spheroid, integrated numerically
    z = torch.linspace(-2.0, 2.0, 400_001, dtype=torch.float64)
    radius = 0.2 * (1.0 - (z / 2.0) ** 2).clamp_min(0.0).sqrt()
    slope = torch.gradient(radius, spacing=(z,))[0]
    density = 2 * math.pi * radius * (1 + slope**2).sqrt()
    for lo, hi in [(-1.0, 0.0), (0.0, 1.0), (1.0, 1.8)]:
        band = (z >= lo) & (z <= hi)
        expected = float(torch.trapezoid(density[band], z[band]) / torch.trapezoid(density[1:-1], z[1:-1]))
        observed = float(((points[:, 2] >= lo) & (points[:, 2] < hi)).float().mean())
        assert observed == pytest.approx(expected, rel=0.06)


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    a, _ = sample_head_template(500, seed=7)
    b, _ = sample_head_template(500, seed=7)
    c, _ = sample_head_template(500, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_front_camera_sees_the_face_filling_the_centre_of_the_image(template) -> None:  # noqa: ANN001
    points, normals = template
    size = 64
    camera = front_camera(size)
    viewmat = viewmat_from_c2w(camera.camera_to_worlds)[0]  # OpenCV: +z forward
    cam_points = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    assert (cam_points[:, 2] > 0.5).all(), "the whole head is in front of the camera"
    uv = cam_points @ camera.get_intrinsics_matrices()[0].T
    uv = uv[:, :2] / uv[:, 2:]
    assert ((uv >= 0) & (uv < size)).all(), "the whole template is inside the image"
    eye = camera.camera_to_worlds[0, :, 3]
    facing = ((eye - points) * normals).sum(dim=-1) > 0
    face = facing & (points[:, 1] > -0.5)  # visible side of the head, neck excluded
    lo, hi = uv[face].min(dim=0).values, uv[face].max(dim=0).values
    centre = (lo + hi) / 2
    assert (centre - size / 2).abs().max() < 0.06 * size, f"head centred: box {lo.tolist()} - {hi.tolist()}"
    assert 0.45 * size < float(hi[1] - lo[1]) < 0.7 * size, "the head fills about half the image height"
    nose_uv = uv[points[:, 2].argmax()]
    assert (nose_uv - size / 2).abs().max() < 0.1 * size, "the nose (front-most point) projects near the centre"


def test_init_gaussians_uses_the_papers_initial_values(template) -> None:  # noqa: ANN001
    points, _ = template
    params = init_gaussians(points)
    n = points.shape[0]
    assert torch.equal(params["means"], points)
    assert params["means"].data_ptr() != points.data_ptr()
    assert torch.allclose(torch.exp(params["scales"]), torch.full((n, 3), 0.02))  # s = (0.02, 0.02, 0.02)
    assert torch.allclose(torch.sigmoid(params["opacities"]), torch.full((n, 1), 0.2))  # alpha = 0.2
    assert torch.equal(params["quats"], torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4))  # r = (1, 0, 0, 0)
    assert params["features_rest"].shape == (n, 15, 3) and not params["features_rest"].any()
    coeffs = torch.cat([params["features_dc"][:, None], params["features_rest"]], dim=1)
    rgb = sh_colors(3, torch.randn(n, 3), coeffs)  # any viewing direction: the higher bands are zero
    assert torch.allclose(rgb, torch.full((n, 3), BLACK_FLOOR), atol=1e-6)  # c = (0, 0, 0), one 8-bit level up
    assert all(t.dtype == torch.float32 for t in params.values())


def test_init_gaussians_sh_degree_zero_stores_a_logit() -> None:
    params = init_gaussians(torch.zeros(4, 3), colour=(0.25, 0.5, 0.75), sh_degree=0)
    assert params["features_rest"].shape == (4, 0, 3)
    assert torch.allclose(torch.sigmoid(params["features_dc"]), torch.tensor([[0.25, 0.5, 0.75]]).expand(4, 3))


def test_paper_black_init_keeps_the_colour_gradient_alive() -> None:
    """RGB exactly 0 sits on gsplat's clamp_min(sh + 0.5, 0), whose gradient is 0: the floor avoids that."""
    params = init_gaussians(torch.zeros(2, 3))
    coeffs = torch.cat([params["features_dc"][:, None], params["features_rest"]], dim=1).requires_grad_()
    sh_colors(3, torch.randn(2, 3), coeffs).sum().backward()
    assert (coeffs.grad[:, 0] != 0).all()


def test_init_gaussians_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="opacity"):
        init_gaussians(torch.zeros(1, 3), opacity=1.0)
    with pytest.raises(ValueError, match="scale"):
        init_gaussians(torch.zeros(1, 3), scale=0.0)
