"""Perceptual content preservation: keep a stylised render's deep features close to the original's.

    L_content = mean((F(I) - F(I_base))^2)

with F one tap of a frozen ImageNet backbone (the packaged EfficientNet-Lite0 by default, VGG19 r42 with user
weights). This is the content term of neural style transfer (Gatys et al.), which SOS (``gram.py``) also carries;
text-guided methods such as clip-splat use it alone, so that CLIP changes the look and not the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from styleme3d_ns.guidance.backbones import BackboneName, build_backbone
from styleme3d_ns.guidance.base import Guidance, GuidanceConfig


@dataclass
class PerceptualContentConfig(GuidanceConfig):
    """Feature-space content loss against renders of the unstyled scene."""

    weight: float = 0.0
    """Multiplier on L_content; 0 = off."""
    backbone: BackboneName = "efficientnet-lite0"
    """Feature network: efficientnet-lite0 (weights ship with the package) or vgg19 (your weights)."""
    backbone_weights: Path | None = None
    """Weights file for the backbone; None = its default location (packaged for efficientnet-lite0)."""
    tap: str | None = None
    """Feature tap; None = the backbone's content tap (EfficientNet block7, VGG r42)."""


class PerceptualContentLoss(Guidance):
    """``loss(renders, step, content_images=base_renders)`` -> ``{"loss", "loss_content"}``."""

    config: PerceptualContentConfig

    def __init__(self, config: PerceptualContentConfig, hint: str | None = None) -> None:
        super().__init__(config)
        self.backbone = build_backbone(config.backbone, config.backbone_weights, hint=hint)
        self.tap = config.tap if config.tap is not None else self.backbone.default_content_tap
        self.backbone.check_taps((self.tap,))

    def forward(self, images: Tensor, step: int, content_images: Tensor | None = None) -> dict[str, Tensor]:
        """``images``/``content_images`` ``[B, 3, H, W]`` in [0, 1]; the content side carries no gradient."""
        if content_images is None:
            raise ValueError("the content loss needs content_images (renders of the unstyled scene).")
        images = self.prepare_images(images)
        content_images = self.prepare_images(content_images, "content_images").detach()
        features = self.backbone(images, (self.tap,))[self.tap]
        target = self.backbone(content_images, (self.tap,))[self.tap].detach()
        loss_content = F.mse_loss(features.float(), target.float())
        return {"loss_content": loss_content, "loss": self.config.weight * loss_content}
