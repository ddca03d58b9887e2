"""Colour all round from what the photo shows: the initial colours of a portrait splat (ours, the offline prior).

Every point of the fitted head (:mod:`styleme3d_ns.data.face_fit`) takes, in this order of preference:

1. **the photo**, where the photo's camera sees the point: it faces the camera, nothing nearer covers it, and its
   pixel shows the person (the segmentation mask); the weight falls off at grazing angles, so an outline pixel is
   never smeared around the side of the head;
2. **its mirror image**, where the point's reflection in the head's sagittal plane is seen instead (the face is
   nearly symmetric: the side turned away borrows the side turned toward the camera);
3. **the person's own colours** elsewhere: the hair colour (the median of the photo's person pixels above the
   face) on the cranium, which covers the crown, and on the back of the head down to the nape (:data:`NAPE_Y`,
   behind :data:`HAIR_BACK_Z`); the skin colour (the median of cheek and forehead patches) on the jaw, ears and
   neck.

Weights blend the three, and a few rounds of neighbour averaging over the filled points hide the seams, so there is
no grey and no confetti: every colour is a photo pixel of the person or a median of them. The background never
contributes: a pixel's colour counts only as much as its mask value, and the colours are mask-weighted averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from styleme3d_ns.data.face_fit import FaceSurface, FrontCamera, HeadFit
from styleme3d_ns.guidance.faces import CHEEKS, FACE_LEFT_EDGE, FACE_OVAL, FACE_RIGHT_EDGE

SEEN_COS = (0.2, 0.5)
"""The photo's weight rises from 0 to 1 as the cosine between a point's normal and its ray to the camera goes from
0.2 (78 degrees, grazing) to 0.5 (60 degrees)."""
OCCLUSION_TOLERANCE = 0.04
"""A point is covered when something is nearer than its depth minus this (world units, ~2 point spacings)."""
SMOOTHING_ROUNDS = 3
"""Neighbour-averaging rounds over the filled points (8 neighbours each)."""
CRANIUM_PART, EAR_PARTS = 0, (3, 4)
"""The template part whose unseen surface is hair, and the ears (:data:`~styleme3d_ns.data.head_template.HEAD_BLOBS`'
order)."""
NAPE_Y = -0.4
"""Head-frame height of the hairline at the back (between the mouth's and the chin's level on a 1-unit head, ours)."""
HAIR_BACK_Z = -0.05
"""Head-frame depth behind which the unseen jaw and neck above the nape are hair (just behind the ears' centres)."""
PHOTO, MIRROR, FILL = 0, 1, 2
"""Values of :attr:`PortraitColours.source`."""


@dataclass(frozen=True)
class PortraitColours:
    """Initial RGB of every point and where it came from."""

    rgb: np.ndarray
    """`[N, 3]` in [0, 1]."""
    source: np.ndarray
    """`[N]` int: the largest of the three weights (:data:`PHOTO`, :data:`MIRROR`, :data:`FILL`)."""
    photo_weight: np.ndarray
    """`[N]` in [0, 1]: the photo's share of each colour (directly or through the mirror)."""
    hair: np.ndarray
    """`[3]` the photo's hair colour in [0, 1]."""
    skin: np.ndarray
    """`[3]` the photo's skin colour in [0, 1]."""


def sample_masked(image: np.ndarray, mask: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of `image` `[H, W, 3]` weighted by `mask` `[H, W]` at `pixels` `[N, 2]` (x, y; centres at +0.5).

    Returns the mask-weighted colour `[N, 3]` (``sum(w m c) / sum(w m)``: background pixels, mask 0, never enter)
    and the interpolated mask `[N]`; outside the image the mask is 0.
    """
    height, width = mask.shape
    x, y = pixels[:, 0] - 0.5, pixels[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    colour = np.zeros((len(pixels), 3))
    total = np.zeros(len(pixels))
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
            valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            xi, yi = np.clip(xi, 0, width - 1), np.clip(yi, 0, height - 1)
            wm = np.where(valid, w * mask[yi, xi], 0.0)
            colour += wm[:, None] * image[yi, xi]
            total += wm
    return colour / np.maximum(total, 1e-8)[:, None], total


def visibility(points: np.ndarray, normals: np.ndarray, camera: FrontCamera, occluders: np.ndarray) -> np.ndarray:
    """`[N]` in [0, 1]: how well the camera sees each point (facing weight, :data:`SEEN_COS`), 0 when a point of
    `occluders` `[M, 3]` covers it (:func:`uncovered`)."""
    rays = camera.centre - points
    cosine = (rays * normals).sum(axis=1) / np.linalg.norm(rays, axis=1)
    facing = np.clip((cosine - SEEN_COS[0]) / (SEEN_COS[1] - SEEN_COS[0]), 0.0, 1.0)
    return facing * uncovered(points, camera, occluders)


def uncovered(
    points: np.ndarray, camera: FrontCamera, occluders: np.ndarray | None = None, splat: int = 0
) -> np.ndarray:
    """`[N]` bool: no point of `occluders` `[M, 3]` (default: `points` themselves) is nearer the camera than a
    point's depth minus :data:`OCCLUSION_TOLERANCE` at its pixel. A z-buffer at the camera's resolution where each
    occluder covers the square of pixels `splat` around its own: 0 leaks rather than hides (a sparse sample has
    gaps), 1 closes the gaps of a surface sampled about once per pixel. Points outside the image count as covered."""
    occluders = points if occluders is None else occluders
    size = camera.size
    zbuffer = np.full((size + 2, size + 2), np.inf)
    pixels, depth = camera.project(occluders)
    cells = np.floor(pixels).astype(int) + 1
    keep = (cells >= 1).all(axis=1) & (cells <= size).all(axis=1)
    for dx in range(-splat, splat + 1):
        for dy in range(-splat, splat + 1):
            rows, cols = np.clip(cells[keep, 1] + dy, 0, size + 1), np.clip(cells[keep, 0] + dx, 0, size + 1)
            np.minimum.at(zbuffer, (rows, cols), depth[keep])
    pixels, depth = camera.project(points)
    cells = np.floor(pixels).astype(int) + 1
    inside = (cells >= 1).all(axis=1) & (cells <= size).all(axis=1)
    cells = np.clip(cells, 0, size + 1)
    return inside & (depth <= zbuffer[cells[:, 1], cells[:, 0]] + OCCLUSION_TOLERANCE)


def hair_colour(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """`[3]`: the median of the person's pixels (mask >= 0.5) above the face oval and no wider than the face's
    width either side of it: hair, or a hat. With fewer than 16 such pixels (a crown cut off): `skin`."""
    oval = landmarks[list(FACE_OVAL)]
    top = int(np.floor(oval[:, 1].min()))
    centre = float(np.mean(landmarks[[FACE_RIGHT_EDGE, FACE_LEFT_EDGE], 0]))
    half = float(np.ptp(oval[:, 0]))
    left, right = max(0, int(centre - half)), min(mask.shape[1], int(centre + half) + 1)
    region = mask[: max(0, top), left:right] >= 0.5
    pixels = image[: max(0, top), left:right][region]
    return np.median(pixels, axis=0) if len(pixels) >= 16 else skin


def skin_colour(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """`[3]`: the median of small patches around the cheek and forehead landmarks (:data:`CHEEKS`) that show the
    person; radius 4% of the face's width."""
    width = float(np.linalg.norm(landmarks[FACE_LEFT_EDGE, :2] - landmarks[FACE_RIGHT_EDGE, :2]))
    radius = max(1, round(0.04 * width))
    rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = rows**2 + cols**2 <= radius**2
    samples = []
    for x, y in landmarks[list(CHEEKS), :2]:
        ys = np.clip(round(y) + rows[disc], 0, image.shape[0] - 1)
        xs = np.clip(round(x) + cols[disc], 0, image.shape[1] - 1)
        person = mask[ys, xs] >= 0.5
        samples.append(image[ys[person], xs[person]])
    pixels = np.concatenate(samples)
    if len(pixels) == 0:
        raise ValueError("no person pixel around the cheek landmarks; the mask and landmarks disagree")
    return np.median(pixels, axis=0)


def colour_points(
    surface: FaceSurface, fit: HeadFit, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, camera: FrontCamera
) -> PortraitColours:
    """The initial colour of every point of `surface` (module docstring).

    Args:
        surface: the fitted head's points (:func:`~styleme3d_ns.data.face_fit.face_surface`).
        fit: the fit (its sagittal plane mirrors the points).
        image: `[S, S, 3]` the photo `camera` sees, float in [0, 1].
        mask: `[S, S]` in [0, 1]: the person (segmentation) where colours may come from.
        landmarks: `[468, 3]` MediaPipe landmarks in `image`'s pixels.
        camera: the photo's camera.
    """
    points, normals = surface.points, surface.normals
    seen = visibility(points, normals, camera, points)
    photo, covered = sample_masked(image, mask, camera.project(points)[0])
    seen = seen * np.clip(covered, 0.0, 1.0)

    head = fit.to_head(points)
    mirror_points = fit.to_world(head * np.array([-1.0, 1.0, 1.0]))
    head_normals = normals @ fit.rotation  # world -> head frame (rotation only)
    mirror_normals = fit.directions_to_world(head_normals * np.array([-1.0, 1.0, 1.0]))
    mirrored = visibility(mirror_points, mirror_normals, camera, points)
    mirror_photo, mirror_covered = sample_masked(image, mask, camera.project(mirror_points)[0])
    mirrored = mirrored * np.clip(mirror_covered, 0.0, 1.0)

    skin = skin_colour(image, mask, landmarks)
    hair = hair_colour(image, mask, landmarks, skin)
    hairy = (surface.part == CRANIUM_PART) | (
        (head[:, 2] < HAIR_BACK_Z) & (head[:, 1] > NAPE_Y) & ~np.isin(surface.part, EAR_PARTS)
    )
    fill = np.where(hairy[:, None], hair[None], skin[None])

    w_photo = seen
    w_mirror = (1 - seen) * mirrored
    w_fill = (1 - seen) * (1 - mirrored)
    rgb = w_photo[:, None] * photo + w_mirror[:, None] * mirror_photo + w_fill[:, None] * fill
    rgb = _smooth_seams(points, rgb, w_fill)
    source = np.stack([w_photo, w_mirror, w_fill], axis=1).argmax(axis=1)
    return PortraitColours(np.clip(rgb, 0.0, 1.0), source, w_photo + w_mirror, hair, skin)


def _smooth_seams(points: np.ndarray, rgb: np.ndarray, fill_weight: np.ndarray) -> np.ndarray:
    """Average each point's colour with its 8 neighbours' for :data:`SMOOTHING_ROUNDS` rounds, as much as it was
    filled (photo colours keep their detail; fills and their borders blend)."""
    _, neighbours = cKDTree(points).query(points, k=9)
    amount = np.clip(fill_weight, 0.0, 1.0)[:, None]
    for _ in range(SMOOTHING_ROUNDS):
        rgb = (1 - amount) * rgb + amount * rgb[neighbours].mean(axis=1)
    return rgb
