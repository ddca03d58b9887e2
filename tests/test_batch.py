"""`styleme3d-batch`: a 2x2 grid on embedded Ray (killed, resumed, rerun), a real local Ray cluster, bad grids.

The jobs are real `ns-train` + `styleme3d-eval` subprocesses on 32 px scenes with 20 stylisation steps; their time
goes into process start-up, so the grid runs with one CPU per job (two jobs at once on 2 cores, each with one
torch thread) instead of the default two.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from PIL import Image

from styleme3d_ns.batch.contact_sheet import TILE_HEIGHT
from styleme3d_ns.batch.grid import load_grid
from styleme3d_ns.batch.jobs import JobResult, is_finished, plan_jobs
from styleme3d_ns.batch.runner import RAY_MISSING, RayOptions, import_ray
from styleme3d_ns.batch.worker import failure_reason, run_job
from styleme3d_ns.core.errors import UserInputError
from tests.conftest import run_trainer, styleme3d_config

pytestmark = pytest.mark.cli
BIN = Path(sys.executable).parent
SIZE = 32
RECON_STEPS = 30
STYLE_STEPS = 20


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 32 px scenes (a: a dataset the batch reconstructs; b: with a base run made here once), three styles."""
    import skimage.data

    from styleme3d_ns.data.scene_builder import build_scene

    root = tmp_path_factory.mktemp("batch_inputs")
    scene_a = build_scene(root / "scene_a", num_views=8, width=SIZE, height=SIZE, num_seed_points=400, seed=0)
    scene_b = build_scene(root / "scene_b", num_views=8, width=SIZE, height=SIZE, num_seed_points=400, seed=1)
    styles = {}
    for name in ("immunohistochemistry", "coffee", "brick"):
        image = getattr(skimage.data, name)()
        styles[name] = root / f"{name}.png"
        Image.fromarray(image if image.ndim == 3 else image[..., None].repeat(3, -1)).save(styles[name])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        config = styleme3d_config(scene_b, root / "base_runs", RECON_STEPS, reconstruct_steps=RECON_STEPS)
        base_b = run_trainer(config).parent
    finally:
        torch.set_num_threads(previous)
    return {"scene_a": scene_a, "scene_b": scene_b, "base_b": base_b, **styles}


def write_grid(
    path: Path, inputs: dict[str, Path], styles: tuple[str, ...], scenes: tuple[str, ...] = ("a", "b")
) -> Path:
    scene_entries = {"a": str(inputs["scene_a"]), "b": {"base": str(inputs["base_b"])}}
    grid = {
        "steps": STYLE_STEPS,
        "reconstruct_steps": RECON_STEPS,
        "scenes": {name: scene_entries[name] for name in scenes},
        "styles": {name[:6]: str(inputs[name]) for name in styles},
        # the Gram (SOS) path, trained for every step of the plan (the offline teacher ends a run after its solve)
        "methods": {
            "styleme3d": {"options": {"pipeline.model.sos.pretrain-steps": 5, "pipeline.model.offline-teacher": "off"}}
        },
        "train_options": {"machine.device-type": "cpu"},
        "eval_options": {"max-views": 1},
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def batch_command(grid: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "styleme3d_ns.batch.cli", str(grid), *args]


BATCH_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "RAY_USAGE_STATS_ENABLED": "0"}


def run_batch(grid: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(grid, *args), capture_output=True, text=True, timeout=timeout, env=BATCH_ENV)


def jobs_run(output: str) -> set[str]:
    """Ids of the jobs a batch reports as run now ('done   <id> (N s)')."""
    return {line.split()[1] for line in output.splitlines() if line.startswith("done ")}


