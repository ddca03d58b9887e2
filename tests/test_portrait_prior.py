"""sas-portrait's offline prior: the head template fitted to a face, colours from the photo, no background."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from styleme3d_ns.data.face_fit import (
    FACE_FIT_LANDMARKS,
    TEMPLATE_ANCHORS,
    FrontCamera,
    fit_head,
    landmarks_to_world,
)
from styleme3d_ns.data.head_template import HEAD_BLOBS
from styleme3d_ns.guidance.faces import (
    EYE_LEFT_OUTER,
    EYE_RIGHT_OUTER,
    FACE_LEFT_EDGE,
    FACE_RIGHT_EDGE,
    NOSE_TIP,
)

SIZE = 64
CAMERA = FrontCamera(SIZE, 49.1, 2.0)
NAMED = {*TEMPLATE_ANCHORS, FACE_LEFT_EDGE, FACE_RIGHT_EDGE, EYE_LEFT_OUTER, EYE_RIGHT_OUTER, NOSE_TIP}
"""Landmarks the synthetic face places by name; the rest of the lower face lies on its jaw ellipsoid."""


def synthetic_face(rotation: np.ndarray, scale: float, translation: np.ndarray, face: tuple) -> np.ndarray:
    """`[468, 3]` world landmarks of a synthetic face: the anchors, symmetric cheek edges and eye corners, and the
    lower-face landmarks on the face ellipsoid `face` = (cy, cz, rx, ry, rz), posed by `scale * rotation + t`."""
    cy, cz, rx, ry, rz = face
    head = np.zeros((468, 3))
    for index, point in TEMPLATE_ANCHORS.items():
        head[index] = point
    head[[FACE_LEFT_EDGE, FACE_RIGHT_EDGE]] = [(0.3, 0.02, 0.15), (-0.3, 0.02, 0.15)]
    head[[EYE_LEFT_OUTER, EYE_RIGHT_OUTER]] = [(0.2, 0.05, 0.33), (-0.2, 0.05, 0.33)]
    head[NOSE_TIP] = (0.0, -0.1, 0.47)
    rng = np.random.default_rng(0)
    for index in set(FACE_FIT_LANDMARKS) - NAMED:  # points on the ellipsoid's front half
        theta, phi = rng.uniform(-1.2, 1.2), rng.uniform(-1.3, 0.2)
        head[index] = (rx * np.sin(theta) * np.cos(phi), cy + ry * np.sin(phi), cz + rz * np.cos(theta) * np.cos(phi))
    return scale * head @ rotation.T + translation


def test_landmark_fitting_recovers_a_synthetic_faces_pose_scale_and_jaw() -> None:
    rotation = Rotation.from_euler("yxz", [12.0, 5.0, -6.0], degrees=True).as_matrix()  # yaw, pitch, roll
    translation = np.array([0.02, -0.03, 0.01])
    template = HEAD_BLOBS[1]
    truth = (template.centre[1] + 0.03, template.centre[2] - 0.02, template.radii[0] + 0.04, template.radii[1] - 0.03,
             template.radii[2] + 0.02)  # fmt: skip
    fit = fit_head(synthetic_face(rotation, 1.05, translation, truth), CAMERA)
    angle = np.degrees(Rotation.from_matrix(fit.rotation @ rotation.T).magnitude())
    assert angle < 0.5, f"pose off by {angle:.2f} degrees"
    assert fit.scale == pytest.approx(1.05, rel=1e-3)
    np.testing.assert_allclose(fit.translation, translation, atol=1e-3)
    face = fit.blobs[1]
    assert face.radii[0] == pytest.approx(truth[2], abs=0.01), "the jaw's width"
    # the fitted ellipsoid passes through the jaw landmarks (the template's does not); the depth of a surface seen
    # only from the front is weakly determined, so the fit is judged on the surface, not on each parameter
    jaw = fit.to_head(synthetic_face(rotation, 1.05, translation, truth))[list(set(FACE_FIT_LANDMARKS) - NAMED)]
    residual = lambda blob: np.abs(np.sqrt(blob.implicit(torch.from_numpy(jaw)).numpy()) - 1.0)
    assert np.median(residual(face)) < min(0.02, 0.5 * np.median(residual(template)))
    # the world frame round trip
    points = np.random.default_rng(1).normal(size=(5, 3)) * 0.3
    np.testing.assert_allclose(fit.to_head(fit.to_world(points)), points, atol=1e-9)


def test_landmark_depths_are_mediapipes_pixel_scale_at_the_anchors_distance() -> None:
    """A landmark dz pixels behind another is dz * D / f further, D the anchors' distance; pixels stay on their ray."""
    landmarks = np.zeros((468, 3))
    landmarks[:, :2] = SIZE / 2
    landmarks[5] = (40.0, 20.0, 4.0)
    world = landmarks_to_world(landmarks, CAMERA)
    depth = CAMERA.radius - np.mean([p[2] for p in TEMPLATE_ANCHORS.values()])
    assert world[0, 2] == pytest.approx(CAMERA.radius - depth)
    assert (world[0, 2] - world[5, 2]) == pytest.approx(4.0 * depth / CAMERA.focal)
    pixels, _ = CAMERA.project(world[[5]])
    np.testing.assert_allclose(pixels[0], (40.0, 20.0), atol=1e-9)


