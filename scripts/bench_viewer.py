"""Benchmark viewer frames and training steps of the CPU rasteriser against an older revision of it, in one run.

Prints, for 50k and 100k Gaussians at 256 and 512 px: the frame time of this checkout's rasteriser, of the
baseline revision's (loaded from git into a temporary module), their ratio and the cost per Gaussian.
A frame is what the viewer asks for: no gradient, SH degree 3, RGB + expected depth. The last rows time a
training step (forward + backward with absgrad) at 96 px, the demo's reconstruction size.

The scene is a surface splat (a sphere shell over a floor disc, like a reconstructed object) seen from 3.2
units with a 50-degree field of view, as the demo's cameras; ``--checkpoint`` benchmarks a real splat instead.

Usage: python scripts/bench_viewer.py [--baseline-rev REV] [--checkpoint RUN_DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
RASTERIZER = "styleme3d_ns/render/torch_rasterizer.py"
# The rasteriser as committed before the speed work of issue 13.
DEFAULT_BASELINE = "b173791"


def load_baseline(rev: str) -> ModuleType:
    """The rasteriser module as of git revision ``rev``, imported beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{RASTERIZER}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if source.returncode != 0:
        raise SystemExit(f"bench_viewer: cannot read {RASTERIZER} at revision {rev!r}; pass --baseline-rev")
    path = Path(tempfile.mkdtemp(prefix="bench_viewer_")) / "baseline_rasterizer.py"
    path.write_text(source.stdout)
    # a name inside styleme3d_ns.render so its relative imports (.sh) resolve to this checkout's helpers
    name = "styleme3d_ns.render._baseline_rasterizer"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def surface_splat(n: int, seed: int = 0) -> dict[str, Tensor]:
    """``n`` Gaussians on a unit sphere shell (2/3) and a floor disc of radius 2 (1/3), flat along the normal.

    Tangent scales match the spacing of the points (neighbours overlap, as after reconstruction), the
    normal scale is a tenth of that; opacities uniform in [0.3, 1]; SH degree 3 coefficients small.
    """
    g = torch.Generator().manual_seed(seed)
    n_sphere = 2 * n // 3
    normal_s = torch.nn.functional.normalize(torch.randn(n_sphere, 3, generator=g), dim=1)
    r = 2.0 * torch.rand(n - n_sphere, generator=g).sqrt()
    phi = 2 * math.pi * torch.rand(n - n_sphere, generator=g)
    floor = torch.stack([r * phi.cos(), r * phi.sin(), torch.full_like(r, -1.0)], dim=1)
    means = torch.cat([normal_s, floor])
    spacing = math.sqrt((4 * math.pi + 4 * math.pi) / n)  # both surfaces have area ~4 pi
    scales = torch.full((n, 3), spacing) * torch.empty(n, 3).uniform_(0.7, 1.3, generator=g)
    scales[:, 2] *= 0.1
    # rotate local z onto the normal: sphere normals radial, floor normals +z
    normals = torch.cat([normal_s, torch.tensor([[0.0, 0.0, 1.0]]).expand(n - n_sphere, 3)])
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    axis = torch.cross(z, normals, dim=1)
    w = 1.0 + (normals * z).sum(1, keepdim=True)
    quats = torch.nn.functional.normalize(torch.cat([w, axis], dim=1) + 1e-6, dim=1)
    sh = torch.randn(n, 16, 3, generator=g) * 0.1
    sh[:, 0] = torch.rand(n, 3, generator=g) * 2 - 1
    return {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": torch.empty(n).uniform_(0.3, 1.0, generator=g),
        "sh": sh,
    }


def checkpoint_splat(run_dir: Path) -> tuple[dict[str, Tensor], float]:
    """A splat from a styleme3d-ns / splatfacto run, activated as the model renders it, and the camera distance.

    The distance is the demo's orbit radius (3.2 scene units) in the run's normalised coordinates.
    """
    from styleme3d_ns.models.checkpoint import load_gaussians

    g = load_gaussians(run_dir)
    transforms = run_dir / "dataparser_transforms.json"
    scale = json.loads(transforms.read_text())["scale"] if transforms.is_file() else 1.0
    return {
        "means": g["means"],
        "quats": g["quats"],
        "scales": torch.exp(g["scales"]),
        "opacities": torch.sigmoid(g["opacities"]).squeeze(-1),
        "sh": torch.cat([g["features_dc"][:, None], g["features_rest"]], dim=1),
    }, 3.2 * scale