def processes_writing_into(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line names `folder` (a batch's trainers and evaluators)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(str(folder) in word for word in cmdline) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def grid_2x2(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grid(tmp_path_factory.mktemp("grid") / "grid.yaml", inputs, ("immunohistochemistry", "coffee"))


@pytest.fixture(scope="module")
def killed_and_resumed(grid_2x2: Path) -> dict:
    """The 2x2 batch killed (SIGKILL to its whole process group) once its first stylisation finished, then rerun to
    the end, then rerun once more. What each phase saw."""
    grid = load_grid(grid_2x2)
    jobs, _ = plan_jobs(grid)
    log = grid_2x2.with_name("killed_batch.log")
    with log.open("w") as fh:
        proc = subprocess.Popen(batch_command(grid_2x2, "--cpus-per-job", "1"), stdout=fh, stderr=subprocess.STDOUT,
                                env=BATCH_ENV, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 300
        while not any(is_finished(j) for j in jobs if j.kind == "stylise") and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30  # the Ray workers' trainers die with them (parent-death signal)
    while processes_writing_into(grid.output_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    orphans = [" ".join(p.cmdline()[:3]) for p in processes_writing_into(grid.output_dir)]
    for leftover in processes_writing_into(grid.output_dir):  # never leave them running, even when the test fails
        leftover.kill()
    finished_at_kill = {j.id for j in jobs if is_finished(j)}
    checkpoints = {p: p.stat().st_mtime_ns for p in grid.output_dir.rglob("step-*.ckpt")}

    start = time.perf_counter()
    resumed = run_batch(grid_2x2, "--cpus-per-job", "1")
    resumed_seconds = time.perf_counter() - start
    csv_after_resume = (grid.output_dir / "results.csv").read_text()
    start = time.perf_counter()
    rerun = run_batch(grid_2x2)
    return {
        "grid": grid, "jobs": jobs, "finished_at_kill": finished_at_kill, "orphans": orphans, "resumed": resumed,
        "resumed_seconds": resumed_seconds, "rerun": rerun, "rerun_seconds": time.perf_counter() - start,
        "csv_after_resume": csv_after_resume, "checkpoints_at_kill": checkpoints,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the 2x2 grid
def test_killed_batch_leaves_no_trainer_and_resumes_with_only_the_unfinished_jobs(killed_and_resumed: dict) -> None:
    k = killed_and_resumed
    assert k["orphans"] == [], f"processes outlived the killed batch: {k['orphans']}"
    all_ids = {j.id for j in k["jobs"]}
    assert len(all_ids) == 5  # a's reconstruction + 2 scenes x 2 styles
    assert 1 <= len(k["finished_at_kill"]) < len(all_ids)
    resumed = k["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{len(k['finished_at_kill'])} already finished" in resumed.stdout
    assert jobs_run(resumed.stdout) == all_ids - k["finished_at_kill"], resumed.stdout
    for checkpoint, mtime in k["checkpoints_at_kill"].items():  # finished jobs' files were not rewritten
        job_dir = checkpoint.parent.parent
        if any(j.run_dir == job_dir for j in k["jobs"] if j.id in k["finished_at_kill"]):
            assert checkpoint.stat().st_mtime_ns == mtime


def test_grid_results_hold_every_jobs_metrics_and_a_scene_by_style_sheet(killed_and_resumed: dict) -> None:
    grid = killed_and_resumed["grid"]
    with (grid.output_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["scene"], r["style"], r["method"]) for r in rows] == [
        ("a", "immuno", "styleme3d"), ("a", "coffee", "styleme3d"),
        ("b", "immuno", "styleme3d"), ("b", "coffee", "styleme3d"),
    ]  # fmt: skip
    for row in rows:
        assert row["status"] in ("done", "skipped") and row["reason"] == ""
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["content.psnr_db"]) == pytest.approx(metrics["content"]["psnr_db"])
        # 20 Gram steps move every scene toward its style image
        assert float(row["style.gram_distance_stylised"]) < float(row["style.gram_distance_base"])
        assert float(row["cost.run.wall_time_s"]) > 0 and int(row["cost.run.steps"]) == STYLE_STEPS
        assert row["consistency.long_range.rmse_stylised"] != ""
    document = json.loads((grid.output_dir / "results.json").read_text())
    assert document["failed"] == [] and len(document["jobs"]) == 4
    assert document["bases"][0]["scene"] == "a" and document["bases"][0]["status"] in ("done", "skipped")
    sheet = Image.open(grid.output_dir / "contact_sheet_styleme3d.png").convert("RGB")
    assert sheet.size == (3 * TILE_HEIGHT, 3 * TILE_HEIGHT)  # header + 2 scenes down, label + 2 styles across
    cell = sheet.crop((2 * TILE_HEIGHT, 2 * TILE_HEIGHT, 3 * TILE_HEIGHT, 3 * TILE_HEIGHT))  # b x coffee
    base = sheet.crop((0, 2 * TILE_HEIGHT + 20, TILE_HEIGHT, 3 * TILE_HEIGHT))
    assert len(set(cell.getdata())) > 50, "the cell should be a render, not a flat placeholder"
    assert list(base.getdata()) != list(cell.crop((0, 20, TILE_HEIGHT, TILE_HEIGHT)).getdata())


def test_rerun_of_a_finished_grid_does_no_work(killed_and_resumed: dict) -> None:
    rerun = killed_and_resumed["rerun"]
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "5 already finished, 0 to run" in rerun.stdout
    assert "running on" not in rerun.stdout and jobs_run(rerun.stdout) == set()  # Ray is not even started
    assert "0 done, 5 skipped" in rerun.stdout
    before = list(csv.DictReader(killed_and_resumed["csv_after_resume"].splitlines()))
    with (killed_and_resumed["grid"].output_dir / "results.csv").open() as fh:
        after = list(csv.DictReader(fh))
    for old, new in zip(before, after, strict=True):  # same numbers; only the status says "skipped" now
        assert {k: v for k, v in old.items() if k not in ("status", "seconds", "node")} == {
            k: v for k, v in new.items() if k not in ("status", "seconds", "node")
        }


# ------------------------------------------------------------------------------------------------ a local cluster
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ray_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start ... --block` as our own child: the node lives exactly as long as this process (SIGTERM stops all
    of its Ray processes), so the test can stop its cluster by pid. `ray stop` is not used: it stops every Ray
    process on the machine, other people's clusters included."""
    handle = log.open("w")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                            stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_a_local_cluster_runs_the_job_on_its_worker_node(inputs: dict[str, Path], tmp_path: Path) -> None:
    """`ray start --head` (no CPUs of its own) + one worker node on 127.0.0.1; the batch joins with --address."""
    grid = write_grid(tmp_path / "grid.yaml", inputs, ("brick",), scenes=("b",))
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 107 characters
    port = _free_port()
    # Ray clusters require a shared token (Ray 2.60); this cluster's own, not the one in ~/.ray
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**BATCH_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    nodes: list[subprocess.Popen] = []
    try:
        common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(ray_dir)]
        nodes.append(_start_ray_node(["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard",
                                      "false", *common], tmp_path / "head.log", env))  # fmt: skip
        nodes.append(_start_ray_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "2", *common],
                                     tmp_path / "worker.log", env))  # fmt: skip
        proc = subprocess.run(batch_command(grid, "--address", f"127.0.0.1:{port}"), capture_output=True, text=True,
                              timeout=400, env=env)  # fmt: skip
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_dir, ignore_errors=True)  # made by this test
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Ray cluster at 127.0.0.1:{port}: 2 CPUs per job" in proc.stdout
    document = json.loads((tmp_path / "grid_out" / "results.json").read_text())
    (job,) = document["jobs"]
    assert job["status"] == "done" and job["node"]  # the head has no CPU: it ran on the worker node
    assert job["metrics"]["style"]["gram_distance_stylised"] < job["metrics"]["style"]["gram_distance_base"]
    assert all(node.poll() is not None for node in nodes)


# ------------------------------------------------------------------------------------------------ planning, errors
def test_jobs_get_deterministic_folders_and_a_changed_option_gets_a_new_one(grid_2x2: Path, tmp_path: Path) -> None:
    jobs, notes = plan_jobs(load_grid(grid_2x2))
    again, _ = plan_jobs(load_grid(grid_2x2))
    assert [j.run_dir for j in jobs] == [j.run_dir for j in again] and notes == []
    stylise = [j for j in jobs if j.kind == "stylise"]
    assert len({j.run_dir for j in stylise}) == 4
    a_jobs = [j for j in stylise if j.scene == "a"]
    base = next(j for j in jobs if j.kind == "base")
    assert all(j.base_job == base.id and str(base.run_dir) in j.train for j in a_jobs)
    changed = yaml.safe_load(grid_2x2.read_text())
    changed["steps"] = STYLE_STEPS + 1
    (tmp_path / "changed.yaml").write_text(
        yaml.safe_dump({**changed, "output_dir": str(load_grid(grid_2x2).output_dir)})
    )
    moved, _ = plan_jobs(load_grid(tmp_path / "changed.yaml"))
    assert {j.run_dir for j in moved if j.kind == "stylise"}.isdisjoint(j.run_dir for j in stylise)
    assert next(j for j in moved if j.kind == "base").run_dir == base.run_dir  # the reconstruction is unchanged


def test_a_method_that_cannot_take_a_style_is_left_out_with_a_note(inputs: dict[str, Path], tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "grid.yaml", inputs, ("coffee",), scenes=("b",))
    raw = yaml.safe_load(grid.read_text())
    raw["styles"]["ink"] = {"prompt": "an ink wash painting"}
    raw["methods"]["clip-splat"] = {}
    grid.write_text(yaml.safe_dump(raw))
    jobs, notes = plan_jobs(load_grid(grid))
    assert sorted(j.id for j in jobs) == ["b/coffee/styleme3d", "b/ink/clip-splat"]
    assert notes == [
        "b/coffee/clip-splat left out: clip-splat needs a style prompt and style 'coffee' has none",
        "b/ink/styleme3d left out: styleme3d needs a style image and style 'ink' has none",
    ]
    clip = next(j for j in jobs if j.method == "clip-splat")
    assert clip.train[clip.train.index("--pipeline.model.prompt") + 1] == "an ink wash painting"


def test_a_ply_scene_is_stylised_from_the_file_with_no_reconstruction(inputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "splat.ply").write_bytes(b"ply\n")  # the grid only checks it is there
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"scenes: [export]\nstyles: [{inputs['coffee']}]\nmethods: [styleme3d]\n")
    (job,) = plan_jobs(load_grid(grid))[0]  # a folder holding one .ply and no transforms.json is that .ply
    assert job.train[job.train.index("--data") + 1] == str(tmp_path / "export" / "splat.ply")
    assert "--pipeline.model.base-checkpoint" not in job.train and job.base_job is None
    assert job.id == "export/coffee/styleme3d"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("scenes: {a: [unclosed", "is not valid YAML at line 1"),
        ("scenes: {a: nowhere}\nstyles: [x.png]\nmethods: [styleme3d]", "scene 'a' in"),
        ("scenes: {a: SCENE}\nstyles: [STYLE]\nmethods: [stylemee3d]", "unknown method 'stylemee3d'"),
        ("scenes: {a: SCENE}\nstyles: [STYLE]\nmethods: [sas-portrait]", "makes a head from one photo"),
        ("scenes: {a: SCENE}\nstyles: [STYLE]\nmethods: [styleme3d]\nstep: 3", "unknown key 'step'"),
        ("scenes: {a: SCENE}\nstyles: [STYLE]\nmethods: {styleme3d: {options: {data: x}}}", "--data in options"),
        ("scenes: {a: SCENE}\nstyles: [missing.png]\nmethods: [styleme3d]", "image"),
        ("scenes: {a: SCENE, a b: SCENE}\nstyles: [STYLE]\nmethods: [styleme3d]", "not folder-safe"),
        ("scenes: {a: SCENE}\nstyles: [STYLE]\nmethods: [styleme3d]\nsteps: -4", "positive whole number"),
        ("scenes: {}\nstyles: [STYLE]\nmethods: [styleme3d]", "has no scenes"),
    ],
)
def test_bad_grids_are_one_line_naming_the_value(inputs: dict[str, Path], tmp_path: Path, edit: str, message: str):  # noqa: ANN201
    grid = tmp_path / "grid.yaml"
    grid.write_text(edit.replace("SCENE", str(inputs["scene_a"])).replace("STYLE", str(inputs["coffee"])))
    with pytest.raises(UserInputError) as err:
        load_grid(grid)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_command_prints_one_line_for_a_bad_grid(tmp_path: Path) -> None:
    proc = run_batch(tmp_path / "absent.yaml", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"styleme3d-batch: error: grid file {tmp_path / 'absent.yaml'} does not exist; " \
        "pass a GRID.yaml (docs/batch.md shows one)"  # fmt: skip


def test_without_ray_one_line_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserInputError) as err:
        import_ray()
    assert str(err.value) == RAY_MISSING and "pip install -e .[batch]" in RAY_MISSING
    assert RayOptions().cpus_per_job == 2  # the default: on 2 cores, one job at a time


def test_a_folder_the_batch_did_not_make_is_never_touched(grid_2x2: Path, tmp_path: Path) -> None:
    grid = load_grid(grid_2x2, output_dir=tmp_path / "out")
    job = next(j for j in plan_jobs(grid)[0] if j.kind == "stylise")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "precious.txt").write_text("mine")
    result = run_job(job, base=JobResult("a/base", "done"))
    assert result.status == "failed" and "was not made by styleme3d-batch" in result.reason
    assert sorted(p.name for p in job.run_dir.iterdir()) == ["precious.txt"]
    failed_base = run_job(job, base=JobResult("a/base", "failed", "boom"))
    assert failed_base.reason == "its base a/base failed: boom"


def test_failure_reason_is_the_last_error_line_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("step 1\nTraceback (most recent call last):\n  File x\nRuntimeError: shapes differ\nbye\n")
    assert failure_reason(log, 1) == f"RuntimeError: shapes differ (log: {log})"
    log.write_text("\x1b[31mstyleme3d: error: style image x.png does not exist\x1b[0m\n")
    assert failure_reason(log, 2).startswith("styleme3d: error: style image x.png does not exist")
    log.write_text("nothing useful\n")
    assert failure_reason(log, -9) == f"killed by signal 9 (log: {log})"
