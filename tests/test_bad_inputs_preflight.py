"""Issue 24's battery ("lose nothing, third round"): the newer features' inputs are read and checked before anything is
written, ns-render's atomic twin, the look checked where it is set, and the smaller cases (batch, eval, degenerate
scenes). Each case is one test or one parameter here; scripts/battery_bad_inputs.py reruns the whole battery as the
commands a user types.

Most cases call the pre-flight in-process (`StyleTrainerConfig.save_config`, what ns-train calls before config.yml),
so they take milliseconds; one command runs as a subprocess (styleme3d-render on a full disk).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import tyro
import yaml
from PIL import Image
from plyfile import PlyData

from styleme3d_ns.core.atomic import OutputWriteError
from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.ply_scene import PlySceneDataParserConfig
from tests.bad_plys import bad_plys
from tests.conftest import run_trainer, sha256, styleme3d_config
from tests.test_bad_inputs import FIXTURE_CKPT, leftovers, one_line_error, run, tmpfs
from tests.test_ply_scene import SMALL, tiny_splat, write_inria_ply

BAD_PLYS = ("empty file", "random bytes", "header only", "truncated", "2e9 declared", "wrong property names",
            "NaN positions", "Inf scales", "point cloud", "mesh", "0 Gaussians", "zero quaternions", "10 f_rest",
            "missing file")  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bad .ply files, a good 300-Gaussian one, a 1-Gaussian one and a 1x1 style image (written once)."""
    folder = tmp_path_factory.mktemp("inputs")
    dot = folder / "dot.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(dot)
    return {
        "bad": bad_plys(folder / "bad"),
        "good": write_inria_ply(folder / "good.ply", tiny_splat(n=300, degree=1)),
        "one": write_inria_ply(folder / "one.ply", tiny_splat(n=1, degree=1)),
        "dot": dot,
    }


def ply_config(ply: Path, out: Path, steps: int = 2, parser: dict | None = None, **model: object):  # noqa: ANN201
    """ns-train styleme3d --data ply (small orbit renders cached under out's sibling), CPU, as the CLI builds it."""
    config = styleme3d_config(ply, out, steps, **model)
    options = {**SMALL, "cache_dir": out.parent / "cache", **(parser or {})}
    config.pipeline.datamanager = replace(config.pipeline.datamanager, dataparser=PlySceneDataParserConfig(**options))
    return config


def refused(config, *words: str) -> str:  # noqa: ANN001
    """ns-train's pre-flight stops `config` with one line holding `words`; no run folder (nor output dir) exists."""
    with pytest.raises(SystemExit) as info:
        config.save_config()
    line = str(info.value)
    assert line.startswith("styleme3d: error: ") and "\n" not in line, line
    for needle in words:
        assert needle in line, line
    assert not Path(config.output_dir).exists(), "a failed pre-flight must leave no run folder"
    return line


# ------------------------------------------------------------------------------------------------ .ply scenes
@pytest.mark.parametrize("name", BAD_PLYS)
def test_a_bad_ply_stops_ns_train_before_its_run_folder(inputs: dict, tmp_path: Path, name: str) -> None:
    path, words = inputs["bad"][name]
    digest = sha256(path) if path.exists() else None
    refused(ply_config(path, tmp_path / "out"), words, str(path))
    assert (sha256(path) if path.exists() else None) == digest


@pytest.mark.parametrize("size", [8, 20])
def test_image_sizes_below_32_are_refused_alike(inputs: dict, tmp_path: Path, size: int) -> None:
    from styleme3d_ns.engine.preflight import check_run_inputs

    refused(ply_config(inputs["good"], tmp_path / "out", parser={"image_size": size}),
            f"--image-size {size} is too small; use 32 or more")  # fmt: skip
    check_run_inputs(ply_config(inputs["good"], tmp_path / "out", parser={"image_size": 32}))


def test_a_bad_detail_option_stops_ns_train_before_its_run_folder(inputs: dict, tmp_path: Path) -> None:
    from styleme3d_ns.models.detail import DetailConfig

    detail = DetailConfig(enabled=True, stroke_size=-0.1)
    refused(ply_config(inputs["good"], tmp_path / "out", detail=detail), "detail.stroke-size", "-0.1")


