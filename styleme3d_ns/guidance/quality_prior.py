"""3DG-QA: a differentiable CLIP aesthetic prior (paper 000, "3D Gaussian Quality Assessment").

Paper 000 scores each render with CLIP-ViT-B and antonym prompts ("Good, Sharp, Colorful" vs "Bad, Blurry, Dull")
in the CLIP-IQA manner: for each pair the probability of the positive word is the softmax of the two CLIP logits,

    p_k(I) = exp(s cos(I, pos_k)) / (exp(s cos(I, pos_k)) + exp(s cos(I, neg_k)))       (s = CLIP's logit scale)

and the loss is                                                                        (paper 000, 3DG-QA)

    L_QA = 1 - mean_I (0.4 p_quality + 0.4 p_sharpness + 0.2 p_colorfulness).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from styleme3d_ns.guidance.base import Guidance, GuidanceConfig
from styleme3d_ns.guidance.clip_encoder import ClipEncoder, load_clip_encoder

# paper 000 3DG-QA: antonym prompt pairs and the weights of the three quality dimensions
QA_PROMPTS: tuple[tuple[str, str], ...] = (
    ("Good photo.", "Bad photo."),
    ("Sharp photo.", "Blurry photo."),
    ("Colorful photo.", "Dull photo."),
)
QA_WEIGHTS: tuple[float, ...] = (0.4, 0.4, 0.2)
QA_NAMES: tuple[str, ...] = ("quality", "sharpness", "colorfulness")


@dataclass
class QualityPriorConfig(GuidanceConfig):
    """3DG-QA aesthetic prior on a CLIP ViT-B (paper 000)."""

    weight: float = 0.0
    """Multiplier on L_QA; 0 = off (needs CLIP weights; paper 000 uses it as a small prior)."""
    model_name: str = "ViT-B-32"
    """open_clip architecture (paper: CLIP-ViT-B), or the path of an open_clip model config JSON."""
    pretrained: str = "openai"
    """open_clip pretrained tag looked up in the local Hugging Face cache, or a local checkpoint file."""


class QualityPrior(Guidance):
    """``prior(renders, step)`` -> ``{"loss", "loss_qa", "quality", "sharpness", "colorfulness"}``."""

    config: QualityPriorConfig

    def __init__(self, config: QualityPriorConfig, encoder: ClipEncoder) -> None:
        super().__init__(config)
        self.encoder = encoder
        prompts = [text for pair in QA_PROMPTS for text in pair]
        # [3, 2, D]: for each dimension, (positive, negative) text embeddings
        self.register_buffer("text", encoder.encode_text(prompts).view(len(QA_PROMPTS), 2, -1), persistent=False)
        self.register_buffer("qa_weights", torch.tensor(QA_WEIGHTS), persistent=False)

    @classmethod
    def from_config(cls, config: QualityPriorConfig, device: str | torch.device, hint: str) -> QualityPrior:
        encoder = load_clip_encoder(config.model_name, config.pretrained, device=device, hint=hint)
        return cls(config, encoder).to(device)

    def probabilities(self, images: Tensor) -> Tensor:
        """``[B, 3]`` probabilities of (good, sharp, colourful) for ``images`` ``[B, 3, H, W]`` in [0, 1]."""
        embeds = self.encoder.encode_images(images)  # [B, D]
        logits = self.encoder.logit_scale * torch.einsum("bd,kpd->bkp", embeds, self.text)
        return logits.softmax(dim=-1)[..., 0]

    def forward(self, images: Tensor, step: int) -> dict[str, Tensor]:
        probs = self.probabilities(self.prepare_images(images))
        loss_qa = 1.0 - (probs @ self.qa_weights).mean()  # paper 000 3DG-QA loss
        terms = {name: probs[:, k].mean().detach() for k, name in enumerate(QA_NAMES)}
        terms["loss_qa"] = loss_qa
        terms["loss"] = self.config.weight * loss_qa
        return terms
