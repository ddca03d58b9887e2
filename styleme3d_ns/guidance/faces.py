"""Offline face identity: dlib's detector, 68/5-point landmarks and ResNet face descriptor (paper 001 identity).

Paper 001 keeps the input's identity with InstantID (sec. III.B.1: an identity embedding plus a landmark ControlNet)
and reports identity consistency over 120 turntable renders (sec. IV.C, Table 1). This module is the offline,
packaged counterpart used for measuring it and for drawing landmark conditioning images:

- detection: dlib's HOG frontal face detector (the highest-scoring face when there are several);
- landmarks: dlib's 68-point shape predictor (iBUG 300-W layout);
- identity: dlib's ResNet descriptor (``dlib_face_recognition_resnet_model_v1``, 128-d) on the face chip aligned by
  the 5-point predictor; two faces are the same person when the descriptors are closer than 0.6 (Euclidean).

Everything ships in two wheels, ``pip install dlib-bin face-recognition-models`` (~126 MB of model files); nothing is
downloaded at run time. ``face_recognition_models`` is located without importing it: its ``__init__`` imports
``pkg_resources``, which current setuptools no longer ships.

The portrait's face surface and segmentation use MediaPipe's packaged models instead (``mediapipe==0.10.11``, the
last release that accepts nerfstudio's protobuf<=3.20.3 pin):

- :func:`face_mesh_landmarks`: the 468 3D landmarks of ``modules/face_landmark/face_landmark.tflite`` (after
  ``modules/face_detection/face_detection_short_range.tflite``), run through MediaPipe's Face Mesh graph;
- :func:`person_mask`: ``modules/selfie_segmentation/selfie_segmentation.tflite``, person vs background.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from styleme3d_ns.core.errors import MissingWeightsError

INSTALL_HINT = "pip install dlib-bin face-recognition-models"
MEDIAPIPE_HINT = "pip install mediapipe==0.10.11 (or the project's extra: pip install -e .[portrait])"
FACE_MESH_MODELS = (
    "modules/face_detection/face_detection_short_range.tflite",
    "modules/face_landmark/face_landmark.tflite",
)
"""Packaged MediaPipe models Face Mesh runs (paths inside the mediapipe wheel): the short-range face detector, then
the 468-landmark model."""
SELFIE_SEGMENTATION_MODEL = "modules/selfie_segmentation/selfie_segmentation.tflite"
"""Packaged MediaPipe person/background segmentation model (the square 256 x 256 "general" one)."""
NUM_FACE_MESH_LANDMARKS = 468

# MediaPipe Face Mesh indices (its canonical face's vertex numbering). The face oval, in order around the face
# (from the forehead's top, 10, toward the subject's left); the midline from forehead to chin; named points.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
MIDLINE = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 164, 0, 11, 12, 13, 14, 15, 16, 17, 18, 200, 199, 175,
           152)  # fmt: skip
FOREHEAD_TOP, CHIN, NOSE_TIP = 10, 152, 1
FACE_RIGHT_EDGE, FACE_LEFT_EDGE = 234, 454  # the subject's right (image left) and left cheek edges at eye height
EYE_RIGHT_OUTER, EYE_LEFT_OUTER = 33, 263
CHEEKS = (50, 280, 205, 425, 101, 330, 151)
"""Skin patches: both cheeks (two points each) and the middle of the forehead."""
SAME_PERSON_DISTANCE = 0.6
"""dlib's threshold on the Euclidean distance of two ResNet descriptors: below it, the same person (dlib reports
99.38% accuracy on LFW with it; face_recognition's default ``tolerance``)."""
CHIP_SIZE = 150
"""Side of the aligned face chip the ResNet descriptor is computed on (dlib's ``compute_face_descriptor``)."""
CHIP_PADDING = 0.25
"""Padding around the 5-point-aligned face in the chip (dlib's ``compute_face_descriptor`` default)."""
DESCRIPTOR_DIM = 128
"""Length of dlib's ResNet face descriptor."""

