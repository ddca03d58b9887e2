"""Distances between the patches and colours of images and a style image, from no network any method trains with.

- **Patch distance**: the sliced Wasserstein distance between 7x7 neighbourhoods of the Laplacian pyramid levels of
  the views and of the style image (after Karras et al. 2018, "Progressive Growing of GANs", appendix D: SWD), on the
  band-pass levels only. Each set's descriptors are centred per dimension and both sets are divided by the style's
  per-dimension spread (Karras et al. normalise each set by its own; a shared scale keeps how much detail each band
  holds, so a blurred view is far from a crisp painting), so it compares local structure and its contrast (strokes,
  edges, grain) at each scale, not colour; averaged over the levels.
- **Colour distance**: the sliced Wasserstein distance between the RGB values of the views' pixels and the style's:
  the whole palette, not only its mean and covariance.

Both are computed on the pixels the splat covers (alpha > 0.5) when alphas are given: a white background the
stylisation never touches would otherwise dilute them. The style image is resized so its shorter side is the views'
(the painting seen at the size of the view, as the Gram distance does). Random projections and patch samples come from
a fixed seed: the same images always give the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PATCH = 7
"""Side of the neighbourhoods compared (Karras et al.)."""
SMALLEST_LEVEL = 16
"""The pyramid stops when a level's shorter side would fall below this many pixels."""
PROJECTIONS = 128
"""Random directions of the sliced Wasserstein distance."""
SAMPLES = 4096
"""Descriptors drawn from each set per level (all of them when there are fewer)."""

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(images: Tensor) -> Tensor:
    """5-tap binomial low-pass of [B, C, H, W] (reflect padding), the pyramid's filter."""
    kernel = _BINOMIAL.to(images)
    channels = images.shape[1]
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def laplacian_pyramid(images: Tensor, smallest: int = SMALLEST_LEVEL) -> list[Tensor]:
    """Band-pass levels of [B, 3, H, W], finest first, then the low-pass residual: each [B, 3, H / 2^l, W / 2^l]."""
    levels, current = [], images
    while min(current.shape[-2:]) // 2 >= smallest:
        low = _blur(current)[..., ::2, ::2]
        up = F.interpolate(low, size=current.shape[-2:], mode="bilinear", align_corners=False)
        levels.append(current - up)
        current = low
    levels.append(current)
    return levels


