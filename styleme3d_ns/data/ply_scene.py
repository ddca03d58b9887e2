"""A 3DGS `.ply` as the whole scene: the base splat read from the file, orbit cameras and their renders made here.

`ns-train styleme3d --data scene.ply` (or a folder holding one `.ply`) stylises a splat exported by any 3DGS tool
(INRIA's code, gsplat, nerfstudio's `ns-export gaussian-splat`, Postshot, Polycam, SuperSplat) without its photos or
a nerfstudio checkpoint. Colour-only stylisation needs neither: the base render is the content reference. So this
parser:

- reads the Gaussians by property name (any order, SH degree 0-3, normals optional; :func:`read_splat_ply`) and hands
  them to the model in ``metadata["base_splat"]`` untouched, in the file's own coordinates, so that
  `ns-export gaussian-splat` writes them back bit for bit;
- places cameras on an orbit (a few elevations) around the splat's robust bounds (percentiles of the centres), about
  the up axis the exporter used (:data:`UP_AXES`; docs/ply.md lists each tool's);
- renders those views of the base splat with our rasteriser into a content-addressed cache folder, because
  nerfstudio's datamanager reads images from files (train: the orbit; eval: views halfway between its azimuths).
  The renders keep their alpha, so each model composites them over its own background.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from torch import Tensor

from styleme3d_ns.core.atomic import OutputWriteError, check_writable, write_cause
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.render import rasterize
from styleme3d_ns.render.camera import orbit_cameras, viewmat_from_c2w

UpAxis = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]
UP_AXES: dict[str, tuple[float, float, float]] = {
    "+x": (1.0, 0.0, 0.0),
    "-x": (-1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0),
    "-y": (0.0, -1.0, 0.0),
    "+z": (0.0, 0.0, 1.0),
    "-z": (0.0, 0.0, -1.0),
}
"""World up of the orbit for each `--up-axis` value. "auto" reads nerfstudio's `comment Vertical Axis: z` header
(+z) and otherwise takes -y, the COLMAP-frame convention of INRIA, Postshot and SuperSplat files (docs/ply.md)."""
DEFAULT_UP = "-y"
RENDER_VERSION = 1
"""Part of the cache key: bump when the renders change for the same file and settings."""
MIN_IMAGE_SIZE = 32
"""Smallest `--image-size`: the style networks downsample by 16, so a smaller view is one or two feature cells."""
NEAR_EMPTY_COVERAGE = 0.01
"""Mean alpha of the training views below which the scene is warned about as (nearly) empty: nothing to stylise."""
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------------------------


def find_splat_ply(data: Path) -> Path | None:
    """The `.ply` that `--data` names: the file itself, or the one `.ply` in a folder without a transforms.json.

    Returns None when `data` is something else (a nerfstudio dataset); raises a one-line UserInputError for a folder
    with several `.ply` files and no transforms.json.
    """
    data = Path(data).expanduser()
    if data.suffix.lower() == ".ply" and not data.is_dir():
        return data
    if not data.is_dir() or (data / "transforms.json").exists():
        return None
    plys = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    if len(plys) > 1:
        raise UserInputError(
            f"{data} holds {len(plys)} .ply files ({plys[0].name}, {plys[1].name}, ...) and no transforms.json; "
            "pass the splat itself: --data <folder>/<splat>.ply"
        )
    return plys[0] if plys else None


def read_splat_ply(path: Path) -> tuple[dict[str, Tensor], int, list[str]]:
    """The Gaussians of a standard 3DGS `.ply`, as stored (float32, nothing normalised or activated).

    Properties are read by name, so any order works (INRIA writes x, y, z, nx, ny, nz, f_dc_*, f_rest_*, opacity,
    scale_*, rot_*; nerfstudio the same); normals are ignored. `f_rest_*` is channel-major, as INRIA writes it: all
    (K-1) red coefficients, then green, then blue.

    Returns:
        the splat `{"means": [N, 3], "scales": [N, 3] (log), "quats": [N, 4] (wxyz), "features_dc": [N, 3],
        "features_rest": [N, K-1, 3], "opacities": [N, 1] (logit)}` (models/checkpoint.py's layout), its SH degree
        (K = (degree + 1)^2), and the header's comment lines.

    Raises:
        UserInputError: one line for a missing or unreadable file, a mesh, missing properties, an SH coefficient
            count that is no degree 0-3, no Gaussians, or NaN/Inf values.
    """
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"splat file {path} does not exist; pass --data <scene.ply> (a 3DGS .ply)")
    try:
        ply = PlyData.read(str(path))
    except PlyElementParseError as err:  # the body: shorter than the header declares, or malformed values
        declared = f"its header declares {err.element.count} {err.element.name} rows, " if err.element else ""
        where = f"row {err.row}" if err.row is not None else "the body"
        raise UserInputError(
            f"{path} is truncated or damaged: {declared}reading stopped at {where} ({err.message}); export the "
            "splat again (or copy the whole file)"
        ) from None
    except (PlyHeaderParseError, ValueError, OSError, EOFError, MemoryError) as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        if isinstance(err, UnicodeDecodeError):  # binary bytes where the text header should be
            reason = "no 'ply' header: binary data from the first line"
        raise UserInputError(f"{path} is not a readable .ply ({reason}); pass a 3DGS splat .ply") from None
    elements = {element.name: element for element in ply.elements}
    if "face" in elements and elements["face"].count > 0:
        raise UserInputError(
            f"{path} is a mesh ({elements['face'].count} faces), not a Gaussian splat; pass the .ply a 3DGS tool "
            "exported (properties x, y, z, f_dc_*, opacity, scale_*, rot_*)"
        )
    if "vertex" not in elements:
        raise UserInputError(f"{path} has no vertex element; a 3DGS .ply stores one Gaussian per vertex")
    vertex = elements["vertex"]
    names = [prop.name for prop in vertex.properties]
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        kind = "a point cloud" if {"red", "green", "blue"} <= set(names) else "not a 3DGS splat"
        raise UserInputError(
            f"{path} is {kind}: it lacks {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; pass a 3DGS "
            "splat .ply (ns-export gaussian-splat writes one; --ply-color-mode rgb files cannot be read back)"
        )
    rest_names = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[len("f_rest_") :]))
    degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(len(rest_names))
    if degree is None or rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise UserInputError(
            f"{path} has {len(rest_names)} f_rest_* properties; SH degrees 0-3 store 0, 9, 24 or 45 (f_rest_0 ...)"
        )
    if vertex.count == 0:
        raise UserInputError(f"{path} holds zero Gaussians; export the splat again")
    data = vertex.data

    def columns(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], axis=1))

    n_rest = (degree + 1) ** 2 - 1
    rest = columns(*rest_names) if rest_names else torch.zeros(vertex.count, 0)
    splat = {
        "means": columns("x", "y", "z"),
        "scales": columns("scale_0", "scale_1", "scale_2"),
        "quats": columns("rot_0", "rot_1", "rot_2", "rot_3"),
        "features_dc": columns("f_dc_0", "f_dc_1", "f_dc_2"),
        # channel-major in the file: [N, 3 * (K-1)] -> [N, 3, K-1] -> [N, K-1, 3]
        "features_rest": rest.reshape(vertex.count, 3, n_rest).transpose(1, 2).contiguous(),
        "opacities": columns("opacity"),
    }
    for key, value in splat.items():
        bad = ~torch.isfinite(value).reshape(value.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            raise UserInputError(
                f"{path}: {int(bad.sum())} of {vertex.count} Gaussians have NaN/Inf in {key} (first: Gaussian "
                f"{int(bad.nonzero()[0])}); remove them (splat-transform --filter-nan) and pass the file again"
            )
    zero = splat["quats"].norm(dim=-1) == 0
    if bool(zero.any()):
        raise UserInputError(
            f"{path}: {int(zero.sum())} of {vertex.count} Gaussians have all-zero rot_* quaternions (first: Gaussian "
            f"{int(zero.nonzero()[0])}); a rotation needs a non-zero quaternion: export the splat again"
        )
    return splat, degree, list(ply.comments)


def resolve_up_axis(up_axis: UpAxis, comments: list[str]) -> str:
    """The orbit's up axis ('+z', '-y', ...): the given one, or for "auto" the file's `Vertical Axis` comment
    (nerfstudio writes `Vertical Axis: z`), else :data:`DEFAULT_UP`."""
    if up_axis != "auto":
        return up_axis
    for comment in comments:
        key, _, value = comment.partition(":")
        if key.strip().lower() == "vertical axis" and value.strip().lower() in ("x", "y", "z"):
            return "+" + value.strip().lower()
    return DEFAULT_UP


# --------------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrbitRig:
    """Where the cameras of a `.ply` scene go: an orbit around the splat's robust bounds, framing them."""

    centre: tuple[float, float, float]
    """Middle of the percentile box of the Gaussian centres."""
    bounds_radius: float
    """Half the diagonal of that box: the sphere the views must show."""
    up: tuple[float, float, float]
    """World up of the orbit."""
    image_size: int
    """Side of the square images in pixels."""
    fov_deg: float
    """Field of view of every camera (degrees)."""
    framing: float
    """Camera distance over the one at which the bounds sphere just fills the view."""

    @classmethod
    def around(
        cls, means: Tensor, up: str, percentile: float, image_size: int, fov_deg: float, framing: float
    ) -> OrbitRig:
        """The rig for Gaussian centres `means` `[N, 3]`: the box between the `percentile` and `100 - percentile`
        percentiles of each coordinate (floaters and far background left out)."""
        q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=torch.float64)
        sample = means.double()
        if sample.shape[0] > 1_000_000:  # torch.quantile's input limit; a strided sample has the same percentiles
            sample = sample[:: math.ceil(sample.shape[0] / 1_000_000)]
        lo, hi = torch.quantile(sample, q, dim=0)
        centre = (lo + hi) / 2
        radius = max(float((hi - lo).norm()) / 2, 1e-6)
        return cls(tuple(centre.tolist()), radius, UP_AXES[up], image_size, fov_deg, framing)

    @property
    def distance(self) -> float:
        """Camera distance at which the bounds sphere fills the field of view, times :attr:`framing`."""
        return self.framing * self.bounds_radius / math.sin(math.radians(self.fov_deg) / 2)

    def cameras(self, azimuth_deg: Tensor, elevation_deg: Tensor) -> Cameras:
        """Square pinhole `Cameras [V]` at these `[V]` azimuths/elevations (degrees) around :attr:`up`."""
        return orbit_cameras(
            azimuth_deg, elevation_deg, self.distance, self.image_size, self.fov_deg, target=self.centre, up=self.up
        )


