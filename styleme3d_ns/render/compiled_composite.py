"""Compiled (numba) front-to-back compositing over binned Gaussian lists: the CPU fast path.

The same compositing rules as :mod:`styleme3d_ns.render.torch_rasterizer`'s vectorised sweep (and gsplat 1.4.0's
CUDA kernels ``rasterize_to_pixels_fwd`` / ``_bwd``), written as gsplat writes them: one loop per pixel over its
bin's depth-sorted list, stopping when the pixel saturates, and a backward that walks the same list back to
front. The vectorised sweep spends some 20 tensor passes on every (pixel, Gaussian) pair; here a pair costs one
box test, one exp and a few multiply-adds, and a saturated pixel stops reading its list.

Bins are processed in parallel (numba ``prange``); every list position belongs to exactly one bin, so the
backward writes per-position gradients without races and the caller reduces them per Gaussian with one
``index_add_``: results do not depend on the number of threads.

Requires ``numba`` (a dependency of the package); :func:`available` says whether it imports. Kernels are compiled
on first use and cached on disk (``cache=True``), so only the first process pays the ~10 s compile.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # pairs below this alpha are skipped (gsplat)
ALPHA_MAX = 0.999  # alpha clamp (gsplat)
T_MIN = 1e-4  # a pixel stops before its transmittance would reach this (gsplat)


@functools.cache
def available() -> bool:
    """Whether numba imports here (checked once per process)."""
    try:
        import numba  # noqa: F401
    except Exception:  # deliberately broad: ImportError, or an llvmlite that fails to load
        return False
    return True


@functools.cache
def _kernels():  # noqa: ANN202 - numba dispatchers
    """Compile (or load from the on-disk cache) the forward and backward kernels."""
    import numba
    import numpy as np

    @numba.njit(cache=True, fastmath=False, inline="always")
    def pair(g: np.ndarray, e: int, x: int, y: int) -> tuple[float, float, float, float]:
        """(dx, dy, vis, alpha) of entry ``e`` at pixel (x, y); alpha 0 for a skipped pair."""
        dx = g[e, 0] - (x + 0.5)
        dy = g[e, 1] - (y + 0.5)
        sigma = 0.5 * (g[e, 2] * dx * dx + g[e, 4] * dy * dy) + g[e, 3] * dx * dy
        if sigma < 0.0:
            return dx, dy, 0.0, 0.0
        vis = math.exp(-sigma)
        alpha = min(ALPHA_MAX, g[e, 5] * vis)
        if alpha < ALPHA_MIN:
            return dx, dy, vis, 0.0
        return dx, dy, vis, alpha

    @numba.njit(cache=True, parallel=True)
    def forward(g, colours, entries, offsets, counts, box, b, bins_x, bins_per_cam, width, height, out, log_t, last):
        n_bins, n_ch = len(offsets), colours.shape[1]
        for bin_ in numba.prange(n_bins):
            in_cam = bin_ % bins_per_cam
            x_start, y_start = (in_cam % bins_x) * b, (in_cam // bins_x) * b
            off, cnt = offsets[bin_], counts[bin_]
            for iy in range(b):
                for ix in range(b):
                    x, y, slot = x_start + ix, y_start + iy, bin_ * b * b + iy * b + ix
                    if x >= width or y >= height:
                        continue
                    t = 1.0
                    n_used = 0
                    for k in range(cnt):
                        e = entries[off + k]
                        if x < box[e, 0] or x > box[e, 1] or y < box[e, 2] or y > box[e, 3]:
                            continue
                        _, _, _, alpha = pair(g, e, x, y)
                        if alpha == 0.0:
                            continue
                        t_next = t * (1.0 - alpha)
                        if t_next <= T_MIN:  # gsplat: the pixel stops before this Gaussian
                            break
                        w = alpha * t
                        for ch in range(n_ch):
                            out[slot, ch] += w * colours[e, ch]
                        t = t_next
                        n_used = k + 1
                    log_t[slot] = math.log(t)
                    last[slot] = n_used

    @numba.njit(cache=True, parallel=True)
    def backward(
        g,
        colours,
        entries,
        offsets,
        counts,
        box,
        b,
        bins_x,
        bins_per_cam,
        width,
        height,
        log_t,
        last,
        grad_out,
        grad_log_t,
        pair_geom,
        pair_col,
        pair_abs,
    ):
        n_bins, n_ch = len(offsets), colours.shape[1]
        for bin_ in numba.prange(n_bins):
            in_cam = bin_ % bins_per_cam
            x_start, y_start = (in_cam % bins_x) * b, (in_cam // bins_x) * b
            off = offsets[bin_]
            behind = np.zeros(n_ch)  # S: colour composited behind the current pair
            for iy in range(b):
                for ix in range(b):
                    x, y, slot = x_start + ix, y_start + iy, bin_ * b * b + iy * b + ix
                    if x >= width or y >= height:
                        continue
                    t = math.exp(log_t[slot])
                    g_lt = grad_log_t[slot]
                    behind[:] = 0.0
                    for k in range(last[slot] - 1, -1, -1):
                        e = entries[off + k]
                        if x < box[e, 0] or x > box[e, 1] or y < box[e, 2] or y > box[e, 3]:
                            continue
                        dx, dy, vis, alpha = pair(g, e, x, y)
                        if alpha == 0.0:
                            continue
                        ra = 1.0 / (1.0 - alpha)
                        t = t * ra  # transmittance in front of this pair
                        w = alpha * t
                        gc = 0.0
                        gs = 0.0
                        for ch in range(n_ch):
                            go = grad_out[slot, ch]
                            gc += go * colours[e, ch]
                            gs += go * behind[ch]
                            pair_col[off + k, ch] += w * go
                            behind[ch] += w * colours[e, ch]
                        g_alpha = t * gc - (gs + g_lt) * ra
                        raw = g[e, 5] * vis
                        if raw > ALPHA_MAX:  # clamped alphas pass no gradient (gsplat)
                            continue
                        g_sigma = -g_alpha * raw
                        g_dx, g_dy = g_sigma * dx, g_sigma * dy
                        gm_x = g[e, 2] * g_dx + g[e, 3] * g_dy
                        gm_y = g[e, 3] * g_dx + g[e, 4] * g_dy
                        pair_geom[off + k, 0] += gm_x
                        pair_geom[off + k, 1] += gm_y
                        pair_geom[off + k, 2] += 0.5 * g_dx * dx
                        pair_geom[off + k, 3] += g_dx * dy
                        pair_geom[off + k, 4] += 0.5 * g_dy * dy
                        pair_geom[off + k, 5] += g_alpha * vis
                        pair_abs[off + k, 0] += abs(gm_x)
                        pair_abs[off + k, 1] += abs(gm_y)

    return forward, backward


def _numpy(t: Tensor):  # noqa: ANN202 - numpy array view of a CPU tensor
    return t.detach().contiguous().numpy()


def composite_forward(
    geom: Tensor, colours: Tensor, entries: Tensor, offsets: Tensor, counts: Tensor, box: Tensor, layout: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of every pixel slot over its bin's list.

    Args:
        geom: means2d (2, pixels), conic (a, b, c), opacity in [0, 1] per live entry. [L, 6] float32 or float64, CPU
        colours: per-entry features. [L, D], geom's dtype
        entries, offsets, counts: bin lists (``_BinLists``): entries [I] front to back per bin; [n_bins] each.
        box: inclusive pixel box (x0, x1, y0, y1) per entry. [L, 4] int64
        layout: (bin_size, bins_x, bins_per_camera, width, height, n_slots).

    Returns:
        out: sum_i alpha_i T_i c_i per slot (bin-major). [n_slots, D]
        log_t: log final transmittance per slot, 0 for padding slots. [n_slots] float64 (the backward
            divides it back pair by pair, so it keeps double precision)
        last: list positions read per slot (1 + the last contributing position; 0 if none). [n_slots] int64
    """
    b, bins_x, bins_per_cam, width, height, n_slots = layout
    out = torch.zeros(n_slots, colours.shape[1], dtype=geom.dtype)
    log_t = torch.zeros(n_slots, dtype=torch.float64)
    last = torch.zeros(n_slots, dtype=torch.int64)
    forward, _ = _kernels()
    args = (_numpy(geom), _numpy(colours), _numpy(entries), _numpy(offsets), _numpy(counts), _numpy(box))
    forward(*args, b, bins_x, bins_per_cam, width, height, out.numpy(), log_t.numpy(), last.numpy())
    return out, log_t, last


