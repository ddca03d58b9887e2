"""Offline face identity with dlib's packaged models, on scikit-image's astronaut and LFW faces."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageFilter

from styleme3d_ns import faces as face_identity
from styleme3d_ns.guidance.faces import (
    SAME_PERSON_DISTANCE,
    FaceIdentity,
    MissingFaceModelsError,
    NoFaceError,
    as_uint8_rgb,
    landmark_image,
)
from styleme3d_ns.guidance.weights import MissingWeightsError

_MISSING = [name for name in ("dlib", "face_recognition_models") if importlib.util.find_spec(name) is None]
needs_models = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (pip install dlib-bin face-recognition-models)"
)


@pytest.fixture(scope="module")
def faces() -> FaceIdentity:
    return FaceIdentity()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def reference(faces: FaceIdentity, astronaut: np.ndarray) -> np.ndarray:
    return faces.embedding(astronaut)


def lfw_face(index: int, size: int = 200) -> np.ndarray:
    """A face from scikit-image's LFW subset (25 x 25 greyscale: the first 100 are faces), upscaled to RGB."""
    import skimage.data

    face = (skimage.data.lfw_subset()[index] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.BICUBIC).convert("RGB"))


@needs_models
def test_the_astronauts_face_is_found_with_68_landmarks_inside_it(faces: FaceIdentity, astronaut: np.ndarray) -> None:
    box = faces.detect(astronaut)
    assert box is not None
    # her face, not the false positive on the suit below it (dlib also fires there, with a low score)
    assert 150 < box.left < box.right < 290 and 60 < box.top < box.bottom < 190
    points = faces.landmarks(astronaut)
    assert points.shape == (68, 2) and points.dtype == np.float32
    assert (points[:, 0] > box.left - 20).all() and (points[:, 0] < box.right + 20).all()
    eyes_y = points[36:48, 1].mean()
    assert eyes_y < points[30, 1] < points[48:60, 1].mean() < points[8, 1], "eyes, nose, mouth, chin top to bottom"


@needs_models
def test_float_and_uint8_images_give_the_same_face(faces: FaceIdentity, astronaut: np.ndarray) -> None:
    assert faces.detect(astronaut.astype(np.float32) / 255.0) == faces.detect(astronaut)


@needs_models
def test_a_shifted_rescaled_copy_is_the_same_person(
    faces: FaceIdentity, astronaut: np.ndarray, reference: np.ndarray
) -> None:
    assert reference.shape == (128,) and reference.dtype == np.float32
    moved = np.asarray(Image.fromarray(astronaut).crop((20, 10, 492, 482)).resize((560, 560), Image.BICUBIC))
    score = faces.identity_similarity(reference, moved)
    assert score is not None and score.same_person
    assert score.distance < 0.2 and score.cosine > 0.95
    flipped = faces.identity_similarity(astronaut, astronaut[:, ::-1])
    assert flipped is not None and flipped.same_person


@needs_models
def test_other_peoples_faces_are_not_the_same_person(faces: FaceIdentity, reference: np.ndarray) -> None:
    scores = [faces.identity_similarity(reference, lfw_face(k)) for k in range(3)]
    assert all(s is not None for s in scores), "the LFW faces are found"
    assert all(not s.same_person and s.distance > SAME_PERSON_DISTANCE for s in scores)
    same = faces.identity_similarity(reference, reference)
    assert same.distance == 0.0 and same.cosine == pytest.approx(1.0)
    assert max(s.cosine for s in scores) < same.cosine


@needs_models
def test_blur_first_degrades_identity_then_loses_the_face(
    faces: FaceIdentity, astronaut: np.ndarray, reference: np.ndarray
) -> None:
    image = Image.fromarray(astronaut)
    light = faces.identity_similarity(reference, np.asarray(image.filter(ImageFilter.GaussianBlur(2))))
    assert light is not None and light.distance > 0.2  # further than a shifted copy, still under 0.6
    heavy = np.asarray(image.filter(ImageFilter.GaussianBlur(8)))
    assert faces.detect(heavy) is None
    assert faces.identity_similarity(reference, heavy) is None
    with pytest.raises(NoFaceError, match="no face"):
        faces.embedding(heavy)


@needs_models
def test_non_faces_have_no_face(faces: FaceIdentity) -> None:
    import skimage.data

    assert faces.detect(skimage.data.coffee()) is None
    assert faces.detect(np.full((128, 128, 3), 0.5, dtype=np.float32)) is None


@needs_models
def test_views_identity_summarises_a_turntable(
    faces: FaceIdentity, astronaut: np.ndarray, reference: np.ndarray
) -> None:
    blank = np.zeros((64, 64, 3), dtype=np.uint8)  # a back view: no face
    summary = faces.views_identity(reference, [astronaut, blank, lfw_face(0), blank])
    assert summary.detected == 0.5 and summary.same_person == 0.5
    assert SAME_PERSON_DISTANCE / 2 < summary.distance < 1.0


@needs_models
def test_landmark_image_draws_where_the_face_is(faces: FaceIdentity, astronaut: np.ndarray) -> None:
    points = faces.landmarks(astronaut)
    drawing = landmark_image(points, 512)
    assert drawing.shape == (512, 512, 3) and drawing.dtype == np.uint8
    x, y = np.round(points).astype(int).T
    assert (drawing[y, x] == 255).all(), "every landmark is drawn"
    ink = np.argwhere(drawing.max(axis=2) > 0)
    box = faces.detect(astronaut)
    assert ink[:, 1].min() >= box.left - 25 and ink[:, 1].max() <= box.right + 25, "nothing drawn off the face"


def test_drawings_check_their_input() -> None:
    with pytest.raises(ValueError, match="68, 2"):
        landmark_image(np.zeros((5, 2)), 64)


def test_images_are_converted_to_contiguous_uint8_rgb() -> None:
    import torch

    image = torch.rand(8, 6, 3)
    converted = as_uint8_rgb(image)
    assert converted.shape == (8, 6, 3) and converted.dtype == np.uint8 and converted.flags.c_contiguous
    assert np.array_equal(converted, np.round(image.numpy() * 255).astype(np.uint8))
    assert as_uint8_rgb(np.zeros((4, 4), dtype=np.uint8)).shape == (4, 4, 3)
    assert as_uint8_rgb(np.zeros((4, 4, 4), dtype=np.uint8)[:, ::-1]).flags.c_contiguous
    with pytest.raises(ValueError, match="H, W, 3"):
        as_uint8_rgb(np.zeros((3, 4, 4, 4)))


def test_missing_packages_are_one_line_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    face_identity._load_models.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # import dlib -> ImportError
    try:
        with pytest.raises(MissingFaceModelsError) as err:
            FaceIdentity()
    finally:
        monkeypatch.undo()
        face_identity._load_models.cache_clear()
    message = str(err.value)
    assert "pip install dlib-bin face-recognition-models" in message and "\n" not in message
    assert isinstance(err.value, MissingWeightsError), "caught by the CLIs' one-line error handler"
