"""Per-image metrics: content preservation (PSNR, SSIM, LPIPS) and colour saturation.

Content metrics compare stylised renders with the base renders of the same cameras, as paper 000 Table 1
(StyleMe3D; ARF, SGSST and StyleGaussian scored the same way). Saturation is paper 001 Table 1's measure of
over-saturation (lower reads as more natural).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ssim
from torch import Tensor, nn

ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
"""torchvision's AlexNet ImageNet weights file, the backbone of torchmetrics' LPIPS (net_type "alex")."""


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB over all pixels of `[..., 3]` images in [0, 1] (pooled MSE); `inf` when identical."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


def mean_psnr(a: Tensor, b: Tensor) -> float:
    """Mean over views of per-view PSNR (dB) of `[V, H, W, 3]` images in [0, 1], as nerfstudio's `ns-eval`.

    `inf` if any view is identical (a view with no error has unbounded PSNR).
    """
    return float(np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)]))


def mean_ssim(a: Tensor, b: Tensor) -> float:
    """Mean SSIM in [-1, 1] (1 = identical; Gaussian window 11, sigma 1.5, as nerfstudio), `[V, H, W, 3]` in [0, 1]."""
    return float(ssim(a.permute(0, 3, 1, 2).float(), b.permute(0, 3, 1, 2).float(), data_range=1.0, size_average=True))


def alexnet_weights_path() -> Path:
    """Where torchvision (hence torchmetrics' LPIPS) looks for the AlexNet weights: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS


def lpips_missing_note() -> str:
    """One line saying why LPIPS is null and how to enable it offline."""
    return (
        f"LPIPS not computed: torchvision's AlexNet weights are not at {alexnet_weights_path()} and nothing is "
        f'downloaded; copy {ALEXNET_WEIGHTS} there (on a machine with internet, python -c "import torchvision; '
        "torchvision.models.alexnet(weights='DEFAULT')\" puts it in that machine's torch hub cache) and re-run"
    )


@torch.no_grad()
def mean_lpips(lpips: nn.Module, a: Tensor, b: Tensor) -> float:
    """Mean LPIPS (0 = identical, higher = more different; paper 000 Table 1 lists 0.17-0.56) of `[V, H, W, 3]`.

    `lpips` is torchmetrics' `LearnedPerceptualImagePatchSimilarity(normalize=True)`, i.e. inputs in [0, 1]; it is
    the model's own instance (built only when its weights are local), so nothing here can trigger a download.
    """
    to_batch = lambda image: image.permute(2, 0, 1)[None].float()
    return float(np.mean([float(lpips(to_batch(x), to_batch(y))) for x, y in zip(a, b, strict=True)]))


def mean_saturation(rgb: Tensor, alpha: Tensor | None = None, min_alpha: float = 0.5) -> float:
    """Mean HSV saturation in percent [0, 100] (paper 001 Table 1: 50.6 theirs, 59-70 other methods).

    HSV saturation of a pixel is `(max - min) / max` over its RGB channels (0 for black). Paper 001 does not say
    which pixels it averages; we average the foreground (`alpha >= min_alpha`) so the background colour and the
    framing do not dilute it, or every pixel when `alpha` is None.

    Args:
        rgb: `[V, H, W, 3]` in [0, 1].
        alpha: `[V, H, W, 1]` accumulated opacity in [0, 1], or None.
    """
    high = rgb.max(dim=-1).values
    low = rgb.min(dim=-1).values
    saturation = torch.where(high > 0, (high - low) / high.clamp(min=1e-12), torch.zeros_like(high))
    if alpha is None:
        return 100.0 * float(saturation.mean())
    mask = alpha[..., 0] >= min_alpha
    if not bool(mask.any()):
        raise ValueError(f"no foreground pixel (alpha >= {min_alpha}) to average saturation over")
    return 100.0 * float(saturation[mask].mean())
