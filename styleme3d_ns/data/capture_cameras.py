"""The capture's own cameras, when they travel with the splat: the views the splat is good from.

Where they are found (:func:`find_capture_cameras`), first match wins:

1. `--cameras FILE`: a nerfstudio `transforms.json` or a viewer `camera_path.json`;
2. an INRIA 3DGS output: `cameras.json` in the splat's folder or up to three folders above it (the run folder of
   `point_cloud/iteration_N/point_cloud.ply`);
3. a nerfstudio run: `dataparser_transforms.json` in the splat's folder or the one above it, and the dataset's
   `transforms.json` beside it or where the run's `config.yml` says the data was.

Axis conventions, each taken into the splat's own frame (the splat is never moved):

- INRIA `cameras.json` (`utils/camera_utils.py::camera_to_JSON`): `rotation` is the camera-to-world rotation and
  `position` the camera centre, in COLMAP/OpenCV axes (x right, y down, z forward) and in the `.ply`'s frame. To
  nerfstudio's OpenGL axes the y and z columns change sign. Principal point at the image centre (INRIA assumes it).
- nerfstudio `transforms.json`: OpenGL camera-to-world `transform_matrix` per frame (x right, y up, z back), in the
  dataset's frame. A `splatfacto` export is in the dataparser's frame: `dataparser_transforms.json` holds the
  `transform` [3, 4] and `scale` nerfstudio applied (`c2w' = transform @ c2w`, then the translation times `scale`).
  Without it (a splat trained on the same capture by another tool) two frames are candidates: the file's own and,
  when it records one, the frame before ns-process-data's `applied_transform` (COLMAP's); the one whose cameras
  see more of the splat wins, and the line says which.
- viewer `camera_path.json`: OpenGL `camera_to_world` (4x4, row-major) in the model's frame (the one the viewer
  shows, i.e. the splat's), vertical `fov` in degrees, `render_width`/`render_height`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.render.camera import viewmat_from_c2w

_OPENCV_TO_OPENGL = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)


@dataclass(frozen=True)
class CaptureCameras:
    """Cameras of a capture, in the splat's frame, at the capture's own resolution."""

    cameras: Cameras
    """`[V]` pinhole cameras (nerfstudio: OpenGL camera-to-world), in the order the file lists them."""
    source: str
    """Where they came from, for the log line (file and kind)."""
    visible: float
    """Mean share of the splat's Gaussian centres in front of the cameras and inside their images, in [0, 1]."""


# --------------------------------------------------------------------------------------------------------------------
# Finding them
# --------------------------------------------------------------------------------------------------------------------


def inria_splat(folder: Path) -> Path | None:
    """The splat of an INRIA output folder (`cameras.json` and `point_cloud/iteration_N/point_cloud.ply`): the one of
    the highest iteration N, or None when `folder` is no such folder."""
    folder = Path(folder)
    if not (folder / "cameras.json").is_file() or not (folder / "point_cloud").is_dir():
        return None
    found = []
    for child in (folder / "point_cloud").iterdir():
        match = re.fullmatch(r"iteration_(\d+)", child.name)
        if match and (child / "point_cloud.ply").is_file():
            found.append((int(match.group(1)), child / "point_cloud.ply"))
    return max(found)[1] if found else None


def find_capture_cameras(splat: Path, means: Tensor, cameras_file: Path | None = None) -> CaptureCameras | None:
    """The capture cameras for splat file `splat` with Gaussian centres `means` `[N, 3]` (module docstring), or None.

    Raises:
        UserInputError: one line for a `--cameras` file that is missing or not one of the two kinds, or a found
            camera file that cannot be read.
    """
    splat = Path(splat).expanduser().resolve()
    if cameras_file is not None:
        return _from_file(Path(cameras_file).expanduser(), splat, means)
    for folder in list(splat.parents)[:4]:
        if (folder / "cameras.json").is_file():
            return read_inria_cameras(folder / "cameras.json", means)
    for folder in list(splat.parents)[:2]:
        if (folder / "dataparser_transforms.json").is_file():
            transforms = _run_transforms_json(folder, splat)
            if transforms is not None:
                return read_transforms_json(transforms, means, folder / "dataparser_transforms.json")
    return None


