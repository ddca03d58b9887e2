"""nerfstudio's own `nerfstudio-data` parser, with the layout checked first.

nerfstudio 1.1.5 answers a missing folder with an `AssertionError` traceback and a missing
`transforms.json` with a `FileNotFoundError` from deep inside its JSON loader. Our methods default to
this subclass, so the user instead gets one line naming the bad path and what should be there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from styleme3d_ns.errors import UserInputError, exit_on_user_error


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
    return transforms


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
            check_nerfstudio_layout(self.config.data)
        return super()._generate_dataparser_outputs(split)


styleme3d_data = DataParserSpecification(
    config=CheckedNerfstudioDataParserConfig(),
    description="nerfstudio-data (transforms.json) with a clear error for a missing or malformed folder",
)
