"""The job list of a grid: one stylisation per (scene, style, method), one reconstruction per dataset scene.

Every job is the `ns-train` (then `styleme3d-eval`) command a user would type, writing into a run folder whose name
is fixed by the job's content: `<out>/runs/<scene>/<method>/<style>-<hash>/` (nerfstudio's own
output-dir/experiment/method/timestamp layout), where the hash covers the job's training command without its output
location. Rerunning the same grid finds the same folders; changing a job's options gives it a new folder and leaves
the old one alone. Dataset scenes are reconstructed once into `<out>/bases/<scene>/styleme3d/recon-<hash>/` and
every style of the scene starts from that base.

A job's folder holds `batch_job.json` (written by styleme3d-batch before anything else: it marks the folder as ours
and records the commands and how far the job got), `train.log`, `eval.log`, `metrics.json` and `eval_sheet.png`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from styleme3d_ns.batch.grid import Grid, MethodRun, Scene, Style, option_arguments
from styleme3d_ns.batch.methods import BASE_CHECKPOINT_OPTION, RECONSTRUCT_METHOD, style_arguments

MARKER = "batch_job.json"
"""The file that says a run folder was made by styleme3d-batch (and how far its job got)."""


@dataclass(frozen=True)
class Job:
    """One ns-train (+ styleme3d-eval) run of the grid."""

    id: str
    """`scene/style/method` for stylisations, `scene/base` for reconstructions (unique in the grid)."""
    kind: Literal["base", "stylise"]
    scene: str
    style: str | None
    method: str | None
    """The method column's label (None for a reconstruction)."""
    run_dir: Path
    """The nerfstudio run folder (config.yml, nerfstudio_models/), also holding the job's logs and metrics."""
    train: tuple[str, ...]
    """ns-train argv, the program name first."""
    evaluate: tuple[str, ...] | None = None
    """styleme3d-eval argv (None for a reconstruction)."""
    base_job: str | None = None
    """Id of the reconstruction this job starts from (None when the base is given)."""

    @property
    def marker(self) -> Path:
        return self.run_dir / MARKER

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def eval_sheet(self) -> Path:
        return self.run_dir / "eval_sheet.png"


@dataclass(frozen=True)
class JobResult:
    """How a job ended in this batch."""

    job_id: str
    status: Literal["done", "skipped", "failed"]
    """done: ran now; skipped: already finished by an earlier batch; failed: see reason."""
    reason: str | None = None
    """One line saying why it failed (and where its log is)."""
    seconds: float = 0.0
    """Wall time of this batch's work on the job (0 when skipped)."""
    node: str | None = None
    """Ray node the job ran on (None when skipped)."""


# ------------------------------------------------------------------------------------------------ state
def read_marker(job: Job) -> dict[str, Any] | None:
    """The job's batch_job.json, or None when the folder has none (or it is unreadable)."""
    try:
        content = json.loads(job.marker.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def is_trained(job: Job, marker: dict[str, Any] | None = None) -> bool:
    """ns-train finished: the marker names the final checkpoint and the checkpoint is there."""
    marker = read_marker(job) if marker is None else marker
    checkpoint = (marker or {}).get("checkpoint")
    return bool(checkpoint) and (job.run_dir / "nerfstudio_models" / checkpoint).is_file()


def is_finished(job: Job) -> bool:
    """Nothing left to do: trained and (for a stylisation) scored by this job's exact styleme3d-eval command."""
    marker = read_marker(job)
    if not is_trained(job, marker):
        return False
    if job.evaluate is None:
        return True
    return job.metrics.is_file() and marker.get("evaluated") == list(job.evaluate)


# ------------------------------------------------------------------------------------------------ planning
def _digest(words: list[str]) -> str:
    return hashlib.sha1(json.dumps(words).encode()).hexdigest()[:8]


def _ns_train(method: str, data: Path, out: Path, scene: str, identity: list[str], name: str) -> tuple[Path, tuple]:
    """The run folder and ns-train argv of a job whose content is `identity` (everything but where it writes)."""
    timestamp = f"{name}-{_digest([method, str(data), *identity])}"
    argv = ("ns-train", method, "--data", str(data), "--output-dir", str(out), "--experiment-name", scene,
            "--timestamp", timestamp, "--vis", "tensorboard", *identity)  # fmt: skip
    return out / scene / method / timestamp, argv


def base_job(grid: Grid, scene: Scene) -> Job:
    """The reconstruction of a dataset scene (styleme3d with no style image only reconstructs)."""
    steps = str(grid.reconstruct_steps)
    identity = ["--max-num-iterations", steps, "--pipeline.model.reconstruct-steps", steps,
                *option_arguments(grid.train_options)]  # fmt: skip
    run_dir, argv = _ns_train(RECONSTRUCT_METHOD, scene.data, grid.output_dir / "bases", scene.name, identity, "recon")
    return Job(f"{scene.name}/base", "base", scene.name, None, None, run_dir, argv)


def stylise_job(grid: Grid, scene: Scene, style: Style, method: MethodRun, base: Job | None) -> Job | str:
    """The stylisation of `scene` with `style` by `method`, or a one-line reason the method cannot take the style."""
    style_args = style_arguments(method.method, None if style.image is None else str(style.image), style.prompt)
    if isinstance(style_args, str):
        return f"{scene.name}/{style.name}/{method.label} left out: {style_args} and style {style.name!r} has none"
    base_dir = base.run_dir if base is not None else scene.base
    identity = [
        *(["--max-num-iterations", str(grid.steps)] if grid.steps is not None else []),
        *([BASE_CHECKPOINT_OPTION, str(base_dir)] if base_dir is not None else []),
        *style_args,
        *option_arguments(grid.train_options),
        *option_arguments(method.options),
    ]
    name = style.name if method.label == method.method else f"{style.name}-{method.label}"
    run_dir, train = _ns_train(method.method, scene.data, grid.output_dir / "runs", scene.name, identity, name)
    evaluate = ("styleme3d-eval", "--load-config", str(run_dir / "config.yml"),
                "--output", str(run_dir / "metrics.json"), "--sheet", str(run_dir / "eval_sheet.png"),
                *option_arguments(grid.eval_options))  # fmt: skip
    job_id = f"{scene.name}/{style.name}/{method.label}"
    return Job(job_id, "stylise", scene.name, style.name, method.label, run_dir, train, evaluate,
               None if base is None else base.id)  # fmt: skip


def plan_jobs(grid: Grid) -> tuple[list[Job], list[str]]:
    """Every job of the grid, reconstructions first, then scene by scene, style by style, method by method; and a
    note for each (scene, style, method) left out because the method cannot take that style."""
    bases = {s.name: base_job(grid, s) for s in grid.scenes if s.kind == "data"}
    jobs: list[Job] = list(bases.values())
    notes: list[str] = []
    for scene in grid.scenes:
        for style in grid.styles:
            for method in grid.methods:
                job = stylise_job(grid, scene, style, method, bases.get(scene.name))
                (notes if isinstance(job, str) else jobs).append(job)
    used = {j.base_job for j in jobs}
    return [j for j in jobs if j.kind == "stylise" or j.id in used], notes
