"""CSD (paper 000 "Contrastive Style Descriptor"): released-checkpoint loading, the style loss and the metric."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from styleme3d_ns.guidance.csd import (
    CLIP_MEAN,
    CLIP_STD,
    CSD_REPO,
    CSDConfig,
    CSDModel,
    CSDStyleLoss,
    clip_preprocess,
    csd_similarity,
    load_csd,
)
from styleme3d_ns.guidance.weights import MissingWeightsError
from tests.tiny_models import TINY_IMAGE_SIZE, tiny_csd

FLAG = "--pipeline.model.csd.weights"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models: intra-op threads only add contention on the shared machine."""


def _save_released_layout(model: CSDModel, path: Path) -> None:
    """A checkpoint shaped like CSD's release: DataParallel keys under model_state_dict, optimiser state, argparse
    args and numpy scalars beside them."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "model_state_dict": state,
            "opt_bb": {"state": {}, "param_groups": [{"lr": np.float64(1e-4)}]},
            "opt_proj": {"state": {}, "param_groups": [{"lr": np.float64(1e-3)}]},
            "iter": 15000,
            "args": argparse.Namespace(arch="vit_large", lr=np.float64(1e-4), lam_sty=np.float64(1.0)),
            "fp16_scaler": {"scale": np.float64(65536.0)},
        },
        path,
    )


def test_loader_round_trips_the_released_key_layout(tmp_path: Path) -> None:
    source = tiny_csd(seed=1)
    keys = set(source.state_dict())
    assert {"backbone.conv1.weight", "backbone.class_embedding", "backbone.positional_embedding",
            "backbone.transformer.resblocks.0.attn.in_proj_weight", "backbone.transformer.resblocks.1.mlp.c_proj.bias",
            "backbone.ln_post.weight", "last_layer_style", "last_layer_content"} <= keys  # fmt: skip
    assert not any("proj" == k.split(".")[-1] for k in keys)  # CSD drops CLIP's own projection
    ckpt = tmp_path / "checkpoint.pth"
    _save_released_layout(source, ckpt)
    for path in (ckpt, str(ckpt)):
        loaded = load_csd(path, "cpu", model=tiny_csd(seed=2))
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    # a folder holding the HF file name works too
    (tmp_path / "repo").mkdir()
    _save_released_layout(source, tmp_path / "repo" / "pytorch_model.bin")
    images = torch.rand(2, 3, 40, 56)
    torch.testing.assert_close(
        load_csd(tmp_path / "repo", "cpu", model=tiny_csd(seed=3)).embed_style(images), source.embed_style(images)
    )


def test_loader_accepts_numpy_scalars_pickled_under_the_legacy_numpy_core_name(tmp_path: Path) -> None:
    """The release was pickled with numpy 1 (``numpy.core.multiarray.scalar``); numpy 2 renamed the module, so the
    allowlist must name the legacy path explicitly. Rewrite our pickle's GLOBAL opcodes to that name and load."""
    source = tiny_csd(seed=1)
    modern = tmp_path / "modern.pth"
    _save_released_layout(source, modern)
    legacy = tmp_path / "legacy.pth"
    with zipfile.ZipFile(modern) as zin, zipfile.ZipFile(legacy, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray\nscalar" in data
            zout.writestr(name, data)
    loaded = load_csd(legacy, "cpu", model=tiny_csd(seed=2))
    assert torch.equal(loaded.last_layer_style, source.last_layer_style)


def test_loader_refuses_a_wrong_layout_with_one_line(tmp_path: Path) -> None:
    source = tiny_csd(seed=1)
    renamed = tmp_path / "clip_visual.pth"
    state = {f"module.visual.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model_state_dict": state}, renamed)
    with pytest.raises(MissingWeightsError) as info:
        load_csd(renamed, "cpu", hint=f"pass {FLAG} <checkpoint.pth>", model=tiny_csd())
    msg = str(info.value)
    assert "\n" not in msg and "not a CSD" in msg and "missing" in msg and "unexpected" in msg and FLAG in msg

    wrong_shape = tmp_path / "other_size.pth"
    _save_released_layout(tiny_csd(), wrong_shape)
    bigger = CSDModel(image_size=TINY_IMAGE_SIZE, patch_size=8, width=48, layers=2, heads=4, embed_dim=16)
    with pytest.raises(MissingWeightsError, match="wrong shape"):
        load_csd(wrong_shape, "cpu", model=bigger)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="could not be read"):
        load_csd(garbage, "cpu", model=tiny_csd())


