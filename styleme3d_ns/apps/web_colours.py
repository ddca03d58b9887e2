"""One palette entry's SH colours, quantised for the web page: a few bytes per Gaussian, decoded in the browser.

A colour set (`dc [N, 3]`, `rest [N, R, 3]` SH coefficients, R = (degree + 1)^2 - 1) is stored as one binary file:

    dc      uint16 [N, 3]   dc = lo + (hi - lo) q / 65535, lo/hi per channel (error <= (hi - lo) / 131070)
    labels  uint16 [N]      index of the Gaussian's higher-band vector in the codebook (absent when R = 0)
    book    float16 [K, R, 3]  the codebook: K vectors of all higher bands

The higher bands are 15 x 3 numbers at degree 3; stored plainly they would be 45 bytes even at 8 bits, so a
1 M-Gaussian scene with base + 3 styles would need 180 MB. A codebook over whole vectors (SOG's shN does the
same) makes them 2 bytes. A scene of at most 65536 Gaussians keeps every distinct vector (only float16 rounding);
a larger one, unless it has at most `codebook_size` distinct vectors, gets a k-means codebook of `codebook_size`
entries (4096 by default: about 20 s per set for 1 M Gaussians on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MAX_CODEBOOK = 65536
"""Entries a uint16 label can address."""


@dataclass
class QuantisedColours:
    """A colour set as the page reads it: its bytes and the numbers needed to decode them."""

    data: bytes
    """dc, then labels, then the codebook (little-endian)."""
    dc_min: list[float]
    """lo of the three DC channels."""
    dc_max: list[float]
    """hi of the three DC channels."""
    codebook_size: int
    """K, the codebook's entries (0 without higher bands)."""

    def meta(self) -> dict:
        """What scene.json says about this set (besides its file name)."""
        return {"dc_min": self.dc_min, "dc_max": self.dc_max, "codebook_size": self.codebook_size}


def kmeans(vectors: Tensor, size: int, iterations: int = 8, sample: int = 65536) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means codebook of `vectors` [N, D]: (centroids [K, D], labels [N] int64), K <= size.

    With at most `size` distinct vectors the codebook is those vectors (exact; e.g. a base whose higher bands are all
    zero gets one entry). Otherwise the centroids are fitted on a random sample of at most max(`sample`, 8 size)
    vectors (seeded: the same export twice gives the same bytes), then every vector takes its nearest centroid.
    """
    count = vectors.shape[0]
    vectors = vectors.float()
    distinct, inverse = torch.unique(vectors, dim=0, return_inverse=True)
    if distinct.shape[0] <= size:
        return distinct, inverse
    generator = torch.Generator().manual_seed(0)
    fit = vectors[torch.randperm(count, generator=generator)[: max(sample, 8 * size)]]
    centroids = fit[torch.randperm(fit.shape[0], generator=generator)[:size]].clone()
    for _ in range(iterations):
        labels = nearest(fit, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, fit)
        counts = torch.bincount(labels, minlength=size).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster stays put
    return centroids, nearest(vectors, centroids)


def nearest(vectors: Tensor, centroids: Tensor, chunk: int = 32768) -> Tensor:
    """Index of the nearest centroid [K, D] of each of `vectors` [N, D] (squared Euclidean), in chunks."""
    norms = (centroids * centroids).sum(1)
    out = [(norms - 2 * part @ centroids.T).argmin(1) for part in vectors.split(chunk)]  # |x|^2 is the same per row
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def quantise_colours(dc: Tensor, rest: Tensor, codebook_size: int) -> QuantisedColours:
    """Quantise one colour set: `dc` [N, 3], `rest` [N, R, 3] (R may be 0); `codebook_size` applies above 65536
    Gaussians (see the module docstring)."""
    dc = dc.detach().double().cpu()
    lo, hi = dc.min(0).values, dc.max(0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    q = torch.round((dc - lo) / span * 65535).clamp(0, 65535).to(torch.int32).numpy().astype("<u2")
    parts = [q.tobytes()]
    size = 0
    if rest.shape[1] > 0:
        count = rest.shape[0]
        size = MAX_CODEBOOK if count <= MAX_CODEBOOK else min(codebook_size, MAX_CODEBOOK)
        centroids, labels = kmeans(rest.detach().cpu().reshape(count, -1), size)
        size = centroids.shape[0]
        parts += [labels.numpy().astype("<u2").tobytes(), centroids.numpy().astype("<f2").tobytes()]
    return QuantisedColours(b"".join(parts), lo.tolist(), (lo + span * (hi > lo)).tolist(), size)


def dequantise_colours(quantised: QuantisedColours, count: int, rest_bands: int) -> tuple[Tensor, Tensor]:
    """The (dc [N, 3], rest [N, R, 3]) float32 the page decodes from `quantised` (for tests and error budgets)."""
    buffer = np.frombuffer(quantised.data, dtype=np.uint8)
    q = buffer[: count * 6].view("<u2").reshape(count, 3).astype(np.float64)
    lo, hi = np.asarray(quantised.dc_min), np.asarray(quantised.dc_max)
    dc = torch.from_numpy((lo + (hi - lo) * q / 65535).astype(np.float32))
    if rest_bands == 0:
        return dc, torch.zeros(count, 0, 3)
    labels = buffer[count * 6 : count * 8].view("<u2").astype(np.int64)
    book = buffer[count * 8 :].view("<f2").astype(np.float32).reshape(quantised.codebook_size, rest_bands, 3)
    return dc, torch.from_numpy(book[labels])
