"""clip-splat (paper 002) on the test scene with a tiny random open_clip model: what moves, and the CLIP score."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from styleme3d_ns.method_configs.clip_splat_config import clip_splat

from tests.conftest import method_config, sha256

PROMPT = "a watercolor painting"
GEOMETRY = ("means", "scales", "quats")


def _config(scene_dir: Path, out: Path, steps: int, tiny_clip: tuple[Path, Path], **model_kwargs):  # noqa: ANN202
    clip_config, clip_checkpoint = tiny_clip
    clip = replace(clip_splat.config.pipeline.model.clip, model_name=str(clip_config), pretrained=str(clip_checkpoint))
    return method_config(clip_splat, scene_dir, out, steps, prompt=PROMPT, clip=clip, **model_kwargs)


def _trainer(config):  # noqa: ANN001, ANN202
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _one_backward(trainer) -> None:  # noqa: ANN001
    model = trainer.pipeline.model
    model.train()
    camera, batch = trainer.pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(camera), batch)
    sum(losses.values()).backward()


def _grads(model) -> dict[str, bool]:  # noqa: ANN001
    return {k: p.grad is not None and bool(p.grad.abs().sum() > 0) for k, p in model.gauss_params.items()}


@torch.no_grad()
def _mean_clip_score(trainer) -> tuple[float, float]:  # noqa: ANN001
    """Mean CLIP cosine to the prompt over the training views: (unstyled base, current)."""
    model = trainer.pipeline.model
    model.eval()
    guidance = model.guidance["clip"]
    cameras = trainer.pipeline.datamanager.train_dataset.cameras.to(model.device)
    base, now = [], []
    for i in range(cameras.shape[0]):
        camera = cameras[i : i + 1]
        outputs = model.get_outputs(camera)
        render = outputs["rgb"].permute(2, 0, 1)[None]
        original = model.render_base(camera, outputs["background"]).permute(2, 0, 1)[None]
        now.append(float(guidance.encoder.encode_images(render)[0] @ guidance.text_target))
        base.append(float(guidance.encoder.encode_images(original)[0] @ guidance.text_target))
    return sum(base) / len(base), sum(now) / len(now)


@pytest.mark.parametrize("train_opacity", [False, True])
def test_finetune_gradients_reach_only_the_trainable_groups(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path, train_opacity: bool
) -> None:
    config = _config(scene_dir, tmp_path, 1, tiny_clip, base_checkpoint=base_checkpoint, train_opacity=train_opacity)
    trainer = _trainer(config)
    _one_backward(trainer)
    grads = _grads(trainer.pipeline.model)
    assert grads["features_dc"] and grads["features_rest"]
    assert not any(grads[k] for k in GEOMETRY)
    assert grads["opacities"] is train_opacity
    expected = {"features_dc", "features_rest", *(["opacities"] if train_opacity else [])}
    assert set(trainer.optimizers.parameters) & set(grads) == expected


def test_joint_mode_trains_geometry_with_the_reconstruction_term(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    config = _config(scene_dir, tmp_path, 10, tiny_clip, base_checkpoint=base_checkpoint, mode="joint", k=0.1)
    trainer = _trainer(config)
    model = trainer.pipeline.model
    assert not model.geometry_frozen
    start = {k: model.gauss_params[k].detach().clone() for k in GEOMETRY}
    trainer.train()
    for key in GEOMETRY:
        assert not torch.equal(start[key], model.gauss_params[key].detach()), f"joint mode left {key} unchanged"
    camera, batch = trainer.pipeline.datamanager.next_train(10)
    model.train()
    losses = model.get_loss_dict(model(camera), batch)
    assert {"main_loss", "clip"} <= set(losses)  # paper 002 eq. 3: L_recon - k CLIP


@pytest.fixture(scope="module")
def finetuned(scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path_factory) -> object:  # noqa: ANN001
    """A 50-step fine-tune of the base colours toward the prompt (the trainer, after training)."""
    torch.manual_seed(0)
    digest = sha256(base_checkpoint)
    config = _config(scene_dir, tmp_path_factory.mktemp("clip_run"), 50, tiny_clip, base_checkpoint=base_checkpoint)
    trainer = _trainer(config)
    trainer.train()
    assert sha256(base_checkpoint) == digest, "the base checkpoint must never be modified"
    return trainer


def test_clip_score_of_the_renders_rises_over_50_steps(finetuned) -> None:  # noqa: ANN001
    base, now = _mean_clip_score(finetuned)
    assert now > base + 0.05, f"CLIP score {base:.3f} -> {now:.3f}"


def test_finetune_leaves_geometry_and_opacity_bit_identical(finetuned, base_checkpoint: Path) -> None:  # noqa: ANN001
    from styleme3d_ns.models.checkpoint import load_gaussians

    base = load_gaussians(base_checkpoint)
    model = finetuned.pipeline.model
    for key in (*GEOMETRY, "opacities"):
        assert torch.equal(model.gauss_params[key].detach().cpu(), base[key].float()), key
    assert not torch.equal(model.features_dc.detach().cpu(), base["features_dc"].float())


def test_missing_clip_model_is_a_one_line_error_naming_the_flag(
    scene_dir: Path, base_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    config = method_config(clip_splat, scene_dir, tmp_path / "out", 1, prompt=PROMPT, base_checkpoint=base_checkpoint)
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    message = str(err.value)
    assert "CLIP ViT-B-32" in message and "--pipeline.model.clip.pretrained" in message and "\n" not in message


def test_missing_prompt_is_a_one_line_error(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    config = _config(scene_dir, tmp_path, 1, tiny_clip, base_checkpoint=base_checkpoint)
    config.pipeline.model = replace(config.pipeline.model, prompt="")
    with pytest.raises(SystemExit, match="--pipeline.model.prompt"):
        _trainer(config)
