"""The exact colour solve (CG on the normal equations) reaches the optimum Adam finds, on a tiny frozen scene."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from styleme3d_ns.render import ColourMap
from styleme3d_ns.render.colour_solve import colour_objective, solve_colours

F64 = torch.float64
SIZE = 16


def tiny_scene(n: int = 200, views: int = 3, sh_degree: int = 1, seed: int = 0) -> dict:
    """Random Gaussians in front of ``views`` cameras that yaw around them; one ColourMap per view."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=F64)  # noqa: E731
    means = torch.stack([rand(n) * 3 - 1.5, rand(n) * 3 - 1.5, rand(n) * 2 + 2.5], dim=1)
    means[-10:, 2] = -2.0  # behind every camera: no view sees them
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    scales = torch.exp(rand(n, 3) * 0.8 - 2.6)
    opacities = rand(n) * 0.7 + 0.2
    K = torch.tensor([[14.0, 0, SIZE / 2], [0, 14.0, SIZE / 2], [0, 0, 1]], dtype=F64)
    maps = []
    for v in range(views):
        a = 0.12 * (v - (views - 1) / 2)
        viewmat = torch.eye(4, dtype=F64)
        viewmat[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        viewmat[0, 3] = 0.3 * (v - (views - 1) / 2)
        maps.append(ColourMap.build(means, quats, scales, opacities, viewmat, K, SIZE, SIZE, sh_degree=sh_degree))
    base = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=F64) * 0.1
    base[:, 0] *= 3.0  # DC spread 0.3, view-dependent bands 0.1
    targets = rand(views, SIZE, SIZE, 3) * 0.6 + 0.2
    return {"maps": maps, "base": base, "targets": targets, "bg": torch.tensor([0.2, 0.3, 0.4], dtype=F64)}


def adam_fit(scene: dict, bands: int, ridge: float, steps: int, lr: float = 0.05) -> Tensor:
    """The reference: Adam on the exact (clamped) objective over the first ``bands`` SH bands, lr decayed to 0."""
    base = scene["base"]
    free = base[:, :bands].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([free], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1.0 - i / steps)
    for _ in range(steps):
        colours = torch.cat([free, base[:, bands:]], dim=1)
        loss = colour_objective(
            scene["maps"], scene["targets"], colours, base, scene["bg"], sh_degree=math.isqrt(bands) - 1, ridge=ridge
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return torch.cat([free.detach(), base[:, bands:]], dim=1)


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_conjugate_gradients_reach_adams_optimum(one_torch_thread, sh_degree: int) -> None:
    scene = tiny_scene()
    ridge = 0.05
    solution = solve_colours(
        scene["maps"], scene["targets"], scene["base"], scene["base"], scene["bg"],
        sh_degree=sh_degree, ridge=ridge, tolerance=1e-10, max_iterations=500,
    )  # fmt: skip
    reference = adam_fit(scene, (sh_degree + 1) ** 2, ridge, steps=1500)
    kw = {"sh_degree": sh_degree, "ridge": ridge}
    e_adam = float(colour_objective(scene["maps"], scene["targets"], reference, scene["base"], scene["bg"], **kw))
    assert solution.clamped_fraction == 0.0  # targets in [0.2, 0.8]: the optimum is inside the linear region
    assert solution.relative_residual < 1e-10
    # Same optimum: CG is never worse than Adam, and Adam (1500 decayed steps) gets within 1e-7 relative of it.
    assert solution.objective <= e_adam * (1 + 1e-12)
    assert (e_adam - solution.objective) / solution.objective < 1e-7
    # Coefficients agree to 1e-3 (what 1500 Adam steps resolve); a wrong normal equation is off by O(0.1).
    assert (solution.colours - reference).abs().max() < 1e-3
    # bands above the solved degree are left exactly as given
    assert torch.equal(solution.colours[:, (sh_degree + 1) ** 2 :], scene["base"][:, (sh_degree + 1) ** 2 :])


def test_clamp_passes_lower_the_clamped_objective_when_colours_want_to_go_negative(one_torch_thread) -> None:
    scene = tiny_scene(seed=3)
    scene["targets"] = torch.zeros_like(scene["targets"])  # black targets: the linear optimum has negative colours
    kw = {"sh_degree": 0, "ridge": 0.01, "tolerance": 1e-10, "max_iterations": 500}
    args = (scene["maps"], scene["targets"], scene["base"], scene["base"], scene["bg"])
    one = solve_colours(*args, clamp_passes=1, **kw)
    three = solve_colours(*args, clamp_passes=3, **kw)
    start = float(colour_objective(*args[:2], scene["base"], scene["base"], scene["bg"], sh_degree=0, ridge=0.01))
    assert one.clamped_fraction > 0.05
    assert three.objective < one.objective < start  # each Gauss-Newton pass lowers the exact (clamped) objective
    reference = adam_fit(scene, 1, 0.01, steps=1500)
    e_adam = float(colour_objective(*args[:2], reference, scene["base"], scene["bg"], sh_degree=0, ridge=0.01))
    # Colours frozen at the clamp cannot come back in later passes, so with 5% of them clamped the passes stop
    # short of Adam's optimum (measured: 5.5% above it); the documented limit of the solve, bounded here.
    assert three.objective <= e_adam * 1.1


def test_pixel_weights_ignore_masked_pixels_and_ridge_keeps_unseen_gaussians(one_torch_thread) -> None:
    scene = tiny_scene(seed=5)
    weights = [torch.zeros(SIZE, SIZE, dtype=F64) for _ in scene["maps"]]
    for w in weights:
        w[:, : SIZE // 2] = 1.0
    garbage = scene["targets"].clone()
    garbage[:, :, SIZE // 2 :] = 1.0  # what the weights mask out must not matter
    kw = {"sh_degree": 0, "ridge": 0.05, "pixel_weights": weights, "tolerance": 1e-10}
    a = solve_colours(scene["maps"], scene["targets"], scene["base"], scene["base"], scene["bg"], **kw)
    b = solve_colours(scene["maps"], garbage, scene["base"], scene["base"], scene["bg"], **kw)
    assert torch.allclose(a.colours, b.colours, atol=1e-9)
    seen = torch.unique(torch.cat([m.used for m in scene["maps"]]))
    unseen = torch.ones(len(scene["base"]), dtype=torch.bool)
    unseen[seen] = False
    assert unseen.any() and torch.equal(a.colours[unseen], scene["base"][unseen])