def _from_file(path: Path, splat: Path, means: Tensor) -> CaptureCameras:
    """`--cameras FILE`: a transforms.json (with the dataparser transform of a nerfstudio run beside the splat, if
    any) or a camera_path.json."""
    meta = _load_json(path, "--cameras")
    if isinstance(meta, dict) and "camera_path" in meta:
        return read_camera_path(path, means)
    if isinstance(meta, dict) and "frames" in meta:
        dataparser = next(
            (f / "dataparser_transforms.json" for f in list(splat.parents)[:2] if (f / "dataparser_transforms.json")
             .is_file()), None,
        )  # fmt: skip
        return read_transforms_json(path, means, dataparser)
    raise UserInputError(
        f"--cameras {path} is neither a nerfstudio transforms.json (a 'frames' list) nor a viewer camera_path.json "
        "(a 'camera_path' list); pass one of those"
    )


def _run_transforms_json(run: Path, splat: Path) -> Path | None:
    """The dataset transforms.json of the nerfstudio run folder `run`: beside the splat or the run, or the `data:`
    path its config.yml records (absolute, or relative to the folder ns-train ran in, tried as the current one)."""
    for folder in (splat.parent, run):
        if (folder / "transforms.json").is_file():
            return folder / "transforms.json"
    config = run / "config.yml"
    if not config.is_file():
        return None
    match = re.search(r"^data: .*PosixPath\n((?:- .*\n)+)", config.read_text(errors="replace"), re.MULTILINE)
    if match is None:
        return None
    data = Path(*[line[2:].strip().strip("'\"") for line in match.group(1).splitlines()])
    candidate = data if data.suffix == ".json" else data / "transforms.json"
    return candidate if candidate.is_file() else None


def _load_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise UserInputError(f"{what} {path} does not exist; pass a transforms.json or camera_path.json")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} is not valid JSON ({err.__class__.__name__}: {err}); re-export it") from None


# --------------------------------------------------------------------------------------------------------------------
# Reading them
# --------------------------------------------------------------------------------------------------------------------


