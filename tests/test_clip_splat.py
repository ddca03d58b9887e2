"""clip-splat (paper 002) on the test scene with a tiny random open_clip model: what moves, the CLIP score, and
a palette of several prompts trained in turn over one geometry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from styleme3d_ns.method_configs.clip_splat_config import clip_splat

from styleme3d_ns.eval.render import load_pipeline
from styleme3d_ns.models.clip_splat import configured_prompts
from styleme3d_ns.models.look import LookConfig
from tests.conftest import method_config, run_trainer, sha256

PROMPT = "a watercolor painting"
PROMPTS = ("a watercolor painting", "a charcoal drawing")
GEOMETRY = ("means", "scales", "quats")


def _config(scene_dir: Path, out: Path, steps: int, tiny_clip: tuple[Path, Path], prompt: object = PROMPT,
            **model_kwargs):  # noqa: ANN202  # fmt: skip
    clip_config, clip_checkpoint = tiny_clip
    clip = replace(clip_splat.config.pipeline.model.clip, model_name=str(clip_config), pretrained=str(clip_checkpoint))
    return method_config(clip_splat, scene_dir, out, steps, prompt=prompt, clip=clip, **model_kwargs)


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


# ---------------------------------------------------------------- a prompt palette
TURN = 20  # steps each prompt trains


def _mean_score(model, guidance, dc: torch.Tensor, rest: torch.Tensor) -> float:  # noqa: ANN001
    """Mean CLIP cosine of the training views rendered with colours (dc, rest) to `guidance`'s prompt."""
    cameras = model.train_cameras.to(model.device)
    background = model._get_background_color()
    scores = []
    for i in range(cameras.shape[0]):
        rgb, alpha, _ = model.render_colours(cameras[i : i + 1], dc, rest)
        image = torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0).permute(2, 0, 1)[None]
        scores.append(float(guidance.encoder.encode_images(image)[0] @ guidance.text_target))
    return sum(scores) / len(scores)


@torch.no_grad()
def test_two_prompts_train_in_turn_into_two_palette_entries_named_by_the_prompts(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    with torch.enable_grad():
        config = _config(scene_dir, tmp_path / "pair", 2 * TURN, tiny_clip, prompt=PROMPTS,
                         base_checkpoint=base_checkpoint)  # fmt: skip
        config.save_config()
        trainer = _trainer(config)
        trainer.train()
        pair_yml = config.get_base_dir() / "config.yml"
        term = trainer.pipeline.model.guidance["clip"]  # the last turn's CLIP term: the first prompt's
        assert term.config.prompt == PROMPTS[0]
        torch.testing.assert_close(term.text_target, term.encoder.encode_text([PROMPTS[0]])[0])
        # the second prompt trains first (steps 0..TURN-1): what a run of that prompt alone makes in TURN steps
        alone_yml = run_trainer(_config(scene_dir, tmp_path / "alone", TURN, tiny_clip, prompt=PROMPTS[1],
                                        base_checkpoint=base_checkpoint))  # fmt: skip
    _, pair = load_pipeline(pair_yml)
    _, alone = load_pipeline(alone_yml)  # its config.yml holds one prompt as a string: a config from before palettes
    model = pair.model
    assert model.palette_labels() == list(PROMPTS) and model.palette.stored == 1
    assert f"prompt: {PROMPTS[1]}\n" in alone_yml.read_text() and configured_prompts(alone.model.config) == PROMPTS[1:]
    assert alone.model.palette_labels() == [PROMPTS[1]]

    second = model.palette_entry(1)
    torch.testing.assert_close(second[0], alone.model.features_dc, atol=1e-6, rtol=0)
    torch.testing.assert_close(second[1], alone.model.features_rest, atol=1e-6, rtol=0)
    first = model.palette_entry(0)
    assert (first[0] - second[0]).abs().mean() > 1e-3

    # each entry moved from the base toward its own prompt (the tiny random CLIP embeds both prompts alike, so
    # which prompt the last turn trained on is read from its term above, not from the scores)
    model.train_cameras = pair.datamanager.train_dataset.cameras
    base = (model.base_features_dc, model.base_features_rest)
    for (dc, rest), prompt in zip((first, second), PROMPTS, strict=True):
        guidance = model._load_clip_guidance(prompt)
        before, after = _mean_score(model, guidance, *base), _mean_score(model, guidance, dc, rest)
        assert after > before + 0.02, f"{prompt!r}: CLIP score {before:.3f} -> {after:.3f}"

    # the viewer's Style shows either entry; strength 0 is the base for both
    camera = pair.datamanager.train_dataset.cameras[0:1].to(model.device)
    frames = []
    for look in (LookConfig(style=0), LookConfig(style=1), LookConfig(style=1, strength=0.0)):
        model.config.look = look
        frames.append(model.get_outputs_for_camera(camera))
    assert (frames[0]["rgb"] - frames[1]["rgb"]).abs().mean() > 1e-3
    assert torch.equal(frames[2]["rgb"], frames[2]["content_rgb"])


def test_several_prompts_in_joint_mode_are_a_one_line_error(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    config = _config(scene_dir, tmp_path, 2, tiny_clip, prompt=PROMPTS, base_checkpoint=base_checkpoint, mode="joint")
    with pytest.raises(SystemExit) as err:
        _trainer(config)
    assert "--pipeline.model.mode finetune" in str(err.value) and "\n" not in str(err.value)


def test_a_turn_ending_stores_the_colours_and_restarts_from_the_base_with_fresh_adam_state(
    scene_dir: Path, base_checkpoint: Path, tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    trainer = _trainer(_config(scene_dir, tmp_path, 2 * TURN, tiny_clip, prompt=PROMPTS,
                               base_checkpoint=base_checkpoint))  # fmt: skip
    model, optimizers = trainer.pipeline.model, trainer.optimizers
    model.step_cb(optimizers, 0)
    assert model.guidance["clip"].config.prompt == PROMPTS[1] and model.palette_labels() == [PROMPTS[1]]
    _one_backward(trainer)
    optimizers.optimizer_step_all()
    trained = model.features_dc.detach().clone()
    assert not torch.equal(trained, model.base_features_dc)
    assert optimizers.optimizers["features_dc"].state[model.features_dc]

    model.step_cb(optimizers, TURN - 1)  # still the second prompt's turn
    assert model.palette.stored == 0 and torch.equal(model.features_dc, trained)
    model.step_cb(optimizers, TURN)
    assert model.palette_labels() == list(PROMPTS) and torch.equal(model.palette_entry(1)[0], trained)
    assert torch.equal(model.features_dc, model.base_features_dc)
    assert torch.equal(model.features_rest, model.base_features_rest)
    assert not optimizers.optimizers["features_dc"].state.get(model.features_dc)
    assert model.guidance["clip"].config.prompt == PROMPTS[0]
