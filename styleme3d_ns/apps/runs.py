"""What the demos share: the console scripts they chain, one logged stage at a time, and the folder they write into.

A demo's output folder is either one it made (a marker file of its own, :data:`MARKER`, says so) or an existing
folder the user handed over with `--overwrite`. Either way only the demo's own named outputs are ever replaced;
nothing else in the folder, and never an input, is touched. Every argument is checked before the folder is.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from styleme3d_ns.apps.stages import run_logged
from styleme3d_ns.core.atomic import write_text_atomic
from styleme3d_ns.core.errors import UserInputError

MARKER = ".styleme3d-demo"
"""File a demo writes into an output folder it made; a non-empty folder without it is never replaced silently."""


EXPORT = [sys.executable, "-m", "styleme3d_ns.apps.export"]
"""`styleme3d-export` (ns-export gaussian-splat, written atomically), run as a module: works before a reinstall."""
RENDER = [sys.executable, "-m", "styleme3d_ns.apps.render"]
"""`styleme3d-render` (ns-render, written atomically), run as a module: works before a reinstall."""


def console_script(name: str) -> str:
    """A console script installed next to this Python (the venv's ns-train etc.), else the bare name."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_stage(stage: str, cmd: list[str], log: Path) -> float:
    """Run one command with its output in `log`; returns its seconds, or exits naming the stage and the log tail."""
    print(f"[demo] {stage}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    returncode = run_logged(stage, cmd, log)  # shows the stage's progress while it runs
    seconds = time.perf_counter() - start
    if returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"[demo] {stage} failed (exit {returncode}); log {log}:\n{tail}")
    print(f"[demo]   done in {seconds:.0f} s (log: {log})", flush=True)
    return seconds


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class DemoOutput:
    """The folder a demo writes into, and the only entries of it the demo may replace.

    Args:
        path: `--output-dir`.
        outputs: Names (glob patterns) the demo writes at the top of the folder, e.g. `("runs", "log_*.txt")`.
        overwrite: `--overwrite`: adopt a non-empty folder the demo did not make (its own outputs are replaced).
        prog: The command's name, for the marker and messages.
    """

    def __init__(self, path: Path, outputs: Iterable[str], *, overwrite: bool, prog: str) -> None:
        self.path = Path(path).expanduser().absolute()
        self.outputs = tuple(outputs)
        self.overwrite = overwrite
        self.prog = prog

    def previous_outputs(self) -> list[Path]:
        """Entries of the folder that this demo writes (and so replaces), by name."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in self.outputs))

    def check(self, inputs: dict[str, Path | None]) -> None:
        """Refuse, with one line, a folder the demo may not use, or an input it would replace. Touches nothing.

        `inputs` maps each option (e.g. "--style") to the file it names (None when not given).
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserInputError(f"--output-dir {out} is a file; pass a folder")
        for flag, given in inputs.items():
            if given is None:
                continue
            given = Path(given).expanduser().absolute()
            if _inside(out, given):
                raise UserInputError(f"--output-dir {out} lies inside {flag} {given}; choose another --output-dir")
            for entry in self.previous_outputs():
                if _inside(given, entry):
                    raise UserInputError(
                        f"{flag} {given} lies inside {entry}, which {self.prog} replaces; move it or choose "
                        "another --output-dir"
                    )
        ours = (out / MARKER).is_file()
        if out.is_dir() and any(out.iterdir()) and not ours and not self.overwrite:
            raise UserInputError(
                f"--output-dir {out} is not empty and was not made by {self.prog}; choose a new or empty folder, "
                f"or pass --overwrite to write into it (only {self.prog}'s own outputs there are replaced)"
            )

    def prepare(self) -> Path:
        """Remove the demo's previous outputs, create the folder if needed and mark it as the demo's; returns it."""
        for entry in self.previous_outputs():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if made or not any(self.path.iterdir()):
            write_text_atomic(self.path / MARKER, f"made by {self.prog}; its outputs here are replaced on re-runs\n")
        return self.path
