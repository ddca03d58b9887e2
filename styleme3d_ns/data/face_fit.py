"""A face surface from one photo: the head template fitted to MediaPipe's 468 landmarks and the person's outline.

Paper 001 starts from SMPL's head and never fits it to the photo; offline, with no diffusion prior to shape the head,
we fit our head template (:mod:`styleme3d_ns.data.head_template`) to the photo instead (ours, the offline prior):

1. :func:`landmarks_to_world`: every landmark is back-projected along its pixel's ray of the front camera, at the
   depth MediaPipe gives it (its z is in the same pixel scale as x), anchored so the forehead's top and the chin sit
   at the depth of the template's (:data:`TEMPLATE_ANCHORS`);
2. :func:`fit_head`: the **pose** (rotation from the face's left-right and chin-forehead axes), the **scale** (chin
   to forehead) and a few **shape parameters** of the template's parts: the face and jaw ellipsoid (centre height
   and depth, three radii; least squares on the landmarks of the lower face), the cranium's width, height and depth
   (the person mask's outline above the brows: hair and hats included; its depth so the forehead lies on it), the
   nose moved under the landmarks' nose;
3. :func:`face_surface`: the fitted template is sampled area-uniformly, then every point on its face (inside the
   landmarks' face oval, facing the camera) is moved along its camera ray onto the landmark mesh, so the nose, eye
   sockets, lips and cheeks have the photo's depth; a band inside the oval blends into the template;
4. :func:`fit_to_outline`: points the camera sees over the background are slid inside the person's outline.

Frames: the template's (+y up, face toward +z, 1 unit chin to crown) is the head frame; the world is the cameras'
(:mod:`styleme3d_ns.data.portrait`: the front camera on +z at ``radius``, looking at the origin). A head-frame point
``p`` is at ``scale * rotation @ p + translation`` in the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial import Delaunay

from styleme3d_ns.data.head_template import HEAD_BLOBS, NECK_CUT_Y, Blob, sample_head_template
from styleme3d_ns.guidance.faces import (
    CHEEKS,
    CHIN,
    EYE_LEFT_OUTER,
    EYE_RIGHT_OUTER,
    FACE_LEFT_EDGE,
    FACE_OVAL,
    FACE_RIGHT_EDGE,
    FOREHEAD_TOP,
    NOSE_TIP,
)

TEMPLATE_ANCHORS = {
    FOREHEAD_TOP: (0.0, 0.28, 0.36),  # top of MediaPipe's face oval: about 3/4 of the way from chin to crown
    CHIN: (0.0, -0.47, 0.175),  # front of the chin, on the template's face ellipsoid
}
"""Where two landmarks sit on the template (head frame, ours): the chin to forehead-top distance (0.77) sets the face's
size on a 1-unit head, as anthropometry does (menton to trichion is ~0.8 of menton to vertex)."""
FACE_BLEND_BAND = 0.08
"""Width of the band inside the face oval where the face surface blends into the template, in face widths."""
FACE_BOUNDS = np.array([0.08, 0.06, 0.08, 0.08, 0.06])
"""How far the face ellipsoid's centre height, centre depth and x, y, z radii may move from the template's."""
_CRANIUM, _FACE, _NOSE = 0, 1, 2  # indices of the parts in HEAD_BLOBS


@dataclass(frozen=True)
class FrontCamera:
    """The photo's pinhole camera: on +z at `radius` from the origin, looking down -z, +y up, square `size` pixels."""

    size: int
    fov_deg: float
    radius: float

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return 0.5 * self.size / math.tan(math.radians(self.fov_deg) / 2.0)

    @property
    def centre(self) -> np.ndarray:
        """The camera's position `[3]`."""
        return np.array([0.0, 0.0, self.radius])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels `[N, 2]` (x right, y down; pixel centres at +0.5) and depths `[N]` along the view axis of world
        points `[N, 3]`."""
        depth = self.radius - points[:, 2]
        half = self.size / 2.0
        pixels = np.stack([half + self.focal * points[:, 0] / depth, half - self.focal * points[:, 1] / depth], 1)
        return pixels, depth

    def back_project(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """World points `[N, 3]` at `depth` `[N]` along the rays of `pixels` `[N, 2]` (inverse of :meth:`project`)."""
        half = self.size / 2.0
        x = (pixels[:, 0] - half) * depth / self.focal
        y = -(pixels[:, 1] - half) * depth / self.focal
        return np.stack([x, y, self.radius - depth], axis=1)

    def pixel_of(self, point: tuple[float, float, float]) -> np.ndarray:
        """Pixel `[2]` of one world point."""
        return self.project(np.asarray([point], dtype=np.float64))[0][0]


def landmarks_to_world(landmarks: np.ndarray, camera: FrontCamera) -> np.ndarray:
    """World points `[468, 3]` of MediaPipe landmarks `[468, 3]` (x, y pixels of the photo `camera` sees; z depth
    in pixels, smaller nearer).

    MediaPipe's depth is relative, in the scale of x: a landmark ``dz`` pixels behind another is ``dz * D / f``
    world units further at distance ``D``. The reference distance ``D`` is that of the template's forehead and chin
    anchors, so a photo cropped to put those landmarks on the anchors
    (:func:`styleme3d_ns.data.portrait_prior.face_aligned_box`) gives a face of the template's size and depth.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    anchors = list(TEMPLATE_ANCHORS)
    reference_depth = camera.radius - float(np.mean([TEMPLATE_ANCHORS[i][2] for i in anchors]))
    reference_z = float(landmarks[anchors, 2].mean())
    depth = reference_depth + (landmarks[:, 2] - reference_z) * reference_depth / camera.focal
    return camera.back_project(landmarks[:, :2], depth)


