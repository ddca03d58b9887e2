"""`styleme3d-render`: nerfstudio's `ns-render`, with videos and images written whole or not at all.

nerfstudio 1.1.5's `ns-render` writes its video (mediapy's ffmpeg pipe) and frames straight to their final names. On
a full disk ffmpeg can end without an error, and `ns-render` prints "Render Complete" and exits 0 over a truncated
video; into a read-only folder it fails with a traceback. Its writer sits inside `_render_trajectory_video`, which
offers no seam, so this command, like `styleme3d-export`, runs nerfstudio's render classes unchanged into a private
folder beside the target (same file system) and only then puts the result in place:

- a video is checked whole (ffprobe reads its frames; a full file system is a failed write) and renamed onto its
  name: fsync, rename, fsync of the folder (:func:`styleme3d_ns.core.atomic.atomic_path`);
- frames (`--output-format images`, the `dataset` subcommand) are each renamed into place once all are written.

Same subcommands and options as `ns-render` (camera-path, interpolate, spiral, dataset), plus
`--pipeline.model.look.*` to render another look than the one stored in the run's config.yml. Before the model
loads, the output is checked writable and the run's checkpoint and look are checked
(:mod:`styleme3d_ns.apps.saved_run`). Every failure is one line; nothing partial is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Union

import tyro
from nerfstudio.scripts.render import DatasetRender, RenderCameraPath, RenderInterpolated, SpiralRender
from nerfstudio.utils.rich_utils import CONSOLE

from styleme3d_ns.apps.saved_run import PipelineOverride, opened_run
from styleme3d_ns.core.atomic import (
    OutputWriteError,
    atomic_path,
    check_writable,
    disk_full,
    new_folders,
    write_cause,
)
from styleme3d_ns.core.errors import exit_on_user_error

PROG = "styleme3d-render"
HINT = "free some space or choose another --output-path"


def video_frames(path: Path) -> int | None:
    """Video frames ffprobe reads from `path` (0 when it cannot read the file), None without ffprobe."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    probe = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    words = probe.stdout.strip().split(",")
    return int(words[0]) if probe.returncode == 0 and words[0].isdigit() else 0


def check_video(path: Path, target: Path) -> None:
    """Raise OutputWriteError (naming `target`) unless `path` is a whole video: a file system with no space left
    means a failed write, whatever the writer said; a video ffprobe cannot read is incomplete."""
    full = disk_full(path.parent)
    frames = video_frames(path) if path.is_file() else 0
    if full or frames == 0:
        cause = "disk full" if full else "the video came out incomplete (ffprobe reads no frame)"
        raise OutputWriteError(f"cannot write {target}: {cause}; nothing was written there; {HINT}")


def publish_files(staged: Path, target: Path) -> list[Path]:
    """Rename every file under `staged` to the same place under `target` (folders made as needed); the list of files
    written. Renames within one file system need no space, so once all files are written they all arrive."""
    written = []
    for source in sorted(p for p in staged.rglob("*") if p.is_file()):
        destination = target / source.relative_to(staged)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
        written.append(destination)
    for folder in {p.parent for p in written}:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return written


@contextlib.contextmanager
def quiet_nerfstudio() -> Iterator[None]:
    """Silence nerfstudio's console (its "Render Complete" names our staging folder, before the result is checked);
    the progress bar stays, and this command prints what it wrote once it is in place."""
    quiet = CONSOLE.quiet
    CONSOLE.quiet = True
    try:
        yield
    finally:
        CONSOLE.quiet = quiet


