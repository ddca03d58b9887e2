"""`styleme3d-export`: nerfstudio's `ns-export gaussian-splat`, with the .ply written whole or not at all.

nerfstudio 1.1.5's exporter opens `<output-dir>/splat.ply` and writes it value by value, so a full disk or Ctrl-C
leaves a truncated file under the final name. It offers no seam: `ExportGaussianSplat.main` calls
`ExportGaussianSplat.write_ply` by class name, so a subclass cannot redirect the write. This command therefore runs
nerfstudio's exporter unchanged into a private folder beside the target (same file system), then fsyncs and renames
the finished file onto the final name. Same options as `ns-export gaussian-splat`, plus `--format ply|splat|spz|sog`
(data/splat_formats.py: `.splat` written here, `.spz`/`.sog` by PlayCanvas' splat-transform, whose absence is one line
before the model loads); the output folder is checked before the model loads too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import tyro
from nerfstudio.scripts.exporter import ExportGaussianSplat

from styleme3d_ns.core.atomic import atomic_path, check_writable, new_folders
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.splat_formats import (
    INSTALL_HINT,
    OUTPUT_SUFFIXES,
    OutputFormat,
    encode_splat,
    splat_transform_tool,
)

PROG = "styleme3d-export"


@dataclass
class AtomicExportGaussianSplat(ExportGaussianSplat):
    """Export a run's 3D Gaussian splat to a .ply (as `ns-export gaussian-splat`), written whole or not at all."""

    format: OutputFormat = "ply"
    """File format: ply (3DGS, every SH band), splat (antimatter15: positions, scales, rotations, DC colour and
    opacity in 32 bytes), spz (Niantic, compressed) or sog (PlayCanvas SuperSplat, compressed). The file is named
    --output-filename with this format's suffix."""

    def main(self) -> None:
        with exit_on_user_error(PROG):
            target = Path(self.output_dir) / Path(self.output_filename).with_suffix(OUTPUT_SUFFIXES[self.format]).name
            check_writable(target, what="export", hint="choose another --output-dir")
            if self.format in ("spz", "sog") and splat_transform_tool() is None:
                raise UserInputError(f"--format {self.format} needs PlayCanvas' splat-transform; {INSTALL_HINT}")
            with new_folders(target.parent):
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
                try:
                    ply_name = Path(self.output_filename).with_suffix(".ply").name
                    with atomic_path(target, hint="choose another --output-dir") as tmp:
                        ExportGaussianSplat.main(replace(self, output_dir=staging, output_filename=ply_name))
                        if self.format == "ply":
                            os.replace(staging / ply_name, tmp)
                        else:
                            encode_splat(staging / ply_name, tmp, self.format)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        print(f"{PROG}: wrote {target}")


def entrypoint() -> None:
    """Console script `styleme3d-export`."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(tyro.conf.FlagConversionOff[AtomicExportGaussianSplat]).main()


if __name__ == "__main__":
    entrypoint()
