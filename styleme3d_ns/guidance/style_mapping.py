"""Style-preserving latent mapping of the SAS loss (paper 001, section III.B.2, eq. 12-14).

Before training, ``n = 20`` images of the target style are sampled from Stable Diffusion (CFG 7.5, 20 DDIM steps,
paper 001 IV.A.3) and the mean ``mu_s`` and covariance ``Sigma_s`` of their latents are kept. At every SAS step the
one-step prediction ``z'`` of the denoised latent (eq. 12) is mapped onto that distribution (eq. 13) and the render's
latent ``z`` is pulled towards the mapped ``z'_m`` (eq. 14, in :mod:`styleme3d_ns.guidance.sas`).

What the statistics are over (``D``): the ``C = 4`` latent channels, pooled over every pixel of every image.
A latent ``[C, h, w]`` is treated as ``h * w`` samples of a ``C``-vector, so ``mu`` is ``[4]`` and ``Sigma``
``[4, 4]``. The paper does not say; this reading is forced by eq. 13 itself: ``mu_g, Sigma_g`` are "the mean and
covariance matrix of *the generated image*" (one image), which only has a covariance if pixels are the samples.
Flattening whole latents instead (``D = 4 * 64 * 64 = 16384``) would need a 1 GB covariance of rank <= 19 from the
20 style images and is undefined for a single generated image. With per-channel statistics the 20 style images give
``20 * h * w`` (81920 at 64x64) samples for a 4x4 matrix, so no shrinkage is needed; the only regularisation is a
small ridge ``eps * I`` (default :data:`DEFAULT_RIDGE`) added to ``Sigma_g`` before its inverse square root, which
keeps a nearly flat latent (all pixels alike, a singular ``Sigma_g``) from being amplified without bound. The mapping
is then the latent-space analogue of a linear colour transfer: it fixes the channel means and correlations, the
statistics that carry colour and saturation in SD latents, and leaves the spatial structure alone.

Discrepancies with the printed paper (documented in ``docs/sas-portrait.md``):

* eq. 12 prints ``z' = alpha_t z + beta_t (eps_p - eps)``. With the forward noising ``z_t = sqrt(abar) z +
  sqrt(1 - abar) eps`` the one-step (x0) prediction is ``(z_t - sqrt(1 - abar) eps_p) / sqrt(abar) = z -
  sqrt((1 - abar) / abar) (eps_p - eps)``, i.e. eq. 12 with ``alpha_t = 1`` and ``beta_t = -sqrt((1 - abar) /
  abar)``; :func:`one_step_prediction` computes it from ``z_t`` directly.
* eq. 13 prints ``z'_m = T_s V_s^{-1/2} V_g^{-1/2} T_g^{-1} (z' - mu_g) + mu_g``. Applied to samples of
  ``N(mu_g, Sigma_g)`` that gives mean ``mu_g`` (not ``mu_s``) and covariance ``T_s V_s^{-1} T_s^T =
  Sigma_s^{-1}`` (not ``Sigma_s``); ``tests/test_style_mapping.py`` checks this. :func:`map_latents` implements the
  whitening-colouring transform the text describes, ``Sigma_s^{1/2} Sigma_g^{-1/2} (z' - mu_g) + mu_s``, with the
  symmetric square roots ``T V^{+-1/2} T^T`` from the eigendecompositions. (``T_s V_s^{1/2} V_g^{-1/2} T_g^T``, the
  printed form with the exponent fixed, also has covariance ``Sigma_s`` but pairs eigenvectors by eigenvalue rank and
  depends on their arbitrary signs, so it can swap or negate latent directions between steps; the symmetric form is
  sign-invariant and the closest map to the identity.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from styleme3d_ns.guidance.diffusion import predict_noise

if TYPE_CHECKING:
    from styleme3d_ns.guidance.diffusion import StableDiffusionComponents

DEFAULT_RIDGE = 1e-4
"""Ridge ``eps`` added to ``Sigma_g`` before ``Sigma_g^{-1/2}``; SD latents (scaled by 0.18215) have variance ~1."""


@dataclass(frozen=True)
class LatentStatistics:
    """Mean ``[..., D]`` and covariance ``[..., D, D]`` of latent channel vectors (``D = C``, 4 for SD).

    Leading dimensions batch several distributions (``[B, D]`` / ``[B, D, D]`` for per-image statistics).
    """

    mean: Tensor
    """``mu`` ``[..., D]``."""
    cov: Tensor
    """``Sigma`` ``[..., D, D]``, symmetric positive semi-definite (unbiased estimate)."""

    @classmethod
    def from_latents(cls, latents: Tensor, *, per_sample: bool = False) -> LatentStatistics:
        """Statistics of latents ``[N, C, h, w]``, each pixel's ``C``-vector one sample (float32, or float64 input).

        ``per_sample=False``: one distribution pooled over all ``N h w`` pixels (``mu_s, Sigma_s`` of the style set,
        mean ``[C]``, cov ``[C, C]``). ``per_sample=True``: one per latent (``mu_g, Sigma_g`` of each generated image,
        mean ``[N, C]``, cov ``[N, C, C]``).
        """
        if latents.ndim != 4:
            raise ValueError(f"latents must be [N, C, h, w], got shape {tuple(latents.shape)}.")
        n, c, h, w = latents.shape
        x = latents.detach().to(torch.float64 if latents.dtype == torch.float64 else torch.float32)
        samples = x.permute(0, 2, 3, 1).reshape(n, h * w, c) if per_sample else x.permute(0, 2, 3, 1).reshape(1, -1, c)
        if samples.shape[1] < 2:
            raise ValueError(f"need at least 2 pixels to estimate a covariance, got latents {tuple(latents.shape)}.")
        mean = samples.mean(dim=1)
        centred = samples - mean[:, None, :]
        cov = centred.transpose(1, 2) @ centred / (samples.shape[1] - 1)
        return cls(mean, cov) if per_sample else cls(mean[0], cov[0])

    @property
    def dim(self) -> int:
        """``D``, the number of latent channels described."""
        return self.mean.shape[-1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LatentStatistics:
        """The same statistics on ``device`` / in ``dtype``."""
        return LatentStatistics(self.mean.to(device=device, dtype=dtype), self.cov.to(device=device, dtype=dtype))


def one_step_prediction(z_t: Tensor, eps_hat: Tensor, alpha_bar_t: Tensor | float) -> Tensor:
    """One-step estimate ``z'`` of the clean latent from the noisy one (paper 001 eq. 12, see module docstring).

    ``z' = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``; for the true noise ``eps`` of
    ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` it returns ``z`` exactly.

    Args:
        z_t: Noisy latents ``[B, C, h, w]``.
        eps_hat: Predicted noise, same shape.
        alpha_bar_t: Cumulative ``abar_t`` in (0, 1]: a float, a scalar tensor or one value per sample ``[B]``.
    """
    abar = torch.as_tensor(alpha_bar_t, device=z_t.device, dtype=z_t.dtype)
    if abar.ndim == 1:
        abar = abar.view(-1, *([1] * (z_t.ndim - 1)))
    return (z_t - (1.0 - abar).sqrt() * eps_hat) / abar.sqrt()


def _sqrt_psd(cov: Tensor) -> Tensor:
    """Symmetric square root ``T V^{1/2} T^T`` of a PSD matrix ``[..., D, D]`` (float64, batched)."""
    values, vectors = torch.linalg.eigh(0.5 * (cov.double() + cov.double().transpose(-1, -2)))
    return (vectors * values.clamp_min(0.0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def _inv_sqrt_psd(cov: Tensor, eps: float) -> Tensor:
    """Regularised inverse square root ``T (V + eps)^{-1/2} T^T`` of a PSD matrix ``[..., D, D]`` (float64)."""
    values, vectors = torch.linalg.eigh(0.5 * (cov.double() + cov.double().transpose(-1, -2)))
    return (vectors * (values.clamp_min(0.0) + eps).rsqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def mapping_matrix(cov_g: Tensor, cov_s: Tensor, eps: float = DEFAULT_RIDGE) -> Tensor:
    """``A = Sigma_s^{1/2} (Sigma_g + eps I)^{-1/2}`` ``[..., D, D]`` (float64): ``A Sigma_g A^T = Sigma_s`` as
    ``eps -> 0`` (paper 001 eq. 13, corrected). ``eps = 0`` is exact for a non-singular ``Sigma_g``."""
    return _sqrt_psd(cov_s) @ _inv_sqrt_psd(cov_g, eps)


def map_latents(
    z: Tensor, stats_g: LatentStatistics | None, stats_s: LatentStatistics, eps: float = DEFAULT_RIDGE
) -> Tensor:
    """Map latents from their distribution onto the style distribution (paper 001 eq. 13, corrected; see module doc).

    ``z'_m = Sigma_s^{1/2} Sigma_g^{-1/2} (z' - mu_g) + mu_s`` applied to every pixel's channel vector, so samples
    of ``N(mu_g, Sigma_g)`` come out with mean ``mu_s`` and covariance ``Sigma_s``.

    Args:
        z: Latents ``[B, C, h, w]`` (the one-step predictions ``z'``).
        stats_g: Source statistics: ``None`` computes them per image from ``z`` (the paper's ``mu_g, Sigma_g`` of
            the generated image), a batched ``[B, C]``/``[B, C, C]`` or a shared ``[C]``/``[C, C]`` one is used as is.
        stats_s: Target (style) statistics, ``[C]``/``[C, C]`` or batched like ``stats_g``.
        eps: Ridge added to ``Sigma_g`` before its inverse square root (0: exact for a non-singular ``Sigma_g``).

    Returns:
        Mapped latents ``[B, C, h, w]`` in ``z``'s dtype. Differentiable in ``z`` except through ``stats_g=None``
        (statistics are computed on ``z.detach()``); SAS uses it under ``no_grad``.
    """
    if z.ndim != 4:
        raise ValueError(f"z must be [B, C, h, w], got shape {tuple(z.shape)}.")
    b, c, h, w = z.shape
    if stats_g is None:
        stats_g = LatentStatistics.from_latents(z, per_sample=True)
    if stats_g.dim != c or stats_s.dim != c:
        raise ValueError(f"statistics describe D={stats_g.dim} (g) and {stats_s.dim} (s) channels, latents have {c}.")
    a = mapping_matrix(stats_g.cov.to(z.device), stats_s.cov.to(z.device), eps)  # [(B,) C, C]
    x = z.double().permute(0, 2, 3, 1).reshape(b, h * w, c)  # rows are pixels' channel vectors
    mu_g = stats_g.mean.to(z.device).double().reshape(-1, 1, c)  # [B or 1, 1, C]
    mu_s = stats_s.mean.to(z.device).double().reshape(-1, 1, c)
    mapped = (x - mu_g) @ a.reshape(-1, c, c).transpose(-1, -2) + mu_s  # paper 001 eq. 13 (corrected)
    return mapped.reshape(b, h, w, c).permute(0, 3, 1, 2).to(z.dtype).contiguous()


@torch.no_grad()
def generate_style_latents(
    components: StableDiffusionComponents,
    prompt: str,
    n: int = 20,
    guidance_scale: float = 7.5,
    steps: int = 20,
    *,
    negative_prompt: str = "",
    batch_size: int = 4,
    seed: int = 0,
    latent_size: int | None = None,
) -> Tensor:
    """Sample the style set ``I_s`` as latents: ``n`` DDIM samples of ``prompt`` (paper 001 IV.A.3: 20 images,
    CFG 7.5, 20 inference steps), text-only.

    The returned latents are the sampler's final ``z_0`` in the scaled latent space that ``encode_images`` produces,
    i.e. the latents the style images decode from; :meth:`LatentStatistics.from_latents` turns them into
    ``mu_s, Sigma_s``. The components' own scheduler is not touched (a DDIM copy is built from its config).

    Args:
        components: Frozen SD components (their UNet must not need extra inputs, e.g. no IP-Adapter attached yet).
        prompt: The style text ``y``.
        n: Number of samples.
        guidance_scale: Classifier-free guidance scale.
        steps: DDIM steps (eta = 0).
        negative_prompt: Prompt of the unconditional branch.
        batch_size: Samples denoised together (bounds memory; the result does not depend on it).
        seed: Seed of the initial noise (drawn on CPU, so results match across devices up to float error).
        latent_size: Side of the latents; ``None``: the UNet's ``sample_size`` (64 for SD 1.5 = 512 px).

    Returns:
        Latents ``[n, 4, s, s]`` (float32).
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(steps, device=components.device)
    size = latent_size or int(components.unet.config.sample_size)
    channels = int(components.unet.config.in_channels)
    cond = components.encode_text([prompt])
    uncond = components.encode_text([negative_prompt])
    noise = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    samples = []
    for chunk in (noise * scheduler.init_noise_sigma).split(batch_size):
        z = chunk.to(device=components.device, dtype=components.dtype)
        for t in scheduler.timesteps:
            eps = predict_noise(components.unet, scheduler.scale_model_input(z, t), t, cond, uncond, guidance_scale)
            z = scheduler.step(eps, t, z).prev_sample
        samples.append(z.float())
    return torch.cat(samples)
