"""numba kernels of :mod:`styleme3d_ns.render.compiled_composite` (imported only when that path runs).

Module-level functions, so that numba's on-disk cache (``cache=True``) finds them again in the next process.
"""

import math

import numba
import numpy as np

# gsplat's compositing constants, the same ones the vectorised sweep uses (numba freezes them at compile time)
from .torch_rasterizer import ALPHA_MAX, ALPHA_MIN, T_MIN


@numba.njit(cache=True, inline="always")
def pair(pg: np.ndarray, pb: np.ndarray, k: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(dx, dy, vis, alpha) of list position ``k`` at pixel (x, y) of a row the position's box covers; alpha 0 for a
    skipped pair (column outside the box, sigma < 0, alpha < 1/255)."""
    if x < pb[k, 0] or x > pb[k, 1]:
        return 0.0, 0.0, 0.0, 0.0
    dx = pg[k, 0] - (x + 0.5)
    dy = pg[k, 1] - (y + 0.5)
    sigma = 0.5 * (pg[k, 2] * dx * dx + pg[k, 4] * dy * dy) + pg[k, 3] * dx * dy
    if sigma < 0.0:
        return dx, dy, 0.0, 0.0
    vis = math.exp(-sigma)
    alpha = min(ALPHA_MAX, pg[k, 5] * vis)
    if alpha < ALPHA_MIN:
        return dx, dy, vis, 0.0
    return dx, dy, vis, alpha


@numba.njit(cache=True, inline="always")
def row_list(pb: np.ndarray, off: int, cnt: int, y: int, rows: np.ndarray) -> int:
    """Write the list positions (front to back) whose box covers pixel row ``y`` into ``rows``; their number."""
    n = 0
    for k in range(off, off + cnt):
        if pb[k, 2] <= y <= pb[k, 3]:
            rows[n] = k
            n += 1
    return n


@numba.njit(cache=True)
def bin_origin(bin_: int, layout: tuple) -> tuple[int, int, int, int]:
    """First pixel (x, y) of bin ``bin_`` and how many of its rows and columns lie inside the image."""
    b, bins_x, bins_per_cam, width, height = layout
    in_cam = bin_ % bins_per_cam
    x_start, y_start = (in_cam % bins_x) * b, (in_cam // bins_x) * b
    return x_start, y_start, min(b, height - y_start), min(b, width - x_start)


@numba.njit(cache=True, parallel=True)
def forward(pg, pc, pb, offsets, counts, layout, out, log_t, last, n_pairs):
    b = layout[0]
    n_ch = pc.shape[1]
    for bin_ in numba.prange(len(offsets)):
        x_start, y_start, n_rows, n_cols = bin_origin(bin_, layout)
        rows = np.empty(counts[bin_], dtype=np.int64)
        for iy in range(n_rows):
            n_row = row_list(pb, offsets[bin_], counts[bin_], y_start + iy, rows)
            for ix in range(n_cols):
                x, y, slot = x_start + ix, y_start + iy, bin_ * b * b + iy * b + ix
                t = 1.0
                n_used = 0
                n_hit = 0
                for j in range(n_row):
                    k = rows[j]
                    _, _, _, alpha = pair(pg, pb, k, x, y)
                    if alpha == 0.0:
                        continue
                    t_next = t * (1.0 - alpha)
                    if t_next <= T_MIN:  # gsplat: the pixel stops before this Gaussian
                        break
                    w = alpha * t
                    for ch in range(n_ch):
                        out[slot, ch] += w * pc[k, ch]
                    t = t_next
                    n_used = j + 1
                    n_hit += 1
                log_t[slot] = math.log(t)
                last[slot] = n_used
                n_pairs[slot] = n_hit


@numba.njit(cache=True, parallel=True)
def pair_weights(pg, pb, offsets, counts, layout, last, start, slot_ids, pos_ids, weights):
    """The contributing pairs of :func:`forward` with their weights alpha_i T_i, slot by slot from ``start``."""
    b = layout[0]
    for bin_ in numba.prange(len(offsets)):
        x_start, y_start, n_rows, n_cols = bin_origin(bin_, layout)
        rows = np.empty(counts[bin_], dtype=np.int64)
        for iy in range(n_rows):
            row_list(pb, offsets[bin_], counts[bin_], y_start + iy, rows)
            for ix in range(n_cols):
                x, y, slot = x_start + ix, y_start + iy, bin_ * b * b + iy * b + ix
                t = 1.0
                i = start[slot]
                for j in range(last[slot]):  # the same walk as forward, up to where it stopped
                    k = rows[j]
                    _, _, _, alpha = pair(pg, pb, k, x, y)
                    if alpha == 0.0:
                        continue
                    slot_ids[i], pos_ids[i], weights[i] = slot, k, alpha * t
                    t = t * (1.0 - alpha)
                    i += 1


@numba.njit(cache=True, parallel=True)
def backward(pg, pc, pb, offsets, counts, layout, log_t, last, grad_out, grad_log_t, d_geom, d_col, d_abs):
    b = layout[0]
    n_ch = pc.shape[1]
    for bin_ in numba.prange(len(offsets)):
        x_start, y_start, n_rows, n_cols = bin_origin(bin_, layout)
        rows = np.empty(counts[bin_], dtype=np.int64)
        behind = np.zeros(n_ch)  # S: colour composited behind the current pair
        for iy in range(n_rows):
            row_list(pb, offsets[bin_], counts[bin_], y_start + iy, rows)
            for ix in range(n_cols):
                x, y, slot = x_start + ix, y_start + iy, bin_ * b * b + iy * b + ix
                t = math.exp(log_t[slot])
                g_lt = grad_log_t[slot]
                behind[:] = 0.0
                for j in range(last[slot] - 1, -1, -1):
                    k = rows[j]
                    dx, dy, vis, alpha = pair(pg, pb, k, x, y)
                    if alpha == 0.0:
                        continue
                    ra = 1.0 / (1.0 - alpha)
                    t = t * ra  # transmittance in front of this pair
                    w = alpha * t
                    gc = 0.0
                    gs = 0.0
                    for ch in range(n_ch):
                        go = grad_out[slot, ch]
                        gc += go * pc[k, ch]
                        gs += go * behind[ch]
                        d_col[k, ch] += w * go
                        behind[ch] += w * pc[k, ch]
                    g_alpha = t * gc - (gs + g_lt) * ra  # 3DGS backward through T_j, j > i
                    raw = pg[k, 5] * vis
                    if raw > ALPHA_MAX:  # clamped alphas pass no gradient (gsplat)
                        continue
                    g_sigma = -g_alpha * raw
                    g_dx, g_dy = g_sigma * dx, g_sigma * dy
                    gm_x = pg[k, 2] * g_dx + pg[k, 3] * g_dy
                    gm_y = pg[k, 3] * g_dx + pg[k, 4] * g_dy
                    d_geom[k, 0] += gm_x
                    d_geom[k, 1] += gm_y
                    d_geom[k, 2] += 0.5 * g_dx * dx
                    d_geom[k, 3] += g_dx * dy
                    d_geom[k, 4] += 0.5 * g_dy * dy
                    d_geom[k, 5] += g_alpha * vis
                    d_abs[k, 0] += abs(gm_x)
                    d_abs[k, 1] += abs(gm_y)
