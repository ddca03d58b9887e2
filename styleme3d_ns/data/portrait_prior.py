"""The offline portrait prior: from one photo to a coloured initial splat and a training image without background.

:func:`portrait_prior` chains the steps (all ours; paper 001 starts from an uncoloured SMPL head):

1. (before it, :mod:`styleme3d_ns.data.portrait`) MediaPipe's 468 landmarks of the whole photo
   (:func:`~styleme3d_ns.guidance.faces.face_mesh_landmarks`, :func:`find_face`) place a square crop so that the
   chin and the forehead's top land where the front camera sees the template's (:func:`face_aligned_box`,
   :func:`crop_to_face`); the crop is padded with white where it leaves the photo;
2. MediaPipe's selfie segmentation of the crop separates the person from the background
   (:func:`~styleme3d_ns.guidance.faces.person_mask`);
3. the head template is fitted to the landmarks and the person's outline, and its face moved onto the landmark mesh
   (:mod:`styleme3d_ns.data.face_fit`), and slid inside the person's outline where it overshoots it;
4. every point is coloured from the photo, its mirror image, or the person's hair and skin colours
   (:mod:`styleme3d_ns.data.portrait_colour`);
5. the **head mask** is the person mask inside the fitted head's silhouette from the front camera (body and
   background excluded); the training image is the crop composited over white with it, white being the model's
   background, so no background or body pixel asks for a Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.face_fit import (
    TEMPLATE_ANCHORS,
    FaceSurface,
    FrontCamera,
    HeadFit,
    face_surface,
    fit_head,
    fit_to_outline,
    landmarks_to_world,
    mask_outline,
)
from styleme3d_ns.data.portrait_colour import PortraitColours, colour_points
from styleme3d_ns.guidance.faces import (
    CHIN,
    FACE_LEFT_EDGE,
    FACE_RIGHT_EDGE,
    FOREHEAD_TOP,
    face_mesh_landmarks,
    person_mask,
)

SILHOUETTE_MARGIN_PX = 2
"""The head's silhouette is dilated by this many pixels (of the training image) before it cuts the person mask, so
the segmentation's soft edge, not the point sample, decides the outline."""


@dataclass(frozen=True)
class PortraitPrior:
    """What the photo gives the model before training: the initial splat and the target image."""

    points: Tensor
    """`[N, 3]` float32 world positions of the initial Gaussians (the fitted head's surface)."""
    normals: Tensor
    """`[N, 3]` float32 outward unit normals."""
    rgb: Tensor
    """`[N, 3]` float32 initial colours in [0, 1]."""
    image: np.ndarray
    """`[S, S, 3]` uint8 training image: the crop over white outside the head mask."""
    head_mask: np.ndarray
    """`[S, S]` float32 in [0, 1]: the person inside the fitted head's silhouette (where the photo is a target)."""
    person: np.ndarray
    """`[S, S]` float32 in [0, 1]: the segmentation's person probability (body included)."""
    landmarks: np.ndarray
    """`[468, 3]` MediaPipe landmarks in the training image's pixels (z in the same pixel scale)."""
    fit: HeadFit
    surface: FaceSurface
    colours: PortraitColours


def face_aligned_box(landmarks: np.ndarray, fov_deg: float, radius: float) -> tuple[float, float, float]:
    """(left, top, side) in photo pixels of the square crop whose front camera sees the face on the template.

    The crop is scaled so that the chin to forehead-top distance (MediaPipe landmarks 152 and 10) is the template's
    anchors' distance as the front camera sees it, and placed so that their midpoint lands on the anchors' midpoint.
    """
    camera = FrontCamera(1, fov_deg, radius)  # pixels as fractions of the crop's side
    anchors = np.array([camera.pixel_of(TEMPLATE_ANCHORS[i]) for i in (FOREHEAD_TOP, CHIN)])
    marks = landmarks[[FOREHEAD_TOP, CHIN], :2].astype(np.float64)
    side = float(np.linalg.norm(marks[1] - marks[0]) / np.linalg.norm(anchors[1] - anchors[0]))
    corner = marks.mean(axis=0) - anchors.mean(axis=0) * side
    return float(corner[0]), float(corner[1]), side


