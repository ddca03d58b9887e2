"""One job, run where Ray placed it: `ns-train`, then `styleme3d-eval`, each a subprocess with its own log.

A crash, a bad input or an out-of-memory kill in a job is that job's failure with a one-line reason; the worker
itself never raises for it. The job's folder is cleared only when it holds our marker (a run this batch started
and did not finish); a folder someone else made is never touched. Programs are taken from the worker's own
environment, so a cluster node uses its own install.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from styleme3d_ns.batch.jobs import Job, JobResult, is_trained, read_marker
from styleme3d_ns.core.atomic import write_text_atomic

_ERROR_LINE = re.compile(r"(error:|Error\b|Exception\b|Killed|out of memory)", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _program(name: str) -> str:
    """A console script next to this Python (the install's ns-train), else whatever PATH finds."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _libc_prctl():  # noqa: ANN202 - a ctypes function, or None off Linux
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # resolved here, never between fork and exec
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the job's process gets SIGKILL when the Ray worker that started it dies (a killed batch leaves no
    orphan trainer behind). Runs in the child between fork and exec, so it only calls the pre-resolved prctl."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def failure_reason(log: Path, returncode: int) -> str:
    """The last error-looking line of a log (nerfstudio, our one-line errors, Python's last traceback line)."""
    try:
        lines = [_ANSI.sub("", line).strip() for line in log.read_text(errors="replace").splitlines()[-200:]]
    except OSError:
        lines = []
    found = next((line for line in reversed(lines) if line and _ERROR_LINE.search(line)), None)
    if found is None:
        found = f"exit status {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    return f"{found[:500]} (log: {log})"


def _run(argv: tuple[str, ...], log: Path, threads: int) -> int:
    """Run `argv` with stdout+stderr into `log`; the return code."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        fh.write(shlex.join(argv) + "\n")
        fh.flush()
        cmd = [_program(argv[0]), *argv[1:]]
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent).returncode


def _fresh_folder(job: Job) -> str | None:
    """Make the job's folder ready for a first (or repeated) training attempt; a reason when it is not ours."""
    if job.run_dir.exists():
        if read_marker(job) is not None:
            shutil.rmtree(job.run_dir)  # our own unfinished attempt: a clean restart, its logs and cost not mixed in
        elif any(job.run_dir.iterdir()):
            return f"{job.run_dir} exists and was not made by styleme3d-batch; move it away (it is left untouched)"
    job.run_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(job, {"made_by": "styleme3d-batch", "job": job.id, "train": list(job.train)})
    return None


def _write_marker(job: Job, content: dict) -> None:
    write_text_atomic(job.marker, json.dumps(content, indent=2) + "\n")


def _node() -> str | None:
    """The Ray node running this job; None outside Ray (Ray is never imported just to ask)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def run_job(job: Job, base: JobResult | None = None, threads: int = 1) -> JobResult:
    """Train (unless already trained) and score `job`; never raises for the job's own failure.

    Args:
        job: the job to run.
        base: the result of the reconstruction it starts from (None when its base is given).
        threads: CPU threads its processes may use (the cores Ray reserved for it).
    """
    start = time.perf_counter()

    def result(status: str, reason: str | None = None) -> JobResult:
        return JobResult(job.id, status, reason, time.perf_counter() - start, _node())  # type: ignore[arg-type]

    if base is not None and base.status == "failed":
        return result("failed", f"its base {base.job_id} failed: {base.reason}")
    if not is_trained(job):
        reason = _fresh_folder(job)
        if reason is not None:
            return result("failed", reason)
        code = _run(job.train, job.run_dir / "train.log", threads)
        checkpoints = sorted((job.run_dir / "nerfstudio_models").glob("step-*.ckpt"))
        if code != 0 or not checkpoints:
            return result("failed", failure_reason(job.run_dir / "train.log", code))
        marker = {**(read_marker(job) or {}), "checkpoint": checkpoints[-1].name,
                  "train_seconds": time.perf_counter() - start}  # fmt: skip
        _write_marker(job, marker)
    if job.evaluate is not None:
        eval_start = time.perf_counter()
        job.metrics.unlink(missing_ok=True)  # ours, from an earlier eval command: never mistaken for this one's
        code = _run(job.evaluate, job.run_dir / "eval.log", threads)
        if code != 0 or not job.metrics.is_file():
            return result("failed", failure_reason(job.run_dir / "eval.log", code))
        marker = {**(read_marker(job) or {}), "evaluated": list(job.evaluate),
                  "eval_seconds": time.perf_counter() - eval_start}  # fmt: skip
        _write_marker(job, marker)
    return result("done")
