"""`styleme3d-export --web DIR`: a stylised run as a static web page with its palette and look controls.

DIR holds everything the page needs, so any static server shows it (`python -m http.server -d DIR`) and nothing
is fetched from the network:

    index.html, style.css, page.js, look.js   the page (package data: styleme3d_ns/apps/web/)
    playcanvas.min.mjs, playcanvas.LICENSE    PlayCanvas' engine (MIT), copied from scripts/install.sh's npm folder
    scene.sog                                 the geometry once (apps/sog.py), with the base DC and opacities
    colours/base.bin, colours/style-K.bin     the base colours and one set per palette entry (apps/web_colours.py)
    region.bin                                which Gaussians the look applies to (only with a region box)
    scene.json                                counts, SH degree, palette labels, the run's look and training cameras

The page computes the look exactly as `models/look.py` does on SH coefficients (`apply_look_sh`, look.js), and
the engine evaluates them per view, so a frame in the page matches our render of the same camera (docs/web.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from styleme3d_ns.apps.sog import SogGeometry, write_sog
from styleme3d_ns.apps.web_colours import quantise_colours
from styleme3d_ns.core.atomic import new_folders, write_cause
from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.look import LookConfig, check_look, region_mask
from styleme3d_ns.render.sh import SH_C0

ENGINE_PACKAGE = "playcanvas"
ENGINE_VERSION = "2.23.3"
"""The engine the page is written against (page.js packs its SH textures and patches one shader line)."""
PAGE_FILES = ("index.html", "style.css", "page.js", "look.js")


@dataclass
class WebScene:
    """What the page shows: one geometry, the base colours, a palette, a look and the training cameras."""

    means: Tensor
    """[N, 3] Gaussian centres (world)."""
    quats: Tensor
    """[N, 4] rotations (w, x, y, z), any norm."""
    log_scales: Tensor
    """[N, 3] log standard deviations."""
    opacities: Tensor
    """[N] opacities in [0, 1]."""
    base: tuple[Tensor, Tensor]
    """The base colours as SH coefficients: (dc [N, 3], rest [N, R, 3]), R = (degree + 1)^2 - 1 (0 at degree 0)."""
    styles: list[tuple[Tensor, Tensor]]
    """Palette entries, as `base` (entry 0 first)."""
    labels: list[str]
    """A name per palette entry."""
    cameras: list[dict]
    """Training views: {"c2w": 3x4 rows (OpenGL axes), "fx", "fy", "cx", "cy", "width", "height"}; the first opens."""
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """RGB in [0, 1] behind the splat, as the run renders it."""
    look: LookConfig = field(default_factory=LookConfig)
    """The look the page opens with."""

    @property
    def sh_degree(self) -> int:
        return round((self.base[1].shape[1] + 1) ** 0.5) - 1

    @classmethod
    @torch.no_grad()
    def from_model(cls, model, cameras) -> WebScene:  # noqa: ANN001 - GuidedSplatModel, nerfstudio Cameras
        """The scene of a loaded stylised model (its public palette API) and its training `cameras`."""
        check_look(model.config.look, model.palette_size)

        def coefficients(dc: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
            if model.config.sh_degree > 0:
                return dc.detach().cpu(), rest.detach().cpu()
            # degree 0 stores sigmoid logits; the look of colours equals the look of their (affine) DC coefficients
            return (torch.sigmoid(dc.detach().cpu()) - 0.5) / SH_C0, torch.zeros(dc.shape[0], 0, 3)

        return cls(
            means=model.means.detach().cpu(),
            quats=model.quats.detach().cpu(),
            log_scales=model.scales.detach().cpu(),
            opacities=torch.sigmoid(model.opacities.detach().cpu()).squeeze(-1),
            base=coefficients(model.base_features_dc, model.base_features_rest),
            styles=[coefficients(*model.palette_entry(k)) for k in range(model.palette_size)],
            labels=list(model.palette_labels()),
            cameras=[camera_json(cameras, i) for i in range(len(cameras))],
            background=[float(v) for v in model.background_color.cpu()],
            look=model.config.look,
        )


def camera_json(cameras, index: int) -> dict:  # noqa: ANN001 - nerfstudio Cameras
    """Pose and intrinsics of `cameras[index]` as scene.json holds them."""
    camera = cameras[index]
    return {
        "c2w": camera.camera_to_worlds.reshape(3, 4).tolist(),
        **{key: float(getattr(camera, key).item()) for key in ("fx", "fy", "cx", "cy")},
        "width": int(camera.width.item()),
        "height": int(camera.height.item()),
    }


def engine_folder() -> Path:
    """PlayCanvas' npm package as scripts/install.sh installs it (beside the venv); one line when it is not there."""
    prefix = Path(os.environ.get("STYLEME3D_NODE_PREFIX", Path(sys.prefix) / "node"))
    folder = prefix / "node_modules" / ENGINE_PACKAGE
    install = f"npm install --prefix {prefix} {ENGINE_PACKAGE}@{ENGINE_VERSION} (or run scripts/install.sh with npm)"
    try:
        version = json.loads((folder / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise UserInputError(f"--web needs PlayCanvas' engine, which is not in {folder}: {install}") from None
    if version != ENGINE_VERSION:
        raise UserInputError(f"--web needs PlayCanvas' engine {ENGINE_VERSION}, {folder} holds {version}: {install}")
    return folder


def check_web_target(folder: Path) -> Path:
    """Raise UserInputError (one line) unless `folder` can become the page's folder and the engine is installed;
    returns the engine's folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserInputError(f"--web {folder} exists and is not an empty folder; give a new folder for the page")
    return engine_folder()


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _write(path: Path, data: bytes | str) -> None:
    """Write and fsync one file of the staging folder (the folder's rename makes the whole export appear)."""
    with open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class WebExportReport:
    """What an export wrote and how long it took."""

    folder: Path
    bytes_total: int
    bytes_geometry: int
    bytes_colours: int
    seconds: float

    def line(self) -> str:
        mb = 1e6
        return (
            f"wrote {self.folder} ({self.bytes_total / mb:.1f} MB: geometry {self.bytes_geometry / mb:.1f} MB, "
            f"colours {self.bytes_colours / mb:.1f} MB) in {self.seconds:.1f} s; "
            f"serve it with: python -m http.server -d {self.folder}"
        )


def _fill(staging: Path, scene: WebScene, codebook_size: int, engine: Path) -> dict:
    """Write every file of the folder into `staging`; returns scene.json's content."""
    count = scene.means.shape[0]
    geometry = SogGeometry(
        means=scene.means.float().numpy(),
        quats=scene.quats.float().numpy(),
        log_scales=scene.log_scales.float().numpy(),
        opacities=scene.opacities.float().numpy(),
        dc=scene.base[0].float().numpy(),
    )
    write_sog(staging / "scene.sog", geometry)
    (staging / "colours").mkdir()
    entries = []
    for name, (dc, rest) in [("base", scene.base), *((f"style-{k}", s) for k, s in enumerate(scene.styles))]:
        quantised = quantise_colours(dc, rest, codebook_size)
        _write(staging / "colours" / f"{name}.bin", quantised.data)
        entries.append({"file": f"colours/{name}.bin", **quantised.meta()})
    mask = region_mask(scene.means, scene.look)
    if mask is not None:
        _write(staging / "region.bin", np.packbits(mask.numpy()).tobytes())
    for name in PAGE_FILES:
        _write(staging / name, (resources.files("styleme3d_ns.apps") / "web" / name).read_bytes())
    shutil.copyfile(engine / "build" / "playcanvas.min.mjs", staging / "playcanvas.min.mjs")
    shutil.copyfile(engine / "LICENSE", staging / "playcanvas.LICENSE")
    look = scene.look
    return {
        "format": "styleme3d-web 1",
        "engine": f"{ENGINE_PACKAGE} {ENGINE_VERSION}",
        "count": count,
        "sh_degree": scene.sh_degree,
        "geometry": "scene.sog",
        "background": scene.background,
        "base": entries[0],
        "styles": entries[1:],
        "labels": scene.labels,
        "look": {
            "style": look.style,
            "strength": look.strength,
            "blend_to": look.blend_to,
            "blend": look.blend,
            "preserve_colour": look.preserve_colour,
        },
        "region": "region.bin" if mask is not None else None,
        "cameras": scene.cameras,
    }


def write_web_folder(scene: WebScene, folder: Path, codebook_size: int = 4096) -> WebExportReport:
    """Write the page's folder `folder` whole or not at all (built beside it, then renamed into place).

    Raises:
        UserInputError: one line when `folder` exists and is not empty (nothing is overwritten), when the engine is
            not installed, or when the folder cannot be written.
    """
    start = time.perf_counter()
    folder = Path(folder)
    engine = check_web_target(folder)
    if len(scene.styles) == 0:
        raise UserInputError("the run has no palette entry to show; --web shares a stylised run")
    with new_folders(folder.parent):
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
        try:
            content = _fill(staging, scene, codebook_size, engine)
            _write(staging / "scene.json", json.dumps(content, indent=1))
            os.chmod(staging, 0o777 & ~_umask())
            os.rename(staging, folder)  # replaces an empty folder of that name, atomically
        except OSError as err:
            cause = write_cause(err, folder.parent) or str(err)
            raise UserInputError(f"cannot write {folder}: {cause}; nothing was written there") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    colours = folder_size(folder / "colours") + ((folder / "region.bin").stat().st_size if content["region"] else 0)
    return WebExportReport(folder, folder_size(folder), (folder / "scene.sog").stat().st_size, colours,
                           time.perf_counter() - start)  # fmt: skip


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
