"""CLIP pieces checked against direct open_clip computations: encoder, text guidance, 3DG-QA, content loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from styleme3d_ns.guidance.clip_encoder import ClipEncoder, load_clip_encoder
from styleme3d_ns.guidance.clip_text import ClipTextGuidance, ClipTextGuidanceConfig, augment_views
from styleme3d_ns.guidance.perceptual_content import PerceptualContentConfig, PerceptualContentLoss
from styleme3d_ns.guidance.quality_prior import QA_PROMPTS, QA_WEIGHTS, QualityPrior, QualityPriorConfig
from styleme3d_ns.guidance.weights import MissingWeightsError

HINT = "pass --pipeline.model.clip.pretrained FILE"


@pytest.fixture(scope="module")
def encoder(tiny_clip: tuple[Path, Path]) -> ClipEncoder:
    config, checkpoint = tiny_clip
    return load_clip_encoder(str(config), str(checkpoint), hint=HINT)


def _images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_loader_restores_the_checkpoint_exactly(encoder: ClipEncoder, tiny_clip: tuple[Path, Path]) -> None:
    saved = torch.load(tiny_clip[1], weights_only=True)
    loaded = encoder.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_encoder_matches_open_clip_on_clip_sized_input(encoder: ClipEncoder) -> None:
    images = _images(0)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = F.normalize(encoder.model.encode_image((images - mean) / std), dim=-1)
        tokens = encoder.tokenizer(["a watercolor painting"])
        text_reference = F.normalize(encoder.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(encoder.encode_images(images), reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(encoder.encode_text(["a watercolor painting"]), text_reference, atol=1e-6, rtol=1e-5)


def test_renders_of_any_size_are_resized_to_clips_input(encoder: ClipEncoder) -> None:
    images = _images(1, size=64)
    direct = encoder.encode_images(F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True))
    torch.testing.assert_close(encoder.encode_images(images), direct)


@pytest.mark.parametrize(
    ("model_name", "pretrained", "expected"),
    [
        ("ViT-B-32", "openai", "timm/vit_base_patch32_clip_224.openai"),  # a tag: looked up in the HF cache only
        ("ViT-B-32", "/nowhere/clip.pt", "neither a file nor a pretrained tag"),
        ("ViT-Q-99", "openai", "is not an open_clip model"),
        ("/nowhere/custom.json", "openai", "does not exist"),
    ],
)
def test_missing_clip_weights_are_a_one_line_error(
    model_name: str, pretrained: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError) as err:
        load_clip_encoder(model_name, pretrained, hint=HINT)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_global_loss_is_one_minus_the_cosine_to_the_prompt(encoder: ClipEncoder) -> None:
    config = ClipTextGuidanceConfig(prompt="a watercolor painting", weight=2.0)
    guidance = ClipTextGuidance(config, encoder)
    images = _images(2)
    terms = guidance(images, step=0)
    cosine = encoder.encode_images(images) @ encoder.encode_text(["a watercolor painting"])[0]
    torch.testing.assert_close(terms["loss_global"], 1 - cosine.mean())
    torch.testing.assert_close(terms["loss"], 2.0 * (1 - cosine.mean()))
    torch.testing.assert_close(terms["clip_score"], cosine.mean())


def test_gradient_reaches_the_render_and_never_the_clip_weights(encoder: ClipEncoder) -> None:
    guidance = ClipTextGuidance(ClipTextGuidanceConfig(prompt="pop art", num_augs=2, perspective=0.5), encoder)
    images = _images(3).requires_grad_(True)
    guidance(images, step=0)["loss"].backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())


def test_directional_loss_matches_stylegan_nadas_formula(encoder: ClipEncoder) -> None:
    config = ClipTextGuidanceConfig(prompt="pop art", source_prompt="a photo", global_weight=0.0, directional_weight=1)
    guidance = ClipTextGuidance(config, encoder)
    images, source = _images(4), _images(5)
    terms = guidance(images, step=0, source_images=source)
    text = encoder.encode_text(["pop art", "a photo"])
    delta_text = F.normalize(text[0] - text[1], dim=-1)
    delta_image = F.normalize(encoder.encode_images(images) - encoder.encode_images(source), dim=-1)
    torch.testing.assert_close(terms["loss_directional"], 1 - (delta_image @ delta_text).mean())
    torch.testing.assert_close(terms["loss"], terms["loss_directional"])
    with pytest.raises(ValueError, match="source_images"):
        guidance(images, step=0)


def test_augmented_views_start_with_the_full_image_and_crop_stacked_sets_identically() -> None:
    images = _images(6, batch=2, size=48)
    stacked = torch.cat((images, images.flip(1)), dim=1)  # a second aligned set in the channels
    views = augment_views(stacked, 3, (0.5, 0.9), 0.0, torch.Generator().manual_seed(0))
    assert views.shape == (8, 6, 48, 48)
    torch.testing.assert_close(views[:2], stacked)
    torch.testing.assert_close(views[:, 3:], views[:, :3].flip(1))  # same crop boxes for both sets
    assert not torch.allclose(views[2:4], stacked)
    warped = augment_views(images, 2, (0.5, 0.9), 0.5, torch.Generator().manual_seed(0))
    assert warped.shape == (6, 3, 48, 48) and warped.min() >= 0 and warped.max() <= 1


def test_an_empty_prompt_is_refused(encoder: ClipEncoder) -> None:
    with pytest.raises(ValueError, match="--pipeline.model.prompt"):
        ClipTextGuidance(ClipTextGuidanceConfig(prompt="  "), encoder)


def test_quality_prior_is_paper_000s_weighted_antonym_softmax(encoder: ClipEncoder) -> None:
    assert QA_PROMPTS[0][0].startswith("Good") and QA_PROMPTS[1][1].startswith("Blurry")
    assert QA_PROMPTS[2] == ("Colorful photo.", "Dull photo.") and QA_WEIGHTS == (0.4, 0.4, 0.2)
    prior = QualityPrior(QualityPriorConfig(weight=0.5), encoder)
    images = _images(7, batch=3)
    terms = prior(images, step=0)
    embeds = encoder.encode_images(images)
    probs = []
    for positive, negative in QA_PROMPTS:
        text = encoder.encode_text([positive, negative])
        logits = encoder.logit_scale * embeds @ text.T
        probs.append(logits.softmax(dim=-1)[:, 0])
    expected = 1 - (0.4 * probs[0] + 0.4 * probs[1] + 0.2 * probs[2]).mean()
    torch.testing.assert_close(terms["loss_qa"], expected)
    torch.testing.assert_close(terms["loss"], 0.5 * expected)
    torch.testing.assert_close(terms["sharpness"], probs[1].mean())


def test_content_loss_is_zero_on_the_content_and_grows_with_change(effnet: torch.nn.Module) -> None:
    loss = PerceptualContentLoss(PerceptualContentConfig(weight=1.0))
    content = _images(8, batch=1, size=64)
    assert float(loss(content, 0, content_images=content)["loss"]) == 0.0
    changed = (content * 0.5).requires_grad_(True)
    value = loss(changed, 0, content_images=content)["loss"]
    assert float(value.detach()) > 0
    value.backward()
    assert changed.grad is not None and changed.grad.abs().sum() > 0
