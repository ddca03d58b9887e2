"""`styleme3d-export`: nerfstudio's `ns-export gaussian-splat`, with the .ply written whole or not at all, and
`--web DIR`: the run as a static web page with its palette and look controls (apps/web_export.py, docs/web.md).

nerfstudio 1.1.5's exporter opens `<output-dir>/splat.ply` and writes it value by value, so a full disk or Ctrl-C
leaves a truncated file under the final name. It offers no seam: `ExportGaussianSplat.main` calls
`ExportGaussianSplat.write_ply` by class name, so a subclass cannot redirect the write. This command therefore runs
nerfstudio's exporter unchanged into a private folder beside the target (same file system), then fsyncs and renames
the finished file onto the final name. Same options as `ns-export gaussian-splat`, plus `--format ply|splat|spz|sog`
(data/splat_formats.py: `.splat` written here, `.spz`/`.sog` by PlayCanvas' splat-transform, whose absence is one line
before the model loads). The output folder is checked before the model loads, and so are the run's checkpoint (whole,
not truncated) and look; `--pipeline.model.look.*` exports another look than the one stored in the run's config.yml
(:mod:`styleme3d_ns.apps.saved_run`). `--web` writes the run as a static web page folder instead of (or beside) it.

    styleme3d-export --load-config outputs/.../config.yml --output-dir exports/     # the look as splat.ply
    styleme3d-export --load-config outputs/.../config.yml --web page/                # the web page folder
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import tyro
from nerfstudio.scripts.exporter import ExportGaussianSplat

from styleme3d_ns.apps.saved_run import PipelineOverride, opened_run
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
    """Export a run's 3D Gaussian splat to a .ply (as `ns-export gaussian-splat`), written whole or not at all, with
    the run's look or the one `--pipeline.model.look.*` sets, and/or the run as a web page folder (--web)."""

    output_dir: Path | None = None  # type: ignore[assignment]
    """Folder for the .ply (needed unless --web is given)."""
    pipeline: PipelineOverride = field(default_factory=PipelineOverride)
    """`--pipeline.model.look.*`: export this look instead of the one in the run's config.yml (unset fields keep it);
    the web page opens at it."""
    web: Path | None = None
    """Write the run as a static web page into this new folder: geometry, base colours, one colour set per palette
    entry, the page and its splat renderer; serve it with `python -m http.server -d WEB` (docs/web.md)."""
    web_codebook: int = 4096
    """Codebook entries for each colour set's higher SH bands on the page, for runs of more than 65536 Gaussians
    (smaller ones keep every vector); at most 65536: more is closer, larger and slower to export."""

    format: OutputFormat = "ply"
    """File format: ply (3DGS, every SH band), splat (antimatter15: positions, scales, rotations, DC colour and
    opacity in 32 bytes), spz (Niantic, compressed) or sog (PlayCanvas SuperSplat, compressed). The file is named
    --output-filename with this format's suffix."""

    def main(self) -> None:
        with exit_on_user_error(PROG):
            if self.web is None and self.output_dir is None:
                raise UserInputError("give --output-dir for the splat file, --web for a web page folder, or both")
            if not 1 <= self.web_codebook <= 65536:
                raise UserInputError(f"--web-codebook {self.web_codebook} is not in 1..65536; 4096 is the default")
            if self.output_dir is not None and self.format in ("spz", "sog") and splat_transform_tool() is None:
                raise UserInputError(f"--format {self.format} needs PlayCanvas' splat-transform; {INSTALL_HINT}")
            if self.web is not None:
                self._export_web()
            if self.output_dir is not None:
                self._export_splat()

    def _export_web(self) -> None:
        from styleme3d_ns.apps.web_export import WebScene, check_web_target, write_web_folder
        from styleme3d_ns.eval.render import load_pipeline

        check_web_target(self.web)  # one line now, not after the model has loaded
        with tempfile.TemporaryDirectory(prefix=".styleme3d-web-") as staging:
            with opened_run(self.load_config, self.pipeline, Path(staging)) as config:
                _, pipeline = load_pipeline(config)
            scene = WebScene.from_model(pipeline.model, pipeline.datamanager.train_dataset.cameras)
        print(f"{PROG}: {write_web_folder(scene, self.web, self.web_codebook).line()}")

    def _export_splat(self) -> None:
        """nerfstudio's .ply into a private folder, converted to `--format`, renamed onto the target."""
        target = Path(self.output_dir) / Path(self.output_filename).with_suffix(OUTPUT_SUFFIXES[self.format]).name
        check_writable(target, what="export", hint="choose another --output-dir")
        with new_folders(target.parent):
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
            try:
                ply_name = Path(self.output_filename).with_suffix(".ply").name
                with (
                    opened_run(self.load_config, self.pipeline, staging) as config,
                    atomic_path(target, hint="choose another --output-dir") as tmp,
                ):
                    export = replace(self, output_dir=staging, load_config=config, output_filename=ply_name)
                    ExportGaussianSplat.main(export)
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
