"""`styleme3d-turntable`: a 360-degree camera path around a run's subject, for `ns-render camera-path`.

nerfstudio's `ns-render interpolate` needs several training cameras and follows them; a portrait run has one, and a
scene capture rarely circles its subject evenly. This writes nerfstudio's camera-path JSON for an even orbit:

- portrait runs (sas-portrait): the data parser's camera rig, circling the head at the photo's distance and field of
  view (paper 001 IV.C scores 120 views "around the circle");
- scene runs: the orbit around the point the training cameras look at (:func:`styleme3d_ns.eval.orbit.orbit_poses`).

With ``--video turntable.mp4`` it then runs `styleme3d-render camera-path` (an atomic `ns-render camera-path`) itself.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError, exit_on_user_error

TURNTABLE_VIEWS = 120
"""Paper 001 IV.C: 120 renders around the circle."""


@dataclass
class TurntableConfig:
    """Write a 360-degree camera path around a run's subject (and optionally render it)."""

    load_config: Path
    """config.yml of a finished ns-train run."""
    output: Path = Path("turntable.json")
    """Camera-path JSON to write (nerfstudio's format, for `ns-render camera-path --camera-path-filename`)."""
    views: int = TURNTABLE_VIEWS
    """Frames around the circle (paper 001: 120)."""
    seconds: float = 8.0
    """Duration of the video (120 views over 8 s is 15 fps)."""
    video: Path | None = None
    """If set, also run `styleme3d-render camera-path` (ns-render, written atomically) and write this video (mp4)."""


def camera_path(poses: Tensor, fov_deg: float, width: int, height: int, seconds: float) -> dict[str, Any]:
    """nerfstudio's camera-path dict for c2w `poses` `[N, 3, 4]` (OpenGL) with vertical field of view `fov_deg`."""
    frames = []
    for pose in poses:
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3] = pose.double()
        frames.append({"camera_to_world": c2w.flatten().tolist(), "fov": fov_deg, "aspect": width / height})
    return {
        "camera_type": "perspective",
        "render_height": height,
        "render_width": width,
        "seconds": seconds,
        "fps": len(frames) / seconds,
        "camera_path": frames,
    }


def turntable_for_run(config_path: Path, views: int, seconds: float) -> dict[str, Any]:
    """The turntable camera path of the run whose config.yml is `config_path`."""
    import yaml

    from styleme3d_ns.data.portrait import PortraitDataParserConfig, PortraitRig

    if not Path(config_path).is_file():
        raise UserInputError(f"run config {config_path} does not exist; pass the config.yml of a finished ns-train run")
    run = yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    parser = run.pipeline.datamanager.dataparser
    if isinstance(parser, PortraitDataParserConfig):
        rig = PortraitRig(parser.image_size, parser.fov_deg, parser.camera_radius, tuple(parser.elevation_range_deg))
        poses = rig.turntable(views).camera_to_worlds
        return camera_path(poses, rig.fov_deg, rig.image_size, rig.image_size, seconds)
    from styleme3d_ns.eval.orbit import orbit_poses
    from styleme3d_ns.eval.render import CameraPool, load_pipeline

    _, pipeline = load_pipeline(config_path)
    pool = CameraPool.from_pipeline(pipeline)
    template = pool[0]
    height, width = int(template.height.item()), int(template.width.item())
    fov = float(2 * torch.rad2deg(torch.atan(0.5 * height / template.fy.reshape(-1)[0])))
    return camera_path(orbit_poses(pool.camera_to_worlds(), views), fov, width, height, seconds)


def main(config: TurntableConfig) -> Path:
    """Write the camera path (atomically) and, with ``--video``, render it (styleme3d-render); returns the JSON path."""
    from styleme3d_ns.core.atomic import write_json_atomic

    if config.views < 2:
        raise UserInputError(f"--views {config.views}: a turntable needs at least 2 views")
    path = write_json_atomic(config.output, turntable_for_run(config.load_config, config.views, config.seconds))
    print(f"turntable camera path ({config.views} views): {path}")
    if config.video is not None:
        # styleme3d-render: ns-render with the video written whole or not at all (run as a module, not imported:
        # it lives in a higher layer, and a module works before a reinstall)
        command = [sys.executable, "-m", "styleme3d_ns.apps.render", "camera-path",
                   "--load-config", str(config.load_config), "--camera-path-filename", str(path),
                   "--output-path", str(config.video)]  # fmt: skip
        if subprocess.run(command, check=False).returncode != 0:
            raise UserInputError(f"styleme3d-render camera-path failed for {config.load_config}; see its line above")
        print(f"turntable video: {config.video}")
    return path


def entrypoint() -> None:
    """`styleme3d-turntable` console script."""
    with exit_on_user_error():
        main(tyro.cli(TurntableConfig))
