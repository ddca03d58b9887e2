"""`styleme3d-export`: nerfstudio's `ns-export gaussian-splat`, with the .ply written whole or not at all.

nerfstudio 1.1.5's exporter opens `<output-dir>/splat.ply` and writes it value by value, so a full disk or Ctrl-C
leaves a truncated file under the final name. It offers no seam: `ExportGaussianSplat.main` calls
`ExportGaussianSplat.write_ply` by class name, so a subclass cannot redirect the write. This command therefore runs
nerfstudio's exporter unchanged into a private folder beside the target (same file system), then fsyncs and renames
the finished file onto the final name. Same options as `ns-export gaussian-splat`; the output folder is checked
before the model loads, and so are the run's checkpoint (whole, not truncated) and look; `--pipeline.model.look.*`
exports another look than the one stored in the run's config.yml (:mod:`styleme3d_ns.apps.saved_run`).
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
from styleme3d_ns.core.errors import exit_on_user_error

PROG = "styleme3d-export"


@dataclass
class AtomicExportGaussianSplat(ExportGaussianSplat):
    """Export a run's 3D Gaussian splat to a .ply (as `ns-export gaussian-splat`), written whole or not at all, with
    the run's look or the one `--pipeline.model.look.*` sets."""

    pipeline: PipelineOverride = field(default_factory=PipelineOverride)
    """`--pipeline.model.look.*`: export this look instead of the one in the run's config.yml (unset fields keep it)."""

    def main(self) -> None:
        with exit_on_user_error(PROG):
            target = Path(self.output_dir) / self.output_filename
            check_writable(target, what="export", hint="choose another --output-dir")
            with new_folders(target.parent):
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
                try:
                    with (
                        opened_run(self.load_config, self.pipeline, staging) as config,
                        atomic_path(target, hint="choose another --output-dir") as tmp,
                    ):
                        ExportGaussianSplat.main(replace(self, output_dir=staging, load_config=config))
                        os.replace(staging / self.output_filename, tmp)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        print(f"{PROG}: wrote {target}")


def entrypoint() -> None:
    """Console script `styleme3d-export`."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(tyro.conf.FlagConversionOff[AtomicExportGaussianSplat]).main()


if __name__ == "__main__":
    entrypoint()