def _descriptors(level: Tensor, mask: Tensor | None, count: int, generator: torch.Generator) -> Tensor:
    """Up to `count` flattened 7x7x3 neighbourhoods [M, 147] of [B, 3, h, w] centred where mask [B, 1, h, w] > 0.5."""
    patches = F.unfold(level, PATCH, padding=PATCH // 2)  # [B, 3 * 49, h * w]
    patches = patches.permute(0, 2, 1).reshape(-1, patches.shape[1])
    if mask is not None:
        keep = F.interpolate(mask, size=level.shape[-2:], mode="area").flatten() > 0.5
        patches = patches[keep] if int(keep.sum()) >= 2 else patches
    if len(patches) > count:
        patches = patches[torch.randperm(len(patches), generator=generator)[:count]]
    return patches


def sliced_wasserstein(a: Tensor, b: Tensor, generator: torch.Generator, projections: int = PROJECTIONS) -> float:
    """Sliced Wasserstein-1 distance between point sets a [M, D] and b [M', D]: the mean over random unit directions of
    the distance between the sorted projections (the larger set's quantiles matched to the smaller's)."""
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=a.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    count = min(len(pa), len(pb))
    quantiles = (torch.arange(count, dtype=a.dtype) + 0.5) / count
    pa = pa[(quantiles * len(pa)).long()]
    pb = pb[(quantiles * len(pb)).long()]
    return float((pa - pb).abs().mean())


def _style_at(style: Tensor, short_side: int) -> Tensor:
    """The style image [1, 3, H_s, W_s] resized so its shorter side is `short_side` (antialiased)."""
    scale = short_side / min(style.shape[-2:])
    size = (max(1, round(style.shape[-2] * scale)), max(1, round(style.shape[-1] * scale)))
    return F.interpolate(style, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def patch_distance(images: Tensor, style: Tensor, alphas: Tensor | None = None, seed: int = 0) -> float:
    """Patch distance (module docstring) of views [V, 3, H, W] in [0, 1] to `style` [1, 3, H_s, W_s] in [0, 1];
    `alphas` [V, 1, H, W] pick the pixels compared. >= 0, lower = closer in local structure at every scale."""
    generator = torch.Generator().manual_seed(seed)
    images, style = images.float().cpu(), _style_at(style.float().cpu(), min(images.shape[-2:]))
    mask = alphas.float().cpu() if alphas is not None else None
    ours, theirs = laplacian_pyramid(images)[:-1], laplacian_pyramid(style)[:-1]  # band-pass levels
    distances = []
    for level, reference in zip(ours, theirs, strict=False):
        a = _descriptors(level, mask, SAMPLES, generator)
        b = _descriptors(reference, None, SAMPLES, generator)
        spread = b.std(0).clamp_min(1e-4)
        distances.append(sliced_wasserstein((a - a.mean(0)) / spread, (b - b.mean(0)) / spread, generator))
    return sum(distances) / len(distances)


@torch.no_grad()
def colour_distance(images: Tensor, style: Tensor, alphas: Tensor | None = None, seed: int = 0) -> float:
    """Colour distance (module docstring) of views [V, 3, H, W] in [0, 1] to `style` [1, 3, H_s, W_s]: sliced
    Wasserstein distance between their RGB values (in [0, 1] units), >= 0, lower = closer palettes."""
    generator = torch.Generator().manual_seed(seed)
    pixels = images.float().cpu().permute(0, 2, 3, 1).reshape(-1, 3)
    if alphas is not None:
        keep = alphas.float().cpu().flatten() > 0.5
        pixels = pixels[keep] if int(keep.sum()) >= 2 else pixels
    reference = style.float().cpu().permute(0, 2, 3, 1).reshape(-1, 3)
    picks = [p[torch.randperm(len(p), generator=generator)[: 16 * SAMPLES]] for p in (pixels, reference)]
    return sliced_wasserstein(picks[0], picks[1], generator)


@torch.no_grad()
def banding_peak(image: Tensor, max_lag: int = 32, highpass_sigma: float = 6.0) -> float:
    """How much of an image's fine texture repeats at one pitch: the banding's spectral peak, in [0, 1].

    The luma of `image` [3, H, W] in [0, 1] is high-passed (minus a Gaussian blur of `highpass_sigma` px, so shading
    and the content's large shapes do not count); its autocorrelation (the inverse Fourier transform of its power
    spectrum, normalised to 1 at lag 0) is searched for its largest value within `max_lag` px outside the central
    lobe (the connected region around lag 0 where it is positive). A regular grid or band pattern has a secondary peak
    near 1 at its pitch (its power sits at one spatial frequency); irregular strokes and noise have none (near 0).
    """
    from scipy import ndimage

    y = (image.float().cpu() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
    y = y - torch.from_numpy(ndimage.gaussian_filter(y.numpy(), highpass_sigma))
    height, width = y.shape
    power = torch.fft.rfft2(y, s=(2 * height, 2 * width)).abs() ** 2  # zero-padded: no wrap-around
    correlation = torch.fft.fftshift(torch.fft.irfft2(power, s=(2 * height, 2 * width)))
    centre = correlation[height, width].clamp_min(1e-12)
    lags = slice(height - max_lag, height + max_lag + 1), slice(width - max_lag, width + max_lag + 1)
    window = (correlation[lags] / centre).numpy()
    lobes, _ = ndimage.label(window > 0)
    outside = lobes != lobes[max_lag, max_lag]
    return float(max(window[outside].max(), 0.0)) if outside.any() else 0.0
