"""Contact sheets: a grid PNG of renders (e.g. base | stylised | style reference per view)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from styleme3d_ns.core.atomic import atomic_path


def to_uint8(image: Tensor) -> np.ndarray:
    """`[H, W, 3]` float in [0, 1] (clamped) to uint8 `[H, W, 3]` in [0, 255], rounded."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def _fit_height(image: Tensor, height: int) -> Tensor:
    """Bilinearly resize `[h, w, 3]` to `[height, w * height / h, 3]` (aspect kept)."""
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return F.interpolate(image.permute(2, 0, 1)[None], size=(height, width), mode="bilinear")[0].permute(1, 2, 0)


def sheet_pixels(rows: list[list[Tensor]]) -> np.ndarray:
    """The grid as uint8 `[H, W, 3]`.

    Args:
        rows: per row, images `[H, W, 3]` in [0, 1]; each is resized to the height of the very first image and
            short rows are padded with white on the right.
    """
    height = rows[0][0].shape[0]
    lines = [torch.cat([_fit_height(img.float().cpu(), height) for img in row], dim=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    lines = [F.pad(line, (0, 0, 0, width - line.shape[1]), value=1.0) for line in lines]
    return to_uint8(torch.cat(lines, dim=0))


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Write uint8 `[H, W, 3]` pixels to `path` as it is (callers that need atomicity pass a temporary path)."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")


def contact_sheet(rows: list[list[Tensor]], path: Path) -> Path:
    """Write the grid of `rows` (see :func:`sheet_pixels`) as a PNG atomically (temporary file, then rename) and
    return `path`; its folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write_png(sheet_pixels(rows), tmp)
    return path
