"""The guided-splat base model: loading, phases, freezing, resuming, the colour fast path, stylisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from styleme3d_ns.models.checkpoint import GAUSSIAN_KEYS, load_gaussians
from tests.conftest import STYLE_STEPS, sha256, styleme3d_config


def _trainer(config):  # noqa: ANN001, ANN202
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_colour_only_training_leaves_geometry_bit_identical(stylised_run: Path, base_checkpoint: Path) -> None:
    base = load_gaussians(base_checkpoint)
    styled = load_gaussians(stylised_run.parent)
    for key in ("means", "scales", "quats", "opacities"):
        assert torch.equal(base[key], styled[key]), f"{key} moved during colour-only training"
    assert not torch.allclose(base["features_dc"], styled["features_dc"]), "colours did not change"
    assert not torch.allclose(base["features_rest"], styled["features_rest"])


def test_frozen_tensors_are_absent_from_optimisers(scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path):  # noqa: ANN001
    config = styleme3d_config(scene_dir, tmp_path, 1, base_checkpoint=base_checkpoint, style_image=style_path)
    trainer = _trainer(config)
    model = trainer.pipeline.model
    assert set(trainer.optimizers.optimizers) == {"features_dc", "features_rest"}
    assert [k for k in GAUSSIAN_KEYS if model.gauss_params[k].requires_grad] == ["features_dc", "features_rest"]
    # the optimisers were built on the loaded tensors, not on a pre-load initialisation
    base = load_gaussians(base_checkpoint)
    assert torch.equal(model.means, base["means"])
    held = trainer.optimizers.optimizers["features_dc"].param_groups[0]["params"][0]
    assert held is model.gauss_params["features_dc"]


def test_resume_with_load_dir_keeps_optimisers_on_the_model_tensors(
    stylised_run: Path, scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path
) -> None:
    """Instruct-GS2GS issue #24: after --load-dir its optimiser kept pre-load tensors and edits were lost."""
    loaded = load_gaussians(stylised_run.parent)
    config = styleme3d_config(
        scene_dir, tmp_path, STYLE_STEPS + 5, base_checkpoint=base_checkpoint, style_image=style_path
    )
    config.load_dir = stylised_run.parent / "nerfstudio_models"
    trainer = _trainer(config)
    model = trainer.pipeline.model
    for name, optimiser in trainer.optimizers.optimizers.items():
        assert optimiser.param_groups[0]["params"][0] is model.gauss_params[name]
    assert torch.equal(model.features_dc.detach(), loaded["features_dc"])
    trainer.train()
    assert not torch.equal(model.features_dc.detach(), loaded["features_dc"]), "steps after resume were lost"
    assert torch.equal(model.means.detach(), loaded["means"])


def test_colour_fast_path_equals_rasterising(stylised_run: Path) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(stylised_run, test_mode="val")
    model = pipeline.model
    model.train()
    camera, _ = pipeline.datamanager.next_train(0)
    model.config.colour_fast_path = True
    fast, alpha_fast, _ = model.render_colours(camera, model.features_dc, model.features_rest)
    assert model.renderer.uses_colour_map(camera)
    model.config.colour_fast_path = False
    slow, alpha_slow, _ = model.render_colours(camera, model.features_dc, model.features_rest)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha_fast, alpha_slow, atol=1e-6, rtol=0)


def test_stylised_renders_are_closer_to_the_style(stylised_run: Path, base_run: Path, style_path: Path) -> None:
    from styleme3d_ns.data.style_image import load_style_image
    from styleme3d_ns.eval import render_eval_views
    from styleme3d_ns.guidance.backbones import build_backbone
    from styleme3d_ns.guidance.gram import gram_distance

    backbone = build_backbone("efficientnet-lite0")
    style = load_style_image(style_path)
    before = gram_distance(render_eval_views(base_run).rgb.permute(0, 3, 1, 2), style, backbone).mean()
    after = gram_distance(render_eval_views(stylised_run).rgb.permute(0, 3, 1, 2), style, backbone).mean()
    # 150 steps at 64 px give about -22% (the >= 50% of the full demo run is recorded in docs/styleme3d.md);
    # a run whose colours do not follow the style loss stays at 0%
    assert after < 0.85 * before, f"Gram distance {before:.4g} -> {after:.4g}: not stylised"