def test_a_read_only_cache_dir_is_refused_before_the_run_folder(inputs: dict, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", read_only=True) as mounted:
        if mounted:
            config = ply_config(inputs["good"], tmp_path / "out", parser={"cache_dir": tmp_path / "ro" / "cache"})
            refused(config, "cannot write the renders of good.ply", "read-only file system", "--cache-dir")
    (tmp_path / "file").write_text("a file where the cache folder should be")
    config = ply_config(inputs["good"], tmp_path / "out", parser={"cache_dir": tmp_path / "file" / "cache"})
    refused(config, "is a file, not a folder", "--cache-dir")


def test_a_nearly_empty_scene_is_warned_with_its_numbers(inputs: dict, tmp_path: Path) -> None:
    """One Gaussian: the orbit frames it, yet it covers almost nothing; the 300-Gaussian blob covers plenty."""
    parser = PlySceneDataParserConfig(data=inputs["one"], cache_dir=tmp_path, **SMALL).setup()
    with pytest.warns(UserWarning, match=r"its 1 Gaussian covers 0\.\d\d% of the pixels of the 6 training views") as w:
        parser.get_dataparser_outputs("train")
    share = float(str(w[0].message).split("covers ")[1].split("%")[0])
    assert share < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PlySceneDataParserConfig(data=inputs["good"], cache_dir=tmp_path, **SMALL).setup().get_dataparser_outputs(
            "train"
        )


# ------------------------------------------------------------------------------------------------ style images
def test_a_1x1_style_image_is_warned_about_then_used(inputs: dict, tmp_path: Path) -> None:
    """The docs promise a warning and then use: the pre-flight warns, and the colour fits take its one colour."""
    from styleme3d_ns.engine.preflight import check_run_inputs
    from styleme3d_ns.guidance.colour_transfer import fit_colour_transfer
    from styleme3d_ns.guidance.style_teacher import style_colour_map

    with pytest.warns(UserWarning, match="only 1x1 pixels"):
        check_run_inputs(ply_config(inputs["good"], tmp_path / "out", style_image=inputs["dot"]))
    dot = torch.tensor([[200.0, 30.0, 30.0]]) / 255
    colours = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    a, b = fit_colour_transfer(colours, dot)
    torch.testing.assert_close(colours @ a.T + b, dot.expand(50, 3), atol=1e-4, rtol=0)  # all take its colour
    a, b = style_colour_map(colours, dot, luminance_only=True)
    mapped = colours @ a.T + b
    assert torch.isfinite(mapped).all()
    luma = torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(mapped @ luma, (dot @ luma).expand(50), atol=1e-4, rtol=0)  # its one grey level


def test_ns_train_stylises_a_ply_with_a_1x1_style_image(inputs: dict, tmp_path: Path) -> None:
    """The run that raised a ValueError in colour_transfer.py now trains and saves (offline teacher as configured)."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="only 1x1 pixels"):
        config_yml = run_trainer(ply_config(inputs["good"], tmp_path / "out", 2, style_image=inputs["dot"]))
    assert list((config_yml.parent / "nerfstudio_models").glob("step-*.ckpt"))


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_truncated_load_dir_checkpoint_is_refused_before_the_run_folder(inputs: dict, tmp_path: Path) -> None:
    models = tmp_path / "old_run" / "nerfstudio_models"
    models.mkdir(parents=True)
    (models / "step-000000009.ckpt").write_bytes(FIXTURE_CKPT.read_bytes()[:5000])
    config = ply_config(inputs["good"], tmp_path / "out")
    config.load_dir = models.parent
    refused(config, "step-000000009.ckpt is truncated or damaged", "--load-step")


def fake_run(folder: Path, style_images: tuple[Path, ...], checkpoints: dict[str, bytes], **look: object) -> Path:
    """A finished run's folder as ns-train writes it (config.yml with `look`, nerfstudio_models/ with `checkpoints`),
    without training: what is checked before a run loads needs no real weights."""
    from styleme3d_ns.models.look import LookConfig

    config = styleme3d_config(Path("scene"), folder, 1, style_image=style_images, look=replace(LookConfig(), **look))
    models = config.get_checkpoint_dir()
    models.mkdir(parents=True)
    for name, content in checkpoints.items():
        (models / name).write_bytes(content)
    config_yml = config.get_base_dir() / "config.yml"
    config_yml.write_text(yaml.dump(config))
    return config_yml


def test_a_finished_runs_truncated_checkpoint_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    from styleme3d_ns.apps.saved_run import PipelineOverride, opened_run

    whole = FIXTURE_CKPT.read_bytes()
    run_yml = fake_run(tmp_path / "a", (), {"step-000000009.ckpt": whole[:5000]})
    with pytest.raises(UserInputError, match=r"step-000000009.ckpt is truncated .*train the run again"):
        opened_run(run_yml, PipelineOverride(), tmp_path).__enter__()
    run_yml = fake_run(tmp_path / "b", (), {"step-000000003.ckpt": whole, "step-000000009.ckpt": whole[:5000]})
    with pytest.raises(UserInputError, match=r"step-000000009.ckpt is truncated .*to use step-000000003.ckpt"):
        opened_run(run_yml, PipelineOverride(), tmp_path).__enter__()


# ------------------------------------------------------------------------------------------------ the look
@pytest.mark.parametrize(
    ("look", "styles", "words"),
    [
        ({"strength": 2.0}, 1, "look strength 2.0 is not in [0, 1]; set --pipeline.model.look.strength to a value"),
        ({"strength": -1.0}, 1, "look strength -1.0 is not in [0, 1]"),
        ({"strength": float("nan")}, 1, "look strength nan is not in [0, 1]"),
        ({"blend_to": 1}, 1, "look blend-to 1 is not a palette index (the palette holds 1 style); set "
                             "--pipeline.model.look.blend-to to 0"),
        ({"style": 2, "blend": 0.5}, 2, "look style 2 is not a palette index (the palette holds 2 styles)"),
    ],
)  # fmt: skip
def test_ns_train_refuses_a_look_its_palette_will_not_hold(
    inputs: dict, style_path: Path, tmp_path: Path, look: dict, styles: int, words: str
) -> None:
    from styleme3d_ns.models.look import LookConfig

    images = (style_path,) * styles
    refused(ply_config(inputs["good"], tmp_path / "out", style_image=images, look=replace(LookConfig(), **look)), words)


def test_a_stored_look_is_named_with_its_file_and_the_flag_that_overrides_it(style_path: Path, tmp_path: Path) -> None:
    from styleme3d_ns.apps.saved_run import LookOverride, ModelOverride, PipelineOverride, opened_run

    ckpt = {"step-000000003.ckpt": FIXTURE_CKPT.read_bytes()}
    run_yml = fake_run(tmp_path / "run", (style_path, style_path), ckpt, strength=2.0, blend_to=1, blend=0.5)
    digest = sha256(run_yml)

    def override(**look: object) -> PipelineOverride:
        return PipelineOverride(ModelOverride(LookOverride(**look)))

    with pytest.raises(UserInputError) as info:
        opened_run(run_yml, override(), tmp_path).__enter__()
    assert str(info.value) == (
        f"look strength 2.0 stored in {run_yml} is not in [0, 1]; override it with --pipeline.model.look.strength "
        "(a value from 0 to 1) on styleme3d-render or styleme3d-export, or edit that file"
    )
    with pytest.raises(UserInputError, match=r"^look strength 3.0 is not in \[0, 1\]; set --pipeline.model.look"):
        opened_run(run_yml, override(strength=3.0), tmp_path).__enter__()
    with pytest.raises(UserInputError, match=r"look blend-to 4 is not a palette index \(the palette holds 2 styles\)"):
        opened_run(run_yml, override(strength=0.5, blend_to=4), tmp_path).__enter__()
    staging = tmp_path / "staging"
    staging.mkdir()
    with opened_run(run_yml, override(strength=0.5), staging) as loaded:
        assert loaded == staging / "config.yml"
        stored = yaml.load(loaded.read_text(), Loader=yaml.Loader)  # noqa: S506 - our own test file
        look = stored.pipeline.model.look
        assert (look.strength, look.blend_to, look.blend) == (0.5, 1, 0.5)  # the rest as stored
        assert stored.get_checkpoint_dir() == run_yml.parent / "nerfstudio_models"
    assert sha256(run_yml) == digest


def test_render_and_export_take_the_look_flags() -> None:
    from styleme3d_ns.apps.export import AtomicExportGaussianSplat
    from styleme3d_ns.apps.render import AtomicRenderInterpolated, Commands
    from styleme3d_ns.apps.saved_run import LookOverride
    from styleme3d_ns.models.look import LookConfig

    flags = ["--pipeline.model.look.strength", "0.25", "--pipeline.model.look.blend-to", "1"]
    render = tyro.cli(Commands, args=["interpolate", "--load-config", "c.yml", *flags])
    assert isinstance(render, AtomicRenderInterpolated)
    assert render.pipeline.model.look.given() == {"strength": 0.25, "blend_to": 1}
    args = ["--load-config", "c.yml", "--output-dir", "e", *flags]
    export = tyro.cli(tyro.conf.FlagConversionOff[AtomicExportGaussianSplat], args=args)
    assert export.pipeline.model.look.given() == {"strength": 0.25, "blend_to": 1}
    assert list(LookOverride.__dataclass_fields__) == list(LookConfig.__dataclass_fields__)  # every look option


def _ply_dc(path: Path) -> np.ndarray:
    vertex = PlyData.read(str(path))["vertex"]
    return np.stack([np.asarray(vertex[f"f_dc_{i}"]) for i in range(3)], axis=1)


def test_styleme3d_export_writes_the_look_the_flags_dial(stylised_run: Path, tmp_path: Path) -> None:
    """Strength 0 exports the base colours exactly; the run's own look (strength 1) exports the stylised ones."""
    from styleme3d_ns.apps.export import AtomicExportGaussianSplat
    from styleme3d_ns.apps.saved_run import LookOverride, ModelOverride, PipelineOverride

    digest = sha256(stylised_run)
    off = PipelineOverride(ModelOverride(LookOverride(strength=0.0)))
    AtomicExportGaussianSplat(load_config=stylised_run, output_dir=tmp_path / "off", pipeline=off).main()
    AtomicExportGaussianSplat(load_config=stylised_run, output_dir=tmp_path / "run").main()
    state = torch.load(next((stylised_run.parent / "nerfstudio_models").glob("*.ckpt")), weights_only=True)
    model = {k.removeprefix("_model."): v for k, v in state["pipeline"].items()}
    kept = (model["gauss_params.opacities"][:, 0] >= -5.5373).numpy()  # ns-export drops opacity below 1/255
    np.testing.assert_array_equal(_ply_dc(tmp_path / "off" / "splat.ply"), model["base_features_dc"].numpy()[kept])
    assert np.abs(_ply_dc(tmp_path / "run" / "splat.ply") - model["base_features_dc"].numpy()[kept]).mean() > 0.05
    assert sha256(stylised_run) == digest and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------ styleme3d-render
def test_styleme3d_render_writes_a_whole_video_with_the_dialled_look(stylised_run: Path, tmp_path: Path) -> None:
    from styleme3d_ns.apps.render import AtomicRenderInterpolated, video_frames
    from styleme3d_ns.apps.saved_run import LookOverride, ModelOverride, PipelineOverride

    half = PipelineOverride(ModelOverride(LookOverride(strength=0.5)))
    AtomicRenderInterpolated(load_config=stylised_run, output_path=tmp_path / "v" / "turntable.mp4",
                             interpolation_steps=2, pipeline=half).main()  # fmt: skip
    frames = video_frames(tmp_path / "v" / "turntable.mp4")
    assert frames is None or frames >= 2
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["turntable.mp4"]
    with tmpfs(tmp_path / "ro", read_only=True) as mounted:
        if mounted:  # refused before the model loads, with one line
            with pytest.raises(SystemExit, match=r"^styleme3d-render: error: cannot write render .*read-only file"):
                AtomicRenderInterpolated(load_config=stylised_run, output_path=tmp_path / "ro" / "t.mp4").main()


@pytest.mark.cli
def test_styleme3d_render_on_a_full_disk_is_one_line_and_leaves_nothing(stylised_run: Path, tmp_path: Path) -> None:
    """ns-render printed "Render Complete" and exited 0 over a truncated 8 KB mp4 here."""
    with tmpfs(tmp_path / "disk", size="24k") as mounted:
        proc = run("-m", "styleme3d_ns.apps.render", "interpolate", "--load-config", str(stylised_run),
                   "--output-path", str(tmp_path / "disk" / "renders" / "turntable.mp4"),
                   "--interpolation-steps", "6", "--pipeline.model.look.strength", "0.5",
                   limit_bytes=None if mounted else 24 << 10)  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-3000:]
        one_line_error(proc.stderr, "cannot write", "turntable.mp4", "nothing was written there")
        assert "Render Complete" not in proc.stdout
        assert list((tmp_path / "disk").iterdir()) == []  # no video, no staging folder, not even renders/


