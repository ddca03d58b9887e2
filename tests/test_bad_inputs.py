"""Issue 14's battery: bad inputs and faults give one line, never a traceback; inputs are never modified; outputs
appear whole or not at all; the viewer is private; Ctrl-C saves and --load-dir finishes the plan.

Full disks are real size-limited tmpfs mounts when this process may mount them (root); otherwise the write failure
is simulated (a file-size limit on the child process, or an fsync that reports ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from styleme3d_ns.apps.runs import MARKER, DemoOutput
from styleme3d_ns.core.atomic import OutputWriteError, atomic_path, check_writable
from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.checkpoint import DROP_NON_FINITE_FLAG, load_gaussians
from tests.conftest import sha256

BIN = Path(sys.executable).parent
FIXTURE_CKPT = Path(__file__).parent / "fixtures" / "styleme3d-0.1.0-step-000000003.ckpt"  # 150 Gaussians, SH 3


# ------------------------------------------------------------------------------------------------ helpers
def run(*args: str, cwd: Path | None = None, limit_bytes: int | None = None, timeout: int = 300):  # noqa: ANN201
    """A console script (or `python -m module` when args[0] is "-m"); optional file-size limit on the child."""
    cmd = [sys.executable, *args] if args[0] == "-m" else [str(BIN / args[0]), *args[1:]]

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                          preexec_fn=limit if limit_bytes else None)  # fmt: skip


def one_line_error(stderr: str, *needles: str) -> str:
    """The single `styleme3d...:` line of stderr (library warnings aside); no traceback; contains `needles`."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("styleme3d")]
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its hash (folders as ""), to prove nothing changed."""
    return {str(p.relative_to(folder)): sha256(p) if p.is_file() else "" for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list[Path]:
    """Temporary or partial files our writers might leave (none may remain)."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name or "write-check" in p.name]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False) -> Iterator[bool]:
    """Mount a size-limited (or read-only) tmpfs on `folder`; yields False when mounting is not allowed here."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def write_checkpoint(path: Path, **changes: torch.Tensor) -> Path:
    """The 0.1.0 fixture checkpoint with some Gaussian tensors replaced."""
    state = torch.load(FIXTURE_CKPT, map_location="cpu", weights_only=True)
    for name, value in changes.items():
        state["pipeline"][f"_model.gauss_params.{name}"] = value
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------------ demos
def test_demo_refuses_a_folder_it_did_not_make_and_checks_arguments_first(tmp_path: Path) -> None:
    """`styleme3d-demo --output-dir .` used to wipe the working directory; a bad flag wiped the folder first."""
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    proc = run("styleme3d-demo", "--output-dir", ".", cwd=tmp_path)
    assert proc.returncode != 0
    one_line_error(proc.stderr, "is not empty and was not made by styleme3d-demo", "--overwrite")
    assert tree(tmp_path) == before
    # a demo-made folder is reused, but a bad argument is refused before it is touched
    (tmp_path / MARKER).write_text("made by styleme3d-demo")
    before = tree(tmp_path)
    proc = run("styleme3d-demo-portrait", "--output-dir", ".", "--photo", "missing.jpg", cwd=tmp_path)
    assert proc.returncode != 0
    one_line_error(proc.stderr, "--photo missing.jpg does not exist")
    assert tree(tmp_path) == before


def test_demo_folder_replaces_only_its_own_outputs_and_never_an_input(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    folder = DemoOutput(out, ("runs", "log_*.txt"), overwrite=False, prog="styleme3d-demo")
    folder.check({"--style": None})
    folder.prepare()
    assert (out / MARKER).is_file()
    (out / "runs").mkdir()
    style = out / "runs" / "style.png"
    Image.new("RGB", (64, 64)).save(style)
    (out / "log_a.txt").write_text("old log")
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(UserInputError, match="lies inside .*runs, which styleme3d-demo replaces"):
        folder.check({"--style": style})
    assert style.is_file()
    folder.check({"--style": None})
    folder.prepare()
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt"]
    # --overwrite adopts a folder it did not make, without marking it as its own
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UserInputError, match="not empty"):
        DemoOutput(other, ("runs",), overwrite=False, prog="p").check({})
    DemoOutput(other, ("runs",), overwrite=True, prog="p").prepare()
    assert sorted(p.name for p in other.iterdir()) == ["data.bin"]


# ------------------------------------------------------------------------------------------------ base checkpoints
@pytest.mark.parametrize(
    ("changes", "sh_degree", "message"),
    [
        ({}, 1, "has SH degree 3 (features_rest [150, 15, 3]) but --pipeline.model.sh-degree is 1; pass "
                "--pipeline.model.sh-degree 3"),
        ({"scales": torch.zeros(149, 3)}, None, "disagree on the number of Gaussians (means 150, scales 149"),
        ({"means": torch.zeros(150, 2)}, None, "means is [150, 2], expected [N, 3]"),
        ({"features_rest": torch.zeros(150, 5, 3)}, None, "features_rest is [150, 5, 3], expected [N, (d+1)^2-1, 3]"),
    ],
)  # fmt: skip
def test_inconsistent_base_checkpoint_is_one_line(tmp_path: Path, changes: dict, sh_degree: int | None,
                                                  message: str) -> None:  # fmt: skip
    ckpt = write_checkpoint(tmp_path / "step-000000003.ckpt", **changes)
    digest = sha256(ckpt)
    with pytest.raises(UserInputError) as info:
        load_gaussians(ckpt, sh_degree=sh_degree)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert sha256(ckpt) == digest


def test_non_finite_gaussians_are_counted_then_dropped_on_request(tmp_path: Path) -> None:
    reference = load_gaussians(FIXTURE_CKPT)
    means, opacities = reference["means"].clone(), reference["opacities"].clone()
    means[[3, 7]] = float("nan")
    opacities[[7, 9]] = float("inf")  # Gaussian 7 is bad twice: counted once
    ckpt = write_checkpoint(tmp_path / "step-000000003.ckpt", means=means, opacities=opacities)
    with pytest.raises(UserInputError) as info:
        load_gaussians(ckpt)
    assert "has 3 of 150 Gaussians with NaN/inf values (means 2, opacities 2)" in str(info.value)
    assert DROP_NON_FINITE_FLAG in str(info.value)
    with pytest.warns(UserWarning, match="dropped 3 of 150 Gaussians"):
        kept = load_gaussians(ckpt, drop_non_finite=True)
    rows = [i for i in range(150) if i not in (3, 7, 9)]
    for key, value in kept.items():
        assert torch.equal(value, reference[key][rows]), key


@pytest.mark.cli
def test_ns_train_refuses_a_mismatched_base_before_writing_anything(scene_dir: Path, tmp_path: Path) -> None:
    """The check runs before nerfstudio's config.yml: a failed attempt leaves no run folder."""
    digest, scene = sha256(FIXTURE_CKPT), tree(scene_dir)
    proc = run("ns-train", "styleme3d", "--data", str(scene_dir), "--output-dir", str(tmp_path / "out"),
               "--vis", "tensorboard", "--machine.device-type", "cpu", "--pipeline.model.sh-degree", "1",
               "--pipeline.model.base-checkpoint", str(FIXTURE_CKPT))  # fmt: skip
    assert proc.returncode != 0
    one_line_error(proc.stderr, "has SH degree 3", "--pipeline.model.sh-degree 3")
    assert not (tmp_path / "out").exists()
    assert sha256(FIXTURE_CKPT) == digest and tree(scene_dir) == scene


