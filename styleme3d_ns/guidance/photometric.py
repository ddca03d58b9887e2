"""L1 to target images: the photometric anchor several methods add to their style terms.

``styleme3d`` uses it as paper 000's L_recon (the training photos, weight lambda_geo in
L_align = lambda_prior L_style + lambda_geo L_recon); ``sas-portrait`` as its front-view identity anchor (the one
real photo of the head).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from styleme3d_ns.guidance.base import Guidance, GuidanceConfig


@dataclass
class PhotometricConfig(GuidanceConfig):
    """Mean absolute difference to target images."""


class PhotometricL1(Guidance):
    """``weight * mean |images - targets|`` over pixels and channels."""

    config: PhotometricConfig

    def forward(self, images: Tensor, step: int, *, target_images: Tensor) -> dict[str, Tensor]:
        """
        Args:
            images: `[B, 3, H, W]` renders in [0, 1].
            target_images: `[B, 3, H, W]` targets in [0, 1] (photos composited over the same background).

        Returns:
            ``{"loss": weight * l1, "l1": l1}``.
        """
        l1 = (images - target_images.to(images)).abs().mean()
        return {"loss": self.config.weight * l1, "l1": l1.detach()}