# iBUG 300-W 68-point layout: (first, last) indices of each contour and whether it closes
_CONTOURS_68 = (
    (0, 16, False),  # jaw
    (17, 21, False),  # brow (image left)
    (22, 26, False),  # brow (image right)
    (27, 30, False),  # nose bridge
    (31, 35, False),  # nostrils
    (36, 41, True),  # eye (image left)
    (42, 47, True),  # eye (image right)
    (48, 59, True),  # outer lips
    (60, 67, True),  # inner lips
)
# InstantID's `draw_kps` (its ControlNet's conditioning image): colours per keypoint, limbs to the nose, stick width
_KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
_KPS_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
_KPS_STICK_WIDTH = 4


class MissingFaceModelsError(MissingWeightsError):
    """dlib or its packaged face models are not installed; the message is one line with the pip command."""


class NoFaceError(ValueError):
    """No face was found in an image that needed one; the message is one line."""


class FaceBox(NamedTuple):
    """A detected face: pixel box (right/bottom exclusive) and the detector's confidence."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def width(self) -> int:
        return self.right - self.left


class IdentitySimilarity(NamedTuple):
    """How alike two faces are by dlib's descriptor."""

    cosine: float
    """Cosine similarity of the two descriptors (1 = identical direction)."""
    distance: float
    """Euclidean distance of the two descriptors (dlib's measure)."""
    same_person: bool
    """``distance < SAME_PERSON_DISTANCE`` (0.6)."""


class ViewsIdentity(NamedTuple):
    """Identity of a set of renders (e.g. a turntable) against one reference face."""

    detected: float
    """Fraction of views where a face was found (back views have none)."""
    cosine: float
    """Mean cosine similarity over the views with a face (nan if none)."""
    distance: float
    """Mean descriptor distance over the views with a face (nan if none)."""
    same_person: float
    """Fraction of the views with a face that are the same person (nan if none)."""


def model_dir() -> Path:
    """Folder of the packaged dlib model files (``face_recognition_models/models``), found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFaceModelsError(f"face identity needs the face-recognition-models package; run: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@functools.cache
def _load_models() -> tuple[Any, Any, Any, Any]:
    """dlib's detector, 68- and 5-point predictors and ResNet descriptor, loaded once per process (~1 s)."""
    try:
        import dlib
    except ImportError:
        raise MissingFaceModelsError(f"face identity needs dlib; run: {INSTALL_HINT}") from None
    folder = model_dir()
    files = {
        "68": folder / "shape_predictor_68_face_landmarks.dat",
        "5": folder / "shape_predictor_5_face_landmarks.dat",
        "resnet": folder / "dlib_face_recognition_resnet_model_v1.dat",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise MissingFaceModelsError(f"face model file {missing[0]} is missing; reinstall with: {INSTALL_HINT}")
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(files["68"])),
        dlib.shape_predictor(str(files["5"])),
        dlib.face_recognition_model_v1(str(files["resnet"])),
    )


def as_uint8_rgb(image: Any) -> np.ndarray:
    """`[H, W, 3]` C-contiguous uint8 from a numpy array or torch tensor `[H, W, 3]` (uint8, or float in [0, 1]).

    `[H, W]` greyscale is repeated to three channels; a fourth (alpha) channel is dropped.
    """
    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {tuple(array.shape)}")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"expected uint8 or float in [0, 1] pixels, got {array.dtype}")
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(array)


