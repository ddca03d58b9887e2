"""SAS loss (paper 001 eq. 9-14) on tiny random SD components: the gradient it states, the noise window switch, the
ablation switches, IP-Adapter-FaceID (+ its LoRA) and the landmark ControlNet, and the missing-weights messages."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch

import styleme3d_ns.guidance.sas as sas_module
from styleme3d_ns.guidance.ip_adapter import ip_adapter_processors, merge_faceid_lora
from styleme3d_ns.guidance.sas import (
    FACE_LANDMARK_CONTROLNET_REPO,
    IP_ADAPTER_FACEID_REPO,
    IP_ADAPTER_FACEID_SD15_FILE,
    SASConfig,
    StyleAlignedSamplingLoss,
)
from styleme3d_ns.guidance.style_mapping import LatentStatistics, generate_style_latents, map_latents
from styleme3d_ns.guidance.weights import MissingWeightsError
from tests.tiny_models import TINY_RESOLUTION, tiny_sd_components

FACE_DIM = 16  # ArcFace is 512-d; the tiny adapter takes 16-d identity embeddings
PROMPT = "a 3D cartoon style portrait"
STYLE = LatentStatistics(
    torch.tensor([0.4, -0.3, 0.2, 0.1]),
    torch.tensor([[0.5, 0.1, 0.0, 0.0], [0.1, 0.4, 0.05, 0.0], [0.0, 0.05, 0.3, 0.02], [0.0, 0.0, 0.02, 0.2]]),
)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def tiny_faceid_state_dict(unet, rank: int = 4, seed: int = 0) -> dict:  # noqa: ANN001
    """A random IP-Adapter-FaceID state dict in the ``ip-adapter-faceid_sd15.bin`` layout, sized for ``unet``.

    ``image_proj``: ``proj.0`` [2E, E], ``proj.2`` [4C, 2E], ``norm`` [C] (FaceID MLP: E-d identity -> 4 tokens);
    ``ip_adapter``: for the k-th processor of ``unet.attn_processors``, ``{k}.to_{q,k,v,out}_lora.{down,up}.weight``
    (every attention) and ``{k}.to_{k,v}_ip.weight`` (cross-attention, odd k).
    """
    gen = torch.Generator().manual_seed(seed)
    c = unet.config.cross_attention_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.2

    image_proj = {"proj.0.weight": rand(2 * FACE_DIM, FACE_DIM), "proj.0.bias": rand(2 * FACE_DIM),
                  "proj.2.weight": rand(4 * c, 2 * FACE_DIM), "proj.2.bias": rand(4 * c),
                  "norm.weight": 1.0 + rand(c), "norm.bias": rand(c)}  # fmt: skip
    ip = {}
    for k, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        for layer, linear in (
            ("to_q", attn.to_q),
            ("to_k", attn.to_k),
            ("to_v", attn.to_v),
            ("to_out", attn.to_out[0]),
        ):
            ip[f"{k}.{layer}_lora.down.weight"] = rand(rank, linear.in_features)
            ip[f"{k}.{layer}_lora.up.weight"] = rand(linear.out_features, rank)
        if name.endswith("attn2.processor"):
            ip[f"{k}.to_k_ip.weight"] = rand(attn.to_k.out_features, c)
            ip[f"{k}.to_v_ip.weight"] = rand(attn.to_v.out_features, c)
    return {"image_proj": image_proj, "ip_adapter": ip}


def tiny_controlnet(unet, seed: int = 0):  # noqa: ANN001, ANN201
    """A random landmark ControlNet for the tiny UNet (its zero-initialised output convs randomised too)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval().requires_grad_(False)


