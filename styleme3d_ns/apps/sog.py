"""A splat's geometry as a SOG file (PlayCanvas' "spatially ordered Gaussians", meta.json version 2), and back.

SOG is a zip of lossless WebP images, one texel per Gaussian in row-major order, and a meta.json:

    means_l/means_u.webp  RGB = low/high byte of v = 65535 (l(x) - min) / (max - min), l(x) = sign(x) log(1 + |x|)
    quats.webp            RGB = the three smallest components of the unit quaternion (largest made positive),
                          each 255 (q sqrt(2) / 2 + 0.5); A = 252 + index of the dropped one in (w, x, y, z)
    scales.webp           RGB = indices into meta.scales.codebook (256 log-scales shared by the three axes; we
                          space them evenly from the 0.1% quantile to the largest, see `log_scale_codebook`)
    sh0.webp              RGB = indices into meta.sh0.codebook (256 DC coefficients), A = 255 sigmoid(opacity)

PlayCanvas' engine reads it as written here (`GSplatSogIterator`). We write it ourselves rather than with
`splat-transform`, whose writer reorders the Gaussians along a Morton curve: the web page's colour sets are stored in
the model's order, so the geometry must keep it. No SH bands beyond the DC go in (the colour sets carry them).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

CODEBOOK_SIZE = 256
QUAT_ORDER = ((1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2))
"""The components kept when component i of (w, x, y, z) is the largest (and dropped), as the engine decodes them."""


@dataclass
class SogGeometry:
    """Gaussians as a SOG holds them (numpy, float32)."""

    means: np.ndarray
    """[N, 3] centres (world)."""
    quats: np.ndarray
    """[N, 4] unit rotations (w, x, y, z)."""
    log_scales: np.ndarray
    """[N, 3] log standard deviations."""
    opacities: np.ndarray
    """[N] opacities in [0, 1] (after the sigmoid)."""
    dc: np.ndarray
    """[N, 3] SH DC coefficients (colour = 0.5 + SH_C0 dc)."""


def _log_transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def codebook_1d(values: Tensor, size: int = CODEBOOK_SIZE, iterations: int = 10) -> tuple[Tensor, Tensor]:
    """A `size`-entry codebook for scalar `values` [M] (Lloyd's k-means from quantiles) and each value's index.

    Returns (codebook [size] ascending, indices [M] int64). Nearest entries come from the midpoints of the sorted
    codebook (exact in 1D), so this costs a few sorts and bincounts of M values.
    """
    values = values.double().flatten()
    sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    codebook = torch.quantile(sample, torch.linspace(0, 1, size, dtype=torch.float64)).unique()
    for _ in range(iterations):
        labels = torch.bucketize(sample, (codebook[1:] + codebook[:-1]) / 2)
        counts = torch.bincount(labels, minlength=codebook.numel())
        sums = torch.bincount(labels, weights=sample, minlength=codebook.numel())
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook).sort().values
    codebook = torch.cat([codebook, codebook[-1:].expand(size - codebook.numel())])  # few distinct values
    return codebook.float(), torch.bucketize(values, (codebook[1:] + codebook[:-1]).double() / 2)


def log_scale_codebook(log_scales: Tensor, size: int = CODEBOOK_SIZE) -> tuple[Tensor, Tensor]:
    """256 log-scales evenly spaced from the 0.1% quantile to the largest, and each value's nearest index.

    Every scale then keeps its size within half a step (about 2% for a typical range of 8 in log), the largest
    Gaussians included: they cover the most pixels. A k-means codebook spends its entries where most values are and
    leaves the few large ones coarse (3.4 grey levels of error on the demo's render against 1.4 with this;
    docs/web.md). Only the smallest 0.1%, well below a pixel, are clamped up to the lowest entry.
    """
    values = log_scales.double().flatten()
    sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    low, high = float(torch.quantile(sample, 0.001)), float(values.max())
    step = (high - low) / (size - 1) if high > low else 1.0
    codebook = low + step * torch.arange(size, dtype=torch.float64)
    return codebook.float(), torch.round((values - low) / step).clamp(0, size - 1).long()


def _image_size(count: int) -> tuple[int, int]:
    width = max(4, math.ceil(math.sqrt(count) / 4) * 4)
    return width, math.ceil(count / width)


def _webp(texels: np.ndarray, size: tuple[int, int]) -> bytes:
    """[N, 4] uint8 texels as a lossless RGBA WebP of `size` (width, height), zero-padded."""
    width, height = size
    image = np.zeros((width * height, 4), np.uint8)
    image[: len(texels)] = texels
    buffer = io.BytesIO()
    Image.fromarray(image.reshape(height, width, 4), "RGBA").save(buffer, "WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def _pack_quats(quats: np.ndarray) -> np.ndarray:
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    largest = np.abs(q).argmax(axis=1)
    q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None] * math.sqrt(2)
    kept = np.take_along_axis(q, np.asarray(QUAT_ORDER)[largest], axis=1)
    return np.concatenate([np.round(255 * (kept * 0.5 + 0.5)).clip(0, 255), 252 + largest[:, None]], 1).astype(np.uint8)


def write_sog(path: Path, geometry: SogGeometry) -> None:
    """Write `geometry` as a SOG zip at `path` (callers make it atomic)."""
    count = len(geometry.means)
    size = _image_size(count)
    mapped = _log_transform(geometry.means.astype(np.float64))
    mins, maxs = mapped.min(axis=0), mapped.max(axis=0)
    fixed = np.round(65535 * (mapped - mins) / np.where(maxs > mins, maxs - mins, 1.0)).astype(np.uint32)
    opaque = np.full((count, 1), 255, np.uint8)
    scale_book, scale_idx = log_scale_codebook(torch.from_numpy(geometry.log_scales))
    dc_book, dc_idx = codebook_1d(torch.from_numpy(geometry.dc))
    alpha = np.round(255 * geometry.opacities.clip(0, 1)).astype(np.uint8)[:, None]
    files = {
        "means_l.webp": np.concatenate([(fixed & 0xFF).astype(np.uint8), opaque], 1),
        "means_u.webp": np.concatenate([(fixed >> 8).astype(np.uint8), opaque], 1),
        "quats.webp": _pack_quats(geometry.quats.astype(np.float64)),
        "scales.webp": np.concatenate([scale_idx.reshape(count, 3).numpy().astype(np.uint8), opaque], 1),
        "sh0.webp": np.concatenate([dc_idx.reshape(count, 3).numpy().astype(np.uint8), alpha], 1),
    }
    meta = {
        "version": 2,
        "asset": {"generator": "styleme3d-ns"},
        "count": count,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_book.tolist(), "files": ["sh0.webp"]},
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # WebP is compressed already
        for name, texels in files.items():
            archive.writestr(name, _webp(texels, size))
        archive.writestr("meta.json", json.dumps(meta))


def read_sog(path: Path) -> SogGeometry:
    """Decode a SOG written by :func:`write_sog` as PlayCanvas' engine decodes it (for tests and checks)."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        count = meta["count"]

        def texels(name: str) -> np.ndarray:
            image = Image.open(io.BytesIO(archive.read(name))).convert("RGBA")
            return np.asarray(image).reshape(-1, 4)[:count].astype(np.int64)

        low, high = texels("means_l.webp"), texels("means_u.webp")
        quats, scales, sh0 = texels("quats.webp"), texels("scales.webp"), texels("sh0.webp")
    mins, maxs = np.asarray(meta["means"]["mins"]), np.asarray(meta["means"]["maxs"])
    mapped = mins + (maxs - mins) * ((high[:, :3] << 8) + low[:, :3]) / 65535
    kept = (quats[:, :3] / 255 - 0.5) * math.sqrt(2)
    largest = quats[:, 3] - 252
    q = np.zeros((count, 4))
    q[np.arange(count), largest] = np.sqrt(np.clip(1 - (kept**2).sum(1), 0, None))
    np.put_along_axis(q, np.asarray(QUAT_ORDER)[largest], kept, axis=1)
    return SogGeometry(
        means=(np.sign(mapped) * np.expm1(np.abs(mapped))).astype(np.float32),
        quats=q.astype(np.float32),
        log_scales=np.asarray(meta["scales"]["codebook"], np.float32)[scales[:, :3]],
        opacities=(sh0[:, 3] / 255).astype(np.float32),
        dc=np.asarray(meta["sh0"]["codebook"], np.float32)[sh0[:, :3]],
    )
