"""Shared SD machinery: SDS gradient, classifier-free guidance, timestep windows, offline loading."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from styleme3d_ns.guidance.diffusion import (
    DEFAULT_SD_MODEL,
    StableDiffusionComponents,
    TimestepSchedule,
    TimestepScheduleConfig,
    load_stable_diffusion,
    predict_noise,
    sds_grad,
    sds_loss,
    sds_weight,
)
from styleme3d_ns.guidance.weights import MissingWeightsError
from tests.tiny_models import TINY_RESOLUTION, tiny_sd_components

SD_HINT = "pass --pipeline.model.dssd.sd-model PATH"


@pytest.fixture(scope="module")
def sd() -> StableDiffusionComponents:
    return tiny_sd_components(seed=0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models: intra-op threads only add contention on the shared machine."""


def _fixed_inputs(sd: StableDiffusionComponents) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([300, 700])
    text = sd.encode_text(["a watercolour house", ""])
    return latents, noise, t, text


def _reference_eps(sd: StableDiffusionComponents, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, s: float):
    """Brute force: two separate UNet calls, combined by hand."""
    cond = sd.unet(z_t, t, encoder_hidden_states=text[:1].expand(2, -1, -1)).sample
    uncond = sd.unet(z_t, t, encoder_hidden_states=text[1:].expand(2, -1, -1)).sample
    return uncond + s * (cond - uncond), cond, uncond


