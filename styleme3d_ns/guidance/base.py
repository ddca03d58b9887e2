"""The contract every guidance module follows.

A guidance takes renders ``[B, 3, H, W]`` in [0, 1] and the global step and returns a dict of named loss tensors;
``"loss"`` is the one term the trainer adds to its total (already multiplied by ``config.weight``), the others are
there to be logged. Guidances are ``nn.Module``s so ``.to(device)`` moves their frozen networks, and inputs are cast
to the module's dtype (float16 only on CUDA, see :func:`~styleme3d_ns.guidance.weights.select_device_dtype`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from styleme3d_ns.core.config_defaults import DefaultsOnLoad


@dataclass
class GuidanceConfig(DefaultsOnLoad):
    """Fields shared by every guidance config."""

    weight: float = 1.0
    """Multiplier on this guidance's total ``"loss"`` term."""
    enabled: bool = True
    """If False the guidance returns a zero loss without running its network."""


class Guidance(nn.Module, abc.ABC):
    """Base class: holds the config, tracks device/dtype, validates inputs and owns the step schedule."""

    # Renders are clamped to [0, 1] by the rasteriser; this slack only absorbs float rounding of resampled images.
    RANGE_TOLERANCE = 1e-3

    def __init__(self, config: GuidanceConfig) -> None:
        super().__init__()
        self.config = config
        self.global_step = 0
        # An empty float buffer that `.to()` / `.half()` move and cast with the module: the single source of truth
        # for `device` and `dtype`, even for guidances without parameters.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """Device the guidance runs on (follows ``.to(device)``)."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype; inputs are cast to it (follows ``.to(dtype)``)."""
        return self._anchor.dtype

    def update_step(self, step: int) -> None:
        """Hook for step-dependent schedules; subclasses override and call ``super().update_step(step)``."""
        self.global_step = int(step)

    @classmethod
    def check_images(cls, images: Tensor, name: str = "images") -> None:
        """Raise a one-line ValueError unless ``images`` is a float ``[B, 3, H, W]`` tensor with values in [0, 1]."""
        if not isinstance(images, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, 3, H, W] in [0, 1], got {type(images).__name__}.")
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape [B, 3, H, W] (channels first, batch >= 1), got {tuple(images.shape)}; "
                "permute HWC renders with .permute(2, 0, 1)[None]."
            )
        if not images.is_floating_point():
            raise ValueError(f"{name} must be a float tensor in [0, 1], got {images.dtype}; divide uint8 by 255.")
        lo, hi = (float(v) for v in images.detach().aminmax())
        if not (-cls.RANGE_TOLERANCE <= lo and hi <= 1.0 + cls.RANGE_TOLERANCE):
            raise ValueError(f"{name} values must be in [0, 1], got min {lo:.4g} max {hi:.4g}; clamp or rescale them.")

    def prepare_images(self, images: Tensor, name: str = "images") -> Tensor:
        """Validate ``images`` and move them to this guidance's device and dtype."""
        self.check_images(images, name)
        return images.to(device=self.device, dtype=self.dtype)

    def __call__(self, images: Tensor, step: int, **kwargs: object) -> dict[str, Tensor]:
        """Advance the schedule to ``step`` and compute the loss terms (a zero ``"loss"`` when disabled)."""
        self.update_step(step)
        if not self.config.enabled:
            return {"loss": images.new_zeros(())}
        return super().__call__(images, step, **kwargs)

    @abc.abstractmethod
    def forward(self, images: Tensor, step: int, **kwargs: object) -> dict[str, Tensor]:
        """Compute the loss terms for renders ``images`` ``[B, 3, H, W]`` in [0, 1]; must include ``"loss"``."""
