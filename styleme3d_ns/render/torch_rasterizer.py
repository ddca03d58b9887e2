"""Pure-PyTorch, differentiable 3D Gaussian tile rasteriser with gsplat 1.4.0 semantics.

Pipeline (vectorised; the only Python loops run over pieces of the per-bin lists):

1. :func:`project_gaussians` - EWA projection exactly as gsplat's ``fully_fused_projection``
   CUDA kernel (3DGS Jacobian with gsplat's 1.3 x tan(fov) clamp, eps2d low-pass, radius,
   near/far/radius_clip/off-screen culling, optional anti-aliasing compensation).
2. Binning - each visible Gaussian gets the pixel box it can affect (gsplat's 16x16 tile
   rectangle from its integer radius, intersected with the box where alpha can reach 1/255)
   and is listed in every ``_BIN`` x ``_BIN`` bin that box overlaps; lists sorted by depth.
3. Sweep (no grad) - bins are walked front to back in pieces of ``_PIECE`` Gaussians; the
   (pixel, Gaussian) pairs of a piece come out pixel-major and depth-ordered, and the
   front-to-back transmittance is a segmented cumulative product of (1 - alpha), computed as
   exp(segmented cumsum(log(1 - alpha))) because per-pixel lists are ragged. This fixes which
   pairs contribute and where each pixel terminates; finished pixels and bins drop out.
4. Compositing - an autograd Function sums alpha_i T_i c_i over the contributing pairs; its
   backward is the 3DGS one in vectorised form (and fills ``absgrad``).

Semantics follow the CUDA kernel ``rasterize_to_pixels_fwd`` rather than ``_torch_impl``
where they differ: alpha = min(0.999, opacity * exp(-sigma)); a pair is skipped when
sigma < 0 or alpha < 1/255; a pixel stops *before* the first Gaussian whose next transmittance
would be <= 1e-4 (``_torch_impl`` delegates this to ``rasterize_to_indices_in_range``); pixels
only see Gaussians listed in their ``tile_size`` tile; background is added as ``T_final * bg``.
Projection also follows the kernel: culls z < near / z > far and radius <= radius_clip
(``_torch_impl._fully_fused_projection`` ignores radius_clip and clamps det instead of culling).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import compiled_composite, compiled_projection
from .sh import sh_colors

ALPHA_MIN = 1.0 / 255.0  # pairs below this alpha are skipped (gsplat)
ALPHA_MAX = 0.999  # alpha clamp (gsplat)
T_MIN = 1e-4  # a pixel stops before its transmittance would reach this (gsplat)

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
CameraModel = Literal["pinhole", "ortho", "fisheye"]
# How pairs are composited: "compiled" (numba, per-pixel loops; CPU), "sweep" (the vectorised torch sweep below,
# any device, the readable reference), "auto" (compiled on CPU when numba imports, else sweep).
Composite = Literal["auto", "compiled", "sweep"]

# Bin edge (pixels, power of two) used to organise the work; smaller bins test fewer
# (pixel, Gaussian) cells per pair but list each Gaussian in more bins. Results do not depend on it.
_BIN = 8
# Bin edge for the compiled path (8, 4 and 16 px measured within noise of each other there; 32 px is slower).
_BIN_COMPILED = 8
# Front-to-back piece length per bin (power of two): small enough that saturated pixels/bins
# stop early, large enough that the Python loop over pieces stays short.
_PIECE = 64
# Upper bound on (bins x pixels x piece) booleans materialised at once (~16 MB).
_MAX_CELLS = 1 << 24


# ---------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------


@dataclass
class Projection:
    """Per-camera projected Gaussians. Entries with ``radii == 0`` are culled."""

    radii: Tensor  # [C, N] int32, integer 3-sigma radius in pixels; 0 = culled
    means2d: Tensor  # [C, N, 2] pixel coordinates (x right, y down; pixel centres at +0.5)
    depths: Tensor  # [C, N] camera-space z
    conics: Tensor  # [C, N, 3] inverse blurred 2D covariance (a, b, c): sigma = .5(a dx^2 + c dy^2) + b dx dy
    compensations: Tensor | None  # [C, N] in [0, 1], sqrt(det(cov2d) / det(cov2d + eps2d I)), antialiased only


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances R S S^T R^T [N, 3, 3] from quaternions (wxyz, any norm) [N, 4] and scales [N, 3]."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    m = rot * scales[:, None, :]
    return m @ m.transpose(-1, -2)


def _triu_to_covar(covars: Tensor) -> Tensor:
    """[N, 6] upper triangle (xx, xy, xz, yy, yz, zz) or [N, 3, 3] -> [N, 3, 3]."""
    if covars.dim() == 3:
        return covars
    xx, xy, xz, yy, yz, zz = covars.unbind(-1)
    return torch.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], dim=-1).reshape(-1, 3, 3)


def _safe_where(cond: Tensor, value: Tensor, fallback: float) -> Tensor:
    """``where(cond, value, fallback)`` used *before* a singular op, so culled entries stay finite
    (a 0 gradient times an inf partial would otherwise give NaN)."""
    return torch.where(cond, value, torch.full_like(value, fallback))


def project_gaussians(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    camera_model: CameraModel = "pinhole",
    covars: Tensor | None = None,
) -> Projection:
    """EWA-project 3D Gaussians into C cameras, following gsplat's ``fully_fused_projection`` kernel.

    Args:
        means: [N, 3] world-space centres.
        quats: [N, 4] rotations (wxyz, normalised here); ignored if ``covars`` is given.
        scales: [N, 3] axis scales (> 0); ignored if ``covars`` is given.
        viewmats: [C, 4, 4] world-to-camera transforms.
        Ks: [C, 3, 3] pinhole intrinsics (not differentiated).
        width, height: image size in pixels.
        eps2d: low-pass added to the 2D covariance diagonal (pixels^2).
        near_plane, far_plane: Gaussians with camera z outside [near, far] are culled.
        radius_clip: Gaussians with radius <= this (pixels) are culled.
        calc_compensations: also return the anti-aliasing opacity compensation.
        camera_model: "pinhole" or "ortho" ("fisheye" is not implemented).
        covars: optional [N, 3, 3] or [N, 6] world covariances replacing quats/scales.

    Culled Gaussians (behind/near/far, det <= 0, radius <= radius_clip, 3-sigma box off-screen)
    get ``radii == 0``; their other outputs are finite but meaningless (gsplat leaves them unset).
    """
    if camera_model not in ("pinhole", "ortho"):
        raise ValueError(f"torch rasteriser supports camera_model 'pinhole' and 'ortho', got {camera_model!r}")
    if _use_compiled(None, means.device) and compiled_projection.covers(
        viewmats, covars, camera_model, calc_compensations
    ):
        return _project_compiled(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                                 radius_clip)  # fmt: skip
    cov3d = quat_scale_to_covar(quats, scales) if covars is None else _triu_to_covar(covars)
    rot, trans = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [C, 1, 3, 3], [C, 1, 3]
    means_c = (rot @ means[None, :, :, None]).squeeze(-1) + trans  # [C, N, 3]
    cov_c = rot @ cov3d[None] @ rot.transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]

    in_depth = (z >= near_plane) & (z <= far_plane)  # CUDA culls z < near or z > far
    if camera_model == "pinhole":
        in_depth = in_depth & (z != 0)
        rz = 1.0 / _safe_where(in_depth, z, 1.0)
        # gsplat clamps x/z, y/z to 1.3x the half field of view before building J (tames edge blow-up).
        tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
        lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
        lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
        tx = torch.clamp(x * rz, min=-lim_x_neg, max=lim_x_pos)  # clamped x/z
        ty = torch.clamp(y * rz, min=-lim_y_neg, max=lim_y_pos)
        j00, j11 = fx * rz, fy * rz
        j02, j12 = -fx * tx * rz, -fy * ty * rz  # = -fx * (z * clamp(x/z)) / z^2
        means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    else:  # ortho: J is constant
        j00, j11 = fx.expand_as(x), fy.expand_as(y)
        j02 = j12 = torch.zeros_like(x)
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)

    # cov2d = J cov_c J^T with J = [[j00, 0, j02], [0, j11, j12]], written out (symmetric).
    s = cov_c
    c00 = j00 * (j00 * s[..., 0, 0] + 2 * j02 * s[..., 0, 2]) + j02 * j02 * s[..., 2, 2]
    c11 = j11 * (j11 * s[..., 1, 1] + 2 * j12 * s[..., 1, 2]) + j12 * j12 * s[..., 2, 2]
    c01 = j00 * (j11 * s[..., 0, 1] + j12 * s[..., 0, 2]) + j02 * (j11 * s[..., 2, 1] + j12 * s[..., 2, 2])
    det_orig = c00 * c11 - c01 * c01
    c00, c11 = c00 + eps2d, c11 + eps2d  # low-pass filter
    det = c00 * c11 - c01 * c01
    valid = in_depth & (det > 0)
    inv_det = 1.0 / _safe_where(valid, det, 1.0)
    conics = torch.stack([c11 * inv_det, -c01 * inv_det, c00 * inv_det], dim=-1)

    compensations = None
    if calc_compensations:
        ratio = det_orig * inv_det
        pos = ratio > 0
        compensations = torch.where(pos, torch.sqrt(_safe_where(pos, ratio, 1.0)), torch.zeros_like(ratio))

    radii = _radii(c00, c11, det, valid, means2d, width, height, radius_clip)
    return Projection(radii=radii, means2d=means2d, depths=z, conics=conics, compensations=compensations)


@torch.no_grad()
def _radii(
    c00: Tensor, c11: Tensor, det: Tensor, valid: Tensor, means2d: Tensor, width: int, height: int, radius_clip: float
) -> Tensor:
    """Integer radius [C, N]: 3 sigma of the blurred 2D covariance's larger eigenvalue, as gsplat (not
    differentiable); 0 for culled Gaussians (invalid, radius <= radius_clip, or the box fully off-screen)."""
    b = 0.5 * (c00 + c11)
    v1 = b + torch.sqrt(torch.clamp(b * b - det, min=0.01))
    radius = torch.ceil(3.0 * torch.sqrt(torch.clamp(v1, min=0.0)))
    mx, my = means2d[..., 0], means2d[..., 1]
    on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    keep = valid & (radius > radius_clip) & on_screen
    return torch.where(keep, radius, torch.zeros_like(radius)).int()


def _project_compiled(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
) -> Projection:
    """:func:`project_gaussians` through :class:`.compiled_projection.CompiledProjection` (same outputs)."""
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lims = torch.stack(  # gsplat's clamp of x/z, y/z to 1.3x the half field of view
        [cx / fx + 0.3 * tan_fovx, (width - cx) / fx + 0.3 * tan_fovx,
         cy / fy + 0.3 * tan_fovy, (height - cy) / fy + 0.3 * tan_fovy], dim=-1,
    )  # fmt: skip
    means2d, conics, depths, cov2d = compiled_projection.CompiledProjection.apply(
        means, quats, scales, viewmats, Ks, lims, eps2d, near_plane, far_plane
    )
    c00, c01, c11 = cov2d.unbind(-1)
    det = c00 * c11 - c01 * c01
    valid = (depths >= near_plane) & (depths <= far_plane) & (depths != 0) & (det > 0)
    radii = _radii(c00, c11, det, valid, means2d, width, height, radius_clip)
    return Projection(radii=radii, means2d=means2d, depths=depths, conics=conics, compensations=None)


# ---------------------------------------------------------------------------------------
# Binning
# ---------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Image layout in square *bins* of ``bin_size`` pixels (an acceleration structure).

    ``tile_size`` keeps gsplat's meaning (which tiles a Gaussian may touch); bins only
    organise the work. Pixel *slots* are bin-major: slot = bin * b^2 + row_in_bin * b + col_in_bin.
    """

    n_cameras: int
    width: int
    height: int
    tile_size: int
    bin_size: int

    @property
    def bins_x(self) -> int:
        return math.ceil(self.width / self.bin_size)

    @property
    def bins_y(self) -> int:
        return math.ceil(self.height / self.bin_size)

    @property
    def bins_per_camera(self) -> int:
        return self.bins_x * self.bins_y

    @property
    def n_bins(self) -> int:
        return self.n_cameras * self.bins_per_camera

    @property
    def n_slots(self) -> int:
        return self.n_bins * self.bin_size**2

    @property
    def layout(self) -> tuple[int, int, int, int, int]:
        """(bin_size, bins_x, bins_per_camera, width, height): the grid as the compiled kernels take it."""
        return self.bin_size, self.bins_x, self.bins_per_camera, self.width, self.height

    def slots_to_image(self, values: Tensor) -> Tensor:
        """[n_slots, D] bin-major values -> [C, H, W, D] image."""
        b, d = self.bin_size, values.shape[-1]
        img = values.reshape(self.n_cameras, self.bins_y, self.bins_x, b, b, d).permute(0, 1, 3, 2, 4, 5)
        return img.reshape(self.n_cameras, self.bins_y * b, self.bins_x * b, d)[:, : self.height, : self.width]

    def slot_pixels(self, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Camera, x and y of each slot [M] (int64)."""
        b2 = self.bin_size**2
        bin_, inner = slots // b2, slots % b2
        in_cam = bin_ % self.bins_per_camera
        x = (in_cam % self.bins_x) * self.bin_size + inner % self.bin_size
        y = (in_cam // self.bins_x) * self.bin_size + inner // self.bin_size
        return bin_ // self.bins_per_camera, x, y

    def padding_slots(self, device: torch.device) -> Tensor:
        """[n_slots] bool, True for slots of the last bin row/column that fall outside the image."""
        b = self.bin_size
        xs = torch.arange(self.bins_x * b, device=device) >= self.width
        ys = torch.arange(self.bins_y * b, device=device) >= self.height
        pad = (ys[:, None] | xs[None, :]).reshape(self.bins_y, b, self.bins_x, b).permute(0, 2, 1, 3)
        return pad.reshape(1, -1).expand(self.n_cameras, -1).reshape(-1)


@dataclass
class _BinLists:
    """Depth-sorted Gaussian lists per bin plus each Gaussian's inclusive pixel box."""

    entries: Tensor  # [I] live-entry ids, grouped by bin, front to back within a bin
    offsets: Tensor  # [n_bins] start of each bin's list in ``entries``
    counts: Tensor  # [n_bins] list lengths
    box: Tensor  # [L, 4] int64 inclusive pixel box (x0, x1, y0, y1) per live entry

    def positions(self, feats: Tensor) -> compiled_composite.PositionLists:
        """These lists with each position's geometry and colours ([L, 6 + D] ``feats``) gathered in list order."""
        return compiled_composite.PositionLists.gather(
            feats[:, :6], feats[:, 6:], self.entries, self.offsets, self.counts, self.box
        )


@torch.no_grad()
def _pixel_boxes(geom: Tensor, radii: Tensor, grid: _Grid) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel box (x0, x1, y0, y1) [L] each where a Gaussian can contribute, like gsplat.

    gsplat considers a Gaussian for every pixel of the tiles its integer-radius box touches, and
    skips pixels with alpha < 1/255. So the box is gsplat's tile rectangle intersected with the
    bounding box of the ellipse where alpha can still reach 1/255 (sigma <= log(255 opacity)).
    The second box only drops pixels whose alpha test would fail anyway: results are unchanged,
    far fewer pairs are evaluated. ``geom`` [L, 6] = means2d, conics, opacity.
    """
    ts = grid.tile_size
    m, con, r = geom[:, :2].double(), geom[:, 2:5].double(), radii.double()
    s_max = torch.log(torch.clamp(geom[:, 5].double() * 255.0, min=1e-30))
    det_con = con[:, 0] * con[:, 2] - con[:, 1] ** 2
    good = det_con > 0
    safe_det = torch.where(good, det_con, torch.ones_like(det_con))
    inf = torch.full_like(det_con, math.inf)
    two_s = 2.0 * s_max.clamp(min=0.0)
    # Ellipse {d: 0.5 d^T cov^-1 d <= s} has half-extent sqrt(2 s cov_xx); cov = conic^-1.
    # Small relative + absolute margins keep the box conservative under rounding.
    ext_x = torch.sqrt(two_s * torch.where(good, con[:, 2] / safe_det, inf)) * (1 + 1e-4) + 1e-3
    ext_y = torch.sqrt(two_s * torch.where(good, con[:, 0] / safe_det, inf)) * (1 + 1e-4) + 1e-3

    def axis(mu: Tensor, ext: Tensor, n_tiles: int, size: int) -> tuple[Tensor, Tensor]:
        t0 = torch.floor(mu / ts - r / ts).clamp(0, n_tiles)  # gsplat's tile range [t0, t1)
        t1 = torch.ceil(mu / ts + r / ts).clamp(0, n_tiles)
        lo = torch.maximum(torch.ceil(mu - ext - 0.5), t0 * ts).clamp(min=0)  # pixel i has centre i + 0.5
        hi = torch.minimum(torch.floor(mu + ext - 0.5), t1 * ts - 1).clamp(max=size - 1)
        return lo.clamp(-1, size).long(), hi.clamp(-1, size).long()

    x0, x1 = axis(m[:, 0], ext_x, math.ceil(grid.width / ts), grid.width)
    y0, y1 = axis(m[:, 1], ext_y, math.ceil(grid.height / ts), grid.height)
    # opacity < 1/255 never passes the alpha test (tolerance: the exact test happens per pair)
    dead = (radii <= 0) | (s_max < -1e-6)
    return x0, torch.where(dead, -1, x1), y0, y1


@torch.no_grad()
def _bin_gaussians(geom: Tensor, radii: Tensor, depths: Tensor, cams: Tensor, grid: _Grid) -> _BinLists:
    """List every live entry [L] in the bins its pixel box overlaps, front to back per bin."""
    b, dev, n = grid.bin_size, geom.device, len(geom)
    x0, x1, y0, y1 = _pixel_boxes(geom, radii, grid)
    live = (x0 <= x1) & (y0 <= y1)
    nx = torch.where(live, x1 // b - x0 // b + 1, 0)
    ny = torch.where(live, y1 // b - y0 // b + 1, 0)
    per_entry = nx * ny

    ids = torch.repeat_interleave(torch.arange(n, device=dev), per_entry)
    local = torch.arange(len(ids), device=dev) - (torch.cumsum(per_entry, 0) - per_entry)[ids]
    bx = x0[ids] // b + local % nx[ids]
    by = y0[ids] // b + local // nx[ids]
    bins = cams[ids] * grid.bins_per_camera + by * grid.bins_x + bx

    rank = torch.empty(n, dtype=torch.long, device=dev)
    rank[torch.argsort(depths, stable=True)] = torch.arange(n, device=dev)  # ties keep index order, as gsplat
    order = torch.argsort(bins * max(n, 1) + rank[ids])  # unique keys: (bin, depth rank)
    counts = torch.bincount(bins, minlength=grid.n_bins)
    return _BinLists(
        entries=ids[order],
        offsets=torch.cumsum(counts, 0) - counts,
        counts=counts,
        box=torch.stack([x0, x1, y0, y1], dim=-1),
    )


# ---------------------------------------------------------------------------------------
# Front-to-back sweep (no grad): which pairs contribute, with what transmittance
# ---------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """Contributing (pixel, Gaussian) pairs of one front-to-back piece, sorted by slot then depth."""

    slots: Tensor  # [M] int64 pixel slot (bin-major)
    entries: Tensor  # [M] int64 live-entry id
    seg_first: Tensor  # [M] index of the first pair of the same slot
    delta: Tensor  # [2, M] mean2d - pixel centre (dx, dy), pixels
    vis: Tensor  # [M] exp(-sigma) in (0, 1]
    alpha: Tensor  # [M] min(0.999, opacity * vis) in [1/255, 0.999]
    trans: Tensor  # [M] transmittance T_i in (1e-4, 1] in front of the pair


def _segment_starts(keys: Tensor) -> Tensor:
    """For keys sorted ascending [M], the index of the first element of each element's run."""
    _, counts = torch.unique_consecutive(keys, return_counts=True)
    return torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)


