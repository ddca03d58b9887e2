"""The batch's tables: one row per stylisation job with its styleme3d-eval metrics, as results.csv and results.json.

CSV columns: `scene, style, method, status, reason, seconds, node, run_dir`, then every number or text of the job's
metrics.json sections `content`, `style`, `consistency` and `cost`, flattened with dots
(`content.psnr_db`, `style.gram_reduction`, `consistency.long_range.rmse_stylised`, `cost.run.wall_time_s`, ...);
notes and per-pair lists stay in results.json, which also holds each job's full metrics.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from styleme3d_ns.batch.jobs import Job, JobResult
from styleme3d_ns.core.atomic import write_text_atomic

METRIC_SECTIONS = ("content", "style", "consistency", "cost")
JOB_COLUMNS = ["scene", "style", "method", "status", "reason", "seconds", "node", "run_dir"]


def read_metrics(job: Job) -> dict[str, Any] | None:
    """The job's metrics.json, or None when it has none (not evaluated, or failed)."""
    try:
        return json.loads(job.metrics.read_text())
    except (OSError, ValueError):
        return None


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars of the metric sections as `section.key[.key]` (notes and lists left out)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not key.endswith("note"):
                    walk(f"{prefix}.{key}", item)
        elif not isinstance(value, list):
            flat[prefix] = value

    for section in METRIC_SECTIONS:
        if isinstance(metrics.get(section), dict):
            walk(section, metrics[section])
    return flat


def job_rows(jobs: list[Job], results: dict[str, JobResult]) -> list[dict[str, Any]]:
    """One row per stylisation job, in plan order: how it ended in this batch and its metrics (flattened)."""
    rows = []
    for job in jobs:
        if job.kind != "stylise":
            continue
        result = results.get(job.id) or JobResult(job.id, "failed", "not run")
        metrics = read_metrics(job) if result.status != "failed" else None
        row = {"scene": job.scene, "style": job.style, "method": job.method, "status": result.status,
               "reason": result.reason, "seconds": round(result.seconds, 2), "node": result.node,
               "run_dir": str(job.run_dir)}  # fmt: skip
        rows.append({**row, **(flatten_metrics(metrics) if metrics else {}), "_metrics": metrics})
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(JOB_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns and not key.startswith("_")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {
            k: ("" if v is None else "inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()
        }
        writer.writerow(cells)
    return buffer.getvalue()


def write_results(
    out: Path, grid_path: Path, jobs: list[Job], results: dict[str, JobResult], sheets: list[Path]
) -> tuple[Path, Path]:
    """Write `out/results.csv` and `out/results.json` atomically; return their paths."""
    rows = job_rows(jobs, results)
    bases = [
        {"scene": j.scene, "status": results[j.id].status if j.id in results else "failed",
         "reason": results[j.id].reason if j.id in results else "not run", "run_dir": str(j.run_dir)}
        for j in jobs if j.kind == "base"
    ]  # fmt: skip
    document = {
        "grid": str(grid_path),
        "jobs": [{**{k: row[k] for k in JOB_COLUMNS}, "metrics": row["_metrics"]} for row in rows],
        "bases": bases,
        "failed": [{"job": r.job_id, "reason": r.reason} for r in results.values() if r.status == "failed"],
        "contact_sheets": [str(p) for p in sheets],
    }
    csv_path = write_text_atomic(out / "results.csv", _csv_text(rows))
    json_path = write_text_atomic(out / "results.json", json.dumps(document, indent=2) + "\n")
    return csv_path, json_path
