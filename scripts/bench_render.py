"""Benchmark the CPU tile rasteriser and the colour-only fast path (prints ratios, asserts nothing).

(a) tile rasteriser forward+backward vs the brute-force reference (tests/reference_rasterizer.py)
    at 128x128 with 50k Gaussians                                   target >= 20x faster
(b) colour map forward+backward vs a rasterised colour step          target >= 20x faster
(c) rasteriser time at 4x the Gaussians and at 4x the pixels         target <= 4.5x each

Usage: python scripts/bench_render.py [--quick]
    --quick  time the brute force on a quarter of the pixels and extrapolate linearly
             (its cost is exactly proportional to the pixel count).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for tests.reference_rasterizer

from styleme3d_ns.render import ColourMap, rasterize_torch  # noqa: E402
from tests.reference_rasterizer import reference_forward_backward  # noqa: E402

BASE_N, BASE_RES = 50_000, 128


def make_scene(n: int, res: int, seed: int = 0) -> dict[str, Tensor]:
    """Gaussians uniformly filling a sphere (radius 1.2) 3 units in front of a 53-degree camera.

    Scales are log-uniform in [0.01, 0.04] world units (~1-2 px sigma at 128 px), opacities
    uniform in [0.05, 0.95]; pixel size grows with ``res`` at a fixed field of view.
    """
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)
    f = float(res)
    return {
        "means": d * 1.2 + torch.tensor([0.0, 0.0, 3.0]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.empty(n, 3).uniform_(-4.6, -3.2, generator=g)),
        "opacities": torch.empty(n).uniform_(0.05, 0.95, generator=g),
        "rgb": torch.rand(n, 3, generator=g),
        "sh": torch.randn(n, 16, 3, generator=g) * 0.3,
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[[f, 0.0, res / 2], [0.0, f, res / 2], [0.0, 0.0, 1.0]]]),
    }


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def raster_step(scene: dict[str, Tensor], res: int) -> Callable[[], None]:
    """Full training-style step: forward + backward into all Gaussian parameters."""
    params = [scene[k].clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "rgb")]

    def step() -> None:
        render, alpha, _ = rasterize_torch(*params, scene["viewmats"], scene["Ks"], res, res, packed=False)
        (render.sum() + alpha.sum()).backward()

    return step


def colour_steps(scene: dict[str, Tensor], res: int) -> tuple[Callable[[], None], Callable[[], None], ColourMap]:
    """(rasterised colour step, colour-map step) for SH-degree-3 colours with frozen geometry."""
    geom = [scene[k] for k in ("means", "quats", "scales", "opacities")]
    sh = scene["sh"].clone().requires_grad_(True)
    cmap = ColourMap.build(*geom, scene["viewmats"][0], scene["Ks"][0], res, res, sh_degree=3)

    def rasterised() -> None:
        render, _, _ = rasterize_torch(*geom, sh, scene["viewmats"], scene["Ks"], res, res, sh_degree=3, packed=False)
        render.sum().backward()

    def fast() -> None:
        image, _ = cmap.render(sh)
        image.sum().backward()

    return rasterised, fast, cmap


def brute_force_time(scene: dict[str, Tensor], res: int, quick: bool) -> tuple[float, str]:
    """Brute-force forward+backward time (seconds) and a note on how it was measured."""
    params = [scene[k].clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "rgb")]
    grad = torch.ones(1, res, res, 3)
    n_pix = res * res
    measured = n_pix // 4 if quick else n_pix
    t0 = time.perf_counter()
    reference_forward_backward(
        params, scene["viewmats"], scene["Ks"], res, res, grad, pixel_chunk=64, max_pixels=measured
    )
    elapsed = time.perf_counter() - t0
    if quick:
        return elapsed * n_pix / measured, f"extrapolated from {measured} of {n_pix} px"
    return elapsed, "all pixels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="extrapolate the brute force from 1/4 of the pixels")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = make_scene(BASE_N, BASE_RES)
    print(
        f"CPU, {torch.get_num_threads()} threads, float32; scene: {BASE_N} Gaussians in a sphere, "
        f"{BASE_RES}x{BASE_RES} px"
    )

    t_ours = timed(raster_step(base, BASE_RES), repeats=5)
    t_brute, how = brute_force_time(base, BASE_RES, args.quick)
    rasterised, fast, cmap = colour_steps(base, BASE_RES)
    t_col_raster = timed(rasterised, repeats=5)
    t_col_fast = timed(fast, repeats=50, warmup=3)
    small = make_scene(3_000, BASE_RES, seed=1)
    _, fast_small, cmap_small = colour_steps(small, BASE_RES)
    t_fast_small = timed(fast_small, repeats=100, warmup=5)
    t_4n = timed(raster_step(make_scene(4 * BASE_N, BASE_RES), BASE_RES), repeats=3)
    t_4p = timed(raster_step(make_scene(BASE_N, 2 * BASE_RES), 2 * BASE_RES), repeats=3)

    rows = [
        ("(a) brute force fwd+bwd", t_brute, "", "", how),
        ("    tile rasteriser fwd+bwd", t_ours, t_brute / t_ours, ">= 20x", "median of 5"),
        ("(b) rasterised colour step (SH3)", t_col_raster, "", "", "fwd+bwd into SH coeffs"),
        ("    colour map step (SH3)", t_col_fast, t_col_raster / t_col_fast, ">= 20x", f"{cmap.n_pairs} weights"),
        ("    colour map step, 3k Gaussians", t_fast_small, "", "", f"{cmap_small.n_pairs} weights (~1 ms goal)"),
        ("(c) 4x Gaussians (200k)", t_4n, t_4n / t_ours, "<= 4.5x", "vs tile rasteriser base"),
        ("    4x pixels (256x256)", t_4p, t_4p / t_ours, "<= 4.5x", "vs tile rasteriser base"),
    ]
    print(f"{'benchmark':36s} {'time':>10s} {'ratio':>8s} {'target':>8s} {'met':>4s}  note")
    for name, secs, ratio, target, note in rows:
        shown = f"{secs * 1e3:8.1f}ms" if secs < 1 else f"{secs:9.2f}s"
        if ratio == "":
            print(f"{name:36s} {shown:>10s} {'':>8s} {'':>8s} {'':>4s}  {note}")
            continue
        met = ratio >= 20 if target.startswith(">=") else ratio <= 4.5
        print(f"{name:36s} {shown:>10s} {ratio:7.1f}x {target:>8s} {'yes' if met else 'NO':>4s}  {note}")


if __name__ == "__main__":
    main()