@pytest.fixture(scope="module")
def astronaut_prior():  # noqa: ANN201 - PortraitPrior
    """The offline prior of scikit-image's astronaut at 64 px, 3000 points (MediaPipe's packaged models)."""
    pytest.importorskip("mediapipe", reason="needs the portrait extra: pip install -e .[portrait]")
    import skimage.data
    from PIL import Image

    from styleme3d_ns.data.portrait_prior import crop_to_face, find_face, portrait_prior

    photo = Image.fromarray(skimage.data.astronaut())
    landmarks = find_face(np.asarray(photo), "astronaut")
    crop, (left, top, _) = crop_to_face(photo, landmarks, 49.1, 2.0)
    in_crop = np.concatenate([landmarks[:, :2] - (left, top), landmarks[:, 2:]], axis=1)
    image = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    return portrait_prior(crop, in_crop, image, 49.1, 2.0, 3000)


def test_the_fills_colours_come_from_the_photo(astronaut_prior) -> None:  # noqa: ANN001
    """Paint the photo: hair above the face, skin everywhere else on the person, green background. Every colour
    is then a blend of the hair and skin paint (the fill's are exactly them), never the background's."""
    from styleme3d_ns.data.portrait_colour import FILL, colour_points
    from styleme3d_ns.guidance.faces import FACE_OVAL

    prior = astronaut_prior
    hair, skin, green = np.array([0.45, 0.25, 0.1]), np.array([0.9, 0.7, 0.6]), np.array([0.0, 1.0, 0.0])
    person = prior.head_mask > 0  # the mask's soft edge is the person's too; green only where it is 0
    painted = np.where(person[..., None], skin, green)
    above_face = np.arange(SIZE)[:, None] < prior.landmarks[list(FACE_OVAL), 1].min() - 1
    painted[person & above_face] = hair
    colours = colour_points(prior.surface, prior.fit, painted, prior.head_mask, prior.landmarks, CAMERA)
    np.testing.assert_allclose(colours.hair, hair, atol=1e-6)
    np.testing.assert_allclose(colours.skin, skin, atol=1e-6)
    # distance of every colour to the segment between the two paints
    along = np.clip(((colours.rgb - skin) @ (hair - skin)) / ((hair - skin) @ (hair - skin)), 0.0, 1.0)
    off_segment = np.linalg.norm(colours.rgb - (skin + along[:, None] * (hair - skin)), axis=1)
    assert off_segment.max() < 0.02, "a colour came from somewhere other than the person's paint"
    filled = (colours.source == FILL) & (colours.photo_weight == 0)
    assert filled.sum() > 500, "the back and the far sides are filled"
    back = filled & (prior.fit.to_head(prior.surface.points)[:, 2] < -0.2) & (prior.surface.part == 0)
    np.testing.assert_allclose(colours.rgb[back], np.broadcast_to(hair, colours.rgb[back].shape), atol=1e-6)
    neck = filled & (prior.surface.part == 5) & (prior.fit.to_head(prior.surface.points)[:, 1] < -0.6)
    assert neck.any()
    assert np.abs(colours.rgb[neck] - skin).max() < 0.05


