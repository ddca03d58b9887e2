"""The cost of a run, read from its own tensorboard logs (`--vis tensorboard` or `viewer+tensorboard`).

nerfstudio's trainer logs `Train Total (time)` (seconds of the whole training loop) once when training ends and
`Train Iter (time)` per step; styleme3d-ns models add `Train Metrics Dict/peak_memory_mb` (CUDA max allocated on GPU,
process peak resident set size on CPU). Each training session (a run and each resume) writes its own event file.
"""

from __future__ import annotations

from pathlib import Path

TOTAL_TIME_TAG = "Train Total (time)"
ITER_TIME_TAG = "Train Iter (time)"
PEAK_MEMORY_TAG = "Train Metrics Dict/peak_memory_mb"
GPU_MEMORY_TAG = "GPU Memory (MB)"


def _session_cost(event_file: Path) -> dict[str, float | int | None]:
    """Wall time, steps and peak memory of the session logged in one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    totals = scalars.get(TOTAL_TIME_TAG, [])
    # The first total ends this file's session; anything after it was written by a later session of the same
    # process (nerfstudio keeps every writer it ever set up), so it is not this run's cost.
    end = totals[0].wall_time if totals else float("inf")
    own = {tag: [e for e in events if e.wall_time <= end] for tag, events in scalars.items()}
    if totals:
        wall = float(totals[0].value)
    else:
        times = [e.wall_time for events in own.values() for e in events]
        wall = max(times) - min(times) if times else None
    iter_steps = [e.step for e in own.get(ITER_TIME_TAG, [])]
    peak = [e.value for e in own.get(PEAK_MEMORY_TAG, [])]
    gpu = [e.value for e in own.get(GPU_MEMORY_TAG, []) if e.value > 0]
    return {
        "wall_time_s": wall,
        "finished": bool(totals),
        "steps": max(iter_steps) - min(iter_steps) + 1 if iter_steps else None,
        "peak_memory_mb": max(peak) if peak else None,
        "gpu_memory_mb": max(gpu) if gpu else None,
    }


def read_run_cost(run_dir: Path) -> dict[str, float | int | str | None]:
    """Cost of the run in `run_dir` (the folder holding its `config.yml` and event files).

    Returns:
        `wall_time_s` (sum over sessions; seconds of training loop, or first-to-last logged event for a session
        that never finished), `steps`, `peak_memory_mb` (max over sessions) and `log_files`; a field that cannot be
        read is None and `cost_note`/`peak_memory_note` say why.
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    if not files:
        return {
            "wall_time_s": None,
            "steps": None,
            "peak_memory_mb": None,
            "log_files": 0,
            "cost_note": f"no tensorboard event files in {run_dir}: train with --vis tensorboard "
            "(or viewer+tensorboard) to log wall time and memory",
        }
    sessions = [_session_cost(f) for f in files]
    walls = [s["wall_time_s"] for s in sessions if s["wall_time_s"] is not None]
    steps = [s["steps"] for s in sessions if s["steps"] is not None]
    cost: dict[str, float | int | str | None] = {
        "wall_time_s": float(sum(walls)) if walls else None,
        "steps": int(sum(steps)) if steps else None,
        "peak_memory_mb": None,
        "log_files": len(files),
    }
    if not all(s["finished"] for s in sessions):
        cost["cost_note"] = f"a session has no '{TOTAL_TIME_TAG}' (interrupted?): its time is first to last event"
    peaks = [s["peak_memory_mb"] for s in sessions if s["peak_memory_mb"] is not None]
    gpu = [s["gpu_memory_mb"] for s in sessions if s["gpu_memory_mb"] is not None]
    if peaks:
        cost["peak_memory_mb"] = float(max(peaks))
    elif gpu:
        cost["peak_memory_mb"] = float(max(gpu))
        cost["peak_memory_note"] = f"from nerfstudio's '{GPU_MEMORY_TAG}' (CUDA memory allocated by torch)"
    else:
        cost["peak_memory_note"] = (
            f"the logs have no '{PEAK_MEMORY_TAG}' scalar (logged by styleme3d-ns models; other methods and "
            f"older runs lack it) and no non-zero '{GPU_MEMORY_TAG}'"
        )
    return cost
