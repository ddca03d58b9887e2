"""A splat file as the whole scene: the base splat read from the file, views and their renders made here.

`ns-train styleme3d --data scene.ply` (or `.splat`, `.spz`, `.ksplat`, `.sog`, an INRIA output folder, a folder
holding one splat file) stylises a splat exported by any 3DGS tool (INRIA's code, gsplat, nerfstudio's
`ns-export gaussian-splat`, Postshot, Polycam, SuperSplat) without its photos or a nerfstudio checkpoint.
Colour-only stylisation needs neither: the base render is the content reference. So this parser:

- decodes other formats to a plain 3DGS `.ply` (:mod:`styleme3d_ns.data.splat_formats`), reads the Gaussians by
  property name (any order, SH degree 0-3, normals optional; :func:`read_splat_ply`) and hands them to the model in
  ``metadata["base_splat"]`` untouched, in the file's own coordinates, so that `ns-export gaussian-splat` writes them
  back bit for bit;
- takes the views from the capture's cameras when they travel with the splat, else from a rig (an orbit around an
  object, a ring inside the background of an unbounded scene), about the up axis the exporter used
  (:mod:`styleme3d_ns.data.views`; docs/ply.md);
- renders those views of the base splat with our rasteriser into a content-addressed cache folder, because
  nerfstudio's datamanager reads images from files. The renders keep their alpha, so each model composites them
  over its own background.
"""

from __future__ import annotations

import hashlib
import json
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
from styleme3d_ns.data.capture_cameras import cameras_digest, inria_splat
from styleme3d_ns.data.rigs import UP_AXES, OrbitRig, RigChoice, orbit_views  # noqa: F401 - also imported from here
from styleme3d_ns.data.splat_formats import decoded_ply, is_splat_file
from styleme3d_ns.data.views import ViewSettings, check_settings, scene_views
from styleme3d_ns.render import rasterize
from styleme3d_ns.render.camera import viewmat_from_c2w

UpAxis = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]
DEFAULT_UP = "-y"
RENDER_VERSION = 2
"""Part of the cache key: bump when the renders change for the same file and settings."""
NEAR_EMPTY_COVERAGE = 0.01
"""Mean alpha of the training views below which the scene is warned about as (nearly) empty: nothing to stylise."""
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------------------------


def find_splat_ply(data: Path) -> Path | None:
    """The splat file that `--data` names: the file itself (.ply, .splat, .spz, .ksplat, .sog), an INRIA output
    folder's latest `point_cloud/iteration_N/point_cloud.ply`, or the one splat file in a folder without a
    transforms.json.

    Returns None when `data` is something else (a nerfstudio dataset); raises a one-line UserInputError for a folder
    with several splat files and no transforms.json.
    """
    data = Path(data).expanduser()
    if is_splat_file(data) and not data.is_dir():
        return data
    if not data.is_dir() or (data / "transforms.json").exists():
        return None
    inria = inria_splat(data)
    if inria is not None:
        return inria
    plys = sorted(p for p in data.iterdir() if p.is_file() and is_splat_file(p))
    if len(plys) > 1:
        raise UserInputError(
            f"{data} holds {len(plys)} splat files ({plys[0].name}, {plys[1].name}, ...) and no transforms.json; "
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


# OrbitRig and orbit_views live in data/rigs.py (with the inside rig); imported above for old imports.


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
    """A splat file as the scene: its Gaussians are the base splat, renders of them from the capture's cameras (or a
    rig's) are the images."""

    _target: type = field(default_factory=lambda: PlyScene)
    data: Path = Path("scene.ply")
    """The splat file (.ply, compressed .ply, .splat, .spz, .ksplat, .sog), an INRIA output folder, or a folder
    holding exactly one splat file (and no transforms.json)."""
    cameras: Path | None = None
    """The views to stylise from: a nerfstudio transforms.json or a viewer camera_path.json (in the splat's frame;
    a nerfstudio run's dataparser_transforms.json beside the splat is applied). Default: the capture's cameras when
    they travel with the splat (INRIA cameras.json, a nerfstudio run's), else --rig's."""
    rig: RigChoice = "auto"
    """Views without capture cameras. auto: inside for an unbounded scene (a background around a dense core), else
    orbit; orbit: around the robust bounds; inside: from within the background, looking at the core (docs/ply.md)."""
    up_axis: UpAxis = "auto"
    """World up of the camera orbit. auto: +z for nerfstudio exports (their 'Vertical Axis: z' header), else -y
    (INRIA, Postshot, SuperSplat: COLMAP frame, +y points down). docs/ply.md lists each exporter's."""
    image_size: int | None = None
    """Long side in pixels of the rendered views (training resolution; capture cameras keep their aspect and are
    never enlarged). None (default): the capture cameras' own size capped at --max-image-size, or 512 px without
    cameras: the resolution people look at. The strokes' size does not follow it
    (--pipeline.model.teacher.stroke-size is relative to the content in view); 128 is a quick look."""
    max_image_size: int = 1080
    """With --image-size None, the long side capture cameras are brought down to."""
    fov_deg: float = 50.0
    """Field of view of every rig camera (degrees)."""
    num_views: int = 24
    """Training views of a rig, evenly spread in azimuth."""
    elevations_deg: tuple[float, ...] = (5.0, 25.0, 45.0)
    """Elevations (degrees above the plane orthogonal to the up axis) the rig's training views cycle through."""
    num_eval_views: int = 4
    """Evaluation views: halfway between training azimuths at the middle elevation (rigs), or between consecutive
    capture cameras."""
    bounds_percentile: float = 2.0
    """Robust bounds: the box between this and 100 minus this percentile of the Gaussian centres (per axis)."""
    framing: float = 1.1
    """Orbit distance over the one at which the bounds just fill the view (above 1 leaves a margin)."""
    inside_framing: float = 1.6
    """Inside rig: distance over the one at which the core just fills the view (kept inside the background); above
    1 shows the background around the core."""
    outward_every: int = 8
    """Inside rig: every n-th training view looks away from the core, at the background (0: none)."""
    capture_stride: int = 1
    """Train on every n-th capture camera (a long camera path, a dense capture); 1: all of them."""
    cache_dir: Path | None = None
    """Folder for the rendered views and decoded files (default: styleme3d-ply/ in the system temp dir); named by
    the file's content and the views, so ns-train, ns-render and ns-export of one run render once."""

    def view_settings(self) -> ViewSettings:
        """The options that choose the views (data/views.py)."""
        return ViewSettings(
            self.cameras, self.rig, self.image_size, self.max_image_size, self.fov_deg, self.num_views,
            tuple(self.elevations_deg), self.num_eval_views, self.bounds_percentile, self.framing,
            self.inside_framing, self.outward_every, self.capture_stride,
        )  # fmt: skip


class PlyScene(DataParser):
    """Every split is renders of the splat file's Gaussians; `metadata` carries the splat itself.

    metadata keys: ``base_splat`` (:func:`read_splat_ply`'s dict), ``base_sh_degree`` (int), ``ply_path`` (Path: the
    file named, any format), ``ply_up_axis`` (str, e.g. "-y"), ``views`` ("capture", "orbit" or "inside"). The
    dataparser transform is the identity: the splat stays in the file's frame.
    """

    config: PlySceneDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: object) -> DataparserOutputs:
        cfg = self.config
        with exit_on_user_error():
            check_settings(cfg.view_settings())
            source = splat_source(cfg)
            path = decoded_ply(source, cache_root(cfg))
            splat, degree, comments = read_splat_ply(path)
            up = resolve_up_axis(cfg.up_axis, comments)
            views = scene_views(source, splat["means"], up, cfg.view_settings())
        _log_once(views.line)
        cameras = views.cameras
        folder = cache_folder(cfg, path, cameras)
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
        return DataparserOutputs(
            image_filenames=paths[name],
            cameras=cameras[name],
            scene_box=SceneBox(aabb=views.aabb),
            metadata={
                "base_splat": splat,
                "base_sh_degree": degree,
                "ply_path": source,
                "ply_up_axis": up,
                "views": views.kind,
            },  # fmt: skip
        )


