"""Run one demo stage (a console command) with its output in a log file, showing progress while it runs.

nerfstudio prints training progress as `<step> (<percent>%)` lines; the stage's log is read as it is written and
one status line shows the stage, the step, the elapsed time and an ETA (from the step rate over the last ~20 s),
so a long stage is not minutes of silence. Stages without such lines show the elapsed time.

Where the OS has `fork`, a stage whose command is an installed console script (`ns-train`, `ns-render`,
`styleme3d-eval`) or `python -m <module>` runs in a forked copy of this process instead of a new interpreter: the
entry point's modules (nerfstudio, torch, our methods) are imported once in the parent, about 6 s a stage saved on
2 cores. The child gets its own stdout/stderr (the log), argv and exit status, exactly like a subprocess.
Set `STYLEME3D_STAGE_SUBPROCESS=1` to always start a fresh interpreter. The parent must not run parallel torch work
before forking (an OpenMP thread pool does not survive `fork`); the demos only build their scene with numpy first.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import os
import re
import runpy
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

PROGRESS_LINE = re.compile(r"^\s*(\d+) \((\d+(?:\.\d+)?)%\)")
"""nerfstudio's LocalWriter line: `1490 (99.33%)   244.132 ms ...` (step, then the percentage done)."""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_POLL_S = 0.5
_RATE_WINDOW_S = 20.0
_PLAIN_EVERY_S = 15.0  # without a terminal: one progress line this often


def latest_step(log_tail: str) -> tuple[int, int] | None:
    """The last `(step, total steps)` nerfstudio reported in this piece of log, or None."""
    for line in reversed(log_tail.splitlines()):
        match = PROGRESS_LINE.match(_ANSI.sub("", line.split("\r")[-1]))
        if match and float(match[2]) > 0:
            step = int(match[1])
            return step, round(step * 100 / float(match[2]))
    return None


def _tail(log: Path, size: int = 8192) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class _StatusLine:
    """One progress line: rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.start = time.perf_counter()
        self.tty = sys.stdout.isatty()
        self.last_print = self.start
        self.history: list[tuple[float, int]] = []
        self.shown = False

    def update(self, log: Path) -> None:
        now = time.perf_counter()
        progress = latest_step(_tail(log))
        text = f"[demo]   {self.stage}: {now - self.start:.0f} s"
        if progress is not None:
            step, total = progress
            self.history = [(t, s) for t, s in self.history if now - t <= _RATE_WINDOW_S] + [(now, step)]
            (t0, s0), (t1, s1) = self.history[0], self.history[-1]
            eta = f", ETA {(total - step) * (t1 - t0) / (s1 - s0):.0f} s" if s1 > s0 and t1 > t0 else ""
            text += f", step {step}/{total} ({100 * step / max(total, 1):.0f}%){eta}"
        if self.tty:
            print(f"\r\x1b[2K{text}", end="", flush=True)
            self.shown = True
        elif now - self.last_print >= _PLAIN_EVERY_S:
            print(text, flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.shown:
            print("\r\x1b[2K", end="", flush=True)


def _in_process_target(cmd: list[str]) -> tuple[Callable[[], object], list[str]] | None:
    """The Python callable a command runs and its argv, imported now; None to run it as a subprocess."""
    if os.environ.get("STYLEME3D_STAGE_SUBPROCESS") or not hasattr(os, "fork"):
        return None
    with warnings.catch_warnings():  # import-time deprecation warnings belong in the stage's log, not the demo's
        warnings.simplefilter("ignore")
        return _import_target(cmd)


def _import_target(cmd: list[str]) -> tuple[Callable[[], object], list[str]] | None:
    if len(cmd) >= 3 and cmd[0] == sys.executable and cmd[1] == "-m":
        module = cmd[2]
        importlib.import_module(module)  # the heavy imports happen here, once, in the parent
        return (lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)), [module, *cmd[3:]]
    script = Path(cmd[0])
    if script.parent != Path(sys.executable).parent:
        return None  # not one of this environment's console scripts
    points = importlib.metadata.entry_points(group="console_scripts", name=script.name)
    if len(points) != 1:
        return None
    return next(iter(points)).load(), [str(script), *cmd[1:]]


def _exit_status(err: SystemExit) -> int:
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)  # SystemExit("message"): Python prints it and exits 1
    return 1


def _child(target: Callable[[], object], argv: list[str], log: Path) -> None:
    """In the forked child: output to ``log``, run ``target`` as `argv`, and leave with its exit status."""
    status = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.argv = argv
        target()
        status = 0
    except SystemExit as err:
        status = _exit_status(err)
    except BaseException:  # noqa: BLE001 - reported in the log, like an uncaught exception in a subprocess
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - nothing left to report to
                pass
        os._exit(status)


def run_logged(stage: str, cmd: list[str], log: Path) -> int:
    """Run ``cmd`` with stdout and stderr in ``log`` while showing its progress; returns its exit status."""
    target = _in_process_target(cmd)
    status = _StatusLine(stage)
    if target is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(*target, log)

        def poll() -> int | None:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            return os.waitstatus_to_exitcode(wait_status) if done else None

        def wait() -> None:
            os.waitpid(pid, 0)
    else:
        fh = log.open("w")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        fh.close()
        poll, wait = proc.poll, proc.wait
    try:
        while (code := poll()) is None:
            status.update(log)
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        wait()  # the stage got the same Ctrl-C and stops cleanly on its own; don't leave it behind
        raise
    finally:
        status.close()
    return code
