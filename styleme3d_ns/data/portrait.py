"""Single-photo portrait data: one front camera on the head template, plus the orbit cameras guidance renders from.

`ns-train sas-portrait --data portrait.jpg` trains from one photo (paper 001): this parser turns the photo into a
square image seen by a front camera, and hands the model the initial splat's points: the head template (paper 001
sec. IV.A.1) fitted to and coloured from the photo by the offline prior (:mod:`styleme3d_ns.data.portrait_prior`),
or the bare template with ``--fit-face False``.
Every other view is generated: :func:`random_views` draws random training views around the head and
:func:`turntable_cameras` gives the 120-view circle paper 001 scores (sec. IV.C, Table 1).

Assumptions (the frame is :mod:`styleme3d_ns.data.head_template`'s: +y up, face toward +z, head centred on the
origin, 1 unit chin to crown):

- the photo is a roughly frontal portrait. MediaPipe's landmarks place a square crop so that the chin and the
  forehead's top land where the front camera sees the template's
  (:func:`~styleme3d_ns.data.portrait_prior.face_aligned_box`; ``--align-face False``: the centre square). The crop
  is the view of a camera on +z, at :data:`CAMERA_RADIUS` from the head's centre, looking at it, with vertical field
  of view :data:`FOV_Y_DEG`;
- the fit estimates the head's pose (a turned head is rotated, the camera stays); the offline prior, or on a GPU the
  guidance, is what shapes and colours the unseen sides.

nerfstudio's `FullImageDatamanager` caches the one image and samples it every step; its eval split is the same image
and camera (there is no held-out view of a single photo), so `ns-train`'s periodic eval reports a fit, not a
generalisation score.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.head_template import HEAD_CENTRE, NUM_TEMPLATE_POINTS, sample_head_template
from styleme3d_ns.data.portrait_prior import PortraitPrior, crop_to_face, find_face, portrait_prior
from styleme3d_ns.render import camera

FOV_Y_DEG = 49.1
"""Vertical field of view of every portrait camera. Paper 001 gives none; this is DreamGaussian's (paper 001's base
[35], configs/image.yaml `fovy`), itself Zero-1-to-3's rendering setting."""
CAMERA_RADIUS = 2.0
"""Distance from the head's centre to every camera. Paper 001 gives none; DreamGaussian's `radius`."""
ELEVATION_RANGE_DEG = (-30.0, 30.0)
"""Elevation range of random training views (degrees; positive = above the head's centre). Paper 001 gives none;
DreamGaussian's `min_ver`/`max_ver`."""
TURNTABLE_VIEWS = 120
"""Paper 001 sec. IV.C: "we render a total of 120 rendered images around the circle" for Table 1."""
WORLD_UP = (0.0, 1.0, 0.0)
"""The template's up axis (+y, SMPL's)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------------


HEAD_FRAME = {"target": HEAD_CENTRE, "up": WORLD_UP, "azimuth_zero": (0.0, 0.0, 1.0)}
"""The template's orbit frame (:func:`~styleme3d_ns.render.camera.orbit_poses`' arguments): around the head's centre,
+y up, azimuth 0 on +z (the photo's camera), 90 on +x (the subject's left)."""


def orbit_poses(
    azimuth_deg: Tensor,
    elevation_deg: Tensor,
    radius: float = CAMERA_RADIUS,
    target: tuple[float, float, float] = HEAD_CENTRE,
) -> Tensor:
    """`[N, 3, 4]` c2w poses (OpenGL) on a sphere around `target`, looking at it, in the template's +y-up frame.

    Args:
        azimuth_deg: `[N]` degrees about +y; 0 is the front camera (on +z), 90 is on +x (the subject's left).
        elevation_deg: `[N]` degrees above the horizontal plane through the target, in (-90, 90).
        radius: distance to the target.
        target: the point looked at (the head's centre).
    """
    return camera.orbit_poses(azimuth_deg, elevation_deg, radius, **{**HEAD_FRAME, "target": target})


def front_camera(image_size: int = 512, fov_deg: float = FOV_Y_DEG, radius: float = CAMERA_RADIUS) -> Cameras:
    """`Cameras [1]`: the photo's camera, on +z at `radius` from the head's centre, looking at it (no rotation)."""
    return camera.orbit_cameras(torch.zeros(1), torch.zeros(1), radius, image_size, fov_deg, **HEAD_FRAME)


def random_views(
    n: int,
    elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG,
    radius: float = CAMERA_RADIUS,
    *,
    image_size: int = 512,
    fov_deg: float = FOV_Y_DEG,
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0),
    generator: torch.Generator | None = None,
) -> Cameras:
    """`Cameras [n]` at random views around the head: azimuth and elevation uniform in their ranges (degrees).

    The default azimuth range is the full circle: the back of the head needs guidance too.
    """
    lo_el, hi_el = elevation_range_deg
    if not -90.0 < lo_el <= hi_el < 90.0:
        raise ValueError(f"elevation range must satisfy -90 < low <= high < 90 degrees, got {elevation_range_deg}")
    lo_az, hi_az = azimuth_range_deg
    azimuth = lo_az + (hi_az - lo_az) * torch.rand(n, generator=generator)
    elevation = lo_el + (hi_el - lo_el) * torch.rand(n, generator=generator)
    return camera.orbit_cameras(azimuth, elevation, radius, image_size, fov_deg, **HEAD_FRAME)


def turntable_cameras(
    n: int = TURNTABLE_VIEWS,
    elevation_deg: float = 0.0,
    radius: float = CAMERA_RADIUS,
    *,
    image_size: int = 512,
    fov_deg: float = FOV_Y_DEG,
) -> Cameras:
    """`Cameras [n]` evenly spaced in azimuth around the head, starting at the front camera (paper 001 sec. IV.C)."""
    return camera.orbit_cameras(
        camera.ring(n), torch.full((n,), elevation_deg), radius, image_size, fov_deg, **HEAD_FRAME
    )


@dataclass(frozen=True)
class PortraitRig:
    """The camera settings of a portrait run, handed to the model in `metadata["portrait_rig"]`.

    The model draws its guidance views from it, so they share the training image's intrinsics and distance.
    """

    image_size: int = 512
    fov_deg: float = FOV_Y_DEG
    radius: float = CAMERA_RADIUS
    elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG

    def front(self) -> Cameras:
        """`Cameras [1]`: the training photo's camera."""
        return front_camera(self.image_size, self.fov_deg, self.radius)

    def random_views(self, n: int, generator: torch.Generator | None = None) -> Cameras:
        """`Cameras [n]`: random views for guidance (:func:`random_views`)."""
        return random_views(
            n, self.elevation_range_deg, self.radius, image_size=self.image_size, fov_deg=self.fov_deg,
            generator=generator,
        )  # fmt: skip

    def turntable(self, n: int = TURNTABLE_VIEWS, elevation_deg: float = 0.0) -> Cameras:
        """`Cameras [n]`: the evaluation circle (:func:`turntable_cameras`)."""
        return turntable_cameras(n, elevation_deg, self.radius, image_size=self.image_size, fov_deg=self.fov_deg)


# --------------------------------------------------------------------------------------------------------------------
# The photo
# --------------------------------------------------------------------------------------------------------------------


def find_portrait(path: Path) -> Path:
    """The image file `path` names: the file itself, or the one image in a folder; else a one-line UserInputError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserInputError(f"portrait image {path} does not exist; pass --data <photo.jpg>")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserInputError(
                f"{path} is a folder with no image ({', '.join(IMAGE_SUFFIXES)}); pass --data <photo.jpg>"
            )
        if len(images) > 1:
            raise UserInputError(
                f"{path} holds {len(images)} images ({images[0].name}, {images[1].name}, ...); sas-portrait trains "
                "from one photo, pass it as --data <photo.jpg>"
            )
        path = images[0]
    return path


def read_photo(path: str | Path) -> Image.Image:
    """The portrait photo as an RGB PIL image: EXIF-rotated, transparent pixels composited over white (with a
    warning: a cut-out portrait's background becomes paper).

    Raises:
        UserInputError: missing path, a folder without exactly one image, or a file PIL cannot read.
    """
    path = find_portrait(Path(path))
    try:
        with Image.open(path) as img:
            img.load()
            image = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise UserInputError(
            f"portrait image {path} cannot be read as an image ({type(err).__name__}); pass a JPG or PNG photo"
        ) from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"Portrait image {path} has transparency: composited over white.", UserWarning, stacklevel=2)
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def centre_square(image: Image.Image) -> tuple[Image.Image, tuple[int, int, int]]:
    """The centre square of `image` and its box (left, top, side) in the image's pixels."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)), (left, top, side)


def resize_square(image: Image.Image, size: int, name: object = "the photo") -> np.ndarray:
    """A square `image` resized to `[size, size, 3]` uint8 (LANCZOS; a warning when it is upscaled)."""
    if image.width < size:
        warnings.warn(f"Portrait image {name} is {image.width} px across; upscaled to {size}.", UserWarning,
                      stacklevel=2)  # fmt: skip
    if image.width != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def load_portrait(path: str | Path, size: int) -> np.ndarray:
    """The portrait photo's centre square as a `[size, size, 3]` uint8 RGB array (:func:`read_photo`, resized)."""
    return resize_square(centre_square(read_photo(path))[0], size, path)


def write_cached_image(image: np.ndarray, stem: str, cache_dir: Path | None = None) -> Path:
    """Write `image` `[S, S, 3]` uint8 as a PNG named by `stem`, its size and its content; return its path.

    nerfstudio's dataset reads images from files, so the training image lives in `cache_dir` (default: a folder in
    the system temp dir). The name is a content hash, so concurrent runs share the file and a changed photo gets a
    new one.
    """
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "styleme3d-portrait"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(image.tobytes()).hexdigest()[:16]
    out = folder / f"{stem}-{image.shape[0]}px-{digest}.png"
    if not out.is_file():
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.stem}.", suffix=".png")
        os.close(handle)
        Image.fromarray(image).save(tmp)
        os.replace(tmp, out)  # atomic: a concurrent reader sees the whole file or none
    return out


@dataclass(frozen=True)
class PortraitStart:
    """What the data parser hands on: the training image and the initial splat's points."""

    image: np.ndarray
    """`[S, S, 3]` uint8 training image."""
    points: Tensor
    """`[N, 3]` float32 initial positions."""
    normals: Tensor
    """`[N, 3]` float32 outward unit normals."""
    rgb: Tensor
    """`[N, 3]` uint8 initial colours (1/255 everywhere without the face fit: paper 001's black, one level up)."""
    head_mask: Tensor | None
    """`[S, S]` float32 in [0, 1]: where the training image shows the head (None without the face fit)."""
    prior: PortraitPrior | None
    """The offline prior it came from (landmarks, masks, fit, hair and skin colours), None without the face fit."""


@functools.lru_cache(maxsize=4)
def portrait_start(
    path: Path, stamp: tuple[int, int], size: int, fov_deg: float, radius: float, n_points: int, seed: int,
    align_face: bool, fit_face: bool,
) -> PortraitStart:  # fmt: skip
    """The training image and initial splat of the photo at `path` (`stamp`: its mtime and size, so an edited photo
    is read again; the parser asks once per split).

    align_face: crop so the chin and the forehead's top (MediaPipe landmarks) land on the template's
    (:func:`~styleme3d_ns.data.portrait_prior.face_aligned_box`); else the centre square.
    fit_face: the offline prior (:func:`~styleme3d_ns.data.portrait_prior.portrait_prior`): the fitted, coloured head
    and the photo without its background; else the bare template (paper 001 IV.A.1) and the whole crop.
    """
    photo = read_photo(path)
    if align_face or fit_face:
        landmarks = find_face(np.asarray(photo), str(path))
    if align_face:
        crop, box = crop_to_face(photo, landmarks, fov_deg, radius)
    else:
        crop, box = centre_square(photo)
    image = resize_square(crop, size, path)
    if fit_face:
        left, top, _ = box
        in_crop = np.concatenate([landmarks[:, :2] - (left, top), landmarks[:, 2:]], axis=1)
        prior = portrait_prior(crop, in_crop, image, fov_deg, radius, n_points, seed)
        rgb = torch.round(prior.rgb * 255).clamp(1, 255).to(torch.uint8)
        return PortraitStart(prior.image, prior.points, prior.normals, rgb, torch.from_numpy(prior.head_mask), prior)
    points, normals = sample_head_template(n_points, seed=seed)
    # RGB 1/255, not 0: black sits on the clamp of SH colours where the colour gradient is exactly zero
    return PortraitStart(image, points, normals, torch.ones_like(points, dtype=torch.uint8), None, None)


# --------------------------------------------------------------------------------------------------------------------
# nerfstudio data parser
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PortraitDataParserConfig(DataParserConfig):
    """One portrait photo, seen by a front camera aimed at a head template (paper 001)."""

    _target: type = field(default_factory=lambda: PortraitDataParser)
    data: Path = Path("portrait.jpg")
    """The portrait photo (JPG/PNG), or a folder holding exactly one."""
    image_size: int = 512
    """Side in pixels of the square training image (centre crop of the photo, resized)."""
    fov_deg: float = FOV_Y_DEG
    """Vertical field of view of the photo's camera and every generated view (degrees)."""
    camera_radius: float = CAMERA_RADIUS
    """Distance from the head's centre to the cameras, in head heights (the template is 1 unit chin to crown)."""
    elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG
    """Elevation range (degrees) of the random views the model renders for guidance."""
    num_template_points: int = NUM_TEMPLATE_POINTS
    """Points sampled on the head template as the initial splat (paper 001 IV.A.1: 10,000)."""
    template_seed: int = 0
    """Seed of the template's point sample."""
    cache_dir: Path | None = None
    """Folder for the square crop nerfstudio reads (default: styleme3d-portrait/ in the system temp dir)."""
    align_face: bool = True
    """Crop the photo so its chin and forehead's top (MediaPipe landmarks) fall on the template's; False: centre
    crop."""
    fit_face: bool = True
    """Offline prior (ours): fit the head template to the photo's face and outline, colour it all round from the
    photo, and keep the background out of the training image (docs/sas-portrait.md). False: paper 001's bare
    template and the whole photo as the target."""


class PortraitDataParser(DataParser):
    """Every split is the one photo with its front camera; `metadata` carries the template and the camera rig.

    metadata keys: ``points3D_xyz [N, 3]`` and ``points3D_rgb [N, 3]`` uint8 (nerfstudio's seed-point keys, so
    splatfacto-style models start from the template), ``points3D_normals [N, 3]`` (outward), ``portrait_rig``
    (:class:`PortraitRig`), ``portrait_image`` (path of the square training image).
    """

    config: PortraitDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: object) -> DataparserOutputs:
        cfg = self.config
        with exit_on_user_error():
            if cfg.image_size < 16:
                raise UserInputError(f"--image-size {cfg.image_size} is too small; use 64 or more (default 512)")
            if not 1.0 < cfg.fov_deg < 170.0:
                raise UserInputError(f"--fov-deg {cfg.fov_deg} must be between 1 and 170 degrees (default 49.1)")
            source = find_portrait(Path(cfg.data))
            stat = source.stat()
            start = portrait_start(source, (stat.st_mtime_ns, stat.st_size), cfg.image_size, cfg.fov_deg,
                                   cfg.camera_radius, cfg.num_template_points, cfg.template_seed, cfg.align_face,
                                   cfg.fit_face)  # fmt: skip
            image_path = write_cached_image(start.image, source.stem, cfg.cache_dir)
        rig = PortraitRig(cfg.image_size, cfg.fov_deg, cfg.camera_radius, tuple(cfg.elevation_range_deg))
        return DataparserOutputs(
            image_filenames=[image_path],
            cameras=rig.front(),
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            metadata={
                "points3D_xyz": start.points,
                "points3D_rgb": start.rgb,
                "points3D_normals": start.normals,
                "portrait_rig": rig,
                "portrait_image": image_path,
                "portrait_head_mask": start.head_mask,
            },
        )


styleme3d_portrait = DataParserSpecification(
    config=PortraitDataParserConfig(),
    description="one portrait photo (JPG/PNG) with a front camera on a head template, for sas-portrait",
)