def camera(
    res: int, distance: float = 3.2, elevation_deg: float = 25.0, fov_deg: float = 50.0
) -> tuple[Tensor, Tensor]:
    """World-to-camera [1, 4, 4] (OpenCV axes) looking at the origin, and intrinsics [1, 3, 3] for ``res`` px."""
    e = math.radians(elevation_deg)
    eye = torch.tensor([0.0, -distance * math.cos(e), distance * math.sin(e)])
    forward = torch.nn.functional.normalize(-eye, dim=0)
    right = torch.nn.functional.normalize(torch.cross(forward, torch.tensor([0.0, 0.0, 1.0]), dim=0), dim=0)
    down = torch.cross(forward, right, dim=0)
    rot = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = rot, -rot @ eye
    f = 0.5 * res / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0.0, res / 2], [0.0, f, res / 2], [0.0, 0.0, 1.0]])
    return viewmat[None], K[None]


def subset(splat: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """``n`` Gaussians drawn from ``splat`` (all of them, repeated if it has fewer, slightly jittered)."""
    total = len(splat["means"])
    idx = torch.randperm(max(n, total), generator=torch.Generator().manual_seed(1))[:n] % total
    out = {k: v.index_select(0, idx) for k, v in splat.items()}
    if n > total:
        out["means"] = out["means"] + 1e-3 * torch.randn_like(out["means"])
    return out


def frame(raster: Callable, splat: dict[str, Tensor], res: int, distance: float) -> Callable[[], None]:
    """One viewer frame: no gradient, SH degree 3, colour + expected depth."""
    viewmat, K = camera(res, distance)
    geom = [splat[k] for k in ("means", "quats", "scales", "opacities")]

    @torch.no_grad()
    def run() -> None:
        raster(*geom, splat["sh"], viewmat, K, res, res, sh_degree=3, packed=False, render_mode="RGB+ED")

    return run


def train_step(raster: Callable, splat: dict[str, Tensor], res: int, distance: float) -> Callable[[], None]:
    """One reconstruction step's rendering: forward + backward into every parameter, absgrad on."""
    viewmat, K = camera(res, distance)
    params = [splat[k].clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "sh")]

    def run() -> None:
        render, alpha, _ = raster(*params, viewmat, K, res, res, sh_degree=3, packed=False, absgrad=True)
        (render.sum() + alpha.sum()).backward()

    return run


def timed(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE, help="git revision of the rasteriser to compare")
    parser.add_argument("--checkpoint", type=Path, help="benchmark this run's splat instead of the synthetic one")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (median reported)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from styleme3d_ns.render import rasterize_torch

    baseline = load_baseline(args.baseline_rev).rasterize_torch
    source, distance = checkpoint_splat(args.checkpoint) if args.checkpoint else (surface_splat(100_000), 3.2)
    what = f"splat of {args.checkpoint}" if args.checkpoint else "synthetic surface splat"
    print(f"CPU, {torch.get_num_threads()} threads; {what}; baseline: {RASTERIZER} at {args.baseline_rev}")
    print(f"{'case':34s} {'now':>9s} {'baseline':>9s} {'speed-up':>9s} {'us/Gaussian':>12s}")
    cases = [
        (f"frame {res} px, {n // 1000}k Gaussians", frame, n, res) for n in (50_000, 100_000) for res in (256, 512)
    ]
    cases += [(f"train step 96 px, {n // 1000}k Gaussians", train_step, n, 96) for n in (20_000, 100_000)]
    for name, make, n, res in cases:
        splat = subset(source, n)
        now = timed(make(rasterize_torch, splat, res, distance), args.repeats)
        old = timed(make(baseline, splat, res, distance), args.repeats)
        print(f"{name:34s} {now * 1e3:7.0f}ms {old * 1e3:7.0f}ms {old / now:8.2f}x {now / n * 1e6:12.2f}")


if __name__ == "__main__":
    main()
