"""Several style images without the offline teacher: they train in turn over one geometry (the Gram term pointed at
each), one palette entry each, named by the images; methods that cannot keep them stop with one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from styleme3d_ns.method_configs.styleme3d_config import styleme3d

from styleme3d_ns.eval.render import load_pipeline
from styleme3d_ns.guidance.gram import gram_distance
from styleme3d_ns.models.look import LookConfig
from tests.conftest import run_trainer, styleme3d_config
from tests.test_sas_portrait import astronaut, portrait_config  # noqa: F401 - astronaut is a fixture

TURN = 6  # steps each style image trains


@pytest.fixture(scope="module")
def coffee_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second style image, unlike the first (scikit-image's coffee cup)."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("coffee") / "coffee.png"
    Image.fromarray(skimage.data.coffee()[::4, ::4]).save(path)
    return path


def _config(scene_dir: Path, out: Path, steps: int, base_checkpoint: Path, style_image: tuple[Path, ...], **kwargs):  # noqa: ANN003, ANN202
    sos = replace(styleme3d.config.pipeline.model.sos, pretrain_steps=TURN)
    return styleme3d_config(scene_dir, out, steps, base_checkpoint=base_checkpoint, style_image=style_image, sos=sos,
                            offline_teacher="off", **kwargs)  # fmt: skip


def _trainer(config):  # noqa: ANN001, ANN202
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


@torch.no_grad()
def test_two_style_images_without_the_teacher_train_in_turn_into_two_palette_entries(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, coffee_path: Path, effnet, tmp_path: Path,  # noqa: ANN001
    one_torch_thread: None,
) -> None:  # fmt: skip
    styles = (style_path, coffee_path)
    with torch.enable_grad():
        pair_yml = run_trainer(_config(scene_dir, tmp_path / "pair", 2 * TURN, base_checkpoint, styles))
        # the second image trains first (steps 0..TURN-1): what a run of that image alone makes in TURN steps
        alone_yml = run_trainer(_config(scene_dir, tmp_path / "alone", TURN, base_checkpoint, styles[1:]))
    _, pair = load_pipeline(pair_yml)
    _, alone = load_pipeline(alone_yml)
    model = pair.model
    assert model.palette_labels() == [style_path.stem, coffee_path.stem] and model.palette.stored == 1
    assert alone.model.palette_labels() == [coffee_path.stem]

    second = model.palette_entry(1)
    torch.testing.assert_close(second[0], alone.model.features_dc, atol=1e-6, rtol=0)
    torch.testing.assert_close(second[1], alone.model.features_rest, atol=1e-6, rtol=0)
    first = model.palette_entry(0)
    assert (first[0] - second[0]).abs().mean() > 1e-4

    # each entry moved from the base toward its own image (Gram distance on a training view)
    camera = pair.datamanager.train_dataset.cameras[0:1].to(model.device)
    background = model._get_background_color()

    def render(dc: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        rgb, alpha, _ = model.render_colours(camera, dc, rest)
        return torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0).permute(2, 0, 1)[None]

    base = render(model.base_features_dc, model.base_features_rest)
    for (dc, rest), path in zip((first, second), styles, strict=True):
        style = model.style_image(styles.index(path))
        before, after = float(gram_distance(base, style, effnet)), float(gram_distance(render(dc, rest), style, effnet))
        assert after < before, f"{path.stem}: Gram distance {before:.4g} -> {after:.4g}"

    # strength 0 shows the base for either entry
    model.config.look = LookConfig(style=1, strength=0.0)
    frame = model.get_outputs_for_camera(camera)
    assert torch.equal(frame["rgb"], frame["content_rgb"])


def test_a_turn_points_the_gram_term_at_its_image_on_the_loaded_backbone(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, coffee_path: Path, tmp_path: Path
) -> None:
    trainer = _trainer(_config(scene_dir, tmp_path, 2 * TURN, base_checkpoint, (style_path, coffee_path)))
    model = trainer.pipeline.model
    sos = model.guidance["sos"]
    backbone = sos.backbone
    model.step_cb(trainer.optimizers, 0)
    assert torch.equal(sos._style_image, model.style_image(1)) and model.palette_labels() == [coffee_path.stem]
    model.step_cb(trainer.optimizers, TURN)
    assert model.guidance["sos"] is sos and sos.backbone is backbone
    assert torch.equal(sos._style_image, model.style_image(0))
    assert model.palette_labels() == [style_path.stem, coffee_path.stem]


def test_colour_prematch_with_style_images_in_turn_is_a_one_line_error(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, coffee_path: Path, tmp_path: Path
) -> None:
    config = _config(scene_dir, tmp_path, 2, base_checkpoint, (style_path, coffee_path), colour_prematch=True)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "--pipeline.model.colour-prematch False" in str(err.value) and "\n" not in str(err.value)


def test_several_style_images_in_sas_portrait_are_a_one_line_error(
    astronaut: Path,  # noqa: F811 - the fixture
    style_path: Path, coffee_path: Path, tmp_path: Path,
) -> None:  # fmt: skip
    config = portrait_config(astronaut, tmp_path, 1, style_image=(style_path, coffee_path), offline_teacher="off")
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "pass one --pipeline.model.style-image" in str(err.value) and "\n" not in str(err.value)
