"""Feature backbones: the packaged EfficientNet-Lite0 weights are real and load strictly; VGG-19 taps are the
paper's relu layers; both are frozen yet pass gradients to the input image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torchvision.models.vgg import cfgs, make_layers

from styleme3d_ns.guidance.backbones import (
    EfficientNetLite0Features,
    VGG19Features,
    build_backbone,
    packaged_efficientnet_lite0_weights,
)
from styleme3d_ns.guidance.weights import MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_vgg() -> VGG19Features:
    torch.manual_seed(0)
    return VGG19Features(weights=None, allow_random=True)


def _as_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_packaged_state_dict_loads_strictly_into_our_modules(effnet: EfficientNetLite0Features) -> None:
    state = torch.load(packaged_efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    result = effnet.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(effnet._blocks) == 16


@pytest.mark.parametrize(("name", "imagenet_class"), [("chelsea", 285), ("coffee", 967)])
def test_packaged_weights_classify_skimage_photos_correctly(
    effnet: EfficientNetLite0Features, name: str, imagenet_class: int
) -> None:
    with torch.no_grad():
        logits = effnet.logits(_as_input(getattr(data, name)()))
    assert int(logits.argmax()) == imagenet_class  # 285 Egyptian cat, 967 espresso


def test_effnet_taps_have_expected_channels_and_strides(effnet: EfficientNetLite0Features) -> None:
    with torch.no_grad():
        feats = effnet(torch.rand(1, 3, 64, 64), effnet.tap_names)
    assert list(feats) == ["stem", *[f"block{i}" for i in range(16)]]
    for tap, f in feats.items():
        assert f.shape[1] == effnet.tap_channels[tap]
        assert 64 // f.shape[-1] == effnet.tap_strides[tap]
    assert effnet.default_style_taps == ("stem", "block0", "block2", "block4")
    assert effnet.default_content_tap == "block7"
    assert [effnet.tap_strides[t] for t in effnet.default_style_taps] == [2, 2, 4, 8]


def test_vgg_tap_names_are_the_papers_relu_layers(random_vgg: VGG19Features) -> None:
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = random_vgg(x, ("r11", "r21", "r31", "r41", "r42", "r51"))
        # Reference: torchvision's own VGG-19 layer stack with the same weights, run layer by layer.
        reference = make_layers(cfgs["E"])
        reference.load_state_dict(random_vgg.features.state_dict(), strict=False)
        h, outputs = random_vgg.normalise(x), []
        for layer in reference[:30]:
            h = layer(h)
            outputs.append(h.clone())
    relu_index = {"r11": 1, "r21": 6, "r31": 11, "r41": 20, "r42": 22, "r51": 29}  # relu1_1 .. relu5_1
    for tap, index in relu_index.items():
        assert isinstance(reference[index], torch.nn.ReLU)
        assert torch.allclose(feats[tap], outputs[index])
    channels = [feats[t].shape[1] for t in random_vgg.default_style_taps]
    strides = [64 // feats[t].shape[-1] for t in random_vgg.default_style_taps]
    assert channels == [64, 128, 256, 512, 512] and strides == [1, 2, 4, 8, 16]
    assert random_vgg.default_content_tap == "r42" and feats["r42"].shape[1] == 512


@pytest.mark.parametrize("which", ["effnet", "random_vgg"])
def test_backbone_is_frozen_in_eval_mode_but_passes_gradient_to_input(
    which: str, request: pytest.FixtureRequest
) -> None:
    backbone = request.getfixturevalue(which)
    backbone.train()  # a trainer's .train() must not unfreeze BatchNorm statistics
    assert not backbone.training and all(not m.training for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    feats = backbone(x, backbone.default_style_taps)
    sum(f.square().mean() for f in feats.values()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_missing_vgg_weights_raise_one_line_error_and_never_download(tmp_path: Path) -> None:
    missing = tmp_path / "vgg19-dcbb9e9d.pth"
    with pytest.raises(MissingWeightsError) as info:
        VGG19Features(weights=missing)
    assert "\n" not in str(info.value) and str(missing) in str(info.value)


def test_vgg_loads_a_torchvision_style_checkpoint(tmp_path: Path, random_vgg: VGG19Features) -> None:
    full = make_layers(cfgs["E"])
    state = {f"features.{k}": v for k, v in full.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # the classifier is ignored
    torch.save(state, tmp_path / "vgg19.pth")
    loaded = VGG19Features(weights=tmp_path / "vgg19.pth")
    assert torch.equal(loaded.features[0].weight, full[0].weight)


def test_build_backbone_factory() -> None:
    assert isinstance(build_backbone("efficientnet-lite0"), EfficientNetLite0Features)
    assert isinstance(build_backbone("vgg19", allow_random=True), VGG19Features)
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone("resnet50")  # type: ignore[arg-type]