@dataclass(frozen=True)
class HeadFit:
    """The template fitted to a face: world point = ``scale * rotation @ head_point + translation``."""

    rotation: np.ndarray
    """`[3, 3]` head frame to world (a proper rotation)."""
    scale: float
    """World units per head-frame unit."""
    translation: np.ndarray
    """`[3]` world position of the head frame's origin."""
    blobs: tuple[Blob, ...]
    """The template's parts with the fitted shape parameters (head frame)."""

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """World points `[N, 3]` of head-frame points `[N, 3]`."""
        return self.scale * points @ self.rotation.T + self.translation

    def to_head(self, points: np.ndarray) -> np.ndarray:
        """Head-frame points `[N, 3]` of world points `[N, 3]`."""
        return (points - self.translation) @ self.rotation / self.scale

    def directions_to_world(self, vectors: np.ndarray) -> np.ndarray:
        """World directions `[N, 3]` of head-frame directions `[N, 3]` (normals: rotation only)."""
        return vectors @ self.rotation.T


@dataclass(frozen=True)
class Outline:
    """The person's outline above the brows in the photo, from the segmentation mask (pixels)."""

    top: float
    """Row of the mask's highest pixel above the face (crown, hair or hat)."""
    half_width: float
    """Largest half-width of the mask around the face's centre column, between the top and the brows."""


def mask_outline(mask: np.ndarray, landmarks: np.ndarray, threshold: float = 0.5) -> Outline | None:
    """The person's :class:`Outline` above the brows from `mask` `[H, W]` in [0, 1] and the landmarks `[468, 3]`;
    None when the mask reaches the photo's top edge (the crown is cut off, so its height is unknown) or is empty."""
    solid = mask >= threshold
    centre = float(np.mean(landmarks[[FACE_RIGHT_EDGE, FACE_LEFT_EDGE], 0]))
    brow = float(landmarks[FOREHEAD_TOP, 1])
    column = int(np.clip(round(centre), 0, mask.shape[1] - 1))
    rows = np.flatnonzero(solid[: max(1, int(brow)), column])
    if rows.size == 0 or rows[0] == 0:
        return None
    top = int(rows[0])
    half_width = 0.0
    for row in range(top, int(brow)):
        filled = np.flatnonzero(solid[row])
        if filled.size:
            # the run of the row's person pixels that holds the face's centre column
            left, right = _run_around(filled, column)
            half_width = max(half_width, centre - left, right + 1 - centre)
    return Outline(float(top), half_width)


def _run_around(filled: np.ndarray, column: int) -> tuple[int, int]:
    """First and last index of the contiguous run of sorted indices `filled` nearest to `column`."""
    breaks = np.flatnonzero(np.diff(filled) > 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [filled.size - 1]])
    distance = np.maximum(filled[starts] - column, 0) + np.maximum(column - filled[ends], 0)
    run = int(np.argmin(distance))
    return int(filled[starts[run]]), int(filled[ends[run]])


