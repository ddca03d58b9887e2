"""MVDream: released-checkpoint key layout, 3D (multi-view) attention, camera embedding, and the eq. 15 SDS gradient.

All networks are tiny and random (tests/tiny_models.py); the released checkpoint layout is produced from the tiny
diffusers UNet by :func:`to_ldm_layout`, a reference re-derivation of the ldm ``openaimodel`` key names written
independently of diffusers' ldm -> diffusers converter that the loader uses, so a strict load checks one against the
other.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import huggingface_hub
import pytest
import torch

from styleme3d_ns.guidance.mvdream import (
    LDM_UNET_PREFIX,
    MVDREAM_FILENAME,
    MVDREAM_REPO,
    MultiViewAttnProcessor,
    MultiViewSDS,
    MultiViewUNetSpec,
    MVDreamSDSConfig,
    build_multiview_unet,
    camera_condition,
    load_multiview_unet,
    mvdream_poses,
)
from styleme3d_ns.guidance.weights import MissingWeightsError
from tests.tiny_models import TINY_RESOLUTION, TINY_TEXT_DIM, tiny_sd_components

TINY_SPEC = MultiViewUNetSpec(
    model_channels=32,
    channel_mult=(1, 2),
    attention_resolutions=(1,),  # like SD: no transformer at the coarsest level, always one in the middle block
    num_res_blocks=1,
    num_head_channels=16,
    context_dim=TINY_TEXT_DIM,
    sample_size=8,
)
HINT = "pass --pipeline.model.mvdream.checkpoint PATH"


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def tiny_multiview_unet(seed: int = 0):  # noqa: ANN201 - UNet2DConditionModel
    torch.manual_seed(seed)
    return build_multiview_unet(TINY_SPEC).requires_grad_(False).eval()


def to_ldm_layout(state_dict: dict[str, torch.Tensor], spec: MultiViewUNetSpec) -> dict[str, torch.Tensor]:
    """Reference inverse mapping: a diffusers-layout MVDream UNet state dict -> the released ldm layout.

    ldm ``MultiViewUNetModel`` numbering: ``input_blocks.0`` is conv_in; each down level holds ``num_res_blocks``
    blocks ``[ResBlock, (SpatialTransformer3D)]`` then (except the last level) a ``Downsample`` block ``.0.op``;
    ``middle_block`` is ``[ResBlock, SpatialTransformer3D, ResBlock]``; each up level holds ``num_res_blocks + 1``
    blocks ``[ResBlock, (SpatialTransformer3D), (Upsample .conv on the level's last block)]``; the camera MLP is
    ``camera_embed.{0,2}``.
    """
    r = spec.num_res_blocks
    levels = len(spec.channel_mult)
    has_attn = [2**level in spec.attention_resolutions for level in range(levels)]
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "class_embedding.linear_1": "camera_embed.0", "class_embedding.linear_2": "camera_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip

    def resnet_key(rest: str) -> str:
        layer, _, param = rest.partition(".")
        return f"{resnet[layer]}.{param}"

    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        stem, param = ".".join(parts[:-1]), parts[-1]
        if stem in fixed:
            new = f"{fixed[stem]}.{param}"
        elif parts[0] == "down_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            block = 1 + level * (r + 1) + index
            if kind == "resnets":
                new = f"input_blocks.{block}.0.{resnet_key(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{block}.1.{rest}"
            else:  # downsamplers.0.conv.*
                new = f"input_blocks.{(level + 1) * (r + 1)}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * index}.{resnet_key(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            block = level * (r + 1) + index
            if kind == "resnets":
                new = f"output_blocks.{block}.0.{resnet_key(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{block}.1.{rest}"
            else:  # upsamplers.0.conv.*: after the ResBlock and, if the level has one, the transformer
                slot = 2 if has_attn[levels - 1 - level] else 1
                new = f"output_blocks.{level * (r + 1) + r}.{slot}.conv.{parts[-1]}"
        else:
            raise AssertionError(f"unexpected diffusers key {key}")
        out[LDM_UNET_PREFIX + new] = value.clone()
    return out


def released_checkpoint(tmp_path: Path, unet) -> Path:  # noqa: ANN001
    """Write ``unet`` as the release does: the whole LatentDiffusion state dict, UNet under model.diffusion_model."""
    state = to_ldm_layout(unet.state_dict(), TINY_SPEC)
    state.update({"first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3), "betas": torch.ones(1000)})
    state["cond_stage_model.model.ln_final.weight"] = torch.ones(4)
    path = tmp_path / MVDREAM_FILENAME
    torch.save(state, path)
    return path


def randomised(unet):  # noqa: ANN001, ANN201
    """Perturb every parameter so that no two tensors of the same shape coincide (a swapped key would show)."""
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def test_released_key_layout_loads_strictly_with_identical_tensors(tmp_path: Path) -> None:
    unet = randomised(tiny_multiview_unet())
    path = released_checkpoint(tmp_path, unet)
    ldm_keys = set(torch.load(path, weights_only=True))
    for key in ("camera_embed.0.weight", "camera_embed.2.bias", "time_embed.2.weight", "input_blocks.0.0.weight",
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "input_blocks.2.0.op.weight",
                "middle_block.1.proj_in.weight", "middle_block.2.out_layers.3.weight",
                "output_blocks.2.0.skip_connection.weight", "output_blocks.1.1.conv.weight", "out.2.bias"):  # fmt: skip
        assert LDM_UNET_PREFIX + key in ldm_keys, key

    loaded = load_multiview_unet(path, hint=HINT, spec=TINY_SPEC)

    original, restored = unet.state_dict(), loaded.state_dict()
    assert restored.keys() == original.keys()
    for key in original:
        assert torch.equal(restored[key], original[key]), key
    assert not any(p.requires_grad for p in loaded.parameters())
    assert all(isinstance(p, MultiViewAttnProcessor) for p in loaded.attn_processors.values())


def test_checkpoint_with_a_missing_unet_key_is_a_one_line_error(tmp_path: Path) -> None:
    state = to_ldm_layout(tiny_multiview_unet().state_dict(), TINY_SPEC)
    del state[LDM_UNET_PREFIX + "middle_block.1.proj_in.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(MissingWeightsError) as err:
        load_multiview_unet(path, hint=HINT, spec=TINY_SPEC)
    message = str(err.value)
    assert "\n" not in message and "mid_block.attentions.0.proj_in.weight" in message and HINT in message


def test_missing_checkpoint_is_a_one_line_error_naming_repo_file_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as err:
        load_multiview_unet(MVDREAM_REPO, hint=HINT)
    message = str(err.value)
    assert "\n" not in message
    assert MVDREAM_REPO in message and MVDREAM_FILENAME in message and HINT in message


def _eps(unet, x, t, text, camera, num_views):  # noqa: ANN001, ANN202
    return unet(
        x, t, encoder_hidden_states=text, class_labels=camera, cross_attention_kwargs={"num_views": num_views}
    ).sample


def _inputs(views: int = 4, seed: int = 0):  # noqa: ANN202
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(views, 4, 8, 8, generator=gen)
    text = torch.randn(1, 6, TINY_TEXT_DIM, generator=gen).expand(views, -1, -1)
    camera = camera_condition(mvdream_poses(views))
    return x, torch.full((views,), 500), text, camera


@torch.no_grad()
def test_single_view_attention_is_the_plain_sd_unet() -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = randomised(tiny_multiview_unet())
    plain = copy.deepcopy(unet)
    plain.set_attn_processor(AttnProcessor2_0())
    x, t, text, camera = _inputs()
    expected = plain(x, t, encoder_hidden_states=text, class_labels=camera).sample
    torch.testing.assert_close(_eps(unet, x, t, text, camera, 1), expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_four_identical_views_with_3d_attention_equal_the_per_view_computation() -> None:
    # Softmax attention over 4 identical copies of a view's keys/values returns exactly the single-view average, so
    # with identical views (same latent, camera, text) the multi-view UNet must reproduce the per-view output.
    unet = randomised(tiny_multiview_unet())
    x, t, text, camera = _inputs()
    x, camera = x[:1].expand(4, -1, -1, -1), camera[:1].expand(4, -1)
    joint = _eps(unet, x, t, text, camera, 4)
    per_view = _eps(unet, x, t, text, camera, 1)
    torch.testing.assert_close(joint, per_view, rtol=0, atol=1e-5)
    assert joint.abs().max() > 1e-2  # a real output, not a trivially zero one


@torch.no_grad()
def test_3d_attention_couples_views_of_one_object_only() -> None:
    unet = randomised(tiny_multiview_unet())
    x, t, text, camera = _inputs(views=8)  # two objects of 4 views
    changed = x.clone()
    changed[3] += 1.0  # perturb the last view of object 0
    for views, couples in ((4, True), (1, False)):
        before, after = _eps(unet, x, t, text, camera, views), _eps(unet, changed, t, text, camera, views)
        assert ((after[0] - before[0]).abs().max() > 1e-4) == couples  # view 0 of the same object
        torch.testing.assert_close(after[4:], before[4:], rtol=0, atol=1e-6)  # the other object never changes


@torch.no_grad()
def test_camera_embedding_is_added_through_the_class_embedding_only() -> None:
    unet = randomised(tiny_multiview_unet())
    x, t, text, camera = _inputs()
    other = camera_condition(mvdream_poses(4, elevation_deg=40.0, azimuth_start_deg=45.0))
    assert (_eps(unet, x, t, text, camera, 4) - _eps(unet, x, t, text, other, 4)).abs().max() > 1e-4
    unet.class_embedding.linear_2.weight.zero_()
    unet.class_embedding.linear_2.bias.zero_()
    torch.testing.assert_close(_eps(unet, x, t, text, camera, 4), _eps(unet, x, t, text, other, 4), rtol=0, atol=0)


def test_orbit_cameras_are_four_equally_spaced_views_looking_at_the_origin() -> None:
    c2w = mvdream_poses(4, elevation_deg=15.0, radius=2.0).double()
    rot, eye = c2w[:, :3, :3], c2w[:, :3, 3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(-rot[:, :, 2], -eye / eye.norm(dim=1, keepdim=True))  # OpenGL: looks down -z
    torch.testing.assert_close(eye.norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64))
    assert (rot[:, 2, 1] > 0).all()  # camera up leans to world +z
    azimuths = torch.atan2(eye[:, 0], -eye[:, 1])  # MVDream: azimuth 0 on -y, counter-clockwise from +z
    gaps = torch.remainder(azimuths.roll(-1) - azimuths, 2 * math.pi)
    torch.testing.assert_close(gaps, torch.full((4,), math.pi / 2, dtype=torch.float64))
    s, c = math.sin(math.radians(15)), math.cos(math.radians(15))
    front = torch.tensor([[1, 0, 0, 0], [0, s, -c, -c], [0, c, s, s], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(mvdream_poses(1, elevation_deg=15.0)[0].double(), front, atol=1e-6, rtol=0)


def test_camera_condition_keeps_only_the_direction_of_the_camera() -> None:
    near, far = mvdream_poses(4, radius=1.0), mvdream_poses(4, radius=3.5)
    torch.testing.assert_close(camera_condition(near), camera_condition(far))
    torch.testing.assert_close(camera_condition(far[:, :3, :]), camera_condition(far))
    assert camera_condition(near).shape == (4, 16)
    with pytest.raises(ValueError, match="c2w"):
        camera_condition(near.reshape(4, 16))


def tiny_mvdream(weight: float = 0.05, **overrides) -> MultiViewSDS:  # noqa: ANN003
    components = tiny_sd_components(seed=0)
    components.unet = randomised(tiny_multiview_unet())
    config = MVDreamSDSConfig(
        weight=weight, prompt="a 3D cartoon portrait", image_size=TINY_RESOLUTION, seed=0, **overrides
    )
    return MultiViewSDS(config, components=components)


def test_sds_gradient_is_weighted_cfg_noise_residual_of_the_joint_views() -> None:
    guidance = tiny_mvdream(weight=0.05)
    c = guidance.components
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(4, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    c2w, t = mvdream_poses(4), torch.tensor([600])

    out = guidance.latent_loss(latents, c2w, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out["loss"], latents)

    with torch.no_grad():  # eq. 15 by hand: cond and uncond as separate multi-view UNet calls
        abar = c.alphas_cumprod[600]
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        camera = camera_condition(c2w)
        t4 = t.repeat(4)
        cond = _eps(c.unet, noisy, t4, c.encode_text(["a 3D cartoon portrait"]).expand(4, -1, -1), camera, 4)
        uncond = _eps(c.unet, noisy, t4, c.encode_text([""]).expand(4, -1, -1), camera, 4)
        eps_hat = uncond + 10.0 * (cond - uncond)
        expected = 0.05 * (1 - abar) * (eps_hat - noise) / 4
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert out["t"].tolist() == [600]
    torch.testing.assert_close(out["loss"], 0.05 * out["loss_mvdream"])


def test_forward_encodes_renders_shares_one_timestep_per_object_and_needs_cameras() -> None:
    guidance = tiny_mvdream()
    images = torch.rand(8, 3, 48, 48, requires_grad=True)  # 2 objects x 4 views, resized to 64 px inside
    c2w = torch.cat([mvdream_poses(4), mvdream_poses(4, azimuth_start_deg=30.0)])
    out = guidance(images, step=1500, c2w=c2w)
    assert out["t"].shape == (2,) and (out["t"] <= 500).all()  # U(0.02, 0.5) T after step 1000
    out["loss"].backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="c2w"):
        guidance(images.detach(), step=0)
    with pytest.raises(ValueError, match="num_views"):
        guidance(images.detach()[:6], step=0, c2w=c2w[:6])


def test_components_without_multiview_unet_are_rejected() -> None:
    with pytest.raises(ValueError, match="MVDream UNet"):
        MultiViewSDS(MVDreamSDSConfig(), components=tiny_sd_components(seed=0))
