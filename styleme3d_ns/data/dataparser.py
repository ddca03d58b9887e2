"""nerfstudio's own `nerfstudio-data` parser, with the layout checked first.

nerfstudio 1.1.5 answers a missing folder with an `AssertionError` traceback and a missing
`transforms.json` with a `FileNotFoundError` from deep inside its JSON loader. Our methods default to
this subclass, so the user instead gets one line naming the bad path and what should be there.
`--data scene.ply` (or a folder holding one .ply and no transforms.json) is handed to
:mod:`styleme3d_ns.data.ply_scene` with its defaults (`... styleme3d-ply --up-axis +z` sets its options).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.ply_scene import PlySceneDataParserConfig, check_ply_scene, find_splat_ply


def check_nerfstudio_layout(data: Path) -> Path:
    """Return the transforms.json for `data` (a folder or the json itself), or raise a one-line UserInputError."""
    data = Path(data).expanduser()
    if not data.exists():
        raise UserInputError(
            f"data path {data} does not exist; pass --data <folder with transforms.json and images/> "
            "(make a test scene with: styleme3d-make-scene <folder>)"
        )
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not transforms.is_file():
        raise UserInputError(
            f"{data} has no transforms.json; --data must be a nerfstudio dataset (ns-process-data output or "
            "styleme3d-make-scene <folder>)"
        )
    try:
        meta = json.loads(transforms.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{transforms} is not valid JSON ({err}); re-create it with ns-process-data") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise UserInputError(f"{transforms} lists no frames; it must hold a 'frames' list with file_path entries")
    missing = [f.get("file_path") for f in frames if not (transforms.parent / str(f.get("file_path"))).is_file()]
    if missing:
        raise UserInputError(
            f"{len(missing)} image(s) listed in {transforms} are missing, first: {missing[0]}; "
            "file_path entries are relative to the transforms.json folder"
        )
    _check_poses(frames, transforms)
    _check_image_sizes(meta, frames, transforms)
    return transforms


def check_data(data: Path) -> None:
    """Check `--data` as this parser will read it, writing nothing: a splat .ply (read in full by ply_scene's reader,
    with styleme3d-ply's defaults) or a nerfstudio dataset (layout, poses, image sizes). One-line UserInputError on a
    problem."""
    ply = find_splat_ply(data)
    if ply is None:
        check_nerfstudio_layout(data)
    else:
        check_ply_scene(PlySceneDataParserConfig(data=ply))


def _check_poses(frames: list[dict], transforms: Path) -> None:
    """Every frame's `transform_matrix` is a 4x4 (or 3x4) camera-to-world of finite numbers."""
    bad = []
    for frame in frames:
        try:
            matrix = np.asarray(frame.get("transform_matrix"), dtype=np.float64)
        except (TypeError, ValueError):
            matrix = np.empty(0)
        if matrix.shape not in ((4, 4), (3, 4)) or not np.isfinite(matrix).all():
            bad.append(frame.get("file_path"))
    if bad:
        raise UserInputError(
            f"{len(bad)} frame(s) in {transforms} have a missing, malformed or non-finite (NaN/inf) transform_matrix, "
            f"first: {bad[0]}; fix those poses or remove the frames"
        )


def _check_image_sizes(meta: dict, frames: list[dict], transforms: Path) -> None:
    """Each image's pixel size equals the `w`/`h` the frame (or the file) states; images are opened header-only."""
    from PIL import Image

    wrong = []
    for frame in frames:
        stated = (frame.get("w", meta.get("w")), frame.get("h", meta.get("h")))
        if None in stated:
            continue
        path = transforms.parent / str(frame.get("file_path"))
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, SyntaxError, ValueError) as err:
            raise UserInputError(f"image {path} cannot be read ({type(err).__name__}); re-export it") from None
        if size != (int(stated[0]), int(stated[1])):
            wrong.append((frame.get("file_path"), size, stated))
    if wrong:
        name, (w, h), (sw, sh) = wrong[0]
        raise UserInputError(
            f"{len(wrong)} image(s) differ from the size stated in {transforms}, first: {name} is {w}x{h} pixels, "
            f"w/h say {sw}x{sh}; fix w/h (or the images), e.g. re-run ns-process-data"
        )


@dataclass
class CheckedNerfstudioDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio-data with a friendly check of the folder layout before parsing."""

    _target: type = field(default_factory=lambda: CheckedNerfstudio)
    load_3D_points: bool = True
    """Seed the splat from the dataset's point cloud (ply_file_path in transforms.json), as splatfacto does."""


class CheckedNerfstudio(Nerfstudio):
    """`Nerfstudio` data parser that validates the layout first."""

    config: CheckedNerfstudioDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train"):  # noqa: ANN202 - nerfstudio's signature
        with exit_on_user_error():
            ply = find_splat_ply(self.config.data)
            if ply is None:
                check_nerfstudio_layout(self.config.data)
        if ply is not None:  # `--data scene.ply`: a splat with no photos, styleme3d-ply's defaults
            return PlySceneDataParserConfig(data=ply).setup().get_dataparser_outputs(split)
        return super()._generate_dataparser_outputs(split)


styleme3d_data = DataParserSpecification(
    config=CheckedNerfstudioDataParserConfig(),
    description="nerfstudio-data (transforms.json) with a clear error for a missing or malformed folder",
)