def test_missing_base_checkpoint_is_a_one_line_error(scene_dir: Path, style_path: Path, tmp_path: Path) -> None:
    config = styleme3d_config(scene_dir, tmp_path, 1, base_checkpoint=tmp_path / "nope.ckpt", style_image=style_path)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    message = str(err.value)
    assert "nope.ckpt" in message and "\n" not in message and "base-checkpoint" in message


def test_corrupt_base_checkpoint_is_a_one_line_error_and_untouched(scene_dir: Path, style_path: Path, tmp_path: Path):  # noqa: ANN001
    bad = tmp_path / "step-000000100.ckpt"
    bad.write_bytes(b"this is not a torch checkpoint")
    digest = sha256(bad)
    config = styleme3d_config(scene_dir, tmp_path / "out", 1, base_checkpoint=bad, style_image=style_path)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)
    assert sha256(bad) == digest


def test_unreadable_style_image_is_a_one_line_error(scene_dir: Path, base_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "style.png"
    bad.write_bytes(b"\x89PNG not really")
    config = styleme3d_config(scene_dir, tmp_path / "out", 1, base_checkpoint=base_checkpoint, style_image=bad)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "style.png" in str(err.value) and "\n" not in str(err.value)


def test_missing_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    config = styleme3d_config(tmp_path / "no_such_scene", tmp_path / "out", 1)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "no_such_scene" in str(err.value) and "\n" not in str(err.value)


def test_missing_vgg_weights_is_a_one_line_error_naming_the_flag(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from styleme3d_ns.guidance.gram import GramStyleLossConfig

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached VGG-19 there
    config = styleme3d_config(
        scene_dir, tmp_path / "out", 1, base_checkpoint=base_checkpoint, style_image=style_path,
        sos=GramStyleLossConfig(backbone="vgg19"),
    )  # fmt: skip
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "VGG-19" in str(err.value) and "--pipeline.model.sos.backbone-weights" in str(err.value)
    assert "\n" not in str(err.value)


def test_reconstruct_then_freeze_in_one_run(scene_dir: Path, style_path: Path, tmp_path: Path) -> None:
    """No base checkpoint: splatfacto reconstruction (geometry moves), then geometry freezes and colours stylise."""
    config = styleme3d_config(scene_dir, tmp_path, 30, reconstruct_steps=20, style_image=style_path)
    trainer = _trainer(config)
    model = trainer.pipeline.model
    assert not model.geometry_frozen and "means" in trainer.optimizers.optimizers
    start = model.means.detach().clone()
    trainer.train()
    assert model.geometry_frozen
    assert not any(model.gauss_params[k].requires_grad for k in ("means", "scales", "quats", "opacities"))
    assert not torch.equal(start, model.means.detach()), "reconstruction phase did not move the geometry"
    assert not torch.equal(model.features_dc.detach(), model.base_features_dc), "stylisation phase did not run"


def test_our_checkpoints_load_with_torchs_weights_only_default(stylised_run: Path) -> None:
    """ns-render/ns-export/--load-dir call torch.load without weights_only; torch >= 2.6 then means weights_only."""
    ckpt = sorted((stylised_run.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu")
    assert "pipeline" in state and "optimizers" in state


def test_colour_maps_are_rebuilt_when_geometry_changes(stylised_run: Path) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(stylised_run, test_mode="val")
    model = pipeline.model
    model.train()
    camera, _ = pipeline.datamanager.next_train(0)
    before, _, _ = model.render_colours(camera, model.features_dc, model.features_rest)
    with torch.no_grad():
        model.means.add_(0.05)  # an in-place geometry edit, as an optimiser or densification would make
    after, _, _ = model.render_colours(camera, model.features_dc, model.features_rest)
    model.config.colour_fast_path = False
    reference, _, _ = model.render_colours(camera, model.features_dc, model.features_rest)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, atol=1e-6, rtol=0)


FIXTURE_0_1_0 = Path(__file__).parent / "fixtures" / "styleme3d-0.1.0-step-000000003.ckpt"
"""A stylised styleme3d checkpoint (150 Gaussians, SH 3, reconstruct_steps 2, 3 steps) written by the 0.1.0 model
layer (FrozenColourSplatModel), before the phase/terms refactor."""


def test_a_checkpoint_written_by_the_0_1_0_model_layer_loads_and_renders(
    scene_dir: Path, style_path: Path, tmp_path: Path
) -> None:
    state = torch.load(FIXTURE_0_1_0, map_location="cpu", weights_only=False)  # our own fixture file
    config = styleme3d_config(scene_dir, tmp_path, 1, style_image=style_path, reconstruct_steps=2)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.load_pipeline(state["pipeline"], state["step"])  # strict, as ns-render / ns-export / ns-eval load it
    model = pipeline.model
    for key in GAUSSIAN_KEYS:
        assert torch.equal(model.gauss_params[key].data, state["pipeline"][f"_model.gauss_params.{key}"])
    assert model.phase == "stylise", "past reconstruct_steps the loaded run is a stylised one"
    model.eval()
    camera, batch = pipeline.datamanager.next_eval_image(0)
    outputs = model.get_outputs_for_camera(camera)
    base = model.render_base(camera.to(model.device), model.background_color)
    torch.testing.assert_close(outputs["content_rgb"], base, atol=1e-5, rtol=0)
    assert not torch.allclose(outputs["rgb"], outputs["content_rgb"]), "the stylised colours render, not the base"
    metrics, _ = model.get_image_metrics_and_images(outputs, batch)
    assert {"psnr", "content_psnr", "content_ssim", "gram_distance"} <= set(metrics)


def test_a_config_yml_from_before_a_field_existed_loads_with_its_default(scene_dir: Path, tmp_path: Path) -> None:
    import yaml

    text = yaml.dump(styleme3d_config(scene_dir, tmp_path, 1))
    old = "\n".join(
        line for line in text.splitlines() if not line.strip().startswith(("offline_teacher:", "strength:"))
    )
    assert "offline_teacher" not in old
    loaded = yaml.load(old, Loader=yaml.Loader)  # as nerfstudio's eval_setup reads config.yml
    model = loaded.pipeline.model
    assert model.offline_teacher == "auto" and model.look.strength == 1.0 and model.teacher.strength == 1.0


FIXTURE_PRE_LIFECYCLE = Path(__file__).parent / "fixtures" / "styleme3d-palette-pre-lifecycle"
"""A stylised styleme3d run written just before the palette/lifecycle refactor (300 Gaussians, SH 3): config.yml (its
classes named by their 0.1.0 module paths, e.g. styleme3d_ns.trainer), the checkpoint of a two-style teacher palette
and a look (style 1 at strength 0.5, blended a quarter to style 0), and what that code rendered and exported."""


def test_a_run_written_before_the_lifecycle_refactor_loads_and_renders_the_same(scene_dir: Path) -> None:
    import yaml
    from nerfstudio.cameras.cameras import Cameras

    config = yaml.load((FIXTURE_PRE_LIFECYCLE / "config.yml").read_text(), Loader=yaml.Loader)  # as eval_setup
    config.data = config.pipeline.datamanager.data = scene_dir  # its scene folder is gone; cameras come from below
    config.pipeline.datamanager.dataparser.data = scene_dir
    pipeline = config.pipeline.setup(device="cpu", test_mode="inference")
    state = torch.load(FIXTURE_PRE_LIFECYCLE / "step-000000000.ckpt", map_location="cpu", weights_only=False)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    reference = torch.load(FIXTURE_PRE_LIFECYCLE / "reference.pt", weights_only=False)
    model = pipeline.model.eval()
    assert model.palette_labels() == reference["labels"] == ["coffee", "immunohistochemistry"]
    camera = Cameras(**reference["camera"])
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera)
    torch.testing.assert_close(outputs["rgb"], reference["rgb"], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs["content_rgb"], reference["content_rgb"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.shs_0, reference["shs_0"], atol=0, rtol=0)
    torch.testing.assert_close(model.shs_rest, reference["shs_rest"], atol=0, rtol=0)