def _orthonormal_frame(right: np.ndarray, up: np.ndarray) -> np.ndarray:
    """`[3, 3]` with columns x (along `right`), y (`up` made orthogonal to x) and z = x cross y."""
    x = right / np.linalg.norm(right)
    y = up - (up @ x) * x
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def head_pose(world: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation `[3, 3]`, scale and translation `[3]` taking the template's anchors onto landmarks `world` `[468, 3]`.

    The face's left-right axis is the mean of the cheek edges' and the outer eye corners' directions, its up axis
    the chin to forehead-top direction; the template's anchors define the same axes (the chin-forehead line leans
    back by its anchors' depth difference), so the rotation maps one frame onto the other. The scale is the ratio of
    the chin to forehead-top distances; the translation puts the anchors' midpoint on the landmarks'.
    """
    right = world[FACE_LEFT_EDGE] - world[FACE_RIGHT_EDGE]
    right = right / np.linalg.norm(right) + (eyes := world[EYE_LEFT_OUTER] - world[EYE_RIGHT_OUTER]) / np.linalg.norm(
        eyes
    )
    face_frame = _orthonormal_frame(right, world[FOREHEAD_TOP] - world[CHIN])
    forehead, chin = (np.asarray(TEMPLATE_ANCHORS[i]) for i in (FOREHEAD_TOP, CHIN))
    template_frame = _orthonormal_frame(np.array([1.0, 0.0, 0.0]), forehead - chin)
    rotation = face_frame @ template_frame.T
    scale = float(np.linalg.norm(world[FOREHEAD_TOP] - world[CHIN]) / np.linalg.norm(forehead - chin))
    translation = (world[FOREHEAD_TOP] + world[CHIN]) / 2 - scale * rotation @ ((forehead + chin) / 2)
    return rotation, scale, translation


# Landmarks on the lower face and jaw, which the face ellipsoid must pass through: the oval below the cheek edges
# (the jaw line, chin included) and the cheeks.
_LOWER_OVAL = FACE_OVAL[FACE_OVAL.index(454) : FACE_OVAL.index(234) + 1]
FACE_FIT_LANDMARKS = (*_LOWER_OVAL, *CHEEKS[:-1])


def fit_face_blob(points: np.ndarray, blob: Blob) -> Blob:
    """The face ellipsoid (centre height and depth, three radii) through head-frame landmarks `points` `[M, 3]`:
    least squares on the radial residual ``sqrt(F) - 1``, with a pull toward `blob` and bounds (:data:`FACE_BOUNDS`)
    that keep it a jaw: the landmarks only see the face's front, which leaves its depth nearly free."""
    start = np.array([blob.centre[1], blob.centre[2], *blob.radii])
    lower, upper = start - FACE_BOUNDS, start + FACE_BOUNDS

    def residuals(theta: np.ndarray) -> np.ndarray:
        cy, cz, rx, ry, rz = theta
        u = np.stack([points[:, 0] / rx, (points[:, 1] - cy) / ry, (points[:, 2] - cz) / rz], axis=1)
        return np.concatenate([np.sqrt((u**2).sum(axis=1)) - 1.0, 0.2 * (theta - start) / FACE_BOUNDS])

    theta = least_squares(residuals, start, bounds=(lower, upper)).x
    return replace(blob, centre=(0.0, float(theta[0]), float(theta[1])), radii=tuple(float(r) for r in theta[2:]))


def fit_cranium(blob: Blob, outline: Outline | None, forehead: np.ndarray, fit: HeadFit, camera: FrontCamera) -> Blob:
    """The cranium's width and top from the person's `outline` (None: the template's; its bottom stays, so extra
    height grows upward), and its depth so that the forehead's top landmark (head frame `[3]`) lies on it. Radii
    stay within 0.6x-1.8x of the template's."""
    rx, ry, rz = blob.radii
    cx, cy, cz = blob.centre
    exponent = blob.exponents[0]
    if outline is not None:
        depth = camera.radius - float(fit.translation[2])  # the head's centre plane: where its outline is seen
        top_world = -(outline.top - camera.size / 2.0) * depth / camera.focal
        top = (top_world - float(fit.translation[1])) / fit.scale
        bottom = cy - ry  # hair and hats add height above: the cranium's bottom (behind the jaw) stays
        ry = float(np.clip((top - bottom) / 2.0, 0.6 * ry, 1.8 * ry))
        cy = bottom + ry
        rx = float(np.clip(outline.half_width * depth / camera.focal / fit.scale, 0.6 * rx, 1.8 * rx))
    # forehead on the surface: |x/rx|^e + |(y - cy)/ry|^e + |(z - cz)/rz|^e = 1, solved for rz
    rest = abs(forehead[0] / rx) ** exponent + abs((forehead[1] - cy) / ry) ** exponent
    if rest < 0.95 and forehead[2] > cz:
        rz = float(np.clip((forehead[2] - cz) / (1.0 - rest) ** (1.0 / exponent), 0.6 * rz, 1.8 * rz))
    return replace(blob, centre=(cx, cy, cz), radii=(rx, ry, rz))


def fit_head(
    world: np.ndarray, camera: FrontCamera, outline: Outline | None = None, blobs: tuple[Blob, ...] = HEAD_BLOBS
) -> HeadFit:
    """Fit the template to landmarks `world` `[468, 3]` (:func:`landmarks_to_world`) and the person's `outline`.

    Pose and scale from :func:`head_pose`; shape: the face ellipsoid (:func:`fit_face_blob`), the cranium
    (:func:`fit_cranium`), the nose ellipsoid's tip on the nose-tip landmark. Ears and neck keep the template's.
    """
    rotation, scale, translation = head_pose(world)
    pose = HeadFit(rotation, scale, translation, blobs)
    head = pose.to_head(world)
    fitted = list(blobs)
    fitted[_FACE] = fit_face_blob(head[list(FACE_FIT_LANDMARKS)], blobs[_FACE])
    fitted[_CRANIUM] = fit_cranium(blobs[_CRANIUM], outline, head[FOREHEAD_TOP], pose, camera)
    nose = blobs[_NOSE]
    tip = head[NOSE_TIP]
    fitted[_NOSE] = replace(nose, centre=(0.0, float(tip[1]), float(tip[2]) - nose.radii[2]))
    return replace(pose, blobs=tuple(fitted))


@dataclass(frozen=True)
class FaceSurface:
    """The fitted head as points: world positions, outward normals, and which part of the template each lies on."""

    points: np.ndarray
    """`[N, 3]` world positions."""
    normals: np.ndarray
    """`[N, 3]` outward unit normals (world)."""
    part: np.ndarray
    """`[N]` int: index into the fit's blobs of the part each point was sampled on (0 cranium, 1 face, 2 nose, 3-4
    ears, 5 neck, :data:`~styleme3d_ns.data.head_template.HEAD_BLOBS`' order)."""
    on_face: np.ndarray
    """`[N]` in [0, 1]: how far each point was moved onto the landmark mesh (1 inside the oval's blend band)."""


def _polygon_inside_distance(pixels: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance `[N]` in pixels from `pixels` `[N, 2]` to the closed `polygon` `[M, 2]`: > 0 inside."""
    import cv2

    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in pixels], dtype=np.float64)


def _mesh_normals(vertices: np.ndarray, triangles: np.ndarray, towards: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals `[V, 3]` of a triangle mesh, oriented toward the point `towards` `[3]`."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)
    flip = ((towards - (a + b + c) / 3) * face_normals).sum(axis=1) < 0
    face_normals[flip] *= -1
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_normals)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)


def face_surface(
    fit: HeadFit, landmarks: np.ndarray, world: np.ndarray, camera: FrontCamera, n_points: int, seed: int = 0
) -> FaceSurface:
    """Sample the fitted template (area-uniform, `n_points`) and move its face onto the landmark mesh.

    Args:
        fit: :func:`fit_head`'s result.
        landmarks: `[468, 3]` MediaPipe landmarks (pixels of the photo `camera` sees).
        world: `[468, 3]` their world positions (:func:`landmarks_to_world`).
        camera: the photo's camera.
        n_points: points on the head (paper 001 IV.A.1: 10,000).
        seed: the sample's seed.
    """
    head_points, head_normals = sample_head_template(n_points, seed=seed, blobs=fit.blobs, cut_below_y=NECK_CUT_Y)
    head_points, head_normals = head_points.double().numpy(), head_normals.double().numpy()
    implicit = np.stack([blob.implicit(torch.from_numpy(head_points)).numpy() for blob in fit.blobs])
    part = np.abs(implicit - 1.0).argmin(axis=0)
    points, normals = fit.to_world(head_points), fit.directions_to_world(head_normals)

    pixels, depth = camera.project(points)
    oval = landmarks[list(FACE_OVAL), :2].astype(np.float64)
    face_width = float(np.linalg.norm(landmarks[FACE_LEFT_EDGE, :2] - landmarks[FACE_RIGHT_EDGE, :2]))
    facing = ((camera.centre - points) * normals).sum(axis=1) > 0
    inside = np.zeros(len(points))
    inside[facing] = _polygon_inside_distance(pixels[facing], oval)
    weight = np.clip(inside / (FACE_BLEND_BAND * face_width), 0.0, 1.0) * facing

    mesh = Delaunay(landmarks[:, :2].astype(np.float64))
    simplex = mesh.find_simplex(pixels)
    moved = (weight > 0) & (simplex >= 0)
    index = np.flatnonzero(moved)
    transform = mesh.transform[simplex[index]]
    partial = np.einsum("nij,nj->ni", transform[:, :2], pixels[index] - transform[:, 2])
    bary = np.concatenate([partial, 1 - partial.sum(axis=1, keepdims=True)], axis=1)  # [M, 3]
    corners = mesh.simplices[simplex[index]]  # [M, 3]
    landmark_depth = camera.radius - world[:, 2]
    mesh_depth = (bary * landmark_depth[corners]).sum(axis=1)
    vertex_normals = _mesh_normals(world, mesh.simplices, camera.centre)
    mesh_normals = (bary[:, :, None] * vertex_normals[corners]).sum(axis=1)

    w = weight[index]
    new_depth = w * mesh_depth + (1 - w) * depth[index]
    points[index] = camera.back_project(pixels[index], new_depth)
    blended = (
        w[:, None] * mesh_normals / np.linalg.norm(mesh_normals, axis=1, keepdims=True)
        + (1 - w[:, None]) * (normals[index])
    )
    normals[index] = blended / np.linalg.norm(blended, axis=1, keepdims=True)
    on_face = np.zeros(len(points))
    on_face[index] = w
    return FaceSurface(points, normals, part, on_face)


def fit_to_outline(points: np.ndarray, camera: FrontCamera, person: np.ndarray, centre_x: float) -> np.ndarray:
    """Points `[N, 3]` moved inside the person's outline as the photo's camera sees it (a visual-hull fit, ours).

    A point whose pixel shows background (`person` `[S, S]` < 0.5) is slid along its image row, at its depth, to the
    nearest edge of the row's run of person pixels around the face's centre column `centre_x` (pixels); above the
    outline's top it is first lowered to the top row. Front and back of the head share the outline, so the shell
    stays closed; hair and hats that are narrower than the template's cranium reshape it instead of leaving
    Gaussians over the background.
    """
    solid = person >= 0.5
    size = camera.size
    column = int(np.clip(round(centre_x), 0, size - 1))
    rows = np.flatnonzero(solid[:, column])
    if rows.size == 0:
        return points
    pixels, depth = camera.project(points)
    cells = np.floor(pixels).astype(int)
    inside = ((cells >= 0) & (cells < size)).all(axis=1)
    outside = ~inside
    outside[inside] = ~solid[cells[inside, 1], cells[inside, 0]]
    if not outside.any():
        return points
    moved = pixels.copy()
    moved[:, 1] = np.where(outside, np.clip(moved[:, 1], rows[0] + 0.5, size - 0.5), moved[:, 1])
    runs: dict[int, tuple[int, int] | None] = {}
    for i in np.flatnonzero(outside):
        row = int(np.clip(np.floor(moved[i, 1]), 0, size - 1))
        if row not in runs:
            filled = np.flatnonzero(solid[row])
            runs[row] = _run_around(filled, column) if filled.size else None
        if runs[row] is not None:
            left, right = runs[row]
            moved[i, 0] = np.clip(moved[i, 0], left + 0.5, right + 0.5)
    result = points.copy()
    result[outside] = camera.back_project(moved[outside], depth[outside])
    return result
