"""Which views a splat file is stylised from, and at what size: the capture's own cameras when they travel with the
splat (:mod:`styleme3d_ns.data.capture_cameras`), else a rig (:mod:`styleme3d_ns.data.rigs`): an orbit for an object,
a ring inside the background for an unbounded capture. One line says which and where they came from.

Sizes (docs/ply.md, "Resolution"): `--image-size N` makes the long side of every view N pixels (capture cameras keep
their aspect ratio and are never enlarged); `--image-size None` gives the resolution people look at: the capture's
own, capped at `--max-image-size` (1080) on the long side, or :data:`BARE_IMAGE_SIZE` for a splat without cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.capture_cameras import between, describe_size, find_capture_cameras, scaled_to
from styleme3d_ns.data.rigs import InsideRig, OrbitRig, RigChoice, inside_views, orbit_views, scene_layout, up_vector

MIN_IMAGE_SIZE = 32
"""Smallest view side: the style networks downsample by 16, so a smaller view is one or two feature cells."""
BARE_IMAGE_SIZE = 512
"""View side (px) of a splat without capture cameras when `--image-size None`."""
LOW_VISIBILITY = 0.05
"""Capture cameras that see less than this share of the Gaussians probably sit in another frame: the line warns."""


@dataclass(frozen=True)
class ViewSettings:
    """The parser options that choose the views (PlySceneDataParserConfig's, docs there)."""

    cameras: Path | None
    rig: RigChoice
    image_size: int | None
    max_image_size: int
    fov_deg: float
    num_views: int
    elevations_deg: tuple[float, ...]
    num_eval_views: int
    bounds_percentile: float
    framing: float
    inside_framing: float
    outward_every: int
    capture_stride: int


@dataclass(frozen=True)
class SceneViews:
    """The cameras of each split, the scene's box and the line that says where the views came from."""

    cameras: dict[str, Cameras]
    """"train" and "test" `Cameras [V]`."""
    aabb: Tensor
    """`[2, 3]` box around the scene (nerfstudio's SceneBox)."""
    line: str
    """Which views, from where, at what size."""
    kind: str
    """"capture", "orbit" or "inside"."""


def scene_views(source: Path, means: Tensor, up: str, settings: ViewSettings) -> SceneViews:
    """The views of splat file `source` with Gaussian centres `means` `[N, 3]` and up axis `up` ("-y", ...).

    Raises:
        UserInputError: `--cameras` together with `--rig orbit|inside`, or an unreadable camera file.
    """
    if settings.cameras is not None and settings.rig != "auto":
        raise UserInputError(f"--cameras and --rig {settings.rig} both choose the views; pass one of them")
    box = OrbitRig.around(means, up, settings.bounds_percentile, 1, settings.fov_deg, 1.0)
    capture = find_capture_cameras(source, means, settings.cameras) if settings.rig == "auto" else None
    if capture is not None:
        all_cameras = capture.cameras
        chosen = all_cameras[:: settings.capture_stride] if settings.capture_stride > 1 else all_cameras
        long_side = settings.image_size or settings.max_image_size
        train = scaled_to(chosen, long_side)
        test = scaled_to(between(all_cameras, settings.num_eval_views), long_side)
        native = describe_size(all_cameras)
        stride = (
            f" (every {settings.capture_stride}th of {all_cameras.shape[0]})" if settings.capture_stride > 1 else ""
        )
        warn = (
            " - few Gaussians are in view: is this the splat's capture, in its frame?"
            if capture.visible < LOW_VISIBILITY else ""
        )  # fmt: skip
        line = (
            f"views: {train.shape[0]} capture cameras{stride} from {capture.source}, seeing {capture.visible:.0%} of "
            f"the Gaussians; rendered at {describe_size(train)} (capture {native}){warn}"
        )
        return SceneViews({"train": train, "test": test}, _aabb(box), line, "capture")
    size = settings.image_size or BARE_IMAGE_SIZE
    layout = scene_layout(means)
    kind = settings.rig if settings.rig != "auto" else ("inside" if layout.unbounded else "orbit")
    why = "no capture cameras found" if settings.rig == "auto" else f"--rig {settings.rig}"
    if kind == "orbit":
        rig = OrbitRig.around(means, up, settings.bounds_percentile, size, settings.fov_deg, settings.framing)
        views = orbit_views(settings.num_views, tuple(settings.elevations_deg), settings.num_eval_views)
        cameras = {name: rig.cameras(*angles) for name, angles in views.items()}
        other = "--rig inside views it from within" if layout.unbounded else "--cameras FILE uses a capture's"
        line = f"views: {why}; {layout.describe()}: {settings.num_views} orbit views at {size} px ({other})"
        return SceneViews(cameras, _aabb(box), line, "orbit")
    rig = InsideRig(layout, up_vector(up), size, settings.fov_deg, settings.inside_framing)
    views = inside_views(settings.num_views, tuple(settings.elevations_deg), settings.num_eval_views,
                         settings.outward_every)  # fmt: skip
    cameras = {name: rig.cameras(*angles) for name, angles in views.items()}
    outward = int(views["train"][2].sum())
    line = (
        f"views: {why}; {layout.describe()}: {settings.num_views} views at {size} px from inside it, "
        f"{rig.distance / layout.core_radius:.1f}x the core's radius out, {outward} of them looking outwards "
        "(--rig orbit for an orbit around everything)"
    )
    radius = max(layout.background_radius, layout.core_radius) * 1.5
    centre = torch.tensor([layout.centre], dtype=torch.float32)
    return SceneViews(cameras, centre + torch.tensor([[-radius], [radius]]), line, "inside")


def _aabb(rig: OrbitRig) -> Tensor:
    """`[2, 3]` box of the rig's bounds sphere."""
    return torch.tensor([rig.centre], dtype=torch.float32) + torch.tensor([[-rig.bounds_radius], [rig.bounds_radius]])


def check_settings(settings: ViewSettings) -> None:
    """One-line UserInputError for options out of range."""
    s = settings
    if s.image_size is not None and s.image_size < MIN_IMAGE_SIZE:
        raise UserInputError(f"--image-size {s.image_size} is too small; use {MIN_IMAGE_SIZE} or more (or None: the "
                             "capture's size): the style networks downsample by 16")  # fmt: skip
    if s.max_image_size < MIN_IMAGE_SIZE:
        raise UserInputError(f"--max-image-size {s.max_image_size} is too small; use {MIN_IMAGE_SIZE} or more "
                             "(default 1080)")  # fmt: skip
    if not 1.0 < s.fov_deg < 170.0:
        raise UserInputError(f"--fov-deg {s.fov_deg} must be between 1 and 170 degrees (default 50)")
    if s.num_views < 1 or s.num_eval_views < 1 or not s.elevations_deg:
        raise UserInputError("--num-views and --num-eval-views must be at least 1 and --elevations-deg non-empty")
    if not all(-90.0 < e < 90.0 for e in s.elevations_deg):
        raise UserInputError(f"--elevations-deg {s.elevations_deg} must lie strictly between -90 and 90")
    if not 0.0 <= s.bounds_percentile < 50.0 or s.framing <= 0.0 or s.inside_framing <= 0.0:
        raise UserInputError("--bounds-percentile must be in [0, 50) and --framing, --inside-framing positive")
    if s.outward_every < 0 or s.capture_stride < 1:
        raise UserInputError("--outward-every must be >= 0 (0: none) and --capture-stride >= 1")
    if s.cameras is not None and not Path(s.cameras).expanduser().is_file():
        raise UserInputError(f"--cameras {s.cameras} does not exist; pass a transforms.json or camera_path.json")
