"""Rendering a trained run's evaluation views and scoring them (content kept, style matched)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ssim
from torch import Tensor


@dataclass
class RenderedViews:
    """Held-out views of one run."""

    rgb: Tensor
    """`[V, H, W, 3]` in [0, 1]."""
    depth: Tensor
    """`[V, H, W, 1]` expected depth in scene units."""
    camera_indices: list[int]
    """Indices into the run's evaluation cameras."""


@torch.no_grad()
def render_eval_views(config_path: Path, max_views: int | None = None) -> RenderedViews:
    """Load a run with nerfstudio's `eval_setup` and render its evaluation (held-out) cameras."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(Path(config_path), test_mode="test")
    cameras = pipeline.datamanager.eval_dataset.cameras
    count = len(cameras) if max_views is None else min(max_views, len(cameras))
    rgbs, depths = [], []
    for i in range(count):
        outputs = pipeline.model.get_outputs_for_camera(cameras[i : i + 1].to(pipeline.device))
        rgbs.append(outputs["rgb"].cpu())
        depths.append(outputs["depth"].cpu())
    return RenderedViews(torch.stack(rgbs), torch.stack(depths), list(range(count)))


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of `[..., 3]` images in [0, 1]; inf when identical."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


def mean_ssim(a: Tensor, b: Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, as nerfstudio) of `[V, H, W, 3]` images in [0, 1]."""
    return float(ssim(a.permute(0, 3, 1, 2).float(), b.permute(0, 3, 1, 2).float(), data_range=1.0, size_average=True))


def to_uint8(image: Tensor) -> np.ndarray:
    """`[H, W, 3]` float in [0, 1] to uint8."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def contact_sheet(rows: list[list[Tensor]], path: Path) -> Path:
    """Write a grid PNG (each row: images `[H, W, 3]` in [0, 1], resized to the first image's height) atomically."""
    import torch.nn.functional as F
    from PIL import Image

    height = rows[0][0].shape[0]

    def fit(img: Tensor) -> Tensor:
        if img.shape[0] == height:
            return img
        width = max(1, round(img.shape[1] * height / img.shape[0]))
        return F.interpolate(img.permute(2, 0, 1)[None], size=(height, width), mode="bilinear")[0].permute(1, 2, 0)

    lines = [torch.cat([fit(img) for img in row], dim=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    lines = [torch.nn.functional.pad(line, (0, 0, 0, width - line.shape[1]), value=1.0) for line in lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(to_uint8(torch.cat(lines, dim=0))).save(tmp)
    tmp.replace(path)
    return path