def test_missing_csd_weights_raise_one_line_error_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MissingWeightsError) as info:
        load_csd(tmp_path / "nowhere" / "checkpoint.pth", "cpu")
    msg = str(info.value)
    assert "\n" not in msg and FLAG in msg and "checkpoint.pth" in msg and CSD_REPO in msg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as info:
        CSDStyleLoss.from_config(CSDConfig(), "cpu")
    msg = str(info.value)
    assert "\n" not in msg and FLAG in msg and CSD_REPO in msg and "pytorch_model.bin" in msg


def test_our_vit_matches_open_clip_quickgelu_tower_on_the_same_weights() -> None:
    """Reference implementation: open_clip's VisionTransformer (OpenAI layout, QuickGELU) with ``proj`` removed."""
    open_clip_transformer = pytest.importorskip("open_clip.transformer")
    model = tiny_csd(seed=4)
    reference = open_clip_transformer.VisionTransformer(
        image_size=TINY_IMAGE_SIZE, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=4.0, output_dim=16,
        act_layer=open_clip_transformer.QuickGELU,
    ).eval()  # fmt: skip
    reference.proj = None
    missing, unexpected = reference.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")},
        strict=False,
    )
    assert not missing and not unexpected
    pixels = clip_preprocess(torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), TINY_IMAGE_SIZE)
    with torch.no_grad():
        ref_features = reference(pixels)
        features, content, style = model(pixels)
    torch.testing.assert_close(features, ref_features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(style, torch.nn.functional.normalize(ref_features @ model.last_layer_style, dim=-1))
    torch.testing.assert_close(content, torch.nn.functional.normalize(ref_features @ model.last_layer_content, dim=-1))


def test_clip_preprocess_resizes_short_side_crops_centre_and_normalises() -> None:
    grey = torch.full((1, 3, 50, 80), 0.5)
    out = clip_preprocess(grey, 32)
    assert out.shape == (1, 3, 32, 32)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 5, 5], expected)
    stripes = torch.zeros(1, 3, 32, 96)
    stripes[..., 32:64] = 1.0  # the centre third survives the crop, the rest is cut away
    centre = clip_preprocess(stripes, 32)
    torch.testing.assert_close(centre, clip_preprocess(torch.ones(1, 3, 32, 32), 32))


def test_csd_loss_is_zero_for_the_style_image_and_grads_reach_only_the_render() -> None:
    model = tiny_csd(seed=5)
    loss = CSDStyleLoss(CSDConfig(weight=2.0), model)
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    loss.set_style(style)
    assert loss.style_embed.shape == (1, 16)
    same = loss(style.clone().requires_grad_(True), 0)
    assert same["loss_csd"].abs().item() < 1e-6 and same["csd_similarity"].item() == pytest.approx(1.0, abs=1e-6)

    render = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = loss(render, 1)
    assert out["loss_csd"].item() > 1e-4
    torch.testing.assert_close(out["loss"], 2.0 * out["loss_csd"])
    out["loss"].backward()
    assert render.grad is not None and render.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # frozen: nothing in it trains (models keep guidances out of checkpoints: see test_styleme3d_experts.py)
    assert list(loss.parameters()) and not any(p.requires_grad for p in loss.parameters())
    expected = 1.0 - csd_similarity(model, render.detach(), style)
    torch.testing.assert_close(out["loss_csd"], expected.mean())


def test_csd_loss_needs_a_style_image_first() -> None:
    with pytest.raises(RuntimeError, match="set_style"):
        CSDStyleLoss(CSDConfig(), tiny_csd())(torch.rand(1, 3, 32, 32), 0)


def test_csd_similarity_is_a_symmetric_cosine_with_broadcast_reference() -> None:
    model = tiny_csd(seed=6)
    a = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    b = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    sim = csd_similarity(model, a, b)
    assert sim.shape == (3,) and bool((sim.abs() <= 1 + 1e-6).all())
    torch.testing.assert_close(sim, csd_similarity(model, b, a))
    torch.testing.assert_close(csd_similarity(model, a, a), torch.ones(3))
    broadcast = csd_similarity(model, a, b[:1])
    torch.testing.assert_close(broadcast[1], csd_similarity(model, a[1:2], b[:1])[0])