# ------------------------------------------------------------------------------------------------ data layouts
@pytest.fixture
def scene_copy(scene_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scene_dir, tmp_path / "scene", ignore=shutil.ignore_patterns("depths")))


def _edit_transforms(scene: Path, edit) -> None:  # noqa: ANN001
    import json

    meta = json.loads((scene / "transforms.json").read_text())
    edit(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


def test_image_size_and_non_finite_pose_are_one_line_each(scene_copy: Path) -> None:
    from styleme3d_ns.data.dataparser import check_data

    check_data(scene_copy)  # the unmodified scene passes
    first = scene_copy / "images" / "frame_00000.png"
    Image.new("RGB", (50, 64)).save(first)
    before = tree(scene_copy)
    with pytest.raises(UserInputError, match=r"1 image\(s\) differ .*frame_00000.png is 50x64 pixels, w/h say 64x64"):
        check_data(scene_copy)
    Image.new("RGB", (64, 64)).save(first)
    _edit_transforms(scene_copy, lambda meta: meta["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")))
    before = tree(scene_copy)
    with pytest.raises(UserInputError, match=r"1 frame\(s\) .* non-finite .*first: images/frame_00002.png"):
        check_data(scene_copy)
    assert tree(scene_copy) == before


# ------------------------------------------------------------------------------------------------ atomic writes
def test_full_disk_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk"
    with tmpfs(disk, size="64k") as mounted:
        target = disk / "metrics.json"
        target.write_text("old")
        if not mounted:  # simulate: the data reaches the file system, which reports no space at fsync
            monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        with pytest.raises(OutputWriteError) as info, atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 200_000)
        assert str(info.value).startswith(f"cannot write {target}: disk full; nothing was written there")
        assert target.read_text() == "old" and sorted(p.name for p in disk.iterdir()) == ["metrics.json"]