def make_sas(
    identity: bool = True, mapping: bool = True, controlnet: bool = False, **overrides
) -> StyleAlignedSamplingLoss:  # noqa: ANN003
    components = tiny_sd_components(seed=0)
    config = SASConfig(
        prompt=PROMPT,
        image_size=TINY_RESOLUTION,
        identity_conditioning=identity,
        style_mapping=mapping,
        seed=0,
        **overrides,
    )
    return StyleAlignedSamplingLoss(
        config,
        components=components,
        ip_adapter_state=tiny_faceid_state_dict(components.unet) if identity else None,
        controlnet=tiny_controlnet(tiny_sd_components(seed=0).unet) if controlnet else None,
        style_statistics=STYLE if mapping else None,
    )


def fixed_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    latents = torch.randn(batch, 4, 8, 8, generator=gen)
    noise = torch.randn(batch, 4, 8, 8, generator=gen)
    face = torch.randn(1, FACE_DIM, generator=gen)
    return latents, noise, face, torch.tensor([700, 300][:batch])


def latent_grad(sas: StyleAlignedSamplingLoss, latents: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:  # noqa: ANN003
    z = latents.clone().requires_grad_(True)
    out = sas.latent_loss(z, **kwargs)
    (grad,) = torch.autograd.grad(out["loss"], z)
    return grad, out


@torch.no_grad()
def reference_eps(sas: StyleAlignedSamplingLoss, noisy, t, face=None, residuals=None) -> torch.Tensor:  # noqa: ANN001
    """eq. 11 by hand: the unconditional and conditional halves as two separate UNet calls, then CFG 50."""
    c = sas.components
    halves = []
    for prompt, image in (("", None if face is None else torch.zeros_like(face)), (PROMPT, face)):
        kwargs = {}
        if image is not None:
            kwargs["added_cond_kwargs"] = {"image_embeds": [image.expand(noisy.shape[0], -1).unsqueeze(1)]}
        text = c.encode_text([prompt]).expand(noisy.shape[0], -1, -1)
        if residuals is not None:
            down, mid = residuals(noisy, t, text)
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        halves.append(c.unet(noisy, t, encoder_hidden_states=text, **kwargs).sample)
    uncond, cond = halves
    return uncond + 50.0 * (cond - uncond)


def reference_grad(sas: StyleAlignedSamplingLoss, latents, noise, t, face=None, residuals=None, mapping=True):  # noqa: ANN001, ANN201
    """eq. 12-14 by hand: w(t) (z - z'_m) / B with w = 1, times the loss weight."""
    abar = sas.components.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    eps = reference_eps(sas, noisy, t, face, residuals)
    z_pred = (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()  # eq. 12
    z_mapped = map_latents(z_pred, None, STYLE) if mapping else z_pred  # eq. 13
    return sas.config.weight * (latents - z_mapped) / latents.shape[0]  # eq. 14: -(z'_m - z), descent sign


def test_sas_gradient_is_the_weighted_difference_to_the_mapped_one_step_prediction() -> None:
    sas = make_sas(weight=0.7)
    latents, noise, face, t = fixed_inputs()
    grad, out = latent_grad(sas, latents, face_embeds=face, t=t, noise=noise)
    torch.testing.assert_close(grad, reference_grad(sas, latents, noise, t, face), rtol=1e-4, atol=1e-5)
    assert out["t"].tolist() == [700, 300]
    torch.testing.assert_close(out["loss"], 0.7 * out["loss_sas"])
    assert out["mapped_shift"] > 0


def test_noise_window_switches_from_098_to_05_at_step_1000() -> None:
    sas = make_sas(identity=False, mapping=False)
    assert sas.schedule.bounds(999) == (20, 980) and sas.schedule.bounds(1000) == (20, 500)
    images = torch.rand(16, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    early = torch.cat([sas(images, step=999)["t"] for _ in range(2)])
    late = torch.cat([sas(images, step=1000)["t"] for _ in range(2)])
    assert early.max() > 500 and early.min() >= 20
    assert late.max() <= 500 and late.min() >= 20


def test_style_mapping_switch_changes_only_the_mapping_step(monkeypatch: pytest.MonkeyPatch) -> None:
    latents, noise, face, t = fixed_inputs()
    on = make_sas(mapping=True)
    monkeypatch.setattr(sas_module, "generate_style_latents", lambda *a, **k: pytest.fail("style set sampled"))
    off = make_sas(mapping=False)  # no style statistics are needed, none are sampled
    assert off.style_statistics is None
    grad_on, _ = latent_grad(on, latents, face_embeds=face, t=t, noise=noise)
    grad_off, out_off = latent_grad(off, latents, face_embeds=face, t=t, noise=noise)
    pred_off = latents - grad_off * latents.shape[0]  # z' (unmapped), recovered from grad = (z - z') / B
    mapped_on = latents - grad_on * latents.shape[0]  # z'_m
    torch.testing.assert_close(map_latents(pred_off, None, STYLE), mapped_on, rtol=1e-4, atol=1e-4)
    # the reference runs CFG's two halves as separate UNet calls: float32 summation-order differences, amplified by
    # CFG 50 and 1 / sqrt(abar_700) (~4), reach 2e-4 relative on this machine's torch 2.14
    torch.testing.assert_close(
        grad_off, reference_grad(off, latents, noise, t, face, mapping=False), rtol=1e-3, atol=1e-5
    )
    assert out_off["mapped_shift"] == 0


def test_identity_switch_removes_exactly_the_faceid_adapter_and_its_lora() -> None:
    latents, noise, face, t = fixed_inputs()
    off = make_sas(identity=False)
    assert not ip_adapter_processors(off.components.unet)
    fresh = tiny_sd_components(seed=0).unet.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in off.components.unet.state_dict().items())  # no LoRA merged
    grad_off, _ = latent_grad(off, latents, face_embeds=face, t=t, noise=noise)  # face embeds are ignored
    torch.testing.assert_close(grad_off, reference_grad(off, latents, noise, t), rtol=1e-4, atol=1e-5)

    on = make_sas(identity=True)
    assert len(ip_adapter_processors(on.components.unet)) == 4  # every cross-attention of the tiny UNet
    grad_on, _ = latent_grad(on, latents, face_embeds=face, t=t, noise=noise)
    assert (grad_on - grad_off).abs().max() > 1e-3
    other_face, _ = latent_grad(on, latents, face_embeds=-face, t=t, noise=noise)
    assert (other_face - grad_on).abs().max() > 1e-4  # the identity embedding reaches the prediction
    with pytest.raises(ValueError, match="face_embeds"):
        on.latent_loss(latents, t=t, noise=noise)


def test_faceid_lora_merge_is_exact_and_touches_only_its_layer() -> None:
    unet = tiny_sd_components(seed=0).unet
    state = tiny_faceid_state_dict(unet)
    names = list(unet.attn_processors)
    k = 3  # a cross-attention processor
    only_k = {"ip_adapter": {key: v for key, v in state["ip_adapter"].items() if key.startswith(f"{k}.")}}
    before = {n: p.clone() for n, p in unet.named_parameters()}
    assert merge_faceid_lora(unet, only_k) == 4
    attn = unet.get_submodule(names[k].removesuffix(".processor"))
    prefix = names[k].removesuffix(".processor")
    w = state["ip_adapter"]
    x = torch.randn(5, attn.to_q.in_features)
    expected = (
        torch.nn.functional.linear(x, before[f"{prefix}.to_q.weight"])
        + x @ w[f"{k}.to_q_lora.down.weight"].T @ w[f"{k}.to_q_lora.up.weight"].T
    )
    torch.testing.assert_close(attn.to_q(x), expected, rtol=1e-5, atol=1e-5)
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{prefix}.{layer}.weight" for layer in ("to_q", "to_k", "to_v", "to_out.0")}


def test_landmark_controlnet_adds_its_residuals_to_the_unet() -> None:
    latents, noise, face, t = fixed_inputs()
    sas = make_sas(controlnet=True)
    landmarks = torch.rand(1, 3, 40, 40)  # resized to the render size inside
    grad, _ = latent_grad(sas, latents, face_embeds=face, landmark_image=landmarks, t=t, noise=noise)
    cond = torch.nn.functional.interpolate(landmarks, (TINY_RESOLUTION, TINY_RESOLUTION), mode="bilinear")

    def residuals(noisy, tt, text):  # noqa: ANN001, ANN202 - eq. 10: F_c(I_l) on the same z_t, t, y
        image = cond.expand(noisy.shape[0], -1, -1, -1)
        return sas.controlnet(noisy, tt, encoder_hidden_states=text, controlnet_cond=image, return_dict=False)

    expected = reference_grad(sas, latents, noise, t, face, residuals=residuals)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    without, _ = latent_grad(make_sas(), latents, face_embeds=face, t=t, noise=noise)
    assert (grad - without).abs().max() > 1e-4
    with pytest.raises(ValueError, match="landmark_image"):
        sas.latent_loss(latents, face_embeds=face, t=t, noise=noise)


def test_construction_samples_the_text_only_style_set() -> None:
    config = SASConfig(
        prompt=PROMPT, style_prompt="golden statue style", image_size=TINY_RESOLUTION, style_samples=2, style_steps=2
    )
    components = tiny_sd_components(seed=0)
    sas = StyleAlignedSamplingLoss(
        config, components=components, ip_adapter_state=tiny_faceid_state_dict(components.unet)
    )
    latents = generate_style_latents(tiny_sd_components(seed=0), "golden statue style", n=2, steps=2, latent_size=8)
    expected = LatentStatistics.from_latents(latents)  # with the plain UNet: sampled before FaceID is attached
    torch.testing.assert_close(sas.style_statistics.mean, expected.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sas.style_statistics.cov, expected.cov, rtol=1e-4, atol=1e-5)


def test_forward_encodes_renders_and_backpropagates_to_them() -> None:
    sas = make_sas()
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    out = sas(images, step=10, face_embeds=torch.randn(1, FACE_DIM))
    assert set(out) >= {"loss", "loss_sas", "t", "grad_norm"} and out["loss"].ndim == 0
    out["loss"].backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=f"\\[1 or B, {FACE_DIM}\\]"):
        sas(images.detach(), step=10, face_embeds=torch.randn(1, FACE_DIM + 1))


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_faceid_weights_is_one_line_naming_repo_file_and_flag(empty_hf_cache: None) -> None:
    config = SASConfig(prompt=PROMPT, image_size=TINY_RESOLUTION, style_mapping=False)
    with pytest.raises(MissingWeightsError) as err:
        StyleAlignedSamplingLoss(config, components=tiny_sd_components(seed=0))
    message = str(err.value)
    assert "\n" not in message
    assert IP_ADAPTER_FACEID_REPO in message and IP_ADAPTER_FACEID_SD15_FILE in message
    assert "--pipeline.model.sas.ip-adapter" in message


def test_missing_landmark_controlnet_is_one_line_naming_repo_file_and_flag(empty_hf_cache: None) -> None:
    config = SASConfig(
        prompt=PROMPT,
        image_size=TINY_RESOLUTION,
        style_mapping=False,
        landmark_controlnet=FACE_LANDMARK_CONTROLNET_REPO,
    )
    components = tiny_sd_components(seed=0)
    with pytest.raises(MissingWeightsError) as err:
        StyleAlignedSamplingLoss(
            config,
            components=components,
            ip_adapter_state=tiny_faceid_state_dict(components.unet),
            flag_prefix="--pipeline.model.portrait.sas.",
        )
    message = str(err.value)
    assert "\n" not in message
    assert FACE_LANDMARK_CONTROLNET_REPO in message and "diffusion_sd15/config.json" in message
    assert "--pipeline.model.portrait.sas.landmark-controlnet" in message