# ------------------------------------------------------------------------------------------------ eval
def test_eval_on_a_full_disk_names_the_output_not_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from styleme3d_ns.eval.cli import EvalConfig, _write_outputs

    with tmpfs(tmp_path / "disk", size="16k") as mounted:
        if not mounted:  # simulate: the data reaches the file system, which reports no space at fsync
            import errno

            monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        config = EvalConfig(load_config=tmp_path / "config.yml", output=tmp_path / "disk" / "metrics.json")
        noise = torch.rand(256, 256, 3, generator=torch.Generator().manual_seed(0))  # ~200 KB as PNG
        with pytest.raises(OutputWriteError) as info:
            _write_outputs(config, {"psnr": 20.0}, [[noise, noise]], 0.0)
        sheet = tmp_path / "disk" / "metrics_sheet.png"
        assert str(info.value).startswith(f"cannot write {sheet}: disk full; nothing was written there")
        assert ".tmp" not in str(info.value)
        assert list((tmp_path / "disk").iterdir()) == []


def test_eval_with_another_scenes_base_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nerfstudio.cameras.cameras import Cameras

    import styleme3d_ns.eval.cli as eval_cli
    from styleme3d_ns.eval.render import CameraPool

    def cameras(shift: float) -> Cameras:
        c2w = torch.eye(4)[:3].expand(2, 3, 4).clone()
        c2w[:, 0, 3] = torch.tensor([0.0, 1.0]) + shift
        return Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=16.0, cy=16.0, width=32, height=32)

    elsewhere = SimpleNamespace(cameras=cameras(5.0))
    other = SimpleNamespace(datamanager=SimpleNamespace(eval_dataset=elsewhere, train_dataset=elsewhere))
    monkeypatch.setattr(eval_cli, "load_pipeline", lambda path: (None, other))
    config = eval_cli.EvalConfig(load_config=tmp_path / "run.yml", base_config=tmp_path / "other.yml")
    with pytest.raises(UserInputError) as info:
        eval_cli._load_base(config, CameraPool(cameras(0.0), cameras(0.0)))
    assert "was trained on other cameras" in str(info.value)
    assert "pass the --base-config of the run this one was stylised from (same --data)" in str(info.value)


