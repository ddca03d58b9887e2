"""`python -m styleme3d_ns.render.warm_kernels` (run by scripts/install.sh) compiles every CPU rasteriser kernel
into numba's disk cache, so that a fresh install's first training step does not pause to compile them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

KERNELS = {
    "_composite_kernels": ("forward", "backward", "pair_weights"),
    "_projection_kernels": ("forward", "backward"),
}


def test_warming_fills_an_empty_cache_with_every_kernel(tmp_path: Path) -> None:
    # numba writes only to NUMBA_CACHE_DIR when it is set: everything found there afterwards this run compiled
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "styleme3d_ns.render.warm_kernels"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "CPU rasteriser kernels compiled and cached" in proc.stdout
    cached = {p.name for p in tmp_path.rglob("*.nbc")}
    for module, functions in KERNELS.items():
        for function in functions:
            assert any(name.startswith(f"{module}.{function}-") for name in cached), f"{module}.{function} not cached"