CACHE_HINT = "free some space or pass a writable --cache-dir (the styleme3d-ply option after the method's options)"


def splat_source(cfg: PlySceneDataParserConfig) -> Path:
    """The splat file the parser reads (`--data` itself, an INRIA run's latest, or the one in its folder); one line
    if there is none."""
    source = find_splat_ply(cfg.data)
    if source is None:
        raise UserInputError(f"{cfg.data} is neither a splat file nor a folder holding one; pass --data scene.ply")
    return source


def cache_root(cfg: PlySceneDataParserConfig) -> Path:
    """Where decoded files and renders are cached: `--cache-dir`, else `<tmp>/styleme3d-ply`."""
    root = Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(tempfile.gettempdir()) / "styleme3d-ply"
    return root.expanduser()


def cache_folder(cfg: PlySceneDataParserConfig, path: Path, cameras: dict[str, Cameras]) -> Path:
    """`<cache>/<stem>-<digest>`: the digest covers the file's bytes and every camera (pose, intrinsics, size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    settings = [RENDER_VERSION, {name: cameras_digest(c) for name, c in cameras.items()}]
    digest.update(json.dumps(settings).encode())
    return cache_root(cfg) / f"{path.stem}-{digest.hexdigest()[:16]}"


def check_ply_scene(cfg: PlySceneDataParserConfig) -> Path:
    """Everything the parser will read and write, checked before ns-train writes its run folder: the options and
    views (:func:`~styleme3d_ns.data.views.check_settings`), the whole file (:func:`read_splat_ply`, the parser's
    own reader, after a non-.ply format is decoded into the cache) and, unless its renders are cached already, that
    the cache folder can be written. Returns the splat file; one-line UserInputError on the first problem."""
    check_settings(cfg.view_settings())
    source = splat_source(cfg)
    path = decoded_ply(source, cache_root(cfg))
    splat, _, comments = read_splat_ply(path)
    views = scene_views(source, splat["means"], resolve_up_axis(cfg.up_axis, comments), cfg.view_settings())
    folder = cache_folder(cfg, path, views.cameras)
    if not folder.is_dir():
        check_writable(folder / "train_0000.png", what=f"the renders of {path.name}", hint=CACHE_HINT)
    return source


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
    Gaussians, or a file whose few points the views frame badly): stylising them has nothing to act on."""
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


_LOGGED: set[str] = set()


def _log_once(line: str) -> None:
    """Log `line` once per process (nerfstudio parses the data once per split)."""
    if line not in _LOGGED:
        _LOGGED.add(line)
        CONSOLE.log(line)


styleme3d_ply = DataParserSpecification(
    config=PlySceneDataParserConfig(),
    description="a splat file (.ply, .splat, .spz, .ksplat, .sog; any exporter, SH 0-3) as the base splat, with views "
    "from its capture's cameras or a rig rendered from it",
)
