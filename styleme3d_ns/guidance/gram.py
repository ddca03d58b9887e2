"""SOS: the multi-scale Gram-matrix style loss with a perceptual content term (paper 000, section SOS).

Per scale ``s`` the render is bilinearly resized by ``s`` and passed through a frozen backbone; the style term is
Gatys' Gram loss over the style taps and the content term a feature MSE on the content tap:

    L_style(s)   = sum_l w_l ||G_l(x_s) - G_l(style_s)||_F^2,    G_l = F_l F_l^T / (C_l H_l W_l)
    L_content(s) = w_c mean((F_c(x_s) - F_c(content_s))^2)

Normalising the Gram by ``C H W`` and summing squares is exactly the Gatys reference loss that paper 000's weights
``1e3 / C^2`` were tuned for (MSE over the ``C^2`` entries of Grams normalised by ``H W``): the factor ``C^2`` cancels.

Schedule (paper 000, SOS "Two-Phase Optimization"): while ``step < pretrain_steps`` only the fixed
``pretrain_scale = 0.5`` is used; afterwards every scale in ``scales``. Terms are averaged over the active scales so
the loss magnitude does not jump when the phase changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from styleme3d_ns.guidance.backbones import BackboneName, FeatureBackbone, build_backbone
from styleme3d_ns.guidance.base import Guidance, GuidanceConfig

# Paper 000, SOS "Gram matrix weights": 1e3 / C^2 per style layer (C = channels of the tapped layer).
PAPER_GRAM_WEIGHT_NUMERATOR = 1e3


def paper_style_weights(channels: Sequence[int]) -> tuple[float, ...]:
    """Paper 000 SOS style weights ``1e3 / C^2`` for taps with ``channels`` C; VGG r11..r51 gives
    ``(1e3/64^2, 1e3/128^2, 1e3/256^2, 1e3/512^2, 1e3/512^2)``. EfficientNet taps use the same rule."""
    return tuple(PAPER_GRAM_WEIGHT_NUMERATOR / c**2 for c in channels)


# Content-term weights relative to the normalised Gram terms above. VGG: 1.0, the Gatys reference value for r42
# (paper 000 gives the layer, not the weight). EfficientNet-Lite0: about 0.05 on block7, measured in
# docs/styleme3d.md ("Why these EfficientNet taps") to keep the content recognisable without weakening the transfer.
DEFAULT_CONTENT_WEIGHTS: dict[str, float] = {"vgg19": 1.0, "efficientnet-lite0": 0.05}

# Memory for memoised content targets (CPU): every training view at two scales for scenes of a few hundred views at
# the sizes a CPU trains (EfficientNet block7 at 96 px: 11.5 KB per view).
CONTENT_TARGETS_BYTES = 64 << 20


@dataclass
class GramStyleLossConfig(GuidanceConfig):
    """Config of :class:`GramStyleLoss` (paper 000 SOS)."""

    backbone: BackboneName = "efficientnet-lite0"
    """Feature network: 'efficientnet-lite0' (packaged weights, works offline) or 'vgg19' (the paper's; user file)."""
    backbone_weights: Path | None = None
    """Weights file for the backbone; None uses its default (packaged EfficientNet, torch-hub-cached VGG-19)."""
    style_taps: tuple[str, ...] | None = None
    """Taps whose Grams define the style; None: backbone default (VGG r11..r51, EfficientNet stem,block0,2,4)."""
    content_tap: str | None = None
    """Tap for the content term; None: backbone default (VGG r42, EfficientNet block7)."""
    style_tap_weights: tuple[float, ...] | None = None
    """Per-style-tap weights; None: paper 000's 1e3/C^2 rule with C the tap's channel count."""
    content_weight: float | None = None
    """Content term weight; None: 1.0 for VGG, 0.05 for EfficientNet (docs/styleme3d.md, "Why these EfficientNet
    taps")."""
    scales: tuple[float, ...] = (1.0, 0.5)
    """Render resize factors used together in the multi-scale phase (paper 000 SOS resize_images)."""
    pretrain_steps: int = 10_000
    """Steps of the single-scale phase (paper 000 SOS: optimize_iteration=10000); 0 disables it."""
    pretrain_scale: float = 0.5
    """Fixed bilinear downsampling factor of the single-scale phase (paper 000 SOS optimize_size=0.5)."""
    style_size: int | None = None
    """Shorter side of the style image at scale 1.0; None matches the render's shorter side at every scale."""


def gram_matrix(features: Tensor) -> Tensor:
    """Normalised Gram matrices ``[B, C, C]`` of features ``[B, C, H, W]``: ``F F^T / (C H W)``, in float32."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w).float()
    return flat @ flat.transpose(1, 2) / (c * h * w)


def resize_images(images: Tensor, scale: float) -> Tensor:
    """Bilinearly resize ``[B, 3, H, W]`` by ``scale`` (antialiased when shrinking); identity for 1.0."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


def resize_short_side(images: Tensor, short_side: int) -> Tensor:
    """Resize ``[B, 3, H, W]`` (aspect kept, bilinear, antialiased) so that ``min(H, W) == short_side``."""
    h, w = images.shape[-2:]
    if min(h, w) == short_side:
        return images
    scale = short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


@torch.no_grad()
def gram_distance(
    images: Tensor, style_image: Tensor, backbone: FeatureBackbone, taps: Sequence[str] | None = None
) -> Tensor:
    """Unweighted style distance ``[B]``: ``sum_l ||G_l(images) - G_l(style)||_F^2`` over ``taps``.

    A metric for "closer to the style" (tests, demos, eval); no gradient. ``images`` ``[B, 3, H, W]`` and
    ``style_image`` ``[1, 3, H_s, W_s]`` in [0, 1]; the style is resized to the images' shorter side.
    ``taps=None`` uses the backbone's default style taps.
    """
    taps = tuple(taps) if taps is not None else backbone.default_style_taps
    style = resize_short_side(style_image.to(images.device), min(images.shape[-2:]))
    feats = backbone(images, taps)
    style_feats = backbone(style, taps)
    total = images.new_zeros(images.shape[0], dtype=torch.float32)
    for t in taps:
        total += (gram_matrix(feats[t]) - gram_matrix(style_feats[t])).square().sum(dim=(1, 2))
    return total


class GramStyleLoss(Guidance):
    """Paper 000 SOS multi-scale Gram style + perceptual content loss on a frozen backbone.

    Usage: ``loss = GramStyleLoss(cfg); loss.set_style(style [1, 3, H, W]); out = loss(renders, step,
    content_images=originals)``; returns ``{"loss_style", "loss_content", "loss"}`` (scalars).
    """

    config: GramStyleLossConfig

    def __init__(
        self, config: GramStyleLossConfig, backbone: FeatureBackbone | None = None, weights_hint: str | None = None
    ) -> None:
        """``backbone`` overrides ``config.backbone``/``backbone_weights`` (e.g. a shared or random test network);
        ``weights_hint`` says how the caller's user sets ``backbone_weights`` (for the missing-weights message)."""
        super().__init__(config)
        if backbone is None:
            backbone = build_backbone(config.backbone, config.backbone_weights, hint=weights_hint)
        self.backbone = backbone
        self.style_taps = (
            tuple(config.style_taps) if config.style_taps is not None else self.backbone.default_style_taps
        )
        self.content_tap = config.content_tap if config.content_tap is not None else self.backbone.default_content_tap
        self.backbone.check_taps((*self.style_taps, self.content_tap))
        if config.style_tap_weights is not None:
            if len(config.style_tap_weights) != len(self.style_taps):
                raise ValueError(
                    f"style_tap_weights has {len(config.style_tap_weights)} entries for {len(self.style_taps)} "
                    f"style taps {list(self.style_taps)}; give one weight per tap or None for 1e3/C^2."
                )
            self.style_weights = tuple(float(w) for w in config.style_tap_weights)
        else:
            self.style_weights = paper_style_weights([self.backbone.tap_channels[t] for t in self.style_taps])
        if config.content_weight is not None:
            self.content_weight = float(config.content_weight)
        else:
            self.content_weight = DEFAULT_CONTENT_WEIGHTS.get(self.backbone.name, 1.0)
        if not config.scales or any(s <= 0 for s in (*config.scales, config.pretrain_scale)):
            raise ValueError(f"scales must be non-empty and positive, got {config.scales} / {config.pretrain_scale}.")
        self._style_image: Tensor | None = None
        # Style Grams per target shorter side: {short_side: {tap: [1, C, C]}}; filled by set_style or lazily.
        self._style_grams: dict[int, dict[str, Tensor]] = {}
        # Content-tap features of recent content images, least recently used first (see _content_target).
        self._content_targets: dict[tuple, Tensor] = {}
        self._content_bytes = 0
        self.last_scales: tuple[float, ...] = ()

    def active_scales(self, step: int) -> tuple[float, ...]:
        """Scales evaluated at ``step``: the fixed pretrain scale first (paper 000 SOS), then all ``scales``."""
        if step < self.config.pretrain_steps:
            return (self.config.pretrain_scale,)
        return tuple(self.config.scales)

    def _style_short_side(self, render_hw: tuple[int, int], scale: float) -> int:
        """Shorter side of the style image used against a render of size ``render_hw`` at ``scale``."""
        if self.config.style_size is not None:
            return max(1, round(self.config.style_size * scale))
        h, w = render_hw
        return max(1, min(round(h * scale), round(w * scale)))

    @torch.no_grad()
    def set_style(self, style_image: Tensor, render_hw: tuple[int, int] | None = None) -> None:
        """Set the style image ``[1, 3, H, W]`` in [0, 1] and precompute its Grams where sizes are known.

        With ``config.style_size`` set, or ``render_hw`` (render height, width) given, the Grams of every scale are
        computed now; otherwise on the first call for each render size (then cached).
        """
        self.check_images(style_image, "style_image")
        if style_image.shape[0] != 1:
            raise ValueError(f"style_image must be a single image [1, 3, H, W], got {tuple(style_image.shape)}.")
        self._style_image = style_image.to(device=self.device, dtype=self.dtype)
        self._style_grams = {}
        if self.config.style_size is not None or render_hw is not None:
            hw = render_hw if render_hw is not None else (1, 1)
            for scale in {self.config.pretrain_scale, *self.config.scales}:
                self._grams_for(self._style_short_side(hw, scale))

    @torch.no_grad()
    def _grams_for(self, short_side: int) -> dict[str, Tensor]:
        """Style Grams ``{tap: [1, C, C]}`` with the style resized to ``short_side``, cached."""
        if short_side not in self._style_grams:
            if self._style_image is None:
                raise RuntimeError("GramStyleLoss: call set_style(style_image) before computing the loss.")
            style = resize_short_side(self._style_image.to(device=self.device, dtype=self.dtype), short_side)
            feats = self.backbone(style, self.style_taps)
            self._style_grams[short_side] = {t: gram_matrix(feats[t]) for t in self.style_taps}
        return self._style_grams[short_side]

    def _terms_at_scale(self, images: Tensor, content: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
        """(style, content) loss terms for one scale; ``images``/``content`` ``[B, 3, H, W]`` at full size."""
        x = resize_images(images, scale)
        taps = self.style_taps if content is None else (*self.style_taps, self.content_tap)
        feats = self.backbone(x, tuple(dict.fromkeys(taps)))
        targets = self._grams_for(self._style_short_side(tuple(images.shape[-2:]), scale))
        style = x.new_zeros((), dtype=torch.float32)
        for tap, w in zip(self.style_taps, self.style_weights, strict=True):
            style = style + w * (gram_matrix(feats[tap]) - targets[tap]).square().sum(dim=(1, 2)).mean()
        content_term = x.new_zeros((), dtype=torch.float32)
        if content is not None:
            target = self._content_target(content, scale)
            content_term = self.content_weight * F.mse_loss(feats[self.content_tap].float(), target.float())
        return style, content_term

    @torch.no_grad()
    def _content_target(self, content: Tensor, scale: float) -> Tensor:
        """Content-tap features of ``content`` ``[B, 3, H, W]`` at ``scale``; on the CPU memoised by the images' bytes.

        While stylising, the content images are the frozen base's renders of the training views: the same few
        images again every step, so on the CPU their features are computed once each (a forward pass saved per
        step; hashing the bytes costs far less). On a GPU the forward is cheaper than copying the images to hash.
        """
        if content.device.type != "cpu":
            return self.backbone(resize_images(content, scale), (self.content_tap,))[self.content_tap]
        key = (scale, tuple(content.shape), hashlib.blake2b(content.detach().float().numpy().tobytes()).digest())
        target = self._content_targets.pop(key, None)
        if target is None:
            target = self.backbone(resize_images(content, scale), (self.content_tap,))[self.content_tap]
            self._content_bytes += target.nbytes
        self._content_targets[key] = target  # (re)inserted last: the most recently used
        while self._content_bytes > CONTENT_TARGETS_BYTES:
            self._content_bytes -= self._content_targets.pop(next(iter(self._content_targets))).nbytes  # the LRU one
        return target

    def forward(self, images: Tensor, step: int, content_images: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms for renders ``images`` ``[B, 3, H, W]`` in [0, 1].

        Args:
            images: Stylised renders, differentiable.
            step: Global step; selects the phase (see :meth:`active_scales`).
            content_images: Renders of the original scene from the same cameras ``[B, 3, H, W]`` in [0, 1];
                ``None`` skips the content term.

        Returns:
            ``loss_style`` and ``loss_content`` (weighted by tap/content weights, averaged over active scales) and
            ``loss = weight * (loss_style + loss_content)``; all scalars.
        """
        images = self.prepare_images(images)
        if content_images is not None:
            content_images = self.prepare_images(content_images, "content_images")
            if content_images.shape != images.shape:
                raise ValueError(
                    f"content_images {tuple(content_images.shape)} must match images {tuple(images.shape)}."
                )
        scales = self.active_scales(step)
        self.last_scales = scales
        style_sum = images.new_zeros((), dtype=torch.float32)
        content_sum = images.new_zeros((), dtype=torch.float32)
        for scale in scales:
            style, content = self._terms_at_scale(images, content_images, scale)
            style_sum = style_sum + style
            content_sum = content_sum + content
        loss_style = style_sum / len(scales)
        loss_content = content_sum / len(scales)
        return {
            "loss_style": loss_style,
            "loss_content": loss_content,
            "loss": self.config.weight * (loss_style + loss_content),
        }