def head_silhouette(points: np.ndarray, camera: FrontCamera, spacing: float) -> np.ndarray:
    """`[S, S]` bool: where the points `[N, 3]` (a dense surface sample, typical neighbour distance `spacing` in
    world units) cover the camera's image: each point a disc of the spacing's size, then a morphological closing."""
    import cv2

    pixels, depth = camera.project(points)
    canvas = np.zeros((camera.size, camera.size), dtype=np.uint8)
    radius = max(1, math.ceil(camera.focal * spacing / float(depth.min())))
    for x, y in np.floor(pixels).astype(int):
        cv2.circle(canvas, (int(x), int(y)), radius, 1, -1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(canvas, cv2.MORPH_CLOSE, kernel).astype(bool)


def head_mask(person: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """`[S, S]` float32: the person mask `[S, S]` inside the silhouette `[S, S]` bool dilated by
    :data:`SILHOUETTE_MARGIN_PX`."""
    import cv2

    size = 2 * SILHOUETTE_MARGIN_PX + 1
    grown = cv2.dilate(silhouette.astype(np.uint8), np.ones((size, size), np.uint8)).astype(np.float32)
    return person.astype(np.float32) * grown


def composite_over_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`[S, S, 3]` uint8: `image` `[S, S, 3]` uint8 where `mask` `[S, S]` is 1, white where it is 0, blended between."""
    blended = image.astype(np.float32) * mask[..., None] + 255.0 * (1.0 - mask[..., None])
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def find_face(photo: np.ndarray, name: str) -> np.ndarray:
    """MediaPipe landmarks `[468, 3]` of the face in `photo` `[H, W, 3]` uint8; a one-line UserInputError without."""
    landmarks = face_mesh_landmarks(photo)
    if landmarks is None:
        raise UserInputError(
            f"MediaPipe finds no face in {name}; use a roughly frontal portrait, or pass --fit-face False to start "
            "from the bare head template"
        )
    return landmarks


def crop_to_face(
    photo: Image.Image, landmarks: np.ndarray, fov_deg: float, radius: float
) -> tuple[Image.Image, tuple[int, int, int]]:
    """The face-aligned square crop of `photo` (:func:`face_aligned_box`; white where it leaves the photo) and its
    box (left, top, side) in the photo's pixels."""
    left, top, side = face_aligned_box(landmarks, fov_deg, radius)
    canvas = Image.new("RGB", (round(side), round(side)), (255, 255, 255))
    canvas.paste(photo, (-round(left), -round(top)))
    return canvas, (round(left), round(top), round(side))


def portrait_prior(
    crop: Image.Image, landmarks: np.ndarray, image: np.ndarray, fov_deg: float, radius: float, n_points: int,
    seed: int = 0,
) -> PortraitPrior:  # fmt: skip
    """Segmentation, fitted head, colours and training image of a square photo crop (module docstring, steps 2-5).

    Args:
        crop: the square RGB crop the front camera sees, at the photo's resolution (segmented there).
        landmarks: `[468, 3]` its MediaPipe landmarks, in `crop`'s pixels.
        image: `[S, S, 3]` uint8: `crop` resized to the training image's side S.
        fov_deg, radius: the front camera's field of view and distance.
        n_points: points on the head (paper 001 IV.A.1: 10,000); seed: their sample's seed.
    """
    size = image.shape[0]
    scale = size / crop.width
    landmarks = np.asarray(landmarks, dtype=np.float64) * scale
    person = person_mask(np.asarray(crop))
    person = np.asarray(Image.fromarray(person).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    person = np.clip(person, 0.0, 1.0)
    camera = FrontCamera(size, fov_deg, radius)
    world = landmarks_to_world(landmarks, camera)
    fit = fit_head(world, camera, mask_outline(person, landmarks))
    surface = face_surface(fit, landmarks, world, camera, n_points, seed)
    centre = float(np.mean(landmarks[[FACE_RIGHT_EDGE, FACE_LEFT_EDGE], 0]))
    surface = replace(surface, points=fit_to_outline(surface.points, camera, person, centre))
    mask = head_mask(person, head_silhouette(surface.points, camera, _spacing(surface.points)))
    colours = colour_points(surface, fit, image.astype(np.float64) / 255.0, mask, landmarks, camera)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()
    return PortraitPrior(
        points=as_tensor(surface.points),
        normals=as_tensor(surface.normals),
        rgb=as_tensor(colours.rgb),
        image=composite_over_white(image, mask),
        head_mask=mask,
        person=person,
        landmarks=landmarks,
        fit=fit,
        surface=surface,
        colours=colours,
    )


def _spacing(points: np.ndarray) -> float:
    """Twice the mean nearest-neighbour distance of `points` `[N, 3]`: closes a random sample's gaps."""
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(points).query(points, k=2)
    return 2.0 * float(distances[:, 1].mean())
