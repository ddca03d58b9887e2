"""Reading torch files as data, never as code: `torch.load(weights_only=True)` with the plain-data types real
checkpoints pickle beside their tensors allow-listed (numpy scalars and dtypes).

nerfstudio's `ExponentialDecayScheduler` stores numpy float64 learning rates, and released weights (CSD) were
pickled with numpy 1, whose scalar constructor numpy 2 moved from `numpy.core` to `numpy._core`; both names are
listed. Each allowed global builds one value and runs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def numpy_data_globals() -> list:
    """numpy's scalar constructor (under its numpy 2 and legacy numpy 1 names), `np.dtype` and common dtype classes."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64)]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def load_data_only(path: Path, *, extra_globals: tuple = (), mmap: bool = False) -> Any:
    """`torch.load(path)` on CPU with `weights_only=True` and numpy's plain-data types (plus `extra_globals`) allowed.

    `mmap=True` maps tensor storages instead of reading them (zip-format files only): cheap for a check that looks
    at shapes. Raises whatever torch raises on a bad file; callers turn that into their own one-line error.
    """
    with torch.serialization.safe_globals([*numpy_data_globals(), *extra_globals]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