# ------------------------------------------------------------------------------------------------ batch
def test_a_duplicate_key_in_a_grid_is_an_error_naming_its_lines(inputs: dict, style_path: Path, tmp_path: Path):  # noqa: ANN201
    from styleme3d_ns.batch.grid import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"scenes:\n  a: {inputs['good']}\n  b: {inputs['one']}\n  a: {inputs['one']}\n"
                    f"styles: [{style_path}]\nmethods: [styleme3d]\n")  # fmt: skip
    with pytest.raises(UserInputError) as info:
        load_grid(grid)
    assert str(info.value) == (
        f"{grid} names 'a' twice in one mapping (lines 2 and 4); YAML would keep only the last: remove or rename one"
    )


class _FakeRay:
    """Ray as the batch uses it, in-process: like ray.init, `init` installs a SIGTERM handler of its own (Ray's
    prints a native stack dump); the second `wait` is interrupted by a SIGTERM to this process."""

    def __init__(self) -> None:
        self.waits, self.shut_down = 0, False

    def init(self, **kwargs: object) -> None:
        signal.signal(signal.SIGTERM, lambda *_: print("*** SIGTERM received *** PC: @ 0x0 (native dump)"))

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": 2}}]

    def remote(self, fn):  # noqa: ANN001, ANN201
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=lambda job, base, cpus: job))

    def wait(self, pending: list, num_returns: int, timeout: float) -> tuple[list, list]:
        self.waits += 1
        if self.waits == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return pending[:1], pending[1:]

    def get(self, job):  # noqa: ANN001, ANN201
        from styleme3d_ns.batch.jobs import JobResult

        return JobResult(job.id, "done", seconds=1.0)

    def shutdown(self) -> None:
        self.shut_down = True


def test_sigterm_ends_a_batch_with_one_line_saying_what_finished_and_how_to_resume(
    inputs: dict, style_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import styleme3d_ns.batch.runner as runner
    from styleme3d_ns.batch.cli import BatchConfig, main

    grid = tmp_path / "grid.yaml"
    coffee = tmp_path / "coffee.png"
    Image.new("RGB", (64, 64), (90, 60, 30)).save(coffee)
    grid.write_text(f"scenes: {{a: {inputs['good']}}}\nstyles: [{style_path}, {coffee}]\nmethods: [styleme3d]\n")
    ray = _FakeRay()
    monkeypatch.setattr(runner, "import_ray", lambda: ray)
    monkeypatch.setattr(sys, "argv", ["styleme3d-batch", str(grid)])
    before = signal.getsignal(signal.SIGTERM)
    assert main(BatchConfig(grid=grid)) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip()
    assert err == (
        "styleme3d-batch: stopped by SIGTERM: 1 of the 2 jobs to run finished (0 failed), 0 had finished before; "
        f"rerun `styleme3d-batch {grid}` to do the other 1 (finished jobs are skipped)"
    )
    assert ray.shut_down and signal.getsignal(signal.SIGTERM) == before