def _pinhole(c2w: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Cameras:
    """nerfstudio perspective `Cameras [V]` from `[V, 3, 4]` OpenGL poses and `[V]` intrinsics."""
    column = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    size = lambda v: torch.as_tensor(v, dtype=torch.long).reshape(-1, 1)  # noqa: E731
    return Cameras(camera_to_worlds=c2w.float(), fx=column(fx), fy=column(fy), cx=column(cx), cy=column(cy),
                   width=size(w), height=size(h), camera_type=CameraType.PERSPECTIVE)  # fmt: skip


def read_inria_cameras(path: Path, means: Tensor) -> CaptureCameras:
    """The cameras of an INRIA `cameras.json` (module docstring), in the file's order."""
    entries = _load_json(path, "cameras file")
    try:
        rotation = torch.tensor([e["rotation"] for e in entries], dtype=torch.float64)  # [V, 3, 3] c2w, OpenCV
        position = torch.tensor([e["position"] for e in entries], dtype=torch.float64)  # [V, 3]
        fx, fy = [torch.tensor([float(e[k]) for e in entries]) for k in ("fx", "fy")]
        w, h = [torch.tensor([int(e[k]) for e in entries]) for k in ("width", "height")]
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise UserInputError(
            f"{path} is not an INRIA cameras.json (a list of entries with rotation, position, fx, fy, width, height)"
        ) from None
    _check_finite(torch.cat([rotation.flatten(1), position], dim=1), path)
    c2w = torch.cat([rotation * _OPENCV_TO_OPENGL, position[:, :, None]], dim=2)
    cameras = _pinhole(c2w, fx, fy, w / 2.0, h / 2.0, w, h)
    return CaptureCameras(cameras, f"{path} (INRIA 3DGS run)", visible_share(cameras, means))


def read_transforms_json(path: Path, means: Tensor, dataparser: Path | None = None) -> CaptureCameras:
    """The cameras of a nerfstudio transforms.json, in the splat's frame: through `dataparser` (a run's
    dataparser_transforms.json) when given, else the candidate frame that sees more of the splat (module docstring)."""
    meta = _load_json(path, "cameras file")
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise UserInputError(f"{path} lists no frames; a transforms.json holds a 'frames' list")
    try:
        c2w = torch.tensor([f["transform_matrix"] for f in frames], dtype=torch.float64)[:, :3, :4]
        get = lambda key: torch.tensor([float(f.get(key, meta.get(key))) for f in frames])  # noqa: E731
        fx, fy, w, h = get("fl_x"), get("fl_y"), get("w"), get("h")
        cx = torch.tensor(
            [float(f.get("cx", meta.get("cx", wi / 2))) for f, wi in zip(frames, w.tolist(), strict=True)]
        )
        cy = torch.tensor(
            [float(f.get("cy", meta.get("cy", hi / 2))) for f, hi in zip(frames, h.tolist(), strict=True)]
        )
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise UserInputError(
            f"{path}: every frame needs a 4x4 transform_matrix and fl_x, fl_y, w, h (per frame or for the file)"
        ) from None
    _check_finite(c2w.flatten(1), path)
    if dataparser is not None:
        c2w = apply_dataparser_transform(c2w, dataparser)
        cameras = _pinhole(c2w, fx, fy, cx, cy, w, h)
        return CaptureCameras(cameras, f"{path} through {dataparser} (nerfstudio run)", visible_share(cameras, means))
    candidates = {"its own frame": c2w}
    if "applied_transform" in meta:
        applied = torch.eye(4, dtype=torch.float64)
        applied[:3] = torch.tensor(meta["applied_transform"], dtype=torch.float64)[:3]
        candidates["COLMAP's frame (applied_transform undone)"] = _transform_poses(torch.linalg.inv(applied), c2w)
    scored = []
    for name, poses in candidates.items():
        cameras = _pinhole(poses, fx, fy, cx, cy, w, h)
        scored.append((visible_share(cameras, means), name, cameras))
    share, name, cameras = max(scored, key=lambda s: s[0])
    return CaptureCameras(cameras, f"{path} (nerfstudio transforms.json, {name})", share)


def read_camera_path(path: Path, means: Tensor) -> CaptureCameras:
    """The cameras of a nerfstudio viewer camera_path.json (perspective), through nerfstudio's own reader."""
    from nerfstudio.cameras.camera_paths import get_path_from_json

    meta = _load_json(path, "--cameras")
    kind = str(meta.get("camera_type", "perspective")).lower()
    if kind != "perspective":
        raise UserInputError(f"{path} is a {kind} camera path; pass a perspective one (the viewer's default)")
    try:
        cameras = get_path_from_json(meta)
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise UserInputError(
            f"{path} is not a viewer camera_path.json (render_width, render_height and camera_path entries with "
            "camera_to_world and fov)"
        ) from None
    if cameras.shape[0] == 0:
        raise UserInputError(f"{path} holds no cameras; add keyframes in the viewer and export the path again")
    _check_finite(cameras.camera_to_worlds.flatten(1), path)
    n = cameras.shape[0]
    full = lambda t: t.reshape(-1).expand(n).clone()  # noqa: E731
    cameras = _pinhole(cameras.camera_to_worlds, cameras.fx, cameras.fy, full(cameras.cx), full(cameras.cy),
                       full(cameras.width), full(cameras.height))  # fmt: skip
    return CaptureCameras(cameras, f"{path} (viewer camera path)", visible_share(cameras, means))


def apply_dataparser_transform(c2w: Tensor, dataparser: Path) -> Tensor:
    """Poses `[V, 3, 4]` of a dataset in a nerfstudio run's frame: `transform @ c2w`, translation times `scale`."""
    meta = _load_json(dataparser, "dataparser transforms")
    try:
        transform = torch.eye(4, dtype=torch.float64)
        transform[:3] = torch.tensor(meta["transform"], dtype=torch.float64)[:3]
        scale = float(meta["scale"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise UserInputError(
            f"{dataparser} is not a nerfstudio dataparser_transforms.json (transform, scale)"
        ) from None
    poses = _transform_poses(transform, c2w)
    poses[:, :, 3] *= scale
    return poses


def _transform_poses(transform: Tensor, c2w: Tensor) -> Tensor:
    """`transform [4, 4] @ c2w [V, 3, 4]` (rows 0-2)."""
    bottom = c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(c2w.shape[0], 1, 4)
    return (transform @ torch.cat([c2w, bottom], dim=1))[:, :3]


def _check_finite(values: Tensor, path: Path) -> None:
    bad = ~torch.isfinite(values).all(dim=1)
    if bool(bad.any()):
        raise UserInputError(
            f"{path}: {int(bad.sum())} camera(s) have NaN/Inf poses (first: #{int(bad.nonzero()[0])}); fix or remove"
        )


# --------------------------------------------------------------------------------------------------------------------
# Using them
# --------------------------------------------------------------------------------------------------------------------


def visible_share(cameras: Cameras, means: Tensor, sample: int = 20000) -> float:
    """Mean over cameras of the share of Gaussian centres (a strided sample) in front and inside the image."""
    points = means[:: max(1, math.ceil(means.shape[0] / sample))].double()
    homogeneous = torch.cat([points, torch.ones(points.shape[0], 1, dtype=torch.float64)], dim=1)
    cam = viewmat_from_c2w(cameras.camera_to_worlds.double()) @ homogeneous.T  # [V, 4, P], OpenCV
    z = cam[:, 2]
    K = cameras.get_intrinsics_matrices().double()
    uv = (K @ cam[:, :3])[:, :2] / z[:, None].clamp_min(1e-9)
    w, h = cameras.width.double(), cameras.height.double()  # [V, 1]
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return float(inside.double().mean())


def scaled_to(cameras: Cameras, long_side: int) -> Cameras:
    """`cameras` with each image's long side brought down to `long_side` pixels (never up), intrinsics with it."""
    out = cameras.to("cpu")
    out = Cameras(camera_to_worlds=out.camera_to_worlds.clone(), fx=out.fx.clone(), fy=out.fy.clone(),
                  cx=out.cx.clone(), cy=out.cy.clone(), width=out.width.clone(), height=out.height.clone(),
                  camera_type=out.camera_type.clone())  # fmt: skip
    longest = torch.maximum(out.width, out.height).double()
    factor = (long_side / longest).clamp(max=1.0).float()
    out.rescale_output_resolution(factor, scale_rounding_mode="round")
    return out


def between(cameras: Cameras, count: int) -> Cameras:
    """`count` cameras halfway between consecutive ones (in file order, spread over the list): views next to the
    capture's that are none of them, for evaluation. Positions average; rotations are the normalised mean of the two
    quaternions (the midpoint of the slerp); intrinsics are the first camera's of each pair."""
    n = cameras.shape[0]
    if n < 2:
        return cameras[:1]
    pick = torch.tensor([min(n - 2, round(i * (n - 1) / count)) for i in range(count)]).unique()
    a, b = cameras.camera_to_worlds[pick].double(), cameras.camera_to_worlds[pick + 1].double()
    qa, qb = _quaternion(a[:, :, :3]), _quaternion(b[:, :, :3])
    qb = torch.where(((qa * qb).sum(-1, keepdim=True) < 0), -qb, qb)
    mid = torch.nn.functional.normalize(qa + qb, dim=-1)
    c2w = torch.cat([_rotation(mid), ((a[:, :, 3] + b[:, :, 3]) / 2)[:, :, None]], dim=2)
    first = cameras[pick]
    return _pinhole(c2w, first.fx, first.fy, first.cx, first.cy, first.width, first.height)


def _quaternion(rotation: Tensor) -> Tensor:
    """wxyz unit quaternions `[V, 4]` of rotation matrices `[V, 3, 3]`."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(rotation.numpy()).as_quat()
    return torch.from_numpy(np.roll(xyzw, 1, axis=1))


def _rotation(quaternion: Tensor) -> Tensor:
    """Rotation matrices `[V, 3, 3]` of wxyz quaternions `[V, 4]`."""
    from scipy.spatial.transform import Rotation

    return torch.from_numpy(Rotation.from_quat(np.roll(quaternion.numpy(), -1, axis=1)).as_matrix())


def cameras_digest(cameras: Cameras) -> list[float]:
    """The numbers that make `cameras`' renders what they are (for the render cache key), rounded to 1e-6."""
    values = torch.cat([cameras.camera_to_worlds.reshape(-1), cameras.fx.reshape(-1), cameras.fy.reshape(-1),
                        cameras.cx.reshape(-1), cameras.cy.reshape(-1), cameras.width.reshape(-1).float(),
                        cameras.height.reshape(-1).float()])  # fmt: skip
    return [round(float(v), 6) for v in values.double()]


def describe_size(cameras: Cameras) -> str:
    """ "1080x720" (or "1080x720 .. 960x960" when the views differ)."""
    sizes = sorted(
        {(int(w), int(h)) for w, h in zip(cameras.width.reshape(-1), cameras.height.reshape(-1), strict=True)}
    )
    text = [f"{w}x{h}" for w, h in (sizes[0], sizes[-1])]
    return text[0] if len(sizes) == 1 else f"{text[0]} .. {text[1]}"
