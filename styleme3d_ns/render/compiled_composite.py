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
on first use and cached on disk (``cache=True``): only the first process pays the compile (~14 s, 2 cores).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether numba imports here (checked once per process)."""
    try:
        import numba  # noqa: F401
    except Exception:  # deliberately broad: ImportError, or an llvmlite that fails to load
        return False
    return True


@functools.cache
def load_kernels(name: str) -> ModuleType:
    """Import the kernel module ``name`` of this package; numba compiles its functions on first use, or loads them
    from its disk cache. With nothing cached yet (a fresh install) one line says why the first step pauses."""
    module = importlib.import_module(f".{name}", __package__)
    folders = [Path(module.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        folders.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    if not any(any(folder.rglob(f"{name}.*.nbi")) for folder in folders if folder.is_dir()):
        print(
            # not prefixed "styleme3d": that prefix is the user-error line's, and this is news, not an error
            f"CPU rasteriser: numba is compiling its kernels ({name.strip('_')}); first run only, about 7 s per "
            "group on 2 cores, then cached",
            file=sys.stderr,
            flush=True,
        )
    return module


def _kernels():  # noqa: ANN202 - numba dispatchers
    """The forward, backward and pair-weight kernels."""
    module = load_kernels("_composite_kernels")
    return module.forward, module.backward, module.pair_weights


@dataclass
class PositionLists:
    """The bin lists with every list position's data gathered in list order (sequential reads in the loops).

    geom: means2d, conic, opacity per position. [I, 6]; colours: [I, D]; box: (x0, x1, y0, y1) inclusive. [I, 4]
    int32; offsets, counts: each bin's slice of the positions. [n_bins] int64; entries: live entry of each
    position [I] (to reduce per-position gradients per entry).
    """

    geom: Tensor
    colours: Tensor
    box: Tensor
    offsets: Tensor
    counts: Tensor
    entries: Tensor

    @classmethod
    def gather(
        cls, geom: Tensor, colours: Tensor, entries: Tensor, offsets: Tensor, counts: Tensor, box: Tensor
    ) -> PositionLists:
        """From per-entry ``geom`` [L, 6], ``colours`` [L, D], ``box`` [L, 4] and the bin lists."""
        take = lambda t: t.detach().index_select(0, entries).contiguous()  # noqa: E731
        return cls(take(geom), take(colours), take(box.int()), offsets, counts, entries)

    def arrays(self) -> tuple:
        """The numpy views the kernels take (no copies)."""
        return tuple(t.numpy() for t in (self.geom, self.colours, self.box, self.offsets, self.counts))


def composite_forward(lists: PositionLists, layout: tuple[int, int, int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of every pixel slot over its bin's list.

    Args:
        lists: :class:`PositionLists` (CPU, float32 or float64 geometry and colours of one dtype).
        layout: (bin_size, bins_x, bins_per_camera, width, height); slots are bin-major, bin_size^2 per bin.

    Returns:
        out: sum_i alpha_i T_i c_i per slot. [n_slots, D]
        log_t: log final transmittance per slot, 0 for padding slots. [n_slots] float64 (the backward divides
            it back pair by pair, so it keeps double precision)
        last: where each slot's backward starts (how far its forward read its row list). [n_slots] int64
    """
    out, log_t, last, _ = _forward(lists, layout)
    return out, log_t, last


def _forward(lists: PositionLists, layout: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`composite_forward`'s outputs plus the number of contributing pairs per slot [n_slots] int64."""
    n_slots = len(lists.offsets) * layout[0] ** 2
    out = torch.zeros(n_slots, lists.colours.shape[1], dtype=lists.geom.dtype)
    log_t = torch.zeros(n_slots, dtype=torch.float64)
    last = torch.zeros(n_slots, dtype=torch.int64)
    n_pairs = torch.zeros(n_slots, dtype=torch.int64)
    forward = _kernels()[0]
    forward(*lists.arrays(), layout, out.numpy(), log_t.numpy(), last.numpy(), n_pairs.numpy())
    return out, log_t, last, n_pairs


def contributing_pairs(lists: PositionLists, layout: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every (pixel slot, list position) pair the forward composites, with its weight, for a frozen geometry.

    Args: as :func:`composite_forward` (``lists.colours`` are not read).

    Returns:
        slots: pixel slot of each pair, slot-major and front to back within a slot. [P] int64
        positions: list position of each pair (``lists.entries`` maps it to the live entry). [P] int64
        weights: alpha_i T_i in (0, 1], exactly the forward's. [P], the geometry's dtype
        log_t: log final transmittance per slot. [n_slots] float64
    """
    _, log_t, last, n_pairs = _forward(lists, layout)
    start = torch.cumsum(n_pairs, 0) - n_pairs
    total = int(n_pairs.sum())
    slots, positions = torch.empty(total, dtype=torch.int64), torch.empty(total, dtype=torch.int64)
    weights = torch.empty(total, dtype=lists.geom.dtype)
    pair_weights = _kernels()[2]
    g, _, box, offsets, counts = lists.arrays()
    pair_weights(
        g, box, offsets, counts, layout, last.numpy(), start.numpy(), slots.numpy(), positions.numpy(), weights.numpy()
    )
    return slots, positions, weights, log_t


def composite_backward(
    lists: PositionLists, layout: tuple, log_t: Tensor, last: Tensor, grad_out: Tensor, grad_log_t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`composite_forward` per list position (the 3DGS backward, back to front).

    Args: ``lists`` and ``layout`` as given to :func:`composite_forward`, its ``log_t`` and ``last``, and the
    output gradients ``grad_out`` [n_slots, D] and ``grad_log_t`` [n_slots].

    Returns:
        d_geom: d loss / d (means2d, conic, opacity) per list position. [I, 6]
        d_col: d loss / d colours per list position. [I, D]
        d_abs: sum over pixels of |d loss / d means2d| per list position (AbsGS). [I, 2]
    """
    dtype, n_pos = lists.geom.dtype, len(lists.entries)
    d_geom = torch.zeros(n_pos, 6, dtype=dtype)
    d_col = torch.zeros(n_pos, lists.colours.shape[1], dtype=dtype)
    d_abs = torch.zeros(n_pos, 2, dtype=dtype)
    grads = (grad_out.to(dtype).contiguous().numpy(), grad_log_t.to(dtype).contiguous().numpy())
    backward = _kernels()[1]
    backward(*lists.arrays(), layout, log_t.numpy(), last.numpy(), *grads, d_geom.numpy(), d_col.numpy(), d_abs.numpy())
    return d_geom, d_col, d_abs