def test_a_background_pixel_never_becomes_a_head_gaussian(astronaut_prior) -> None:  # noqa: ANN001
    prior = astronaut_prior
    background = prior.person < 0.5
    assert 0.2 < background.mean() < 0.8  # the astronaut's photo has a background (a flag, a shuttle)
    pixels, _ = CAMERA.project(prior.surface.points)
    cells = np.floor(pixels).astype(int)
    assert ((cells >= 0) & (cells < SIZE)).all()
    assert not background[cells[:, 1], cells[:, 0]].any(), "an initial Gaussian sits on the background"
    # the training image asks for the model's white background there, whatever the photo showed
    assert (prior.image[prior.head_mask == 0] == 255).all()
    assert (prior.head_mask <= prior.person + 1e-6).all()
    # and colours are mask-weighted: a photo whose background is green gives no green Gaussian
    from styleme3d_ns.data.portrait_colour import colour_points

    image = prior.image.astype(np.float64) / 255.0
    greened = np.where((prior.head_mask > 0)[..., None], image, (0.0, 1.0, 0.0))
    colours = colour_points(prior.surface, prior.fit, greened, prior.head_mask, prior.landmarks, CAMERA)
    reference = colour_points(prior.surface, prior.fit, image, prior.head_mask, prior.landmarks, CAMERA)
    np.testing.assert_allclose(colours.rgb, reference.rgb, atol=1e-9)
    np.testing.assert_allclose(colours.hair, reference.hair, atol=1e-12)


def test_missing_mediapipe_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from styleme3d_ns.guidance import faces

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mediapipe" else real(name, *a))
    with pytest.raises(faces.MissingFaceModelsError, match="pip install mediapipe==0.10.11") as err:
        faces.face_mesh_landmarks(np.zeros((8, 8, 3), dtype=np.uint8))
    assert "\n" not in str(err.value)


def test_back_colour_separates_the_neck_from_the_hair() -> None:
    """The back measure's diagnostics against a hand computation: 87% pixels at the hair colour (with noise), 13% at
    the skin colour; the mean moves 0.13 of the way to the skin, the hair pixels stay on the hair colour."""
    from styleme3d_ns.eval.portrait_measures import back_colour, chroma_spread

    rng = np.random.default_rng(0)
    hair, skin = np.array([0.15, 0.10, 0.12]), np.array([0.89, 0.57, 0.44])
    pixels = np.concatenate([hair + rng.normal(0, 0.01, (870, 3)), np.tile(skin, (130, 1))])
    back = back_colour(pixels, hair, skin)
    assert back["skin_share"] == pytest.approx(0.13)
    assert back["hair_pixels_distance"] < 0.002
    assert back["distance"] == pytest.approx(0.13 * np.linalg.norm(skin - hair), abs=0.002)
    # chroma spread of two flat colours in shares p, 1-p: sqrt(p (1-p)) times their chroma distance
    to_chroma = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    two = np.concatenate([np.tile(hair, (870, 1)), np.tile(skin, (130, 1))])
    expected = np.sqrt(0.13 * 0.87) * np.linalg.norm(to_chroma @ (skin - hair))
    assert chroma_spread(two) == pytest.approx(expected, rel=1e-6)