@dataclass
class AtomicRender:
    """What every `styleme3d-render` subcommand adds to nerfstudio's: the look override and the atomic writes."""

    pipeline: PipelineOverride = field(default_factory=PipelineOverride)
    """`--pipeline.model.look.*`: render this look instead of the one in the run's config.yml (unset fields keep it)."""

    def _output(self) -> tuple[Path, str]:
        """(where the result goes, its kind: "video" or "folder") as nerfstudio would write it."""
        output = Path(self.output_path)  # type: ignore[attr-defined]
        if isinstance(self, DatasetRender):
            return output, "folder"
        if getattr(self, "output_format", "video") == "images":
            return output.parent / output.stem, "folder"  # nerfstudio's frames folder
        if isinstance(self, RenderCameraPath) and output.suffix == "":
            output = output.with_suffix(".mp4")  # as RenderCameraPath.main
        return output, "video"

    def main(self) -> None:
        with exit_on_user_error(PROG):
            target, kind = self._output()
            probe = target if kind == "video" else target / "00000.png"
            check_writable(probe, what="render", hint="choose another --output-path")
            with new_folders(target.parent):
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
                try:
                    with opened_run(self.load_config, self.pipeline, staging) as config:  # type: ignore[attr-defined]
                        written = self._render_into(staging, config, target, kind)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        what = f"{len(written)} files under {target}" if kind == "folder" else str(target)
        print(f"{PROG}: wrote {what}")

    def _render_into(self, staging: Path, config: Path, target: Path, kind: str) -> list[Path]:
        """Run nerfstudio's render into `staging`, check it, and put it in place; the files written."""
        name = Path(self.output_path).name if kind == "folder" else target.name  # type: ignore[attr-defined]
        copy = replace(self, load_config=config, output_path=staging / "out" / name)
        if kind == "video":
            with atomic_path(target, hint=HINT) as tmp:
                copy._run_nerfstudio(target)
                check_video(copy.output_path, target)
                os.replace(copy.output_path, tmp)
            return [target]
        copy._run_nerfstudio(target)
        output = copy.output_path
        staged = output if isinstance(self, DatasetRender) else output.parent / output.stem  # nerfstudio's frames
        if disk_full(staging):
            raise OutputWriteError(f"cannot write {target}: disk full; nothing was written there; {HINT}")
        if not staged.is_dir() or not any(p.is_file() for p in staged.rglob("*")):
            raise OutputWriteError(f"cannot write {target}: the render produced no file; nothing was written there")
        return publish_files(staged, target)

    def _run_nerfstudio(self, target: Path) -> None:
        """nerfstudio's own `main` (the render class after AtomicRender in the MRO), writing into the staging folder
        this copy's output path points at; a failed write there is one line naming `target`."""
        try:
            with quiet_nerfstudio():
                super().main()  # type: ignore[misc]
        except (OSError, RuntimeError) as err:
            # PIL/mediapy writing frames (OSError), mediapy's "Error writing" when ffmpeg exits with an error
            if isinstance(err, RuntimeError) and "Error writing" not in str(err):
                raise
            cause = write_cause(err, Path(self.output_path).parent)  # type: ignore[attr-defined]
            if cause is None and isinstance(err, OSError):
                raise
            cause = cause or " ".join(str(err).split())[-200:]
            raise OutputWriteError(f"cannot write {target}: {cause}; nothing was written there; {HINT}") from None


@dataclass
class AtomicRenderCameraPath(AtomicRender, RenderCameraPath):
    """Render a camera path generated by the viewer or blender add-on (as `ns-render camera-path`), atomically."""


@dataclass
class AtomicRenderInterpolated(AtomicRender, RenderInterpolated):
    """Render a trajectory between the run's eval or train cameras (as `ns-render interpolate`), atomically."""


@dataclass
class AtomicSpiralRender(AtomicRender, SpiralRender):
    """Render a spiral trajectory (as `ns-render spiral`), atomically."""


@dataclass
class AtomicDatasetRender(AtomicRender, DatasetRender):
    """Render every image of the run's dataset (as `ns-render dataset`), each file written whole."""


Commands = tyro.conf.FlagConversionOff[
    Union[  # noqa: UP007 - tyro reads subcommands from a typing.Union
        Annotated[AtomicRenderCameraPath, tyro.conf.subcommand(name="camera-path")],
        Annotated[AtomicRenderInterpolated, tyro.conf.subcommand(name="interpolate")],
        Annotated[AtomicSpiralRender, tyro.conf.subcommand(name="spiral")],
        Annotated[AtomicDatasetRender, tyro.conf.subcommand(name="dataset")],
    ]
]


def entrypoint() -> None:
    """Console script `styleme3d-render`."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(Commands).main()


if __name__ == "__main__":
    entrypoint()