def test_components_shapes_ranges_and_freeze(sd: StableDiffusionComponents) -> None:
    images = torch.rand(2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    latents = sd.encode_images(images)
    assert latents.shape == (2, 4, 8, 8)  # 8x VAE downsampling, 4 latent channels, as SD
    decoded = sd.decode_latents(latents)
    assert decoded.shape == images.shape and decoded.min() >= 0.0 and decoded.max() <= 1.0
    assert sd.encode_text(["a", "b c"]).shape == (2, 16, 32)
    a = sd.alphas_cumprod
    assert a.shape == (1000,) and bool((a[1:] < a[:-1]).all()) and 0 < float(a[-1]) < float(a[0]) < 1
    assert all(not p.requires_grad for m in (sd.unet, sd.vae, sd.text_encoder) for p in m.parameters())
    assert not sd.unet.training and not sd.vae.training and not sd.text_encoder.training


def test_add_noise_is_the_ddpm_forward_process(sd: StableDiffusionComponents) -> None:
    latents, noise, t, _ = _fixed_inputs(sd)
    a = sd.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * latents + (1 - a).sqrt() * noise
    torch.testing.assert_close(sd.add_noise(latents, noise, t), expected)
    torch.testing.assert_close(sd.add_noise(latents, noise, t), sd.scheduler.add_noise(latents, noise, t))


def test_cfg_combination_equals_uncond_plus_scale_times_difference(sd: StableDiffusionComponents) -> None:
    latents, noise, t, text = _fixed_inputs(sd)
    z_t = sd.add_noise(latents, noise, t)
    with torch.no_grad():
        eps_hat = predict_noise(sd.unet, z_t, t, text[:1], text[1:], 7.5)
        expected, cond, uncond = _reference_eps(sd, z_t, t, text, 7.5)
        torch.testing.assert_close(eps_hat, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(predict_noise(sd.unet, z_t, t, text[:1], text[1:], 1.0), cond, atol=1e-5, rtol=0)
        torch.testing.assert_close(predict_noise(sd.unet, z_t, t, text[:1], text[1:], 0.0), uncond, atol=1e-5, rtol=0)
        per_sample = predict_noise(sd.unet, z_t, t, text[:1], text[1:], torch.tensor([0.0, 20.0]))
    torch.testing.assert_close(per_sample[0], uncond[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(per_sample[1], (uncond + 20.0 * (cond - uncond))[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weighting", ["sds", "uniform"])
def test_sds_gradient_on_latents_equals_weighted_noise_residual(sd: StableDiffusionComponents, weighting: str) -> None:
    latents, noise, t, text = _fixed_inputs(sd)
    latents = latents.clone().requires_grad_(True)
    with torch.no_grad():
        z_t = sd.add_noise(latents, noise, t)
        eps_hat = predict_noise(sd.unet, z_t, t, text[:1], text[1:], 7.5)
    w = sds_weight(sd.alphas_cumprod, t, weighting)
    loss = sds_loss(latents, sds_grad(eps_hat, noise, w))
    loss.backward()

    # reference, by hand: w(t) = 1 - alpha_bar_t (or 1), eps_hat from two plain UNet calls
    z_ref = (
        sd.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * latents.detach()
        + (1 - sd.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * noise
    )
    with torch.no_grad():
        eps_ref, _, _ = _reference_eps(sd, z_ref, t, text, 7.5)
    w_ref = (1 - sd.alphas_cumprod[t]).view(-1, 1, 1, 1) if weighting == "sds" else torch.ones(2, 1, 1, 1)
    expected = w_ref * (eps_ref - noise) / 2  # d loss / d latents == grad / B
    torch.testing.assert_close(latents.grad, expected, atol=1e-5, rtol=1e-4)


def test_sds_gradient_reaches_the_images_through_the_vae_encoder(sd: StableDiffusionComponents) -> None:
    images = torch.rand(2, 3, TINY_RESOLUTION, TINY_RESOLUTION, requires_grad=True)
    latents = sd.encode_images(images)
    grad = torch.randn_like(latents)
    sds_loss(latents, grad).backward()
    (expected,) = torch.autograd.grad(sd.encode_images(images), images, grad_outputs=grad / 2)
    torch.testing.assert_close(images.grad, expected)
    assert all(p.grad is None for p in sd.vae.parameters())


def test_sds_grad_zeroes_non_finite_values() -> None:
    eps_hat = torch.tensor([[[[float("nan"), 1.0]]]])
    grad = sds_grad(eps_hat, torch.zeros_like(eps_hat), torch.ones(1, 1, 1, 1))
    assert torch.equal(grad, torch.tensor([[[[0.0, 1.0]]]]))


def test_paper000_window_starts_at_0p02_0p75_and_anneals_linearly() -> None:
    cfg = TimestepScheduleConfig(min_ratio=0.02, max_ratio=0.75, mode="linear", max_ratio_end=0.5, end_step=1000)
    schedule = TimestepSchedule(cfg)
    assert schedule.bounds(0) == (20, 750)
    assert schedule.bounds(500) == (20, 625)
    assert schedule.bounds(1000) == (20, 500)
    assert schedule.bounds(2800) == (20, 500)
    gen = torch.Generator().manual_seed(0)
    for step in (0, 250, 1000):
        schedule.update_step(step)
        t = schedule.sample(4000, gen)
        lo, hi = schedule.bounds(step)
        assert t.dtype == torch.long and int(t.min()) == lo and int(t.max()) == hi


def test_linear_annealing_moves_min_too_and_honours_start_step() -> None:
    cfg = TimestepScheduleConfig(
        min_ratio=0.2, max_ratio=0.8, mode="linear", min_ratio_end=0.1, max_ratio_end=0.4, start_step=100, end_step=300
    )
    schedule = TimestepSchedule(cfg)
    assert schedule.bounds(0) == schedule.bounds(100) == (200, 800)
    lo, hi = schedule.ratios(200)
    assert lo == pytest.approx(0.15) and hi == pytest.approx(0.6)
    assert schedule.bounds(300) == schedule.bounds(10_000) == (100, 400)


def test_paper001_piecewise_window_switches_at_step_1000() -> None:
    cfg = TimestepScheduleConfig(min_ratio=0.02, max_ratio=0.98, mode="step", max_ratio_end=0.5, end_step=1000)
    schedule = TimestepSchedule(cfg)
    assert schedule.bounds(0) == schedule.bounds(999) == (20, 980)
    assert schedule.bounds(1000) == schedule.bounds(5000) == (20, 500)
    schedule.update_step(1000)
    assert int(schedule.sample(2000, torch.Generator().manual_seed(0)).max()) == 500


def test_constant_window_and_reproducible_sampling() -> None:
    schedule = TimestepSchedule(TimestepScheduleConfig(min_ratio=0.5, max_ratio=0.5))
    assert schedule.bounds(123) == (500, 500)
    other = TimestepSchedule(TimestepScheduleConfig())
    a = other.sample(8, torch.Generator().manual_seed(3))
    b = other.sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_invalid_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="min <= max"):
        TimestepScheduleConfig(min_ratio=0.8, max_ratio=0.2)
    with pytest.raises(ValueError, match="min <= max"):
        TimestepScheduleConfig(min_ratio=0.1, max_ratio=0.5, max_ratio_end=1.5)


def test_load_stable_diffusion_round_trips_a_diffusers_folder(sd: StableDiffusionComponents, tmp_path: Path) -> None:
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(sd, name).save_pretrained(tmp_path / name)
    loaded = load_stable_diffusion(str(tmp_path), device="cpu", hint=SD_HINT)
    assert loaded.dtype == torch.float32 and not any(p.requires_grad for p in loaded.unet.parameters())
    latents, noise, t, text = _fixed_inputs(sd)
    with torch.no_grad():
        expected = sd.unet(latents, t, encoder_hidden_states=text).sample
        got = loaded.unet(latents, t, encoder_hidden_states=loaded.encode_text(["a watercolour house", ""])).sample
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loaded.alphas_cumprod, sd.alphas_cumprod)


def test_a_folder_without_unet_loads_with_load_unet_false_and_is_refused_otherwise(
    sd: StableDiffusionComponents, tmp_path: Path
) -> None:
    """MVDream's case: SD 2.1-base supplies everything but the UNet."""
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(sd, name).save_pretrained(tmp_path / name)
    loaded = load_stable_diffusion(str(tmp_path), device="cpu", hint=SD_HINT, load_unet=False)
    assert loaded.unet is None and loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert not any(p.requires_grad for p in loaded.vae.parameters())
    images = torch.rand(1, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    torch.testing.assert_close(loaded.encode_images(images), sd.encode_images(images))
    torch.testing.assert_close(loaded.encode_text(["a house"]), sd.encode_text(["a house"]))
    with pytest.raises(MissingWeightsError) as info:
        load_stable_diffusion(str(tmp_path), device="cpu", hint=SD_HINT)
    msg = str(info.value)
    assert "\n" not in msg and "(missing unet)" in msg and SD_HINT in msg


def test_incomplete_sd_folder_names_the_missing_parts(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError) as info:
        load_stable_diffusion(str(tmp_path), device="cpu", hint=SD_HINT)
    msg = str(info.value)
    assert "\n" not in msg and "vae" in msg and "tokenizer" in msg and SD_HINT in msg


def test_missing_sd_weights_raise_one_line_error_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as info:
        load_stable_diffusion(DEFAULT_SD_MODEL, device="cpu", hint=SD_HINT)
    msg = str(info.value)
    assert "\n" not in msg and DEFAULT_SD_MODEL in msg and SD_HINT in msg and "HF_HUB_OFFLINE" in msg