def _segment_cumsum(values: Tensor, seg_first: Tensor, exclusive: bool) -> Tensor:
    """Prefix sum of ``values`` [M] within runs (``seg_first`` from :func:`_segment_starts`).

    Accumulated in float64: the global running sum grows large while per-run differences must
    stay accurate to ~1e-12.
    """
    v = values.double()
    before = torch.cumsum(v, 0).sub_(v)  # global exclusive prefix sum
    out = before - before.index_select(0, seg_first)
    return (out if exclusive else out.add_(v)).to(values.dtype)


@torch.no_grad()
def _sweep(geom: Tensor, lists: _BinLists, grid: _Grid) -> tuple[list[_Piece], Tensor]:
    """Walk every bin's list front to back in pieces of ``_PIECE`` Gaussians.

    Returns the contributing pairs per piece and the final log transmittance [n_slots].
    Pixels that terminated (or lie outside the image) and bins whose pixels all terminated are
    skipped by later pieces - the CPU counterpart of gsplat's per-tile early exit.
    """
    b2, dev = grid.bin_size**2, geom.device
    log_t = torch.zeros(grid.n_slots, dtype=geom.dtype, device=dev)
    done = grid.padding_slots(dev).clone()
    bin_done = done.view(grid.n_bins, b2).all(dim=1)
    n_pieces = math.ceil(int(lists.counts.max()) / _PIECE) if len(lists.counts) else 0
    group = max(1, _MAX_CELLS // (b2 * _PIECE))
    pieces = []
    for k in range(n_pieces):
        active = torch.nonzero((lists.counts > k * _PIECE) & ~bin_done).squeeze(1)
        parts = [_piece(active[g : g + group], k, geom, lists, grid, log_t, done) for g in range(0, len(active), group)]
        parts = [p for p in parts if p is not None]
        if parts:
            slots, entries, delta, vis, alpha, trans = (torch.cat(x, dim=-1) for x in zip(*parts, strict=True))
            pieces.append(_Piece(slots, entries, _segment_starts(slots), delta, vis, alpha, trans))
        bin_done = done.view(grid.n_bins, b2).all(dim=1)
    return pieces, log_t


def _piece(
    bins: Tensor, k: int, geom: Tensor, lists: _BinLists, grid: _Grid, log_t: Tensor, done: Tensor
) -> tuple[Tensor, ...] | None:
    """Pairs of piece ``k`` for a group of bins [A]; updates ``log_t`` and ``done`` in place."""
    b, P, dev = grid.bin_size, _PIECE, geom.device
    b2, n_bins = b * b, len(bins)
    log_p, log_b2 = P.bit_length() - 1, b2.bit_length() - 1  # both powers of two: shifts, not divisions
    pos = k * P + torch.arange(P, device=dev)  # positions in each bin's list [P]
    in_list = pos[None] < lists.counts.index_select(0, bins)[:, None]  # [A, P]
    idx = (lists.offsets.index_select(0, bins)[:, None] + pos[None]).clamp_(max=len(lists.entries) - 1)
    ent = lists.entries.index_select(0, idx.view(-1))  # [A * P]
    box = lists.box.index_select(0, ent).view(n_bins, 1, P, 4)
    in_cam = bins % grid.bins_per_camera
    cols = ((in_cam % grid.bins_x) * b)[:, None] + torch.arange(b, device=dev)  # pixel x of each column [A, b]
    rows = ((in_cam // grid.bins_x) * b)[:, None] + torch.arange(b, device=dev)
    x_in = (cols[..., None] >= box[..., 0]) & (cols[..., None] <= box[..., 1]) & in_list[:, None, :]  # [A, b, P]
    y_in = (rows[..., None] >= box[..., 2]) & (rows[..., None] <= box[..., 3])
    live = ~done.view(grid.n_bins, b, b).index_select(0, bins)  # [A, b(y), b(x)]
    hit = (y_in[:, :, None, :] & live[..., None]) & x_in[:, None, :, :]  # [A, b, b, P]
    lin = torch.nonzero(hit.view(-1)).squeeze(1)  # ascending: pixel-major, front to back
    if len(lin) == 0:
        return None

    pix = lin >> log_p  # local pixel index into [A * b2]
    col = ((pix >> log_b2) << log_p) | (lin & (P - 1))  # index into this piece's [A * P] entries
    slots = (bins[:, None] * b2 + torch.arange(b2, device=dev)).view(-1).index_select(0, pix)
    entries = ent.index_select(0, col)
    # Gather per-pair values from the piece's small [6, A * P] table (cache-resident) rather than from all L.
    g = geom.index_select(0, ent).t().contiguous().index_select(1, col)  # [6, M]
    cx = cols.to(geom.dtype).add_(0.5)[:, None, :].expand(-1, b, -1).reshape(-1).index_select(0, pix)
    cy = rows.to(geom.dtype).add_(0.5)[:, :, None].expand(-1, -1, b).reshape(-1).index_select(0, pix)
    dx, dy = g[0] - cx, g[1] - cy
    sigma = (g[2] * dx).mul_(dx).addcmul_(g[4] * dy, dy).mul_(0.5).addcmul_(g[3] * dx, dy)
    vis = torch.exp(-sigma)
    alpha = (vis * g[5]).clamp_max_(ALPHA_MAX)
    ok = (sigma >= 0) & (alpha >= ALPHA_MIN)  # gsplat skips these pairs: they leave T unchanged
    log1m = torch.log1p(-torch.where(ok, alpha, torch.zeros_like(alpha)))
    log_before = _segment_cumsum(log1m, _segment_starts(pix), exclusive=True) + log_t.index_select(0, slots)
    keep = ok & (torch.exp(log_before + log1m) > T_MIN)  # exclusive stop; a prefix of each pixel's run
    done[slots.masked_select(ok & ~keep)] = True
    sel = torch.nonzero(keep).squeeze(1)
    slots, log1m = slots.index_select(0, sel), log1m.index_select(0, sel)
    log_t.index_add_(0, slots, log1m)
    delta = torch.stack([dx.index_select(0, sel), dy.index_select(0, sel)])
    trans = torch.exp(log_before.index_select(0, sel))
    return slots, entries.index_select(0, sel), delta, vis.index_select(0, sel), alpha.index_select(0, sel), trans


# ---------------------------------------------------------------------------------------
# Differentiable compositing over the fixed pairs (hand-written backward, CUDA-kernel style)
# ---------------------------------------------------------------------------------------


class _Composite(torch.autograd.Function):
    """colours = sum_i alpha_i T_i c_i per slot, log T_final per slot; gradients w.r.t. feats.

    ``feats`` [L, 6 + D] = means2d (2), conic (3), opacity (1), colours (D) of the live entries.
    The pair lists, alphas and transmittances come from :func:`_sweep` (no grad). The backward
    is the 3DGS one, vectorised: walking pieces back to front it carries, per pixel, the colour
    still to come S_i = sum_{j>i} w_j c_j, then

        dL/dalpha_i = T_i <g, c_i> - (<g, S_i> + dL/dlogT) / (1 - alpha_i)

    and chains through alpha = min(0.999, o exp(-sigma)) to means2d, conic and opacity.
    It matches autograd of the same forward (tests compare with a brute-force autograd
    reference) while skipping autograd's per-op graph, and yields absgrad as a by-product.
    """

    @staticmethod
    def forward(
        ctx,
        feats: Tensor,
        log_t: Tensor,
        pieces: list[_Piece],
        n_slots: int,
        abs_out: Tensor | None,
        abs_rows: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        colours = feats[:, 6:].contiguous()
        out = feats.new_zeros(n_slots, colours.shape[1])
        for p in pieces:
            out.index_add_(0, p.slots, (p.alpha * p.trans)[:, None] * colours.index_select(0, p.entries))
        ctx.save_for_backward(feats)
        ctx.pieces, ctx.n_slots, ctx.abs_out, ctx.abs_rows = pieces, n_slots, abs_out, abs_rows
        return out, log_t.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, grad_log_t: Tensor) -> tuple[Tensor | None, ...]:
        (feats,) = ctx.saved_tensors
        colours = feats[:, 6:].contiguous()  # [L, D]
        shape = feats[:, 2:6].t().contiguous()  # [4, L] conic (a, b, c), opacity: gathered rows stay contiguous
        grad_geom = feats.new_zeros(len(feats), 6)
        grad_colours = torch.zeros_like(colours)
        grad_out = grad_out.contiguous()
        later = feats.new_zeros(ctx.n_slots)  # <g, S> from pieces further back
        for p in reversed(ctx.pieces):
            g_geom, g_col = _pair_grads(p, shape, colours, grad_out, grad_log_t, later)
            grad_geom.index_add_(0, p.entries, g_geom)
            grad_colours.index_add_(0, p.entries, g_col)
            if ctx.abs_out is not None:  # AbsGS: per-pixel |dL/dmeans2d|, summed
                ctx.abs_out.index_add_(0, ctx.abs_rows.index_select(0, p.entries), g_geom[:, :2].abs())
        return torch.cat([grad_geom, grad_colours], dim=1), None, None, None, None, None


def _pair_grads(
    p: _Piece, shape: Tensor, colours: Tensor, grad_out: Tensor, grad_log_t: Tensor, later: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-pair gradients w.r.t. (means2d, conic, opacity) [M, 6] and colours [M, D].

    ``shape`` [4, L] = conic (a, b, c) and opacity per entry; updates ``later`` in place.
    """
    g_pix = grad_out.index_select(0, p.slots)  # [M, D]
    weight = p.alpha * p.trans
    gc = (g_pix * colours.index_select(0, p.entries)).sum(dim=1)  # <g, c_i>
    contrib = weight * gc  # <g, w_i c_i>
    total = torch.zeros_like(later).index_add_(0, p.slots, contrib)
    # <g, S_i>: this piece's pairs behind i plus everything in later pieces
    behind = (total + later).index_select(0, p.slots) - _segment_cumsum(contrib, p.seg_first, exclusive=False)
    later += total
    g_alpha = p.trans * gc - (behind + grad_log_t.index_select(0, p.slots)) / (1.0 - p.alpha)
    a, b, c, opac = shape.index_select(1, p.entries)
    raw = opac * p.vis
    # clamped alphas pass no gradient (gsplat: `if (opac * vis <= 0.999f)`)
    g_raw = torch.where(raw <= ALPHA_MAX, g_alpha, torch.zeros_like(g_alpha))
    g_sigma = -g_raw * raw
    dx, dy = p.delta
    g_dx, g_dy = g_sigma * dx, g_sigma * dy
    g_geom = torch.stack(
        [a * g_dx + b * g_dy, b * g_dx + c * g_dy, 0.5 * g_dx * dx, g_dx * dy, 0.5 * g_dy * dy, g_raw * p.vis], dim=1
    )
    return g_geom, weight[:, None] * g_pix


class _CompiledComposite(torch.autograd.Function):
    """:class:`_Composite`'s forward and backward, computed by :mod:`.compiled_composite` (CPU).

    Same inputs as :class:`_Composite` but the bin lists instead of the sweep's pieces: the compiled loops
    find the contributing pairs themselves, forward and backward.
    """

    @staticmethod
    def forward(
        ctx, feats: Tensor, lists: _BinLists, layout: tuple, abs_out: Tensor | None, abs_rows: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        pos = lists.positions(feats)
        out, log_t, last = compiled_composite.composite_forward(pos, layout)
        ctx.pos, ctx.layout, ctx.saved = pos, layout, (log_t, last)
        ctx.abs_out, ctx.abs_rows, ctx.n_feats = abs_out, abs_rows, len(feats)
        return out, log_t.to(feats.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, grad_log_t: Tensor) -> tuple[Tensor | None, ...]:
        d_geom, d_col, d_abs = compiled_composite.composite_backward(
            ctx.pos, ctx.layout, *ctx.saved, grad_out, grad_log_t
        )
        entries = ctx.pos.entries
        grad = d_geom.new_zeros(ctx.n_feats, 6 + d_col.shape[1])
        grad.index_add_(0, entries, torch.cat([d_geom, d_col], dim=1))
        if ctx.abs_out is not None:  # AbsGS: per-pixel |dL/dmeans2d|, summed
            ctx.abs_out.index_add_(0, ctx.abs_rows.index_select(0, entries), d_abs)
        return grad, None, None, None, None


def _use_compiled(composite: Composite | None, device: torch.device) -> bool:
    """Whether to composite with the compiled kernels (``composite`` None: ``$STYLEME3D_COMPOSITE`` or "auto")."""
    mode = composite or os.environ.get("STYLEME3D_COMPOSITE", "auto")
    if mode not in ("auto", "compiled", "sweep"):
        raise ValueError(f"composite must be 'auto', 'compiled' or 'sweep', got {mode!r}")
    usable = device.type == "cpu" and compiled_composite.available()
    if mode == "compiled" and not usable:
        raise ValueError("composite='compiled' needs CPU tensors and numba (pip install numba); use 'sweep'")
    return mode != "sweep" and usable


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _check_inputs(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    sh_degree: int | None,
    render_mode: str,
    covars: Tensor | None,
) -> None:
    N, C = means.shape[0], viewmats.shape[0]
    if means.shape != (N, 3):
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if covars is None and (quats is None or scales is None or quats.shape != (N, 4) or scales.shape != (N, 3)):
        raise ValueError("quats [N, 4] and scales [N, 3] are required when covars is None")
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be [N], got {tuple(opacities.shape)}")
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(f"viewmats must be [C, 4, 4] and Ks [C, 3, 3], got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))):
            raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (colors.dim() == 4 and colors.shape[:2] == (C, N))
        if not ok or colors.shape[-1] != 3 or colors.shape[-2] < (sh_degree + 1) ** 2:
            raise ValueError(
                f"colors must be [(C,) N, K>={(sh_degree + 1) ** 2}, 3] SH coefficients, got {tuple(colors.shape)}"
            )


def _entry_colours(
    colors: Tensor, sh_degree: int | None, means: Tensor, viewmats: Tensor, cams: Tensor, gids: Tensor
) -> Tensor:
    """Per-(camera, Gaussian) colours [L, D] for the given entries (SH evaluated only there)."""
    N = means.shape[0]
    per_camera = colors.dim() == (3 if sh_degree is None else 4)
    flat = colors.reshape(-1, *colors.shape[(2 if per_camera else 1) :])
    rows = cams * N + gids if per_camera else gids
    picked = flat.index_select(0, rows)
    if sh_degree is None:
        return picked
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3] camera centres, as gsplat
    dirs = means.index_select(0, gids) - campos.index_select(0, cams)
    return sh_colors(sh_degree, dirs, picked)


@dataclass
class _Prepared:
    """Everything the compositing needs after projection and binning."""

    grid: _Grid
    info: dict
    feats: Tensor  # [L, 6 + D] means2d, conics, opacity, colours of live entries
    live_rows: Tensor  # [L] row of each live entry in info's flattened [C*N] / [nnz] arrays
    lists: _BinLists
    backgrounds: Tensor | None

    @property
    def geom(self) -> Tensor:
        """[L, 6] means2d, conics, opacity of the live entries, without grad."""
        return self.feats[:, :6].detach()

    def sweep(self) -> tuple[list[_Piece], Tensor]:
        """The vectorised no-grad sweep: contributing pairs per piece, final log transmittance [n_slots]."""
        return _sweep(self.geom, self.lists, self.grid)


def _prepare(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    sh_degree: int | None,
    packed: bool,
    tile_size: int,
    backgrounds: Tensor | None,
    render_mode: RenderMode,
    rasterize_mode: str,
    camera_model: CameraModel,
    covars: Tensor | None,
    bin_size: int = _BIN,
) -> _Prepared:
    """Project, gather the live (visible) entries' features and bin them (``bin_size`` px square bins)."""
    C, N = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(
        means,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        calc_compensations=rasterize_mode == "antialiased",
        camera_model=camera_model,
        covars=covars,
    )
    opac = opacities.repeat(C, 1)  # [C, N], materialised like gsplat's
    if proj.compensations is not None:
        opac = opac * proj.compensations
    if packed:  # gsplat's packed layout: only visible (camera, Gaussian) pairs, [nnz, ...]
        sel = proj.radii > 0
        cams, gids = torch.nonzero(sel, as_tuple=True)
        info = {
            "camera_ids": cams,
            "gaussian_ids": gids,
            "radii": proj.radii[sel],
            "means2d": proj.means2d[sel],
            "depths": proj.depths[sel],
            "conics": proj.conics[sel],
            "opacities": opac[sel],
        }
        live_rows = torch.arange(len(cams), device=means.device)
    else:
        info = {
            "camera_ids": None,
            "gaussian_ids": None,
            "radii": proj.radii,
            "means2d": proj.means2d,
            "depths": proj.depths,
            "conics": proj.conics,
            "opacities": opac,
        }
        live_rows = torch.nonzero(proj.radii.reshape(-1) > 0).squeeze(1)
        cams, gids = live_rows // N, live_rows % N

    def live(key: str, n_cols: int) -> Tensor:
        return info[key].reshape(-1, n_cols).index_select(0, live_rows)

    m2d, con, op, dep = live("means2d", 2), live("conics", 3), live("opacities", 1), live("depths", 1)
    if render_mode in ("D", "ED"):
        col = dep
    else:
        col = _entry_colours(colors, sh_degree, means, viewmats, cams, gids)
        if render_mode in ("RGB+D", "RGB+ED"):
            col = torch.cat([col, dep], dim=-1)
    if backgrounds is not None and render_mode != "RGB":  # depth channels get a zero background, as gsplat
        zeros = backgrounds.new_zeros(C, 1)
        backgrounds = zeros if render_mode in ("D", "ED") else torch.cat([backgrounds, zeros], dim=-1)

    feats = torch.cat([m2d, con, op, col.to(m2d.dtype)], dim=-1)
    grid = _Grid(C, width, height, tile_size, bin_size)
    radii_live = info["radii"].reshape(-1).index_select(0, live_rows)
    lists = _bin_gaussians(feats[:, :6].detach(), radii_live, dep.detach().squeeze(1), cams, grid)
    info.update(
        {
            "tile_width": math.ceil(width / tile_size),
            "tile_height": math.ceil(height / tile_size),
            "tiles_per_gauss": _tiles_per_gauss(info["radii"], info["means2d"], grid),
            "width": width,
            "height": height,
            "tile_size": tile_size,
            "n_cameras": C,
        }
    )
    return _Prepared(grid, info, feats, live_rows, lists, backgrounds)


@torch.no_grad()
def _tiles_per_gauss(radii: Tensor, means2d: Tensor, grid: _Grid) -> Tensor:
    """gsplat's ``tiles_per_gauss``: tiles touched by each integer-radius box, int32 like ``radii``."""
    ts = grid.tile_size
    m, r = means2d.detach().double() / ts, radii.double() / ts
    tw, th = math.ceil(grid.width / ts), math.ceil(grid.height / ts)
    nx = torch.ceil(m[..., 0] + r).clamp(0, tw) - torch.floor(m[..., 0] - r).clamp(0, tw)
    ny = torch.ceil(m[..., 1] + r).clamp(0, th) - torch.floor(m[..., 1] - r).clamp(0, th)
    return (nx * ny * (radii > 0)).int()


def rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: CameraModel = "pinhole",
    covars: Tensor | None = None,
    composite: Composite | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Pure-PyTorch ``gsplat.rasterization`` (same arguments, outputs and ``info`` keys).

    See :func:`styleme3d_ns.render.rasterize` for the full argument documentation. ``composite`` (not a
    gsplat argument) picks the compositing: "compiled" (numba loops, CPU), "sweep" (vectorised torch, any
    device) or "auto"/None (``$STYLEME3D_COMPOSITE``, else compiled when possible); both give the same
    images and gradients to float rounding (tests). Differences from gsplat:
    ``sparse_grad`` (with ``packed``), ``distributed`` and ``camera_model="fisheye"`` raise
    ``ValueError``; ``channel_chunk`` is ignored (all channels are composited in one pass);
    ``info`` has no ``isect_ids``/``flatten_ids``/``isect_offsets`` (our binning differs).
    """
    if distributed:
        raise ValueError("distributed rasterisation is not supported by the torch backend")
    if sparse_grad and packed:
        raise ValueError("sparse_grad=True is not supported by the torch backend (gradients are dense)")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, render_mode, covars)
    compiled = _use_compiled(composite, means.device)
    prep = _prepare(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        radius_clip,
        eps2d,
        sh_degree,
        packed,
        tile_size,
        backgrounds,
        render_mode,
        rasterize_mode,
        camera_model,
        covars,
        bin_size=_BIN_COMPILED if compiled else _BIN,
    )
    info, grid = prep.info, prep.grid
    means2d = info["means2d"]
    abs_out = None
    if absgrad:
        means2d.absgrad = torch.zeros_like(means2d, requires_grad=False)  # filled during backward
        abs_out = means2d.absgrad.view(-1, 2)
    if compiled:
        out, log_t = _CompiledComposite.apply(prep.feats, prep.lists, grid.layout, abs_out, prep.live_rows)
    else:
        pieces, log_t0 = prep.sweep()
        out, log_t = _Composite.apply(prep.feats, log_t0, pieces, grid.n_slots, abs_out, prep.live_rows)
    if len(prep.lists.entries) == 0 and means2d.requires_grad:
        out = out + 0.0 * means2d.sum()  # keep means2d in the graph so .grad is zeros, as with gsplat
    render = grid.slots_to_image(out)
    trans = grid.slots_to_image(torch.exp(log_t)[:, None])  # final transmittance [C, H, W, 1]
    alpha = grid.slots_to_image(-torch.expm1(log_t)[:, None])  # 1 - T, accurate for small alpha
    if prep.backgrounds is not None:
        render = render + trans * prep.backgrounds[:, None, None, :].to(render.dtype)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    return render, alpha, info


def _swept_pairs(prep: _Prepared) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Contributing pairs from the vectorised sweep: slots [P], live entries [P], weights [P], log T [n_slots]."""
    pieces, log_t = prep.sweep()
    if not pieces:
        empty = torch.zeros(0, dtype=torch.long, device=log_t.device)
        return empty, empty, log_t.new_zeros(0), log_t
    slots, entries = torch.cat([p.slots for p in pieces]), torch.cat([p.entries for p in pieces])
    return slots, entries, torch.cat([p.alpha * p.trans for p in pieces]), log_t


def _compiled_pairs(prep: _Prepared) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_swept_pairs` from the compiled kernels (the same pairs and weights as their forward)."""
    slots, positions, weights, log_t = compiled_composite.contributing_pairs(
        prep.lists.positions(prep.feats), prep.grid.layout
    )
    return slots, prep.lists.entries.index_select(0, positions), weights, log_t.to(weights.dtype)


@dataclass
class CompositeWeights:
    """Sparse linear map from per-Gaussian colours to one view's pixels, for fixed geometry.

    ``image[p] = sum_{i: pixel_ids[i] = p} weights[i] * colour[gaussian_ids[i]] + (1 - alpha[p]) * bg``.
    """

    pixel_ids: Tensor  # [P] int64 row-major pixel index y * W + x
    gaussian_ids: Tensor  # [P] int64 Gaussian index in [0, N)
    weights: Tensor  # [P] alpha_i * T_i in (0, 1]
    alpha: Tensor  # [H * W] accumulated opacity in [0, 1]
    width: int
    height: int


@torch.no_grad()
def composite_weights(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    camera_model: CameraModel = "pinhole",
    covars: Tensor | None = None,
    composite: Composite | None = None,
) -> CompositeWeights:
    """The exact compositing weights :func:`rasterize_torch` uses for one camera (same ``composite`` path).

    Args:
        means, quats, scales, opacities, covars: Gaussians as in :func:`rasterize_torch` ([N, ...]).
        viewmat: [4, 4] or [1, 4, 4] world-to-camera; K: [3, 3] or [1, 3, 3] intrinsics.
        Remaining arguments as in :func:`rasterize_torch`.
    """
    viewmats, Ks = viewmat.reshape(1, 4, 4), K.reshape(1, 3, 3)
    dummy = means.new_zeros(len(means), 1)
    compiled = _use_compiled(composite, means.device)
    prep = _prepare(
        means,
        quats,
        scales,
        opacities,
        dummy,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        radius_clip,
        eps2d,
        None,
        False,
        tile_size,
        None,
        "RGB",
        rasterize_mode,
        camera_model,
        covars,
        bin_size=_BIN_COMPILED if compiled else _BIN,
    )
    slots, entries, weights, log_t = (_compiled_pairs if compiled else _swept_pairs)(prep)
    _, px, py = prep.grid.slot_pixels(slots)
    return CompositeWeights(
        pixel_ids=py * width + px,
        gaussian_ids=prep.live_rows.index_select(0, entries),  # C == 1: row == Gaussian id
        weights=weights,
        alpha=prep.grid.slots_to_image(-torch.expm1(log_t)[:, None]).reshape(-1),
        width=width,
        height=height,
    )
