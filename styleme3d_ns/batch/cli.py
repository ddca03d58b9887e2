"""`styleme3d-batch GRID.yaml`: every (scene, style, method) of a grid as ns-train + styleme3d-eval jobs on Ray.

    styleme3d-batch grid.yaml                      # embedded local Ray, all of this machine's cores
    styleme3d-batch grid.yaml --address auto       # an existing cluster (`ray start --head` on its head node)

Finished jobs are skipped, so rerunning (after a kill, a failure or an added style) does only what is missing.
Writes results.csv, results.json and one contact sheet per method into the grid's output folder (docs/batch.md);
with --web, also a web page per stylised run (`<run>/web`, docs/web.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from styleme3d_ns.batch.contact_sheet import write_contact_sheets
from styleme3d_ns.batch.grid import Grid, load_grid
from styleme3d_ns.batch.jobs import Job, JobResult, is_finished, plan_jobs
from styleme3d_ns.batch.results import write_results
from styleme3d_ns.batch.runner import RayOptions, run_on_ray, stop_on_sigterm, stop_signal
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error

CONSOLE = Console()


@dataclass
class BatchConfig:
    """Stylise every scene of a grid with every style and method: one ns-train + styleme3d-eval job each, on Ray.

    Jobs whose run folder already holds a finished checkpoint and metrics are skipped; failures are listed at the
    end and do not stop the others. See docs/batch.md for the GRID.yaml layout.
    """

    grid: tyro.conf.Positional[Path]
    """GRID.yaml: scenes, styles, methods (and steps, options) to cross."""
    output_dir: Path | None = None
    """Where runs, results.csv/json and the contact sheets go (default: the grid's output_dir, else
    <grid stem>_out beside the grid file)."""
    address: str | None = None
    """Ray cluster to run on: "auto" (the cluster `ray start` made on this machine), "host:port", or
    "ray://host:10001" (Ray Client). Default: an embedded Ray on this machine. The output folder, scenes and styles
    must be at the same paths on every node (a shared file system)."""
    cpus_per_job: int = 2
    """CPUs each job reserves, and its torch threads (clamped to the largest node: on 2 cores one job at a time)."""
    gpus_per_job: float | None = None
    """GPUs each job reserves (default: 1 when the cluster has GPUs, else 0)."""
    num_cpus: int | None = None
    """CPUs of the embedded Ray (default: all of this machine's). Ignored with --address."""
    dry_run: bool = False
    """List the jobs, their commands and which are finished; run nothing."""
    web: bool = False
    """Also share each stylised run as a web page: `styleme3d-export --web <run folder>/web` (docs/web.md), for runs
    that have none yet."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder: two batches writing the same runs would race (a killed batch's
    lock goes with its process)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".styleme3d-batch.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                f"another styleme3d-batch is running on {out}; wait for it or pass another --output-dir"
            ) from None
        yield


def _describe(result: JobResult) -> str:
    if result.status == "failed":
        return f"[red]failed[/red] {result.job_id}: {result.reason}"
    return f"[green]done[/green]   {result.job_id} ({result.seconds:.0f} s)"


def _print_plan(jobs: list[Job], notes: list[str], finished: set[str]) -> None:
    bases = sum(j.kind == "base" for j in jobs)
    CONSOLE.print(
        f"{len(jobs)} jobs ({bases} reconstruction{'s' * (bases != 1)}, {len(jobs) - bases} stylisations): "
        f"{len(finished)} already finished, {len(jobs) - len(finished)} to run"
    )
    for note in notes:
        CONSOLE.print(f"  {note}", highlight=False, soft_wrap=True)


def _dry_run(jobs: list[Job], finished: set[str]) -> None:
    for job in jobs:
        CONSOLE.print(f"{'finished' if job.id in finished else 'to run'}: {job.id} -> {job.run_dir}", highlight=False)
        CONSOLE.print(f"    {shlex.join(job.train)}", highlight=False, soft_wrap=True)
        if job.evaluate is not None:
            CONSOLE.print(f"    {shlex.join(job.evaluate)}", highlight=False, soft_wrap=True)


def _run(todo: list[Job], results: dict[str, JobResult], config: BatchConfig) -> None:
    """Run `todo` on Ray with a progress bar, adding each result to `results` as it arrives."""
    options = RayOptions(config.address, config.num_cpus, config.cpus_per_job, config.gpus_per_job)
    columns = (TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE) as progress:
        bar = progress.add_task("jobs", total=len(todo))

        def started(where: str, cpus: int, gpus: float) -> None:
            progress.console.print(
                f"running on {where}: {cpus} CPUs" + (f", {gpus:g} GPU" if gpus else "") + " per job"
            )

        def arrived(result: JobResult) -> None:
            results[result.job_id] = result
            progress.console.print(_describe(result), highlight=False)
            progress.advance(bar)

        run_on_ray(todo, dict(results), options, arrived, started)


def _write_pages(jobs: list[Job], results: dict[str, JobResult]) -> None:
    """`styleme3d-export --web` for every finished stylisation without a page yet (one process each, as a user
    would run it); a failure is reported in one line and does not stop the others."""
    for job in jobs:
        page = job.run_dir / "web"
        result = results.get(job.id)
        if job.kind != "stylise" or result is None or result.status == "failed" or page.exists():
            continue
        cmd = [sys.executable, "-m", "styleme3d_ns.apps.export", "--load-config", str(job.run_dir / "config.yml"),
               "--web", str(page)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        lines = (done.stdout if done.returncode == 0 else done.stderr).strip().splitlines() or ["(no output)"]
        verb = "page" if done.returncode == 0 else "page failed"
        CONSOLE.print(f"{verb} {job.id}: {lines[-1]}", highlight=False, soft_wrap=True)


def _finish(grid: Grid, jobs: list[Job], results: dict[str, JobResult]) -> int:
    """Write results and sheets, list failures; the exit status (1 when any job failed)."""
    sheets = write_contact_sheets(grid, jobs, results)
    csv_path, json_path = write_results(grid.output_dir, grid.path, jobs, results, sheets)
    counts = {s: sum(r.status == s for r in results.values()) for s in ("done", "skipped", "failed")}
    CONSOLE.print(f"{counts['done']} done, {counts['skipped']} skipped (already finished), {counts['failed']} failed")
    failed = [r for r in results.values() if r.status == "failed"]
    for result in failed:
        CONSOLE.print(f"  failed {result.job_id}: {result.reason}", highlight=False, soft_wrap=True)
    if failed:
        CONSOLE.print("rerun the same command to retry them (finished jobs are skipped)")
    CONSOLE.print(f"results: {csv_path}\n         {json_path}", highlight=False)
    for sheet in sheets:
        CONSOLE.print(f"sheet:   {sheet}", highlight=False)
    return 1 if failed else 0


def main(config: BatchConfig) -> int:
    """Plan, run what is missing, write results; the exit status. Ctrl-C or SIGTERM end it with one line saying what
    finished and how to resume (status 128 + the signal)."""
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm(reset=True)  # from here on SIGTERM ends the batch as Ctrl-C does
    todo: list[Job] = []
    results: dict[str, JobResult] = {}
    try:
        return _main(config, todo, results)
    except KeyboardInterrupt as stop:
        signum = stop_signal(stop)
        print(f"styleme3d-batch: {_stopped(signum, todo, results)}", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(config: BatchConfig, todo: list[Job], results: dict[str, JobResult]) -> int:
    """:func:`main`'s work; fills `todo` (the jobs to run) and `results` (how each ended) as it goes."""
    with exit_on_user_error("styleme3d-batch"):
        if config.cpus_per_job < 1:
            raise UserInputError(f"--cpus-per-job must be at least 1 (got {config.cpus_per_job})")
        grid = load_grid(config.grid, config.output_dir)
        jobs, notes = plan_jobs(grid)
        if not any(j.kind == "stylise" for j in jobs):
            raise UserInputError(f"{grid.path} gives no job: no method can take any of its styles ({notes[0]})")
        finished = {j.id for j in jobs if is_finished(j)}
        _print_plan(jobs, notes, finished)
        if config.dry_run:
            _dry_run(jobs, finished)
            return 0
        with output_lock(grid.output_dir):
            results.update({job_id: JobResult(job_id, "skipped") for job_id in finished})
            todo.extend(j for j in jobs if j.id not in finished)
            if todo:
                _run(todo, results, config)
            if config.web:
                _write_pages(jobs, results)
            return _finish(grid, jobs, results)


def _stopped(signum: int, todo: list[Job], results: dict[str, JobResult]) -> str:
    """One line for a batch stopped by Ctrl-C or SIGTERM: what finished, and the command that does the rest."""
    now = [results[j.id] for j in todo if j.id in results]
    done, failed = sum(r.status == "done" for r in now), sum(r.status == "failed" for r in now)
    earlier = len(results) - len(now)
    how = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    again = shlex.join(["styleme3d-batch", *sys.argv[1:]])  # the same command: finished jobs are skipped
    return (
        f"{how}: {done} of the {len(todo)} jobs to run finished ({failed} failed), {earlier} had finished before; "
        f"rerun `{again}` to do the other {len(todo) - done} (finished jobs are skipped)"
    )


def entrypoint() -> None:
    """Console script `styleme3d-batch`."""
    raise SystemExit(main(tyro.cli(BatchConfig)))


if __name__ == "__main__":
    entrypoint()
