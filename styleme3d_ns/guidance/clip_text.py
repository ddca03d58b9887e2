"""CLIP text guidance: pull renders toward a text prompt (paper 002) with the field's known improvements.

Paper 002 scores a render I against a prompt T with CLIP, CLIP(I, T) = u . v for the text and image embeddings, and
minimises -k CLIP (eq. 3 joint, eq. 5 fine-tune). We use unit-norm embeddings, so the score is the cosine, and
write the term as 1 - cos (same gradient as -cos, but a loss that is >= 0 and logs readably):

    L_global = 1 - mean_v cos(E_I(aug_v(I)), E_T(T))                               (paper 002 eq. 3/5)

Switchable extensions (all off by default = the paper; see docs/clip-splat.md for when to turn them on):

- ``num_augs`` random crops, each optionally perspective-warped, scored beside the full render (CLIPstyler's patch
  loss, Text2Mesh's augmentations): averaging over views stops CLIP from being satisfied by a pattern that only
  works for one exact framing (the adversarial "random pattern" failure paper 002 reports for large k).
- ``directional_weight``: StyleGAN-NADA's directional loss against a source prompt; the change of the image
  embedding (render vs the same view of the original scene) should point along the change of the text embedding:
      L_dir = 1 - cos(E_I(I) - E_I(I_src), E_T(T) - E_T(T_src))
  which edits toward the prompt without washing the content into a generic image of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from styleme3d_ns.guidance.base import Guidance, GuidanceConfig
from styleme3d_ns.guidance.clip_encoder import ClipEncoder, load_clip_encoder


@dataclass
class ClipTextGuidanceConfig(GuidanceConfig):
    """CLIP text guidance (paper 002) and its switchable extensions."""

    model_name: str = "ViT-B-32"
    """open_clip architecture (open_clip.list_models()), or the path of an open_clip model config JSON."""
    pretrained: str = "openai"
    """open_clip pretrained tag, looked up in the local Hugging Face cache, or a local checkpoint file."""
    prompt: str = ""
    """Target text, e.g. "a watercolor painting"."""
    source_prompt: str = "a photo"
    """Text describing the unstyled scene; only used by the directional loss."""
    global_weight: float = 1.0
    """Weight of 1 - cos(render, prompt) (paper 002's CLIP term)."""
    directional_weight: float = 0.0
    """Weight of StyleGAN-NADA's directional loss against source_prompt and the base renders; 0 = off (paper)."""
    num_augs: int = 0
    """Random crops scored beside the full render (CLIPstyler/Text2Mesh); 0 = the full render only (paper)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Crop side as a fraction of the render side, sampled uniformly in this range."""
    perspective: float = 0.0
    """Random perspective distortion of each crop (0 = none, CLIPstyler uses 0.5; corners move by up to this
    fraction of half the side)."""
    seed: int = 0
    """Seed of the augmentation sampler (runs are reproducible)."""


def _perspective_endpoints(size: int, distortion: float, generator: torch.Generator) -> list[list[int]]:
    """Corners of a square of side ``size`` each moved inward by up to ``distortion * size / 2`` (torchvision's
    RandomPerspective rule), in the order top-left, top-right, bottom-right, bottom-left."""
    half = distortion * size / 2
    jitter = (torch.rand(4, 2, generator=generator) * half).round().int().tolist()
    last = size - 1
    return [
        [jitter[0][0], jitter[0][1]],
        [last - jitter[1][0], jitter[1][1]],
        [last - jitter[2][0], last - jitter[2][1]],
        [jitter[3][0], last - jitter[3][1]],
    ]


def augment_views(
    images: Tensor, num_augs: int, crop_scale: tuple[float, float], perspective: float, generator: torch.Generator
) -> Tensor:
    """The full images followed by ``num_augs`` random square crops of each, resized back to the input size.

    Args:
        images: ``[B, C, H, W]``; several aligned image sets can be stacked along C so they get identical crops.
        num_augs: Crops per image.
        crop_scale: (min, max) crop side as a fraction of ``min(H, W)``.
        perspective: Corner displacement of each crop as a fraction of half its side (0 = none).
        generator: CPU generator drawing the crop boxes.

    Returns:
        ``[B * (1 + num_augs), C, H, W]``: index ``v * B + b`` is view ``v`` of image ``b`` (view 0 = unchanged).
        Differentiable with respect to ``images``.
    """
    _, _, height, width = images.shape
    views = [images]
    side_max = min(height, width)
    for _ in range(num_augs):
        frac = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * float(torch.rand((), generator=generator))
        side = max(2, round(frac * side_max))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        crop = images[:, :, top : top + side, left : left + side]
        if perspective > 0:
            start = [[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]]
            end = _perspective_endpoints(side, perspective, generator)
            crop = TF.perspective(crop, start, end, interpolation=TF.InterpolationMode.BILINEAR)
        views.append(torch.nn.functional.interpolate(crop, size=(height, width), mode="bilinear", antialias=True))
    return torch.cat(views, dim=0)


class ClipTextGuidance(Guidance):
    """CLIP text score guidance; call as ``guidance(renders, step, source_images=base_renders)``."""

    config: ClipTextGuidanceConfig

    def __init__(self, config: ClipTextGuidanceConfig, encoder: ClipEncoder) -> None:
        super().__init__(config)
        if not config.prompt.strip():
            raise ValueError('CLIP guidance needs a prompt: pass --pipeline.model.prompt "a watercolor painting".')
        lo, hi = config.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {config.crop_scale}.")
        self.encoder = encoder
        self.generator = torch.Generator().manual_seed(config.seed)
        text = encoder.encode_text([config.prompt, config.source_prompt])
        self.register_buffer("text_target", text[0], persistent=False)
        self.register_buffer(
            "text_direction", torch.nn.functional.normalize(text[0] - text[1], dim=-1), persistent=False
        )

    @classmethod
    def from_config(cls, config: ClipTextGuidanceConfig, device: str | torch.device, hint: str) -> ClipTextGuidance:
        """Load the CLIP weights named in ``config`` (locally only) and build the guidance on ``device``."""
        encoder = load_clip_encoder(config.model_name, config.pretrained, device=device, hint=hint)
        return cls(config, encoder).to(device)

    def forward(self, images: Tensor, step: int, source_images: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms for renders ``images`` ``[B, 3, H, W]`` in [0, 1].

        Args:
            source_images: The same views of the unstyled scene ``[B, 3, H, W]`` in [0, 1]; required when the
                directional loss is on, ignored otherwise.

        Returns:
            ``clip_score``: mean cosine of the full renders with the prompt (no augmentation; for logging);
            ``loss_global`` = 1 - mean cosine over all views; ``loss_directional`` when on;
            ``loss = weight * (global_weight * loss_global + directional_weight * loss_directional)``.
        """
        images = self.prepare_images(images)
        cfg = self.config
        batch = images.shape[0]
        directional = cfg.directional_weight > 0
        if directional:
            if source_images is None:
                raise ValueError("the directional CLIP loss needs source_images (renders of the unstyled scene).")
            source_images = self.prepare_images(source_images, "source_images")
            images = torch.cat((images, source_images), dim=1)  # identical crops for render and source
        views = augment_views(images, cfg.num_augs, cfg.crop_scale, cfg.perspective, self.generator)
        embeds = self.encoder.encode_images(views[:, :3])
        cosine = embeds @ self.text_target
        terms = {"clip_score": cosine[:batch].mean().detach(), "loss_global": 1.0 - cosine.mean()}
        total = cfg.global_weight * terms["loss_global"]
        if directional:
            with torch.no_grad():
                source_embeds = self.encoder.encode_images(views[:, 3:])
            delta = torch.nn.functional.normalize(embeds - source_embeds, dim=-1, eps=1e-8)
            terms["loss_directional"] = 1.0 - (delta @ self.text_direction).mean()
            total = total + cfg.directional_weight * terms["loss_directional"]
        terms["loss"] = cfg.weight * total
        return terms
