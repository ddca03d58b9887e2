"""Offline posed multi-view scene builder in nerfstudio's ``transforms.json`` layout.

Renders a small procedural scene (a textured sphere, box and cylinder standing on a textured ground disk, inside a
wide floor and a panoramic wall so that no view sees empty background; textures
are scikit-image's bundled photos) by exact numpy ray casting, so tests and demos never download anything.

World frame: right-handed, +Z up, the object arrangement centred near the origin; all units are world units.
Cameras follow nerfstudio's OpenGL convention (camera looks down -Z, +Y up, ``transform_matrix`` is camera-to-world).

Output directory layout::

    images/frame_00000.png ...   RGB uint8 (white only where a ray misses everything, i.e. nowhere by default)
    depths/frame_00000.npy ...   float32 (H, W) z-depth along the camera's -Z axis in world units, 0 = background
    sparse_pc.ply                seed points on visible surfaces with their rendered (shaded) colours
    transforms.json              OPENCV intrinsics, per-frame poses, train/val/test filename lists, ply_file_path

The depth maps are referenced per frame as ``depth_npy_path`` rather than nerfstudio's ``depth_file_path`` because
nerfstudio scales ``depth_file_path`` by ``depth_unit_scale_factor`` (default 1e-3, millimetres); depth-supervised
methods that want them must point at them explicitly with ``--depth-unit-scale-factor 1.0``.

Shading is Lambert with a fixed world light plus cast shadows, i.e. view-independent, so the seed point colours
match every image that sees them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import tyro
from PIL import Image
from plyfile import PlyData, PlyElement

from styleme3d_ns.render.camera import homogeneous, orbit_poses

GROUND_Z = -0.5
"""Height of the ground disk; objects stand on it so the arrangement straddles the origin the cameras look at."""
BACKDROP_RADIUS = 4.5
"""Radius of the floor and surrounding wall: outside the camera orbit (3.2), so every view ray ends on a surface."""
BACKGROUND_RGB = np.ones(3, dtype=np.float32)
LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])
AMBIENT = 0.35
HIT_EPS = 1e-6
SHADOW_OFFSET = 1e-4
SCENE_FORMAT_VERSION = 1

# --------------------------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------------------------


@cache
def load_texture(name: str) -> np.ndarray:
    """Load a scikit-image bundled image as a float32 RGB texture in [0, 1], shape (H, W, 3).

    Greyscale images get a fixed tint so every surface keeps some colour for style transfer to act on.
    """
    import skimage.data  # local import: skimage's data module is slow-ish to import and only needed here

    tints = {"brick": (0.95, 0.62, 0.45), "grass": (0.55, 0.85, 0.45), "gravel": (0.8, 0.8, 0.75)}
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = image[..., None] * np.asarray(tints.get(name, (1.0, 1.0, 1.0)), dtype=np.float32)
    return np.ascontiguousarray(image[..., :3])


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``texture`` (H, W, C) at ``uv`` (N, 2) in [0, 1] (v = 0 is the top row); returns (N, C).

    Coordinates wrap, which makes the seam of wrapped (sphere/cylinder) mappings continuous.
    """
    height, width = texture.shape[:2]
    x = uv[:, 0] * width - 0.5
    y = uv[:, 1] * height - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64) % width, y0.astype(np.int64) % height
    x1, y1 = (x0 + 1) % width, (y0 + 1) % height
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------------------------------------------------
# Primitives. Rays are (origins (N, 3), dirs (N, 3)); dirs need not be unit length, so t is in units of |dir|.
# --------------------------------------------------------------------------------------------------------------------


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about +Z by ``yaw`` radians, shape (3, 3)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with zero denominators nudged so axis-parallel rays give +-inf instead of nan."""
    den = np.where(np.abs(den) < 1e-12, np.copysign(1e-12, den), den)
    return num / den


@dataclass(frozen=True)
class Sphere:
    """Sphere textured by an equirectangular mapping, rotated by ``yaw`` about +Z."""

    center: np.ndarray
    radius: float
    texture: str
    yaw: float = 0.0

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Nearest front hit parameter per ray, shape (N,), inf on a miss."""
        oc = origins - self.center
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        return np.where((disc >= 0) & (t > HIT_EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals (M, 3) and albedo (M, 3) at surface ``points`` (M, 3)."""
        normals = (points - self.center) / self.radius
        local = normals @ _yaw_matrix(self.yaw)  # row-vector form of R^T n
        u = np.arctan2(local[:, 1], local[:, 0]) / (2 * np.pi) + 0.5
        v = np.arccos(np.clip(local[:, 2], -1.0, 1.0)) / np.pi
        return normals, sample_bilinear(load_texture(self.texture), np.stack([u, v], -1))

    def area(self) -> float:
        return 4 * np.pi * self.radius**2

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Area-uniform surface points, shape (count, 3)."""
        dirs = rng.normal(size=(count, 3))
        return self.center + self.radius * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


@dataclass(frozen=True)
class Box:
    """Box with half extents ``half`` (3,), rotated by ``yaw`` about +Z; each face shows the whole texture."""

    center: np.ndarray
    half: np.ndarray
    texture: str
    yaw: float = 0.0

    def _to_local(self, points: np.ndarray) -> np.ndarray:
        return (points - self.center) @ _yaw_matrix(self.yaw)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Slab test in the box frame; nearest front hit per ray, shape (N,), inf on a miss."""
        o, d = self._to_local(origins), dirs @ _yaw_matrix(self.yaw)
        t1, t2 = _safe_div(-self.half - o, d), _safe_div(self.half - o, d)
        t_near = np.minimum(t1, t2).max(axis=1)
        t_far = np.maximum(t1, t2).min(axis=1)
        return np.where((t_near <= t_far) & (t_near > HIT_EPS), t_near, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals (M, 3) and albedo (M, 3); the face is the axis with the largest normalised coordinate."""
        rel = self._to_local(points) / self.half
        axis = np.abs(rel).argmax(axis=1)
        sign = np.sign(rel[np.arange(len(rel)), axis])
        local_normals = np.zeros_like(rel)
        local_normals[np.arange(len(rel)), axis] = sign
        # Side faces: u runs along the horizontal face axis, v down the height; top/bottom: planar x/y.
        u_axis = np.where(axis == 0, 1, 0)
        v_coord = np.where(axis == 2, -rel[:, 1], -rel[:, 2])
        # Flip u per face so the texture reads left-to-right from outside (right = +y on +x, -x on +y, ...).
        u_flip = np.select([axis == 0, axis == 1], [sign, -sign], 1.0)
        u = 0.5 + 0.5 * rel[np.arange(len(rel)), u_axis] * u_flip
        uv = np.stack([u, 0.5 + 0.5 * v_coord], -1)
        normals = local_normals @ _yaw_matrix(self.yaw).T
        return normals, sample_bilinear(load_texture(self.texture), uv)

    def _face_areas(self) -> np.ndarray:
        """Areas of the faces ordered (-x, +x, -y, +y, -z, +z), shape (6,)."""
        hx, hy, hz = self.half
        return np.repeat(4 * np.array([hy * hz, hx * hz, hx * hy]), 2)

    def area(self) -> float:
        return float(self._face_areas().sum())

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Area-uniform surface points, shape (count, 3)."""
        areas = self._face_areas()
        face = rng.choice(6, size=count, p=areas / areas.sum())
        local = rng.uniform(-1.0, 1.0, size=(count, 3))
        local[np.arange(count), face // 2] = np.where(face % 2 == 0, -1.0, 1.0)
        return (local * self.half) @ _yaw_matrix(self.yaw).T + self.center


@dataclass(frozen=True)
class Cylinder:
    """Capped vertical cylinder with its base centre at ``base``; the texture wraps the side, caps are planar."""

    base: np.ndarray
    radius: float
    height: float
    texture: str
    yaw: float = 0.0

    def _to_local(self, points: np.ndarray) -> np.ndarray:
        return (points - self.base) @ _yaw_matrix(self.yaw)

    def _side_hits(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - self.radius**2
        disc = b * b - a * c
        t = _safe_div(-b - np.sqrt(np.maximum(disc, 0.0)), a)
        z = o[:, 2] + t * d[:, 2]
        return np.where((disc >= 0) & (a > 0) & (t > HIT_EPS) & (z >= 0) & (z <= self.height), t, np.inf)

    def _cap_hits(self, o: np.ndarray, d: np.ndarray, cap_z: float) -> np.ndarray:
        t = _safe_div(cap_z - o[:, 2], d[:, 2])
        xy = o[:, :2] + t[:, None] * d[:, :2]
        return np.where((t > HIT_EPS) & ((xy**2).sum(axis=1) <= self.radius**2), t, np.inf)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Nearest front hit per ray over side and both caps, shape (N,), inf on a miss."""
        o, d = self._to_local(origins), dirs @ _yaw_matrix(self.yaw)
        hits = [self._side_hits(o, d), self._cap_hits(o, d, 0.0), self._cap_hits(o, d, self.height)]
        return np.minimum.reduce(hits)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals (M, 3) and albedo (M, 3); a point belongs to a cap if it is closer to it than to the side."""
        local = self._to_local(points)
        rho = np.linalg.norm(local[:, :2], axis=1)
        cap_dist = np.minimum(np.abs(local[:, 2]), np.abs(local[:, 2] - self.height))
        on_cap = cap_dist < np.abs(rho - self.radius)
        side_normals = np.concatenate([local[:, :2] / np.maximum(rho, 1e-12)[:, None], np.zeros_like(rho)[:, None]], 1)
        cap_normals = np.zeros_like(local)
        cap_normals[:, 2] = np.where(local[:, 2] > 0.5 * self.height, 1.0, -1.0)
        local_normals = np.where(on_cap[:, None], cap_normals, side_normals)
        side_uv = np.stack(
            [np.arctan2(local[:, 1], local[:, 0]) / (2 * np.pi) + 0.5, 1 - local[:, 2] / self.height], -1
        )
        cap_uv = 0.5 + 0.5 * np.stack([local[:, 0], -local[:, 1]], -1) / self.radius
        uv = np.where(on_cap[:, None], cap_uv, side_uv)
        return local_normals @ _yaw_matrix(self.yaw).T, sample_bilinear(load_texture(self.texture), uv)

    def area(self) -> float:
        return 2 * np.pi * self.radius * (self.radius + self.height)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Area-uniform surface points, shape (count, 3)."""
        side_area, cap_area = 2 * np.pi * self.radius * self.height, np.pi * self.radius**2
        part = rng.choice(3, size=count, p=np.array([side_area, cap_area, cap_area]) / self.area())
        theta = rng.uniform(0, 2 * np.pi, size=count)
        rho = np.where(part == 0, self.radius, self.radius * np.sqrt(rng.uniform(size=count)))
        z = np.select([part == 0, part == 1], [rng.uniform(0, self.height, size=count), np.zeros(count)], self.height)
        local = np.stack([rho * np.cos(theta), rho * np.sin(theta), z], -1)
        return local @ _yaw_matrix(self.yaw).T + self.base


@dataclass(frozen=True)
class GroundDisk:
    """Horizontal two-sided disk at height ``z`` with a planar texture mapping; its normal is always +Z."""

    z: float
    radius: float
    texture: str
    density: float = 1.0
    """Seed points per unit area relative to the objects."""

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        t = _safe_div(self.z - origins[:, 2], dirs[:, 2])
        xy = origins[:, :2] + t[:, None] * dirs[:, :2]
        return np.where((t > HIT_EPS) & ((xy**2).sum(axis=1) <= self.radius**2), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        normals = np.zeros_like(points)
        normals[:, 2] = 1.0
        uv = 0.5 + 0.5 * np.stack([points[:, 0], -points[:, 1]], -1) / self.radius
        return normals, sample_bilinear(load_texture(self.texture), uv)

    def area(self) -> float:
        return np.pi * self.radius**2

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        rho = self.radius * np.sqrt(rng.uniform(size=count))
        theta = rng.uniform(0, 2 * np.pi, size=count)
        return np.stack([rho * np.cos(theta), rho * np.sin(theta), np.full(count, self.z)], -1)


@dataclass(frozen=True)
class Backdrop:
    """Open vertical cylinder seen from inside (a panoramic wall around the set), texture tiled ``repeats`` times.

    Unlit and casting no shadow, like an environment: it exists so that every pixel of every view is scene
    content (real captures have no empty background), which a style loss over whole images needs.
    """

    radius: float
    z_min: float
    height: float
    texture: str
    repeats: int = 4
    unlit: bool = True
    density: float = 0.25
    """Seed points per unit area relative to the objects (a few are enough for a flat wall)."""

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Far hit of the infinite cylinder (the inside wall) clipped to its height, shape (N,), inf on a miss."""
        a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
        b = origins[:, 0] * dirs[:, 0] + origins[:, 1] * dirs[:, 1]
        c = origins[:, 0] ** 2 + origins[:, 1] ** 2 - self.radius**2
        disc = b * b - a * c
        t = _safe_div(-b + np.sqrt(np.maximum(disc, 0.0)), a)
        z = origins[:, 2] + t * dirs[:, 2]
        inside = (disc >= 0) & (a > 0) & (t > HIT_EPS) & (z >= self.z_min) & (z <= self.z_min + self.height)
        return np.where(inside, t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rho = np.maximum(np.linalg.norm(points[:, :2], axis=1), 1e-12)
        normals = np.concatenate([-points[:, :2] / rho[:, None], np.zeros_like(rho)[:, None]], 1)
        u = (np.arctan2(points[:, 1], points[:, 0]) / (2 * np.pi) + 0.5) * self.repeats % 1.0
        v = 1 - (points[:, 2] - self.z_min) / self.height
        return normals, sample_bilinear(load_texture(self.texture), np.stack([u, v], -1))

    def area(self) -> float:
        return 2 * np.pi * self.radius * self.height

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        theta = rng.uniform(0, 2 * np.pi, size=count)
        z = rng.uniform(self.z_min, self.z_min + self.height, size=count)
        return np.stack([self.radius * np.cos(theta), self.radius * np.sin(theta), z], -1)


Primitive = Sphere | Box | Cylinder | GroundDisk | Backdrop


# --------------------------------------------------------------------------------------------------------------------
# Scene: ray casting and shading
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralScene:
    """A list of primitives with Lambert shading under a fixed directional light (with cast shadows)."""

    primitives: tuple[Primitive, ...]

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit over all primitives: t (N,) (inf on a miss, in units of |dir|) and primitive index (N,)."""
        return self._cast(self.primitives, origins, dirs)

    @staticmethod
    def _cast(prims: Sequence[Primitive], origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ts = np.stack([prim.intersect(origins, dirs) for prim in prims])
        index = ts.argmin(axis=0)
        return ts[index, np.arange(len(index))], index

    def shade(self, points: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Shaded RGB (M, 3) in [0, 1] of surface ``points`` (M, 3) lying on primitives ``index`` (M,)."""
        normals, albedo = np.zeros_like(points), np.zeros_like(points)
        for k, prim in enumerate(self.primitives):
            mask = index == k
            if mask.any():
                normals[mask], albedo[mask] = prim.surface(points[mask])
        light = np.broadcast_to(LIGHT_DIR, points.shape)
        occluders = [prim for prim in self.primitives if not getattr(prim, "unlit", False)]
        lit = np.isinf(self._cast(occluders, points + SHADOW_OFFSET * normals, light)[0])
        lambert = np.clip(normals @ LIGHT_DIR, 0.0, None) * lit
        shading = AMBIENT + (1 - AMBIENT) * lambert
        unlit = np.array([getattr(self.primitives[k], "unlit", False) for k in range(len(self.primitives))])[index]
        shading = np.where(unlit, 1.0, shading)
        return np.clip(albedo * shading[:, None], 0.0, 1.0)

    def sample_surface(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Area-uniform points over all primitives: points (count, 3) and their primitive index (count,)."""
        areas = np.array([prim.area() * getattr(prim, "density", 1.0) for prim in self.primitives])
        index = np.sort(rng.choice(len(areas), size=count, p=areas / areas.sum()))
        points = np.concatenate([prim.sample(int((index == k).sum()), rng) for k, prim in enumerate(self.primitives)])
        return points, index


def make_scene(seed: int = 0) -> ProceduralScene:
    """The default arrangement: sphere, box and cylinder on a ground disk; ``seed`` rotates layout and textures."""
    rng = np.random.default_rng(seed)
    layout_yaw = float(rng.uniform(0, 2 * np.pi))
    yaws = rng.uniform(0, 2 * np.pi, size=3)

    def spot(k: int, z: float) -> np.ndarray:
        angle = layout_yaw + 2 * np.pi * k / 3
        return np.array([0.65 * math.cos(angle), 0.65 * math.sin(angle), z])

    return ProceduralScene(
        primitives=(
            GroundDisk(z=GROUND_Z, radius=1.35, texture="brick"),
            # the set's surroundings: a wide floor and a panoramic wall, so no view sees empty background
            GroundDisk(z=GROUND_Z - 0.005, radius=BACKDROP_RADIUS, texture="grass", density=0.25),
            Backdrop(radius=BACKDROP_RADIUS, z_min=GROUND_Z - 0.005, height=4.0, texture="rocket"),
            Sphere(center=spot(0, GROUND_Z + 0.42), radius=0.42, texture="astronaut", yaw=float(yaws[0])),
            Box(center=spot(1, GROUND_Z + 0.32), half=np.full(3, 0.32), texture="chelsea", yaw=float(yaws[1])),
            Cylinder(base=spot(2, GROUND_Z), radius=0.25, height=0.95, texture="coffee", yaw=float(yaws[2])),
        )
    )


# --------------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------------


class PinholeIntrinsics(NamedTuple):
    """Pinhole intrinsics in pixels; pixel (row i, col j) has its centre at (x, y) = (j + 0.5, i + 0.5)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(cls, width: int, height: int, fov_x_deg: float) -> PinholeIntrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view ``fov_x_deg``."""
        focal = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
        return cls(focal, focal, width / 2, height / 2, width, height)


def capture_poses(
    num_views: int,
    *,
    radius: float = 3.2,
    elevations_deg: Sequence[float] = (25.0, 45.0),
    azimuth_offset_deg: float = 0.0,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """Camera-to-world matrices (num_views, 4, 4) on an orbit around ``target`` (nerfstudio/OpenGL convention).

    View i sits at azimuth ``360 * i / num_views + azimuth_offset_deg`` (from +x for a +Z ``up``) and cycles through
    ``elevations_deg``, so each elevation ring is evenly spread around the object when ``num_views`` is a multiple of
    the ring count (which also keeps the mean camera up vector on ``up``, what nerfstudio's
    ``orientation_method="up"`` aligns with +Z). A single elevation gives a turntable. Elevations are measured from
    the plane orthogonal to ``up``; the poses are :func:`styleme3d_ns.render.camera.orbit_poses`'.
    """
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    azimuths = np.arange(num_views) * 360.0 / num_views + azimuth_offset_deg
    elevations = np.resize(np.asarray(elevations_deg, dtype=np.float64), num_views)
    poses = orbit_poses(azimuths, elevations, radius, target, up, dtype=torch.float64)
    return homogeneous(poses).numpy()


def camera_rays(
    c2w: np.ndarray, intrinsics: PinholeIntrinsics, offset: tuple[float, float] = (0.5, 0.5)
) -> tuple[np.ndarray, np.ndarray]:
    """Rays through every pixel at sub-pixel ``offset`` (x, y): origins and dirs, each (H * W, 3), row-major.

    Directions have camera-space z = -1, so a hit parameter t is directly the z-depth.
    """
    fx, fy, cx, cy, width, height = intrinsics
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    x = (cols.ravel() + offset[0] - cx) / fx
    y = -(rows.ravel() + offset[1] - cy) / fy  # image rows grow downwards, camera +Y is up
    dirs_cam = np.stack([x, y, -np.ones_like(x)], -1)
    dirs = dirs_cam @ c2w[:3, :3].T
    return np.broadcast_to(c2w[:3, 3], dirs.shape), dirs


def render_view(
    scene: ProceduralScene, c2w: np.ndarray, intrinsics: PinholeIntrinsics, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: RGB float32 (H, W, 3) averaged over ``supersample``^2 sub-pixel rays, and z-depth float32
    (H, W) of the ray through each pixel centre (0 where the background shows)."""
    height, width = intrinsics.height, intrinsics.width
    rgb = np.zeros((height * width, 3))
    for sy in range(supersample):
        for sx in range(supersample):
            origins, dirs = camera_rays(c2w, intrinsics, ((sx + 0.5) / supersample, (sy + 0.5) / supersample))
            t, index = scene.cast(origins, dirs)
            hit = np.isfinite(t)
            sample = np.broadcast_to(BACKGROUND_RGB, rgb.shape).copy()
            sample[hit] = scene.shade(origins[hit] + t[hit, None] * dirs[hit], index[hit])
            rgb += sample
    t_centre, _ = scene.cast(*camera_rays(c2w, intrinsics))
    depth = np.where(np.isfinite(t_centre), t_centre, 0.0)
    return (rgb / supersample**2).reshape(height, width, 3).astype(np.float32), depth.reshape(height, width).astype(
        np.float32
    )


# --------------------------------------------------------------------------------------------------------------------
# Seed point cloud
# --------------------------------------------------------------------------------------------------------------------


def _visible_mask(
    scene: ProceduralScene, points: np.ndarray, c2ws: np.ndarray, intrinsics: PinholeIntrinsics
) -> np.ndarray:
    """True for points (N, 3) seen unoccluded inside the image of at least one camera; shape (N,)."""
    visible = np.zeros(len(points), dtype=bool)
    for c2w in c2ws:
        cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera (OpenGL)
        depth = -cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = intrinsics.fx * cam[:, 0] / depth + intrinsics.cx
            y = -intrinsics.fy * cam[:, 1] / depth + intrinsics.cy
        in_view = (depth > 0) & (x >= 0) & (x < intrinsics.width) & (y >= 0) & (y < intrinsics.height)
        origins = np.broadcast_to(c2w[:3, 3], points.shape)
        t, _ = scene.cast(origins, points - origins)  # the point itself is at t = 1
        visible |= in_view & (t >= 1 - 1e-4)
    return visible


def sample_seed_points(
    scene: ProceduralScene, count: int, c2ws: np.ndarray, intrinsics: PinholeIntrinsics, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` surface points visible from some camera (like an SfM cloud, but exact): xyz (count, 3) float32
    and shaded uint8 RGB (count, 3)."""
    kept_points, kept_index, total = [], [], 0
    for _ in range(20):  # each round over-samples; occluded points (under objects, bottoms) are rejected
        points, index = scene.sample_surface(2 * count, rng)
        keep = _visible_mask(scene, points, c2ws, intrinsics)
        kept_points.append(points[keep])
        kept_index.append(index[keep])
        total += int(keep.sum())
        if total >= count:
            break
    else:
        raise RuntimeError("could not find enough visible surface points; are the cameras looking at the scene?")
    order = rng.permutation(total)[:count]
    points, index = np.concatenate(kept_points)[order], np.concatenate(kept_index)[order]
    colours = np.round(scene.shade(points, index) * 255).astype(np.uint8)
    return points.astype(np.float32), colours


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY with float x/y/z and uchar red/green/blue, the layout nerfstudio reads with open3d."""
    vertex = np.empty(len(xyz), dtype=[(k, "f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue")])
    for k, name in enumerate("xyz"):
        vertex[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, k]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


# --------------------------------------------------------------------------------------------------------------------
# Output: atomic directory, transforms.json
# --------------------------------------------------------------------------------------------------------------------


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Raise if ``out_dir`` must not be replaced: a non-directory, or a non-empty directory without overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success it replaces ``out_dir`` by rename, on failure it is removed.

    Readers therefore see either the old directory or the complete new one, never a half-written scene.
    """
    _check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp creates 0700; the scene should be as readable as a normal directory
        _check_destination(out_dir, overwrite)  # again: something may have appeared while we were building
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``, moving an existing ``out_dir`` aside first and deleting it afterwards."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def split_filenames(file_paths: Sequence[str], eval_every: int) -> dict[str, list[str]]:
    """Held-out split matching nerfstudio's ``eval_mode="interval"``: every ``eval_every``-th frame (0, n, 2n, ...)
    is eval. Returns ``train_filenames``/``val_filenames``/``test_filenames`` (val == test), or {} if disabled."""
    if eval_every <= 0 or len(file_paths) < 2:
        return {}
    train = [p for i, p in enumerate(file_paths) if i % eval_every != 0]
    held_out = [p for i, p in enumerate(file_paths) if i % eval_every == 0]
    return {"train_filenames": train, "val_filenames": held_out, "test_filenames": held_out}


def transforms_dict(
    c2ws: np.ndarray, intrinsics: PinholeIntrinsics, names: Sequence[str], eval_every: int, extra: dict
) -> dict:
    """nerfstudio ``transforms.json`` content for frames ``names`` (stems) with poses ``c2ws`` (N, 4, 4)."""
    file_paths = [f"images/{name}.png" for name in names]
    frames = [
        {"file_path": path, "transform_matrix": c2w.tolist(), "depth_npy_path": f"depths/{name}.npy"}
        for path, c2w, name in zip(file_paths, c2ws, names, strict=True)
    ]
    return {
        "camera_model": "OPENCV",
        "fl_x": intrinsics.fx,
        "fl_y": intrinsics.fy,
        "cx": intrinsics.cx,
        "cy": intrinsics.cy,
        "w": intrinsics.width,
        "h": intrinsics.height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        **split_filenames(file_paths, eval_every),
        "styleme3d_scene": extra,
        "frames": frames,
    }


def _write_view(root: Path, name: str, rgb: np.ndarray, depth: np.ndarray, write_depths: bool) -> None:
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
    if write_depths:
        np.save(root / "depths" / f"{name}.npy", depth)


def build_scene(
    out_dir: Path,
    *,
    num_views: int = 24,
    width: int = 96,
    height: int = 96,
    seed: int = 0,
    num_seed_points: int = 4000,
    eval_every: int = 8,
    fov_deg: float = 50.0,
    orbit_radius: float = 3.2,
    elevations_deg: Sequence[float] = (25.0, 45.0),
    supersample: int = 2,
    write_depths: bool = True,
    overwrite: bool = False,
) -> Path:
    """Render the procedural scene from an orbit and write a nerfstudio dataset to ``out_dir`` atomically.

    Args:
        out_dir: destination; must be absent or empty unless ``overwrite``.
        num_views: number of orbit views (alternating through ``elevations_deg``).
        width, height: image size in pixels.
        seed: fixes layout rotation, texture orientation and seed point sampling; output is deterministic per seed.
        num_seed_points: size of ``sparse_pc.ply``.
        eval_every: every n-th view (0, n, 2n, ...) is held out via ``val/test_filenames``; <= 0 writes no split lists
            (then nerfstudio's ``--eval-mode`` decides).
        fov_deg: horizontal field of view.
        orbit_radius: camera distance from the origin (world units).
        elevations_deg: camera elevation rings.
        supersample: sub-pixel rays per axis for antialiased colour (depth always uses the pixel centre ray).
        write_depths: also write ``depths/*.npy``.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    intrinsics = PinholeIntrinsics.from_fov(width, height, fov_deg)
    c2ws = capture_poses(num_views, radius=orbit_radius, elevations_deg=elevations_deg)
    scene = make_scene(seed)
    names = [f"frame_{i:05d}" for i in range(num_views)]
    extra = {
        "version": SCENE_FORMAT_VERSION,
        "generator": "styleme3d_ns.data.scene_builder",
        "seed": seed,
        "world_up": [0.0, 0.0, 1.0],
        "depth_format": "depths/<frame>.npy float32 z-depth in world units (pre-dataparser), 0 = background",
    }
    with atomic_output_dir(out_dir, overwrite) as root:
        (root / "images").mkdir()
        if write_depths:
            (root / "depths").mkdir()
        for name, c2w in zip(names, c2ws, strict=True):
            _write_view(root, name, *render_view(scene, c2w, intrinsics, supersample), write_depths)
        xyz, rgb = sample_seed_points(scene, num_seed_points, c2ws, intrinsics, np.random.default_rng(seed))
        write_ply(root / "sparse_pc.ply", xyz, rgb)
        meta = transforms_dict(c2ws, intrinsics, names, eval_every, extra)
        if not write_depths:
            for frame in meta["frames"]:
                del frame["depth_npy_path"]
        (root / "transforms.json").write_text(json.dumps(meta, indent=2))
    return out_dir


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SceneBuilderArgs:
    """Build an offline posed multi-view scene (nerfstudio transforms.json layout) from scikit-image textures."""

    out_dir: tyro.conf.Positional[Path]
    """Destination directory (must be absent or empty unless --overwrite)."""
    num_views: int = 24
    width: int = 96
    height: int = 96
    seed: int = 0
    num_seed_points: int = 4000
    eval_every: int = 8
    """Hold out every n-th view for val/test; <= 0 disables the split lists."""
    fov_deg: float = 50.0
    supersample: int = 2
    write_depths: bool = True
    overwrite: bool = False


def main() -> None:
    """Console entry point (``styleme3d-make-scene``)."""
    args = tyro.cli(SceneBuilderArgs)
    start = time.perf_counter()
    try:
        out = build_scene(
            args.out_dir,
            num_views=args.num_views,
            width=args.width,
            height=args.height,
            seed=args.seed,
            num_seed_points=args.num_seed_points,
            eval_every=args.eval_every,
            fov_deg=args.fov_deg,
            supersample=args.supersample,
            write_depths=args.write_depths,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:
        raise SystemExit(f"error: {err}") from None
    meta = json.loads((out / "transforms.json").read_text())
    n_eval = len(meta.get("test_filenames", []))
    print(
        f"wrote {args.num_views} views ({args.num_views - n_eval} train / {n_eval} eval) in "
        f"{time.perf_counter() - start:.1f}s to {out}"
    )
    print(f"  {out / 'transforms.json'}\n  {out / 'images'}/")
    if args.write_depths:
        print(f"  {out / 'depths'}/  (float32 z-depth .npy)")
    print(f"  {out / 'sparse_pc.ply'}  ({args.num_seed_points} seed points)")
    print(f"train with e.g.: ns-train splatfacto --data {out}  (splatfacto loads sparse_pc.ply by default)")


if __name__ == "__main__":
    main()
