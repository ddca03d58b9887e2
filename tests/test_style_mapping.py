"""Style-preserving sampling maths (paper 001 eq. 12-13): latent statistics, the one-step prediction, the
whitening-colouring map (and why the printed eq. 13 is not it), and the DDIM sampling of the style set."""

from __future__ import annotations

import pytest
import torch

from styleme3d_ns.guidance.style_mapping import (
    LatentStatistics,
    generate_style_latents,
    map_latents,
    mapping_matrix,
    one_step_prediction,
)
from tests.tiny_models import tiny_sd_components


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def random_spd(dim: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A well-conditioned random covariance (eigenvalues in [0.2, 2] * scale), float64."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    values = 0.2 + 1.8 * torch.rand(dim, generator=gen, dtype=torch.float64)
    return scale * (q * values) @ q.T


def gaussian_latents(mean: torch.Tensor, cov: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Latents ``[n, D, size, size]`` whose pixels' channel vectors are i.i.d. N(mean, cov)."""
    chol = torch.linalg.cholesky(cov)
    x = torch.randn(n * size * size, mean.shape[0], generator=gen, dtype=torch.float64) @ chol.T + mean
    return x.reshape(n, size, size, -1).permute(0, 3, 1, 2).contiguous()


def pixel_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference estimator: mean and unbiased covariance of all pixels' channel vectors (torch.cov)."""
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    return x.mean(0), torch.cov(x.T)


def printed_eq13(z: torch.Tensor, g: LatentStatistics, s: LatentStatistics) -> torch.Tensor:
    """Paper 001 eq. 13 exactly as printed: z'_m = T_s V_s^{-1/2} V_g^{-1/2} T_g^{-1} (z' - mu_g) + mu_g."""
    v_s, t_s = torch.linalg.eigh(s.cov.double())
    v_g, t_g = torch.linalg.eigh(g.cov.double())
    a = t_s @ torch.diag(v_s.rsqrt()) @ torch.diag(v_g.rsqrt()) @ torch.linalg.inv(t_g)
    x = z.permute(0, 2, 3, 1).double() - g.mean.double()
    return (x @ a.T + g.mean.double()).permute(0, 3, 1, 2)


@pytest.fixture
def two_gaussians() -> tuple[LatentStatistics, LatentStatistics, torch.Tensor]:
    """Known generated (g) and style (s) distributions over 4 latent channels and 8 x 32 x 32 samples from g."""
    gen = torch.Generator().manual_seed(0)
    g = LatentStatistics(torch.randn(4, generator=gen, dtype=torch.float64), random_spd(4, gen, scale=2.0))
    s = LatentStatistics(0.5 * torch.randn(4, generator=gen, dtype=torch.float64), random_spd(4, gen, scale=0.5))
    return g, s, gaussian_latents(g.mean, g.cov, n=8, size=32, gen=gen)


def test_statistics_are_over_the_channel_vectors_of_all_pixels() -> None:
    latents = torch.randn(20, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    stats = LatentStatistics.from_latents(latents)
    mean, cov = pixel_stats(latents)
    assert stats.mean.shape == (4,) and stats.cov.shape == (4, 4) and stats.dim == 4
    torch.testing.assert_close(stats.mean.double(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.cov.double(), cov, rtol=0, atol=1e-5)
    per_image = LatentStatistics.from_latents(latents, per_sample=True)
    assert per_image.mean.shape == (20, 4) and per_image.cov.shape == (20, 4, 4)
    torch.testing.assert_close(per_image.cov[3].double(), pixel_stats(latents[3:4])[1], rtol=0, atol=1e-5)


def test_eq13_maps_samples_of_the_generated_gaussian_to_the_style_mean_and_covariance(two_gaussians) -> None:  # noqa: ANN001
    g, s, z = two_gaussians
    mapped = map_latents(z, g, s, eps=0.0)  # the true (known) statistics, as eq. 13 is stated
    mean, cov = pixel_stats(mapped)
    # 8192 samples: the empirical moments of the input are within ~3% of the truth; the map is linear.
    torch.testing.assert_close(mean, s.mean, rtol=0, atol=0.05)
    torch.testing.assert_close(cov, s.cov, rtol=0, atol=0.05)
    # ... and far from where they started
    assert (pixel_stats(z)[1] - s.cov).abs().max() > 0.5


def test_eq13_with_estimated_statistics_hits_the_style_moments_exactly(two_gaussians) -> None:  # noqa: ANN001
    g, s, z = two_gaussians
    mapped = map_latents(z, LatentStatistics.from_latents(z), s, eps=0.0)
    mean, cov = pixel_stats(mapped)
    torch.testing.assert_close(mean, s.mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov, s.cov, rtol=0, atol=1e-9)


def test_eq13_as_printed_keeps_mu_g_and_produces_the_inverse_style_covariance(two_gaussians) -> None:  # noqa: ANN001
    # Why map_latents does not implement the printed formula (see styleme3d_ns/guidance/style_mapping.py).
    g, s, z = two_gaussians
    mean, cov = pixel_stats(printed_eq13(z, g, s))
    torch.testing.assert_close(mean, g.mean, rtol=0, atol=0.05)  # the mean stays mu_g, not mu_s
    torch.testing.assert_close(cov, torch.linalg.inv(s.cov), rtol=0.05, atol=0.05)  # Sigma_s^-1, not Sigma_s
    assert (cov - s.cov).abs().max() > 0.5


def test_per_image_statistics_map_every_image_to_the_style_moments() -> None:
    gen = torch.Generator().manual_seed(2)
    style = LatentStatistics(torch.tensor([0.3, -0.2, 0.1, 0.0]), random_spd(4, gen, scale=0.3).float())
    z = torch.randn(3, 4, 16, 16, generator=gen) * torch.tensor([3.0, 0.5, 1.0, 2.0]).view(1, 4, 1, 1) + 1.0
    mapped = map_latents(z, None, style, eps=0.0)  # None: each image's own mu_g, Sigma_g (the paper's I_g)
    assert mapped.shape == z.shape and mapped.dtype == z.dtype
    for i in range(3):
        mean, cov = pixel_stats(mapped[i : i + 1])
        torch.testing.assert_close(mean.float(), style.mean, rtol=0, atol=1e-4)
        torch.testing.assert_close(cov.float(), style.cov, rtol=0, atol=1e-4)


def test_mapping_onto_the_same_distribution_is_the_identity(two_gaussians) -> None:  # noqa: ANN001
    g, _, z = two_gaussians
    torch.testing.assert_close(map_latents(z, g, g, eps=0.0), z, rtol=0, atol=1e-9)
    a = mapping_matrix(g.cov, g.cov, eps=0.0)
    torch.testing.assert_close(a, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-9)


def test_ridge_keeps_a_flat_latent_finite() -> None:
    flat = torch.ones(1, 4, 8, 8) * torch.tensor([0.5, 0.1, -0.3, 0.2]).view(1, 4, 1, 1)
    style = LatentStatistics(torch.zeros(4), torch.eye(4))
    mapped = map_latents(flat, None, style)  # singular Sigma_g: only the ridge keeps Sigma_g^{-1/2} finite
    assert torch.isfinite(mapped).all()
    torch.testing.assert_close(mapped, torch.zeros_like(flat), rtol=0, atol=1e-4)  # constant -> the style mean


def test_eq12_inverts_the_forward_noising_exactly_for_the_true_noise() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    abar = torch.tensor([0.9991, 0.3, 0.0047], dtype=torch.float64)  # SD's alpha_bar at t ~ 1, ~ 400, 999
    z_t = abar.sqrt().view(-1, 1, 1, 1) * z + (1 - abar).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(one_step_prediction(z_t, eps, abar), z, rtol=0, atol=1e-10)
    # For any other prediction it is the printed form z + beta_t (eps_p - eps) with beta_t = -sqrt((1 - abar) / abar).
    eps_p = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    beta = -((1 - abar) / abar).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(one_step_prediction(z_t, eps_p, abar), z + beta * (eps_p - eps), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(one_step_prediction(z_t[:1], eps[:1], 0.9991), z[:1], rtol=0, atol=1e-10)


def test_style_set_is_n_ddim_samples_independent_of_the_batch_split() -> None:
    components = tiny_sd_components(seed=0)
    kwargs = {"n": 3, "guidance_scale": 7.5, "steps": 3, "seed": 5}
    latents = generate_style_latents(components, "a golden statue", batch_size=3, **kwargs)
    assert latents.shape == (3, 4, 8, 8) and latents.dtype == torch.float32 and torch.isfinite(latents).all()
    split = generate_style_latents(components, "a golden statue", batch_size=2, **kwargs)
    torch.testing.assert_close(split, latents, rtol=1e-3, atol=1e-4)  # CFG 7.5 amplifies batched-matmul rounding
    other_prompt = generate_style_latents(components, "a green orc", batch_size=3, **kwargs)
    assert (other_prompt - latents).abs().max() > 1e-4  # the text condition reaches the sampler
    assert (latents[0] - latents[1]).abs().max() > 1e-3  # n different samples
    stats = LatentStatistics.from_latents(latents)
    assert stats.mean.shape == (4,) and torch.linalg.eigvalsh(stats.cov).min() > 0