class FaceIdentity:
    """dlib face detection, landmarks and identity descriptors on RGB images.

    Args:
        upsample: times the detector upsamples the image first; each halves the smallest findable face
            (~80 px at 0, ~40 px at 1, face_recognition's default).
        num_jitters: extra randomly jittered chips averaged into each descriptor (dlib: 0 fast, 100 ~1.5% better).

    Raises:
        MissingFaceModelsError: dlib or the packaged models are not installed (one line naming the pip command).
    """

    def __init__(self, upsample: int = 1, num_jitters: int = 0) -> None:
        self.upsample = upsample
        self.num_jitters = num_jitters
        self._detector, self._predictor68, self._predictor5, self._resnet = _load_models()

    # ------------------------------------------------------------------------------------------------ per image
    def detect(self, image: Any) -> FaceBox | None:
        """The most confident face in `image` `[H, W, 3]` (uint8, or float in [0, 1]), or None."""
        rects, scores, _ = self._detector.run(as_uint8_rgb(image), self.upsample, 0.0)
        if not rects:
            return None
        best = int(np.argmax(scores))
        rect = rects[best]
        return FaceBox(rect.left(), rect.top(), rect.right(), rect.bottom(), float(scores[best]))

    def landmarks(self, image: Any, box: FaceBox | None = None) -> np.ndarray:
        """`[68, 2]` float32 (x, y) pixel positions of the iBUG 68 landmarks of the face in `image` (or in `box`)."""
        pixels = as_uint8_rgb(image)
        shape = self._predictor68(pixels, self._rect(pixels, box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def face_chip(self, image: Any, box: FaceBox | None = None) -> np.ndarray:
        """`[150, 150, 3]` uint8 face aligned by the 5-point landmarks (what the descriptor sees)."""
        import dlib

        pixels = as_uint8_rgb(image)
        shape = self._predictor5(pixels, self._rect(pixels, box))
        return np.asarray(dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def embedding(self, image: Any, box: FaceBox | None = None) -> np.ndarray:
        """`[128]` float32 dlib ResNet descriptor of the face in `image`, from its 5-point-aligned chip.

        Raises:
            NoFaceError: no face detected (and no `box` given).
        """
        chip = self.face_chip(image, box)
        return np.asarray(self._resnet.compute_face_descriptor(chip, self.num_jitters), dtype=np.float32)

    def _rect(self, pixels: np.ndarray, box: FaceBox | None) -> Any:
        import dlib

        box = box if box is not None else self.detect(pixels)
        if box is None:
            raise NoFaceError(f"no face found in the {pixels.shape[1]}x{pixels.shape[0]} image")
        return dlib.rectangle(box.left, box.top, box.right, box.bottom)

    # ------------------------------------------------------------------------------------------------ comparisons
    def _descriptor(self, image_or_embedding: Any) -> np.ndarray | None:
        array = np.asarray(
            image_or_embedding.detach().cpu() if hasattr(image_or_embedding, "detach") else image_or_embedding
        )
        if array.shape == (DESCRIPTOR_DIM,):
            return array.astype(np.float32)
        box = self.detect(array)
        return None if box is None else self.embedding(array, box)

    def identity_similarity(self, a: Any, b: Any) -> IdentitySimilarity | None:
        """Compare two faces; each of `a`, `b` is an image `[H, W, 3]` or a precomputed `[128]` embedding.

        Returns None when either image has no detectable face (the caller decides what a lost face scores).
        """
        ea, eb = self._descriptor(a), self._descriptor(b)
        if ea is None or eb is None:
            return None
        distance = float(np.linalg.norm(ea - eb))
        cosine = float(ea @ eb / max(float(np.linalg.norm(ea) * np.linalg.norm(eb)), 1e-12))
        return IdentitySimilarity(cosine, distance, distance < SAME_PERSON_DISTANCE)

    def views_identity(self, reference: Any, views: Iterable[Any]) -> ViewsIdentity:
        """Identity of each view against `reference` (image or embedding), summarised; views without a face are
        counted in `detected` only."""
        reference = self._descriptor(reference)
        if reference is None:
            raise NoFaceError("no face found in the reference image")
        scores = [self.identity_similarity(reference, view) for view in views]
        found = [s for s in scores if s is not None]
        if not scores:
            raise ValueError("views_identity needs at least one view")
        if not found:
            return ViewsIdentity(0.0, float("nan"), float("nan"), float("nan"))
        return ViewsIdentity(
            detected=len(found) / len(scores),
            cosine=float(np.mean([s.cosine for s in found])),
            distance=float(np.mean([s.distance for s in found])),
            same_person=float(np.mean([s.same_person for s in found])),
        )


# ---------------------------------------------------------------------------------------------------- drawing
def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def landmark_image(landmarks: np.ndarray, size: int | tuple[int, int], thickness: int | None = None) -> np.ndarray:
    """`[H, W, 3]` uint8: the 68 landmarks `[68, 2]` (x, y pixels) drawn as white contours and dots on black.

    Jaw, brows, nose bridge and nostrils are open polylines; eyes and lips are closed. `size` is H (= W) or (H, W);
    `thickness` defaults to 1 px per 256 px of the image's longer side.
    """
    import cv2

    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected [68, 2] landmarks, got shape {points.shape}")
    height, width = _size_hw(size)
    thickness = thickness or max(1, round(max(height, width) / 256))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    pixels = np.round(points).astype(np.int32)
    for first, last, closed in _CONTOURS_68:
        cv2.polylines(canvas, [pixels[first : last + 1].reshape(-1, 1, 2)], closed, (255, 255, 255), thickness)
    for x, y in pixels:
        cv2.circle(canvas, (int(x), int(y)), thickness + 1, (255, 255, 255), -1)
    return canvas


# ---------------------------------------------------------------------------------------------------- MediaPipe
def mediapipe_model(relative: str) -> Path:
    """Path of a model file packaged in the mediapipe wheel, found without importing mediapipe.

    Raises:
        MissingFaceModelsError: mediapipe is not installed, or the file is not in it (one line with the pip command).
    """
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFaceModelsError(f"the portrait's face fit needs mediapipe; run: {MEDIAPIPE_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingFaceModelsError(f"mediapipe model {path} is missing; reinstall with: {MEDIAPIPE_HINT}")
    return path


@functools.cache
def _mediapipe_solutions() -> tuple[Any, Any]:
    """MediaPipe's Face Mesh and Selfie Segmentation solution modules (imported once; glog's info lines muted)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        from mediapipe.python.solutions import face_mesh, selfie_segmentation
    except ImportError as err:
        raise MissingFaceModelsError(f"mediapipe cannot be imported ({err}); run: {MEDIAPIPE_HINT}") from None
    return face_mesh, selfie_segmentation


def face_mesh_landmarks(image: Any) -> np.ndarray | None:
    """MediaPipe Face Mesh's 468 landmarks of the most prominent face in `image` `[H, W, 3]`, or None without a face.

    Returns:
        `[468, 3]` float32: x, y in pixels, and z the landmark's depth in pixels of the same scale as x (MediaPipe
        gives it in image widths), relative to the face's centre: smaller is nearer the camera.
    """
    for relative in FACE_MESH_MODELS:
        mediapipe_model(relative)
    face_mesh, _ = _mediapipe_solutions()
    pixels = as_uint8_rgb(image)
    height, width = pixels.shape[:2]
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as mesh:
        result = mesh.process(pixels)
    if not result.multi_face_landmarks:
        return None
    points = result.multi_face_landmarks[0].landmark
    return np.array([(p.x * width, p.y * height, p.z * width) for p in points], dtype=np.float32)


def person_mask(image: Any) -> np.ndarray:
    """`[H, W]` float32 in [0, 1]: MediaPipe Selfie Segmentation's probability that each pixel shows the person."""
    mediapipe_model(SELFIE_SEGMENTATION_MODEL)
    _, selfie_segmentation = _mediapipe_solutions()
    with selfie_segmentation.SelfieSegmentation(model_selection=0) as segmentation:
        mask = segmentation.process(as_uint8_rgb(image)).segmentation_mask
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
