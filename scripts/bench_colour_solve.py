"""Benchmark the exact colour solve (CG on the normal equations) against Adam on the same objective.

A demo-sized frozen scene: Gaussians on a textured sphere seen by an orbit of cameras, SH degree 3 colours, one
ColourMap per view; targets are renders of other (random) colours, as a teacher's stylised views would be. Both
methods fit the SH DC (sh_degree 0) with the same ridge; Adam (lr 0.01, splatfacto's colour learning-rate scale x4)
runs until its objective is within --tolerance (relative) of the CG optimum. Prints both times and their ratio,
measured in this one run. Asserts nothing.

Usage: python scripts/bench_colour_solve.py [--gaussians 20000] [--views 16] [--size 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from styleme3d_ns.render import ColourMap
from styleme3d_ns.render.camera import orbit_poses, viewmat_from_c2w
from styleme3d_ns.render.colour_solve import colour_objective, solve_colours


def make_scene(n: int, views: int, size: int, seed: int = 0) -> dict:
    """Gaussians on a unit sphere (radius jitter 2%), opacities in [0.3, 1], an orbit of ``views`` cameras at 3.2."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=1, keepdim=True) * (1 + 0.02 * torch.randn(n, 1, generator=g))
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(-4.2, -3.2, generator=g))
    opacities = torch.empty(n).uniform_(0.3, 1.0, generator=g)
    azimuths = torch.linspace(0, 360, views + 1)[:-1]
    c2w = orbit_poses(azimuths, torch.full((views,), 20.0), radius=3.2)
    viewmats = viewmat_from_c2w(c2w)
    focal = 0.5 * size / torch.tan(torch.deg2rad(torch.tensor(25.0)))
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    maps = [ColourMap.build(means, quats, scales, opacities, vm, K, size, size, sh_degree=3) for vm in viewmats]
    base = torch.randn(n, 16, 3, generator=g) * 0.05
    base[:, 0] = torch.randn(n, 3, generator=g) * 0.5
    other = base.clone()
    other[:, 0] = torch.randn(n, 3, generator=g) * 0.8
    background = torch.tensor([0.5, 0.5, 0.5])
    with torch.no_grad():
        targets = torch.stack([m.render(other, background)[0].clamp(0, 1) for m in maps])
    return {"maps": maps, "base": base, "targets": targets, "background": background}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaussians", type=int, default=20_000)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--ridge", type=float, default=0.01)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="relative objective gap Adam must reach")
    parser.add_argument("--max-adam-steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    scene = make_scene(args.gaussians, args.views, args.size)
    maps, base, targets, bg = scene["maps"], scene["base"], scene["targets"], scene["background"]
    print(f"scene: {args.gaussians} Gaussians, {args.views} views at {args.size} px, built in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    t0 = time.perf_counter()
    solution = solve_colours(maps, targets, base, base, bg, sh_degree=0, ridge=args.ridge)
    t_cg = time.perf_counter() - t0
    print(f"CG:   {t_cg:.2f} s, {solution.iterations} iterations, objective {solution.objective:.6g}, "
          f"clamped {100 * solution.clamped_fraction:.2f}%")  # fmt: skip

    dc = base[:, :1].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([dc], lr=0.01)
    goal = solution.objective * (1 + args.tolerance)
    t0 = time.perf_counter()
    steps, energy = 0, float("inf")
    while steps < args.max_adam_steps:
        loss = colour_objective(maps, targets, torch.cat([dc, base[:, 1:]], dim=1), base, bg, ridge=args.ridge)
        energy = float(loss.detach())
        if energy <= goal:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    t_adam = time.perf_counter() - t0
    reached = "reached" if energy <= goal else f"NOT reached after {steps} steps (objective {energy:.6g})"
    print(f"Adam: {t_adam:.2f} s, {steps} steps, tolerance {args.tolerance:g} {reached}")
    print(f"ratio Adam / CG time: {t_adam / t_cg:.1f}x")


if __name__ == "__main__":
    main()