def orbit_views(num_views: int, elevations_deg: tuple[float, ...], eval_views: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Azimuths and elevations `[V]` (degrees) per split: train views evenly around, cycling through the elevations;
    eval views halfway between train azimuths at the middle elevation, so they are never a training view."""
    az = torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    el = torch.tensor(elevations_deg, dtype=torch.float32).repeat(math.ceil(num_views / len(elevations_deg)))
    eval_az = az[torch.arange(eval_views) * num_views // eval_views] + 180.0 / num_views
    eval_el = torch.full((eval_views,), float(sorted(elevations_deg)[len(elevations_deg) // 2]))
    return {"train": (az, el[:num_views]), "test": (eval_az, eval_el)}


# --------------------------------------------------------------------------------------------------------------------
# Renders
# --------------------------------------------------------------------------------------------------------------------


def render_rgba(splat: dict[str, Tensor], sh_degree: int, cameras: Cameras) -> np.ndarray:
    """The base splat seen by each camera: `[V, H, W, 4]` uint8, straight (not premultiplied) RGB and alpha."""
    colours = torch.cat([splat["features_dc"][:, None, :], splat["features_rest"]], dim=1)
    frames = []
    with torch.no_grad():
        for i in range(cameras.shape[0]):
            camera = cameras[i : i + 1]
            rgb, alpha, _ = rasterize(
                means=splat["means"],
                quats=splat["quats"],
                scales=torch.exp(splat["scales"]),
                opacities=torch.sigmoid(splat["opacities"]).squeeze(-1),
                colors=colours,
                viewmats=viewmat_from_c2w(camera.camera_to_worlds),
                Ks=camera.get_intrinsics_matrices(),
                width=int(camera.width.item()),
                height=int(camera.height.item()),
                sh_degree=sh_degree,
                packed=False,
            )
            straight = torch.where(alpha > 0, rgb / alpha.clamp_min(1e-8), torch.zeros_like(rgb))
            rgba = torch.cat([straight.clamp(0.0, 1.0), alpha.clamp(0.0, 1.0)], dim=-1)[0]
            frames.append((rgba * 255.0 + 0.5).to(torch.uint8).numpy())
    return np.stack(frames)


def frame_paths(folder: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """`folder/<split>_<i>.png` for each of the `counts[split]` views of each split."""
    return {split: [folder / f"{split}_{i:04d}.png" for i in range(count)] for split, count in counts.items()}


def write_renders(folder: Path, frames: dict[str, np.ndarray]) -> None:
    """Write `frames[split]` `[V, H, W, 4]` uint8 to :func:`frame_paths` atomically: the folder appears whole or not
    at all, so concurrent runs of one file share it (the first to finish wins, the other's copy is dropped)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        paths = frame_paths(tmp, {split: len(split_frames) for split, split_frames in frames.items()})
        for split, split_frames in frames.items():
            for frame, path in zip(split_frames, paths[split], strict=True):
                with open(path, "wb") as handle:
                    Image.fromarray(frame, mode="RGBA").save(handle, format="PNG")
                    handle.flush()
                    os.fsync(handle.fileno())
        tmp.chmod(0o755)  # mkdtemp makes it private; the renders are as readable as any output
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left behind when another run's folder won


# --------------------------------------------------------------------------------------------------------------------
# The model's side of the contract
# --------------------------------------------------------------------------------------------------------------------


def base_splat_for_model(metadata: dict, sh_degree: int) -> dict[str, Tensor]:
    """The `.ply`'s Gaussians for a model of SH degree `sh_degree` (`metadata` from :class:`PlyScene`).

    A file of lower degree gets zero higher bands (the same colours from every view, so the same renders); a higher
    degree, or a degree-0 model (splatfacto's degree 0 keeps sigmoid logits, not SH), is a one-line UserInputError.
    """
    splat, degree, path = metadata["base_splat"], metadata["base_sh_degree"], metadata.get("ply_path", "the .ply")
    if sh_degree == 0 or degree > sh_degree:
        raise UserInputError(
            f"{path} stores SH degree {degree} but --pipeline.model.sh-degree is {sh_degree}; pass "
            f"--pipeline.model.sh-degree {max(degree, 1)}"
        )
    n, k = splat["features_rest"].shape[0], (sh_degree + 1) ** 2 - 1
    pad = torch.zeros(n, k - splat["features_rest"].shape[1], 3, dtype=splat["features_rest"].dtype)
    return {**splat, "features_rest": torch.cat([splat["features_rest"], pad], dim=1)}


# --------------------------------------------------------------------------------------------------------------------
# nerfstudio data parser
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PlySceneDataParserConfig(DataParserConfig):
    """A 3DGS `.ply` as the scene: its Gaussians are the base splat, orbit views of them are the images."""

    _target: type = field(default_factory=lambda: PlyScene)
    data: Path = Path("scene.ply")
    """The 3DGS splat .ply, or a folder holding exactly one (and no transforms.json)."""
    up_axis: UpAxis = "auto"
    """World up of the camera orbit. auto: +z for nerfstudio exports (their 'Vertical Axis: z' header), else -y
    (INRIA, Postshot, SuperSplat: COLMAP frame, +y points down). docs/ply.md lists each exporter's."""
    image_size: int = 128
    """Side in pixels of the square rendered views (training resolution)."""
    fov_deg: float = 50.0
    """Field of view of every camera (degrees)."""
    num_views: int = 24
    """Training views on the orbit, evenly spread in azimuth."""
    elevations_deg: tuple[float, ...] = (5.0, 25.0, 45.0)
    """Elevations (degrees above the plane orthogonal to the up axis) the training views cycle through."""
    num_eval_views: int = 4
    """Evaluation views, halfway between training azimuths at the middle elevation."""
    bounds_percentile: float = 2.0
    """Robust bounds: the box between this and 100 minus this percentile of the Gaussian centres (per axis)."""
    framing: float = 1.1
    """Camera distance over the one at which the bounds just fill the view (above 1 leaves a margin)."""
    cache_dir: Path | None = None
    """Folder for the rendered views (default: styleme3d-ply/ in the system temp dir); named by the file's content
    and these settings, so ns-train, ns-render and ns-export of one run render once."""


class PlyScene(DataParser):
    """Every split is renders of the `.ply`'s splat; `metadata` carries the splat itself.

    metadata keys: ``base_splat`` (:func:`read_splat_ply`'s dict), ``base_sh_degree`` (int), ``ply_path`` (Path),
    ``ply_up_axis`` (str, e.g. "-y"). The dataparser transform is the identity: the splat stays in the file's frame.
    """

    config: PlySceneDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: object) -> DataparserOutputs:
        cfg = self.config
        with exit_on_user_error():
            check_ply_options(cfg)
            path = splat_path(cfg)
            splat, degree, comments = read_splat_ply(path)
        up = resolve_up_axis(cfg.up_axis, comments)
        rig = OrbitRig.around(splat["means"], up, cfg.bounds_percentile, cfg.image_size, cfg.fov_deg, cfg.framing)
        views = orbit_views(cfg.num_views, tuple(cfg.elevations_deg), cfg.num_eval_views)
        cameras = {name: rig.cameras(*angles) for name, angles in views.items()}
        folder = cache_folder(cfg, path, up)
        if not folder.is_dir():
            CONSOLE.log(f"Rendering {sum(c.shape[0] for c in cameras.values())} views of {path.name} into {folder}")
            frames = {name: render_rgba(splat, degree, c) for name, c in cameras.items()}
            with exit_on_user_error():
                try:
                    write_renders(folder, frames)
                except OSError as err:
                    cause = write_cause(err, folder.parent) or str(err)
                    raise OutputWriteError(f"cannot write the renders of {path.name} into {folder}: {cause}; "
                                           f"{CACHE_HINT}") from None  # fmt: skip
        paths = frame_paths(folder, {name: c.shape[0] for name, c in cameras.items()})
        name = "train" if split == "train" else "test"
        if name == "train":
            warn_if_nearly_empty(path, splat["means"].shape[0], paths["train"])
        margin = rig.bounds_radius
        aabb = torch.tensor([rig.centre], dtype=torch.float32) + torch.tensor([[-margin], [margin]])
        return DataparserOutputs(
            image_filenames=paths[name],
            cameras=cameras[name],
            scene_box=SceneBox(aabb=aabb),
            metadata={"base_splat": splat, "base_sh_degree": degree, "ply_path": path, "ply_up_axis": up},
        )


CACHE_HINT = "free some space or pass a writable --cache-dir (the styleme3d-ply option after the method's options)"


def check_ply_options(cfg: PlySceneDataParserConfig) -> None:
    """The parser's options make sense (one-line UserInputError naming the option and its range if not)."""
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise UserInputError(
            f"--image-size {cfg.image_size} is too small; use {MIN_IMAGE_SIZE} or more (default 128): the style "
            "networks downsample by 16"
        )
    if not 1.0 < cfg.fov_deg < 170.0:
        raise UserInputError(f"--fov-deg {cfg.fov_deg} must be between 1 and 170 degrees (default 50)")
    if cfg.num_views < 1 or cfg.num_eval_views < 1 or not cfg.elevations_deg:
        raise UserInputError("--num-views and --num-eval-views must be at least 1 and --elevations-deg non-empty")
    if not all(-90.0 < e < 90.0 for e in cfg.elevations_deg):
        raise UserInputError(f"--elevations-deg {cfg.elevations_deg} must lie strictly between -90 and 90")
    if not 0.0 <= cfg.bounds_percentile < 50.0 or cfg.framing <= 0.0:
        raise UserInputError("--bounds-percentile must be in [0, 50) and --framing positive")


def splat_path(cfg: PlySceneDataParserConfig) -> Path:
    """The `.ply` the parser reads (`--data` itself, or the one in its folder); one line if there is none."""
    path = find_splat_ply(cfg.data)
    if path is None:
        raise UserInputError(f"{cfg.data} is neither a .ply nor a folder holding one; pass --data scene.ply")
    return path


def cache_folder(cfg: PlySceneDataParserConfig, path: Path, up: str) -> Path:
    """`<cache>/<stem>-<digest>`: the digest covers the file's bytes and every setting that changes a render."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    settings = [RENDER_VERSION, up, cfg.image_size, cfg.fov_deg, cfg.num_views, list(cfg.elevations_deg),
                cfg.num_eval_views, cfg.bounds_percentile, cfg.framing]  # fmt: skip
    digest.update(json.dumps(settings).encode())
    root = Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(tempfile.gettempdir()) / "styleme3d-ply"
    return root.expanduser() / f"{path.stem}-{digest.hexdigest()[:16]}"


def check_ply_scene(cfg: PlySceneDataParserConfig) -> Path:
    """Everything the parser will read and write, checked without writing anything: the options, the whole file
    (:func:`read_splat_ply`, the parser's own reader) and, unless its renders are cached already, that the cache
    folder can be written. Returns the `.ply`; one-line UserInputError on the first problem."""
    check_ply_options(cfg)
    path = splat_path(cfg)
    _, _, comments = read_splat_ply(path)
    folder = cache_folder(cfg, path, resolve_up_axis(cfg.up_axis, comments))
    if not folder.is_dir():
        check_writable(folder / "train_0000.png", what=f"the renders of {path.name}", hint=CACHE_HINT)
    return path


def view_coverage(frames: list[Path]) -> tuple[float, float]:
    """(mean, largest) share of the pixels the splat covers in these RGBA renders: their alpha's mean over all
    views, and over the fullest one (both in [0, 1])."""
    means = []
    for frame in frames:
        with Image.open(frame) as image:
            means.append(float(np.asarray(image.getchannel("A"), dtype=np.float32).mean()) / 255.0)
    return float(np.mean(means)), max(means)


def warn_if_nearly_empty(path: Path, num_gaussians: int, frames: list[Path]) -> None:
    """Warn, with the numbers, when the splat covers almost nothing of the training views (e.g. a handful of
    Gaussians, or a file whose few points the orbit frames badly): stylising them has nothing to act on."""
    mean, largest = view_coverage(frames)
    if mean < NEAR_EMPTY_COVERAGE:
        gaussians = f"{num_gaussians} Gaussian{'s cover' if num_gaussians != 1 else ' covers'}"
        warnings.warn(
            f"{path}: its {gaussians} {100 * mean:.2f}% of the pixels of the {len(frames)} training views (the "
            f"fullest view {100 * largest:.2f}%): the views are almost transparent, so the style has little to act "
            "on; check the file (a whole 3DGS scene?), --up-axis and --framing",
            UserWarning,
            stacklevel=2,
        )


styleme3d_ply = DataParserSpecification(
    config=PlySceneDataParserConfig(),
    description="a 3DGS .ply (any exporter, SH 0-3) as the base splat, with orbit views rendered from it",
)
