"""Running jobs on Ray: an embedded local Ray by default, or an existing cluster (`--address auto|host:port|ray://`).

Each job is one Ray task that reserves `cpus_per_job` CPUs (clamped to the largest node, so 2 cores run one job at
a time) and, on a cluster with GPUs, one GPU; Ray sets CUDA_VISIBLE_DEVICES for it. A stylisation of a dataset
scene takes its reconstruction's result as an argument, so Ray starts it only once that base has finished (and the
waiting job holds no CPU). Ray is imported here only, when jobs are about to run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from styleme3d_ns.batch.jobs import Job, JobResult
from styleme3d_ns.batch.worker import run_job
from styleme3d_ns.core.errors import UserInputError

RAY_MISSING = "Ray is not installed, and styleme3d-batch runs its jobs on Ray: pip install -e .[batch]"


@dataclass(frozen=True)
class RayOptions:
    """Where and how jobs run."""

    address: str | None = None
    """None: start an embedded local Ray; "auto", "host:port" or "ray://host:10001": join that cluster."""
    num_cpus: int | None = None
    """CPUs of the embedded Ray (default: all of this machine's)."""
    cpus_per_job: int = 2
    """CPUs each job reserves (and its torch threads); clamped to the largest node."""
    gpus_per_job: float | None = None
    """GPUs each job reserves (default: 1 when the cluster has GPUs, else 0)."""


def import_ray() -> Any:
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserInputError(RAY_MISSING) from None
    return ray


def connect(ray: Any, options: RayOptions) -> str:
    """Start or join Ray; a one-line description of what it joined."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-report prompt or upload from a batch
    # job output goes to each job's logs; Ray's own notices would bury the progress lines
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if options.address is None:
        cpus = options.num_cpus or os.cpu_count() or 1
        try:
            ray.init(num_cpus=cpus, **common)
        except Exception as err:  # noqa: BLE001 - whatever stops Ray starting is one line for the user
            raise UserInputError(f"could not start an embedded Ray: {_first_line(err)}; see docs/batch.md") from None
        return f"embedded local Ray ({cpus} CPUs)"
    common.pop("include_dashboard")  # a cluster's dashboard is its own business
    try:
        ray.init(address=options.address, **common)
    except Exception as err:  # noqa: BLE001 - connection, address and authentication errors all mean the same here
        raise UserInputError(
            f"cannot join the Ray cluster at --address {options.address}: {_first_line(err)}; start it with "
            "`ray start --head` (docs/batch.md)"
        ) from None
    return f"Ray cluster at {options.address}"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def job_resources(ray: Any, options: RayOptions) -> tuple[int, float]:
    """(CPUs, GPUs) each job reserves on this cluster."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=1)
    cpus = max(1, min(options.cpus_per_job, largest))
    if options.gpus_per_job is not None:
        return cpus, options.gpus_per_job
    has_gpu = any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)
    return cpus, 1.0 if has_gpu else 0.0


def _ray_failure(job: Job, err: Exception) -> JobResult:
    """A task that did not return (its worker died, or its base's did) as a failed job with one line."""
    text = str(err).strip().splitlines()
    detail = next((line for line in reversed(text) if line.strip()), type(err).__name__)
    return JobResult(job.id, "failed", f"Ray could not finish it: {type(err).__name__}: {detail[:200]}")


def run_on_ray(
    jobs: list[Job],
    finished: dict[str, JobResult],
    options: RayOptions,
    on_result: Callable[[JobResult], None],
    on_start: Callable[[str, int, float], None] | None = None,
) -> dict[str, JobResult]:
    """Run `jobs` (bases before the stylisations that need them) and return each one's result.

    Args:
        jobs: the jobs still to do, in plan order.
        finished: results of jobs already finished (their bases are handed over as these results).
        options: where and how to run.
        on_result: called with each result as it arrives (progress, logs).
        on_start: called once Ray is up with (what it joined, CPUs per job, GPUs per job).
    """
    ray = import_ray()
    before = signal.getsignal(signal.SIGTERM)
    where = connect(ray, options)
    stop_on_sigterm()  # after ray.init, which installs its own handlers (a native stack dump, then exit 1)
    try:
        cpus, gpus = job_resources(ray, options)
        if on_start is not None:
            on_start(where, cpus, gpus)
        task = ray.remote(run_job).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        refs: dict[str, Any] = {}
        for job in jobs:
            base = None
            if job.base_job is not None:  # the base's pending result (Ray waits for it) or its earlier result
                base = refs[job.base_job] if job.base_job in refs else finished.get(job.base_job)
            refs[job.id] = task.remote(job, base, cpus)
        return _collect(ray, jobs, refs, on_result)
    finally:
        ray.shutdown()  # its workers die, and with them their trainers (parent-death signal)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


class Stopped(KeyboardInterrupt):
    """The batch was asked to stop by a signal (SIGTERM); it unwinds like Ctrl-C: Ray shuts down, finished jobs stay."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_STOP_SIGNALS: list[int] = []
"""Signals :func:`stop_on_sigterm`'s handler received in this process (Ray's wait/get, interrupted inside their
native code, re-raise a plain KeyboardInterrupt, so the signal is kept here too)."""


def stop_signal(error: BaseException) -> int:
    """The signal that stopped the batch with `error` (a KeyboardInterrupt): SIGTERM if our handler saw one."""
    return getattr(error, "signum", None) or (_STOP_SIGNALS[-1] if _STOP_SIGNALS else signal.SIGINT)


def stop_on_sigterm(reset: bool = False) -> None:
    """Make SIGTERM raise :class:`Stopped` in the main thread (a no-op elsewhere, where signals cannot be caught);
    `reset` forgets the signals received before (a new batch in this process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if reset:
        _STOP_SIGNALS.clear()

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
        _STOP_SIGNALS.append(signum)
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, handler)


def _collect(ray: Any, jobs: list[Job], refs: dict[str, Any], on_result: Callable[[JobResult], None]):  # noqa: ANN202
    by_ref = {refs[job.id]: job for job in jobs}
    results: dict[str, JobResult] = {}
    pending = list(by_ref)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            job = by_ref[ref]
            try:
                result = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - any Ray-level failure is this job's failure
                result = _ray_failure(job, err)
            results[job.id] = result
            on_result(result)
    return results
