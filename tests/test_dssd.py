"""DSSD (paper 000) and its parts: ODCR (paper 003 eq. 9), per-block IP-Adapter scales, schedules, SDS gradient."""

from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F

from styleme3d_ns.guidance.diffusion import StableDiffusionComponents
from styleme3d_ns.guidance.dssd import DSSDConfig, DynamicStyleScoreDistillation
from styleme3d_ns.guidance.ip_adapter import (
    attach_ip_adapter,
    encode_image_embeds,
    ip_adapter_scales,
    load_image_encoder,
    load_ip_adapter_state_dict,
    set_ip_adapter_scale,
)
from styleme3d_ns.guidance.odcr import content_basis, remove_content
from styleme3d_ns.guidance.weights import MissingWeightsError
from tests.tiny_models import (
    TINY_IMAGE_EMBED_DIM,
    TINY_RESOLUTION,
    tiny_content_text_encoder,
    tiny_image_encoder,
    tiny_ip_adapter_state_dict,
    tiny_sd_components,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models: intra-op threads only add contention on the shared machine."""


@pytest.fixture
def offline_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "empty-cache"


# ------------------------------------------------------------------------------------------------------------ ODCR


def test_odcr_output_is_orthogonal_to_every_content_direction() -> None:
    gen = torch.Generator().manual_seed(0)
    style = torch.randn(4, 64, generator=gen)
    for k in (1, 3, 8):
        content = torch.randn(k, 64, generator=gen) * 5.0
        out = remove_content(style, content)
        cos = F.cosine_similarity(out[:, None, :], content[None, :, :], dim=-1)
        assert cos.abs().max() < 1e-5
        # what was removed lies in the span: out + (style - out) == style with (style - out) in span(content)
        removed = (style - out).double()
        q = content_basis(content)
        torch.testing.assert_close(removed @ q @ q.T, removed, atol=1e-5, rtol=0)


def test_odcr_single_direction_is_paper003_eq9() -> None:
    gen = torch.Generator().manual_seed(1)
    e_s, e_c = torch.randn(2, 32, generator=gen), torch.randn(32, generator=gen)
    expected = e_s - (e_s @ e_c / (e_c @ e_c))[:, None] * e_c
    torch.testing.assert_close(remove_content(e_s, e_c), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(remove_content(e_s, e_c, strength=0.5), (e_s + expected) / 2, atol=1e-6, rtol=1e-6)


def test_odcr_leaves_an_already_orthogonal_style_unchanged() -> None:
    content = torch.zeros(2, 16)
    content[0, :4] = torch.tensor([1.0, 2.0, 0.0, 0.0])
    content[1, :4] = torch.tensor([0.0, 1.0, 3.0, 0.0])
    style = torch.zeros(3, 16)
    style[:, 4:] = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(remove_content(style, content), style, atol=1e-6, rtol=0)


def test_odcr_handles_dependent_and_zero_directions_and_keeps_style_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(16, generator=gen)
    content = torch.stack([a, 2 * a, torch.zeros(16)])  # rank 1
    assert content_basis(content).shape == (16, 1)
    style = torch.randn(2, 16, generator=gen, requires_grad=True)
    out = remove_content(style, content)
    assert F.cosine_similarity(out, a[None], dim=-1).abs().max() < 1e-5
    out.sum().backward()
    assert style.grad is not None and style.grad.abs().sum() > 0
    assert remove_content(style, torch.zeros(1, 16)) is style and remove_content(style, None) is style
    with pytest.raises(ValueError, match="same CLIP space"):
        remove_content(style, torch.ones(1, 8))


# ------------------------------------------------------------------------------------------------------ IP-Adapter


@pytest.fixture(scope="module")
def sd() -> StableDiffusionComponents:
    return tiny_sd_components(seed=0)


def _unet_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 600])
    text = torch.randn(2, 16, 32, generator=gen)
    image = torch.randn(2, TINY_IMAGE_EMBED_DIM, generator=gen) * 3.0
    return z, t, text, {"image_embeds": [image[:, None, :]]}


def test_ip_adapter_scale_zero_everywhere_equals_the_plain_unet(sd: StableDiffusionComponents) -> None:
    plain = sd.unet
    unet = copy.deepcopy(plain)
    scales = attach_ip_adapter(unet, tiny_ip_adapter_state_dict(unet), scale=0.0)
    assert scales and all(s == [0.0] for s in scales.values())
    assert not any(p.requires_grad for p in unet.parameters())
    z, t, text, kwargs = _unet_inputs()
    with torch.no_grad():
        expected = plain(z, t, encoder_hidden_states=text).sample
        torch.testing.assert_close(unet(z, t, encoder_hidden_states=text, added_cond_kwargs=kwargs).sample, expected)
        set_ip_adapter_scale(unet, {"up_blocks.1": 1.0})
        styled = unet(z, t, encoder_hidden_states=text, added_cond_kwargs=kwargs).sample
    assert (styled - expected).abs().max() > 1e-3


def test_only_the_style_block_processors_get_a_nonzero_scale(sd: StableDiffusionComponents) -> None:
    unet = copy.deepcopy(sd.unet)
    scales = attach_ip_adapter(unet, tiny_ip_adapter_state_dict(unet), scale={"up_blocks.1": 0.8})
    assert set(scales) == {n for n in unet.attn_processors if n.endswith("attn2.processor")}
    for name, value in scales.items():
        assert value == ([0.8] if name.startswith("up_blocks.1.") else [0.0]), name
    # diffusers' per-block dict (InstantStyle) gives the same assignment, and can pick one attention layer
    by_dict = set_ip_adapter_scale(unet, {"up": {"block_1": 0.8}})
    assert by_dict == scales
    one_layer = set_ip_adapter_scale(unet, {"up": {"block_1": [0.0, 1.0]}})
    assert [n for n, s in one_layer.items() if s != [0.0]] == [
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor"
    ]
    assert ip_adapter_scales(unet) == one_layer
    with pytest.raises(ValueError, match="no cross-attention"):
        set_ip_adapter_scale(unet, {"up": {"block_0": 1.0}})  # SD 1.5's up_blocks.0 has no attention
    with pytest.raises(ValueError, match="2 attention layers"):
        set_ip_adapter_scale(unet, {"up": {"block_1": [0.0, 1.0, 0.0]}})
    with pytest.raises(ValueError, match="matches no cross-attention"):
        set_ip_adapter_scale(unet, {"up_blocks.7": 1.0})


def test_attach_refuses_a_state_dict_without_the_released_keys(sd: StableDiffusionComponents) -> None:
    with pytest.raises(ValueError, match="image_proj"):
        attach_ip_adapter(copy.deepcopy(sd.unet), {"proj.weight": torch.zeros(1)})


def test_ip_adapter_loader_reads_bin_and_safetensors(sd: StableDiffusionComponents, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = tiny_ip_adapter_state_dict(sd.unet)
    (tmp_path / "models").mkdir()
    torch.save(state, tmp_path / "models" / "ip-adapter_sd15.bin")
    flat = {f"{top}.{k}": v for top, sub in state.items() for k, v in sub.items()}
    save_file(flat, tmp_path / "ip.safetensors")
    for loaded in (
        load_ip_adapter_state_dict(tmp_path, hint="x"),
        load_ip_adapter_state_dict(tmp_path / "ip.safetensors", hint="x"),
    ):
        assert set(loaded) == {"image_proj", "ip_adapter"}
        for top in state:
            assert all(torch.equal(loaded[top][k], v) for k, v in state[top].items())


def test_image_encoder_loader_round_trips_a_folder(tmp_path: Path) -> None:
    encoder = tiny_image_encoder()
    encoder.save_pretrained(tmp_path / "models" / "image_encoder")
    loaded = load_image_encoder(tmp_path, device="cpu", hint="x")
    images = torch.rand(2, 3, 40, 48)
    torch.testing.assert_close(encode_image_embeds(loaded, images), encode_image_embeds(encoder, images))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_missing_ip_adapter_and_image_encoder_raise_one_line_errors(offline_empty_cache: Path) -> None:
    hint = "pass --pipeline.model.dssd.ip-adapter <ip-adapter_sd15.bin>"
    with pytest.raises(MissingWeightsError) as info:
        load_ip_adapter_state_dict("h94/IP-Adapter", hint=hint)
    msg = str(info.value)
    assert "\n" not in msg and "h94/IP-Adapter" in msg and "ip-adapter_sd15.bin" in msg and hint in msg
    with pytest.raises(MissingWeightsError) as info:
        load_image_encoder("h94/IP-Adapter", hint="pass --pipeline.model.dssd.image-encoder DIR")
    assert "\n" not in str(info.value) and "--pipeline.model.dssd.image-encoder" in str(info.value)


def test_dssd_from_config_names_the_flag_of_missing_sd_weights(offline_empty_cache: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        DynamicStyleScoreDistillation.from_config(DSSDConfig(), "cpu")
    msg = str(info.value)
    assert "\n" not in msg and "--pipeline.model.dssd.sd-model" in msg
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg


# ------------------------------------------------------------------------------------------------------------ DSSD


def _dssd(config: DSSDConfig | None = None, content: bool = False) -> DynamicStyleScoreDistillation:
    components = tiny_sd_components(seed=0)
    text_model, tokenizer = tiny_content_text_encoder() if content else (None, None)
    config = config or DSSDConfig(resolution=TINY_RESOLUTION, prompt="a house", seed=0)
    return DynamicStyleScoreDistillation(
        config,
        components,
        tiny_image_encoder(),
        ip_adapter_state_dict=tiny_ip_adapter_state_dict(components.unet),
        content_text_encoder=text_model,
        content_tokenizer=tokenizer,
    )


def test_stage_schedule_follows_the_paper_plan() -> None:
    dssd = _dssd()
    assert [dssd.stage(s) for s in (0, 1, 999, 1000, 1899)] == ["global"] * 5
    assert [dssd.stage(s) for s in (1900, 2500, 2799, 2800, 5000)] == ["local"] * 5
    assert [dssd.phase(s) for s in (0, 999, 1000, 1899, 1900)] == [
        "global-adaptive", "global-adaptive", "global-fixed", "global-fixed", "local",
    ]  # fmt: skip


def test_timestep_window_and_guidance_scale_anneal_over_the_adaptive_steps() -> None:
    dssd = _dssd()
    assert dssd.schedule.bounds(0) == (20, 750)  # [0.02 T, 0.75 T], paper 000
    assert dssd.schedule.bounds(500) == (20, 625)
    assert dssd.schedule.bounds(1000) == dssd.schedule.bounds(2800) == (20, 500)
    assert dssd.guidance_scale(0) == 20.0  # lambda_max, paper 000
    assert dssd.guidance_scale(500) == pytest.approx(13.75)
    assert dssd.guidance_scale(1000) == dssd.guidance_scale(2800) == 7.5
    dssd.set_style(torch.rand(1, 3, 48, 48))
    for step in (0, 600, 2000):
        t = dssd(torch.rand(1, 3, TINY_RESOLUTION, TINY_RESOLUTION), step)["t"]
        lo, hi = dssd.schedule.bounds(step)
        assert lo <= int(t) <= hi


def test_crop_box_is_the_full_render_in_global_mode_and_a_square_inside_it_in_local_mode() -> None:
    dssd = _dssd()
    assert dssd.crop_box(80, 120, 1899) == (0, 0, 80, 120)
    for _ in range(20):
        top, left, h, w = dssd.crop_box(80, 120, 1900)
        assert h == w and 0.3 * 80 - 1 <= h <= 0.6 * 80 + 1
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 120


def test_dssd_style_injection_is_limited_to_the_style_blocks() -> None:
    dssd = _dssd()
    for name, scale in ip_adapter_scales(dssd.components.unet).items():
        assert scale == ([1.0] if name.startswith("up_blocks.1.") else [0.0]), name


def test_dssd_gradient_is_the_sds_gradient_with_the_odcr_style_prompt() -> None:
    dssd = _dssd(content=True, config=DSSDConfig(resolution=TINY_RESOLUTION, prompt="a house", content_prompt="a cat"))
    sd, encoder = dssd.components, tiny_image_encoder()
    text_model, tokenizer = tiny_content_text_encoder()
    style = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    dssd.set_style(style)
    step, t = 700, torch.tensor([250, 650])
    images = torch.rand(2, 3, TINY_RESOLUTION, TINY_RESOLUTION, generator=torch.Generator().manual_seed(6))
    images.requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    out = dssd(images, step, t=t, noise=noise)
    out["loss"].backward()

    # reference by hand: ODCR'd style embedding, two plain UNet calls, w(t) = 1 - alpha_bar_t
    tokens = tokenizer(["a cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    e_c = text_model(input_ids=tokens).text_embeds
    e_s = encode_image_embeds(encoder, style)
    e_style = e_s - (e_s @ e_c.T) / (e_c @ e_c.T) * e_c  # paper 003 eq. 9
    assert F.cosine_similarity(dssd.style_embedding(), e_c).abs() < 1e-5
    torch.testing.assert_close(dssd.style_embedding(), e_style, atol=1e-5, rtol=1e-5)
    x = images.detach().requires_grad_(True)
    latents = sd.encode_images(x)
    with torch.no_grad():
        z_t = sd.add_noise(latents, noise, t)
        style_tokens = {"image_embeds": [e_style.expand(2, -1)[:, None, :]]}
        zero_tokens = {"image_embeds": [torch.zeros(2, 1, TINY_IMAGE_EMBED_DIM)]}  # IP-Adapter's unconditional
        cond = sd.unet(z_t, t, sd.encode_text(["a house"]).expand(2, -1, -1), added_cond_kwargs=style_tokens)
        uncond = sd.unet(z_t, t, sd.encode_text([""]).expand(2, -1, -1), added_cond_kwargs=zero_tokens)
        scale = 20.0 + 0.7 * (7.5 - 20.0)  # linear anneal at step 700 of 1000
        eps_hat = uncond.sample + scale * (cond.sample - uncond.sample)
    grad = (1 - sd.alphas_cumprod[t]).view(-1, 1, 1, 1) * (eps_hat - noise)
    (expected_image_grad,) = torch.autograd.grad(latents, x, grad_outputs=grad / 2)

    assert out["guidance_scale"].item() == pytest.approx(scale)
    assert torch.equal(out["t"], t)
    torch.testing.assert_close(out["grad_norm"], grad.norm(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["loss_dssd"], 0.5 * grad.square().sum() / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(images.grad, expected_image_grad, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in sd.unet.parameters())


def test_local_mode_gradient_stays_inside_the_crop_box() -> None:
    dssd = _dssd()
    dssd.set_style(torch.rand(1, 3, 32, 32))
    images = torch.rand(1, 3, 96, 96, requires_grad=True)
    out = dssd(images, 2000)
    out["loss"].backward()
    top, left, h, w = out["crop_box"].tolist()
    assert h == w < 96
    inside = torch.zeros(96, 96, dtype=torch.bool)
    inside[top : top + h, left : left + w] = True
    grad = images.grad[0].abs().sum(0)
    assert grad[inside].sum() > 0 and grad[~inside].sum() == 0


def test_dssd_networks_are_frozen_submodules_that_move_with_to() -> None:
    dssd = _dssd()
    assert list(dssd.parameters()) and not any(p.requires_grad for p in dssd.parameters())
    assert all(not m.training for m in dssd.networks.values())
    dssd.to(torch.float64)
    assert next(dssd.components.unet.parameters()).dtype == torch.float64
    assert dssd.dtype == torch.float64
    dssd.to(torch.float32)
    assert next(dssd.components.vae.parameters()).dtype == torch.float32


def test_disabled_dssd_returns_zero_without_running() -> None:
    dssd = _dssd(DSSDConfig(resolution=TINY_RESOLUTION, enabled=False))
    out = dssd(torch.rand(1, 3, 8, 8), 0)  # no style set: the networks never run
    assert out["loss"].item() == 0.0
