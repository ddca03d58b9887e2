"""SOS Gram style loss (paper 000): Gram normalisation, the paper's weights, the two-phase scale schedule, and an
end-to-end check that optimising pixels with it moves an image towards the style."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from styleme3d_ns.guidance.backbones import EfficientNetLite0Features, VGG19Features
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig, gram_distance, gram_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    if t.ndim == 2:
        t = t[..., None].expand(-1, -1, 3)
    return t.permute(2, 0, 1)[None].contiguous()


def test_gram_of_small_feature_map_matches_hand_computation() -> None:
    # C=2 channels on a 2x2 map: F = [[1, 2, 3, 4], [0, 1, 0, 1]]; F F^T = [[30, 6], [6, 2]]; C*H*W = 8.
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8.0
    assert torch.allclose(gram_matrix(features), expected)


def test_vgg_style_weights_are_the_papers() -> None:
    loss = GramStyleLoss(GramStyleLossConfig(backbone="vgg19"), backbone=VGG19Features(allow_random=True))
    assert loss.style_taps == ("r11", "r21", "r31", "r41", "r51") and loss.content_tap == "r42"
    assert loss.style_weights == (1e3 / 64**2, 1e3 / 128**2, 1e3 / 256**2, 1e3 / 512**2, 1e3 / 512**2)


def test_effnet_style_weights_follow_the_same_channel_rule(effnet: EfficientNetLite0Features) -> None:
    loss = GramStyleLoss(GramStyleLossConfig(), backbone=effnet)
    assert loss.style_weights == tuple(1e3 / c**2 for c in (32, 16, 24, 40))
    assert loss.content_weight == pytest.approx(0.05)


def test_pretrain_phase_uses_only_half_scale_then_all_scales(effnet: EfficientNetLite0Features) -> None:
    cfg = GramStyleLossConfig(scales=(1.0, 0.5), pretrain_steps=10, pretrain_scale=0.5)
    loss = GramStyleLoss(cfg, backbone=effnet)
    loss.set_style(torch.rand(1, 3, 48, 80), render_hw=(64, 64))  # precompute, so only renders hit the backbone
    seen: list[tuple[int, int]] = []
    handle = effnet.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        render = torch.rand(1, 3, 64, 64)
        loss(render, step=3)
        assert seen == [(32, 32)] and loss.last_scales == (0.5,)
        seen.clear()
        loss(render, step=10)
        assert sorted(seen) == [(32, 32), (64, 64)] and loss.last_scales == (1.0, 0.5)
    finally:
        handle.remove()


def test_loss_dict_terms_and_weighting(effnet: EfficientNetLite0Features) -> None:
    loss = GramStyleLoss(GramStyleLossConfig(weight=2.0, pretrain_steps=0), backbone=effnet)
    loss.set_style(torch.rand(1, 3, 40, 40))
    render = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = loss(render, step=0, content_images=torch.rand(2, 3, 32, 32))
    assert set(out) == {"loss_style", "loss_content", "loss"} and all(v.ndim == 0 for v in out.values())
    assert torch.allclose(out["loss"], 2.0 * (out["loss_style"] + out["loss_content"]))
    assert float(out["loss_content"].detach()) > 0
    out["loss"].backward()
    assert render.grad is not None and float(render.grad.abs().sum()) > 0
    assert float(loss(render, step=0)["loss_content"]) == 0.0  # no content images: no content term


def test_content_targets_are_computed_once_per_image_and_give_the_same_loss(
    effnet: EfficientNetLite0Features, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = GramStyleLossConfig(scales=(1.0,), pretrain_steps=0)
    memo, fresh = GramStyleLoss(cfg, backbone=effnet), GramStyleLoss(cfg, backbone=effnet)
    for loss in (memo, fresh):
        loss.set_style(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0)), render_hw=(32, 32))
    views = [torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in (1, 2)]
    render = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    calls: list[int] = []
    handle = effnet.register_forward_pre_hook(lambda _m, _args: calls.append(1))
    try:
        counts = []
        for view in (views[0], views[1], views[0].clone(), views[1]):  # a clone: same bytes, another tensor
            calls.clear()
            out = memo(render, step=0, content_images=view)
            counts.append(len(calls))
            fresh._content_targets.clear()  # the reference computes every target anew
            expected = fresh(render, step=0, content_images=view)
            assert torch.equal(out["loss_content"], expected["loss_content"])
        assert counts == [2, 2, 1, 1], "render + content the first time an image is seen, then the render only"
    finally:
        handle.remove()
    # a memory budget of one target keeps only the most recent image
    monkeypatch.setattr("styleme3d_ns.guidance.gram.CONTENT_TARGETS_BYTES", memo._content_bytes // 2)
    memo(render, step=0, content_images=views[0])
    assert len(memo._content_targets) == 1 and memo._content_bytes == next(iter(memo._content_targets.values())).nbytes


def test_disabled_guidance_returns_zero_without_style(effnet: EfficientNetLite0Features) -> None:
    loss = GramStyleLoss(GramStyleLossConfig(enabled=False), backbone=effnet)
    assert float(loss(torch.rand(1, 3, 16, 16), step=0)["loss"]) == 0.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(3, 16, 16), r"\[B, 3, H, W\]"),
        (torch.rand(1, 16, 16, 3), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 16, 16) * 255, r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_raise_one_line_value_error(
    effnet: EfficientNetLite0Features, bad: torch.Tensor, match: str
) -> None:
    loss = GramStyleLoss(GramStyleLossConfig(), backbone=effnet)
    loss.set_style(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=match) as info:
        loss(bad, step=0)
    assert "\n" not in str(info.value)


def test_missing_style_image_is_a_clear_error(effnet: EfficientNetLite0Features) -> None:
    with pytest.raises(RuntimeError, match="set_style"):
        GramStyleLoss(GramStyleLossConfig(pretrain_steps=0), backbone=effnet)(torch.rand(1, 3, 16, 16), step=0)


@pytest.mark.parametrize("style_name", ["brick", "chelsea"])
def test_optimising_pixels_halves_gram_distance_to_style(effnet: EfficientNetLite0Features, style_name: str) -> None:
    torch.manual_seed(0)
    content = _to_tensor(data.astronaut()[100:164, 180:244])  # a 64x64 crop of the face
    style = _to_tensor(getattr(data, style_name)())
    loss = GramStyleLoss(GramStyleLossConfig(pretrain_steps=0, scales=(1.0,)), backbone=effnet)
    loss.set_style(style, render_hw=(64, 64))
    pixels = content.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([pixels], lr=0.03)  # lr of the measured 2D check in the offline-style-loss note
    before = float(gram_distance(content, style, effnet))
    for step in range(60):
        out = loss(pixels.clamp(0, 1), step=step, content_images=content)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    after = float(gram_distance(pixels.detach().clamp(0, 1), style, effnet))
    assert after <= 0.5 * before, (before, after)