def test_ctrl_c_inside_a_write_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "splat.ply"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_read_only_or_blocked_output_is_refused_before_work(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", read_only=True) as mounted:
        if mounted:
            with pytest.raises(OutputWriteError, match="read-only file system"):
                check_writable(tmp_path / "ro" / "out" / "metrics.json", what="--output")
    (tmp_path / "file").write_text("a file")
    with pytest.raises(OutputWriteError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "metrics.json", what="--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]


def test_eval_writes_sheet_and_metrics_together_or_neither(tmp_path: Path) -> None:
    """A failed metrics write (here NaN, which is refused) must not leave the sheet or a temp file behind."""
    from styleme3d_ns.eval.cli import EvalConfig, _write_outputs

    config = EvalConfig(load_config=tmp_path / "config.yml", output=tmp_path / "out" / "metrics.json")
    rows = [[torch.rand(8, 8, 3), torch.rand(8, 8, 3)]]
    with pytest.raises(RuntimeError, match="NaN"):
        _write_outputs(config, {"psnr": float("nan")}, rows, time.perf_counter())
    assert list(tmp_path.iterdir()) == []  # not even the out/ folder it made
    _write_outputs(config, {"psnr": 20.0}, rows, time.perf_counter())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics_sheet.png"]


@pytest.mark.cli
def test_eval_refuses_an_unwritable_output_before_loading_anything(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    proc = run("styleme3d-eval", "--load-config", str(tmp_path / "missing" / "config.yml"),
               "--output", str(tmp_path / "blocker" / "metrics.json"))  # fmt: skip
    assert proc.returncode != 0
    one_line_error(proc.stderr, "cannot write --output", "is a file, not a folder")


# ------------------------------------------------------------------------------------------------ viewer, warnings
def test_viewer_binds_localhost_in_every_method_and_in_styleme3d_viewer() -> None:
    from styleme3d_ns.method_configs.clip_splat_config import clip_splat
    from styleme3d_ns.method_configs.sas_portrait_config import sas_portrait
    from styleme3d_ns.method_configs.styleme3d_config import styleme3d

    from styleme3d_ns.apps.viewer import LocalRunViewer

    for spec in (styleme3d, clip_splat, sas_portrait):
        assert spec.config.viewer.websocket_host == "127.0.0.1"
    assert LocalRunViewer(load_config=Path("config.yml")).viewer.websocket_host == "127.0.0.1"


def test_tiny_and_animated_style_images_are_warned(tmp_path: Path) -> None:
    from styleme3d_ns.data.style_image import load_style_image

    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    with pytest.warns(UserWarning, match="only 1x1 pixels"):
        assert load_style_image(tmp_path / "dot.png").shape == (1, 3, 1, 1)
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match=r"animated \(2 frames\): only the first frame"):
        image = load_style_image(tmp_path / "anim.gif")
    assert image[0, 0].mean() > 0.9 and image[0, 2].mean() < 0.1  # the red first frame


def test_clip_warns_about_prompts_past_77_tokens(tiny_clip: tuple[Path, Path]) -> None:
    from styleme3d_ns.guidance.clip_encoder import load_clip_encoder

    encoder = load_clip_encoder(str(tiny_clip[0]), str(tiny_clip[1]), hint="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode_text(["a watercolor painting"])
    with pytest.warns(UserWarning, match="is 83 tokens; CLIP reads only the first 77"):
        encoder.encode_text(["a " * 80 + "cat"])


# ------------------------------------------------------------------------------------------------ training faults
TRAIN = ("ns-train", "styleme3d", "--vis", "tensorboard", "--machine.device-type", "cpu",
         "--pipeline.model.reconstruct-steps", "1000", "--experiment-name", "e")  # fmt: skip


@pytest.fixture(scope="module")
def interrupted(scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A reconstruction stopped with Ctrl-C (SIGINT) once it has saved a checkpoint: (its result, run folder)."""
    out = tmp_path_factory.mktemp("interrupt")
    cmd = [str(BIN / TRAIN[0]), *TRAIN[1:], "--data", str(scene_dir), "--output-dir", str(out), "--timestamp", "a",
           "--max-num-iterations", "1000", "--steps-per-save", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    models = out / "e" / "styleme3d" / "a" / "nerfstudio_models"
    deadline = time.monotonic() + 240
    while not list(models.glob("step-*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), models.parent


@pytest.mark.cli
def test_ctrl_c_saves_the_finished_step_and_exits_130(interrupted: tuple) -> None:
    proc, run_dir = interrupted
    assert proc.returncode == 130, proc.stderr[-3000:]
    line = one_line_error(proc.stderr, "interrupted after step", "resume with --load-dir")
    step = int(line.split("interrupted after step ")[1].split(":")[0])
    assert step >= 4
    assert [p.name for p in (run_dir / "nerfstudio_models").iterdir()] == [f"step-{step:09d}.ckpt"]
    saved = torch.load(run_dir / "nerfstudio_models" / f"step-{step:09d}.ckpt", weights_only=True)
    assert saved["step"] == step and not leftovers(run_dir)


@pytest.mark.cli
def test_load_dir_finishes_the_planned_schedule(interrupted: tuple, scene_dir: Path, tmp_path: Path) -> None:
    """Resumed at step s+1 with --max-num-iterations s+3, the run stops at step s+2 (nerfstudio: 2s+3)."""
    _, run_dir = interrupted
    step = int(next((run_dir / "nerfstudio_models").glob("step-*.ckpt")).stem.removeprefix("step-"))
    proc = run(*TRAIN, "--data", str(scene_dir), "--output-dir", str(tmp_path), "--timestamp", "b",
               "--max-num-iterations", str(step + 3), "--load-dir", str(run_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = tmp_path / "e" / "styleme3d" / "b" / "nerfstudio_models"
    assert [p.name for p in resumed.iterdir()] == [f"step-{step + 2:09d}.ckpt"]


def test_resume_takes_the_newest_complete_checkpoint_and_refuses_a_truncated_one(tmp_path: Path) -> None:
    from styleme3d_ns.engine.trainer import StyleTrainer

    models = tmp_path / "nerfstudio_models"
    models.mkdir()
    shutil.copy(FIXTURE_CKPT, models / "step-000000003.ckpt")
    trainer = SimpleNamespace(config=SimpleNamespace(load_dir=tmp_path, load_step=None))
    StyleTrainer._pick_resume_checkpoint(trainer)  # the run folder is accepted too
    assert trainer.config.load_dir == models and trainer.config.load_step == 3
    (models / "step-000000009.ckpt").write_bytes(FIXTURE_CKPT.read_bytes()[:5000])  # an old writer's full disk
    trainer.config.load_step = None
    with pytest.raises(UserInputError, match="step-000000009.ckpt is truncated or damaged.*--load-step"):
        StyleTrainer._pick_resume_checkpoint(trainer)


@pytest.mark.cli
def test_full_disk_stops_training_with_one_line_and_no_partial_checkpoint(scene_dir: Path, tmp_path: Path) -> None:
    """A checkpoint of the tiny scene is ~1.8 MB: it does not fit in 1 MB (tmpfs, or a 1 MB file-size limit)."""
    with tmpfs(tmp_path / "disk", size="1m") as mounted:
        proc = run(*TRAIN, "--data", str(scene_dir), "--output-dir", str(tmp_path / "disk"), "--timestamp", "c",
                   "--max-num-iterations", "4", "--steps-per-save", "2",
                   limit_bytes=None if mounted else 1 << 20)  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-3000:]
        cause = "disk full" if mounted else "file too large"
        one_line_error(proc.stderr, "cannot write", "step-000000002.ckpt", cause, "nothing was written there")
        run_dir = tmp_path / "disk" / "e" / "styleme3d" / "c"
        assert list((run_dir / "nerfstudio_models").iterdir()) == [] and not leftovers(run_dir)


@pytest.mark.cli
def test_export_on_a_full_disk_leaves_no_partial_ply(interrupted: tuple, tmp_path: Path) -> None:
    _, run_dir = interrupted
    with tmpfs(tmp_path / "disk", size="64k") as mounted:
        proc = run("-m", "styleme3d_ns.apps.export", "--load-config", str(run_dir / "config.yml"),
                   "--output-dir", str(tmp_path / "disk" / "export"),
                   limit_bytes=None if mounted else 64 << 10)  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-3000:]
        one_line_error(proc.stderr, "cannot write", "splat.ply", "disk full" if mounted else "file too large")
        assert list((tmp_path / "disk").iterdir()) == []  # no splat.ply, no staging folder, not even export/
    proc = run("-m", "styleme3d_ns.apps.export", "--load-config", str(run_dir / "config.yml"),
               "--output-dir", str(tmp_path / "ok"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["splat.ply"]
    assert (tmp_path / "ok" / "splat.ply").read_bytes().startswith(b"ply\n")
    np.testing.assert_array_less(0, (tmp_path / "ok" / "splat.ply").stat().st_size)
