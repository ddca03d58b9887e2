"""The package's one look-at and orbit (styleme3d_ns.render.camera), against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from styleme3d_ns.render.camera import homogeneous, look_at, orbit_poses, viewmat_from_c2w


def test_look_at_puts_the_target_on_the_optical_axis_with_a_right_handed_upright_frame() -> None:
    eyes = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.2, 3.0], [0.0, 4.0, -1.0]], dtype=torch.float64)
    target = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    c2w = look_at(eyes, target)
    assert c2w.shape == (3, 3, 4) and c2w.dtype == torch.float64
    rot = c2w[:, :, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64))
    to_target = target - eyes
    torch.testing.assert_close(-rot[:, :, 2], to_target / to_target.norm(dim=-1, keepdim=True))  # looks down -z
    assert (rot[:, :, 0] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).abs().max() < 1e-12, "no roll"
    assert (rot[:, 2, 1] > 0).all(), "camera +y leans to world +z"
    # the rasteriser's view matrix maps the target onto the camera's +z axis (OpenCV), at its distance
    in_cam = viewmat_from_c2w(c2w) @ torch.cat([target, torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(in_cam[:, :2], torch.zeros(3, 2, dtype=torch.float64))
    torch.testing.assert_close(in_cam[:, 2], to_target.norm(dim=-1))
    with pytest.raises(ValueError, match="up vector"):
        look_at(torch.tensor([[0.0, 0.0, 2.0]]), (0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    ("up", "zero", "first_axis"),
    [((0.0, 0.0, 1.0), None, (1.0, 0.0, 0.0)), ((0.0, 1.0, 0.0), None, (0.0, 0.0, 1.0)),
     ((0.0, -1.0, 0.0), None, (0.0, 0.0, 1.0)), ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (0.0, -1.0, 0.0))],
)  # fmt: skip
def test_orbit_places_cameras_at_the_stated_azimuth_and_elevation(up, zero, first_axis) -> None:  # noqa: ANN001
    target = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    azimuth = torch.tensor([0.0, 90.0, 200.0, 315.0])
    elevation = torch.tensor([0.0, 30.0, -20.0, 60.0])
    c2w = orbit_poses(azimuth, elevation, 2.5, target, up, azimuth_zero=zero, dtype=torch.float64)
    up_t, e0 = torch.tensor(up, dtype=torch.float64), torch.tensor(first_axis, dtype=torch.float64)
    e1 = torch.linalg.cross(up_t, e0)
    a, e = torch.deg2rad(azimuth.double())[:, None], torch.deg2rad(elevation.double())[:, None]
    expected_eyes = target + 2.5 * (torch.cos(e) * (torch.cos(a) * e0 + torch.sin(a) * e1) + torch.sin(e) * up_t)
    torch.testing.assert_close(c2w[:, :, 3], expected_eyes)
    torch.testing.assert_close(c2w, look_at(expected_eyes, target, up_t))
    # azimuth turns counter-clockwise seen from above (right-handed about up)
    step = torch.linalg.cross(c2w[0, :, 3] - target, c2w[1, :, 3] - target) @ up_t
    assert step > 0


def test_homogeneous_adds_the_bottom_row() -> None:
    c2w = orbit_poses(torch.tensor([10.0, 20.0]), torch.tensor([5.0, 5.0]), radius=3.0)
    mats = homogeneous(c2w)
    assert mats.shape == (2, 4, 4) and torch.equal(mats[:, :3], c2w)
    assert torch.equal(mats[:, 3], torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2))
    torch.testing.assert_close(mats[:, :3, 3].norm(dim=-1), torch.full((2,), 3.0))
    assert math.isclose(float(torch.linalg.det(mats[0])), 1.0, rel_tol=1e-5)