def composite_backward(
    geom: Tensor,
    colours: Tensor,
    entries: Tensor,
    offsets: Tensor,
    counts: Tensor,
    box: Tensor,
    layout: tuple,
    log_t: Tensor,
    last: Tensor,
    grad_out: Tensor,
    grad_log_t: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`composite_forward` per list position (the 3DGS backward, back to front).

    Args as :func:`composite_forward`, plus its ``log_t`` and ``last``, and the output gradients
    ``grad_out`` [n_slots, D] and ``grad_log_t`` [n_slots].

    Returns:
        pair_geom: d loss / d (means2d, conic, opacity) per list position. [I, 6]
        pair_col: d loss / d colours per list position. [I, D]
        pair_abs: sum over pixels of |d loss / d means2d| per list position (AbsGS). [I, 2]
    """
    b, bins_x, bins_per_cam, width, height, _ = layout
    n_pos = len(entries)
    pair_geom = torch.zeros(n_pos, 6, dtype=geom.dtype)
    pair_col = torch.zeros(n_pos, colours.shape[1], dtype=geom.dtype)
    pair_abs = torch.zeros(n_pos, 2, dtype=geom.dtype)
    _, backward = _kernels()
    lists = (_numpy(geom), _numpy(colours), _numpy(entries), _numpy(offsets), _numpy(counts), _numpy(box))
    saved = (_numpy(log_t), _numpy(last), _numpy(grad_out.to(geom.dtype)), _numpy(grad_log_t.to(geom.dtype)))
    backward(
        *lists, b, bins_x, bins_per_cam, width, height, *saved, pair_geom.numpy(), pair_col.numpy(), pair_abs.numpy()
    )
    return pair_geom, pair_col, pair_abs
