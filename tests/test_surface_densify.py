"""Surface-guided cloning and splitting (paper 001 eq. 6-7) inside gsplat's DefaultStrategy."""

from __future__ import annotations

import copy

import torch
from gsplat.strategy import DefaultStrategy
from torch import Tensor

from styleme3d_ns.data.head_template import init_gaussians
from styleme3d_ns.models.surface_densify import (
    SurfaceGuidedStrategy,
    gaussian_offsets,
    knn_indices,
    pca_normals,
    tangent_project,
)
from styleme3d_ns.render import rasterize


def surface_guided_samples(
    means: Tensor,
    normals: Tensor,
    scales: Tensor,
    quats: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reference for the strategy's growth (paper 001 eq. 6): child positions `[n_samples, N, 3]` on each parent's
    tangent plane.

    Args:
        means: `[N, 3]` parent centres ``x_old``.
        normals: `[N, 3]` unit surface normals at the parents (e.g. :func:`pca_normals`, eq. 7).
        scales: `[N, 3]` parent standard deviations (activated), quats: `[N, 4]` wxyz: ``d ~ N(0, Sigma_old)``.
        n_samples: children per parent (gsplat's split makes 2).
    """
    return means + tangent_project(gaussian_offsets(scales, quats, n_samples, generator), normals)


def shipped_strategy(**overrides: object) -> SurfaceGuidedStrategy:
    """The strategy `ns-train sas-portrait` builds (paper 001 IV.A.2's numbers in its method config), then
    `overrides` for what a test isolates."""
    from styleme3d_ns.method_configs.sas_portrait_config import sas_portrait

    from styleme3d_ns.models.guided_splat import splatfacto_strategy

    default = splatfacto_strategy(sas_portrait.config.pipeline.model, num_train_data=1)
    return SurfaceGuidedStrategy.from_default(default, **overrides)


def angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Unsigned angle between lines (normals have no sign), degrees, `[N]`."""
    cos = (a * b).sum(-1).abs() / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cos.clamp(max=1.0)))


def random_rotation(seed: int) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q


def plane_cloud(n: int = 3000) -> tuple[Tensor, Tensor]:
    """Points on a tilted plane through (0.1, 0.2, 0.3) and its normal `[3]`."""
    rotation = random_rotation(1)
    uv = torch.rand(n, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    points = torch.cat([uv, torch.zeros(n, 1)], dim=1) @ rotation.T + torch.tensor([0.1, 0.2, 0.3])
    return points, rotation[:, 2]


def sphere_cloud(n: int = 4000) -> Tensor:
    points = torch.randn(n, 3, generator=torch.Generator().manual_seed(3))
    return 0.7 * points / points.norm(dim=-1, keepdim=True)


def brute_force_knn(points: Tensor, k: int) -> Tensor:
    dist = ((points[:, None] - points[None]) ** 2).sum(-1)
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, largest=False).indices


# ------------------------------------------------------------------------------------------------ eq. 7: PCA normals


def test_chunked_knn_matches_brute_force() -> None:
    points = torch.rand(700, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = brute_force_knn(points, 6)
    assert torch.equal(knn_indices(points, 6), expected)
    assert torch.equal(knn_indices(points, 6, chunk_elements=1000), expected)  # 1 row of 700 per chunk
    query = torch.tensor([5, 0, 699])
    assert torch.equal(knn_indices(points, 6, query, chunk_elements=1), expected[query])


def test_pca_normals_of_a_plane_match_its_normal() -> None:
    points, normal = plane_cloud()
    normals = pca_normals(points)
    assert normals.shape == points.shape
    assert torch.allclose(normals.norm(dim=-1), torch.ones(len(points)), atol=1e-5)
    assert angle_deg(normals, normal.expand_as(normals)).max() < 0.1


def test_pca_normals_of_a_sphere_are_radial() -> None:
    points = sphere_cloud()
    angles = angle_deg(pca_normals(points), points)
    assert angles.median() < 3.0 and angles.quantile(0.99) < 10.0


def test_pca_normals_for_a_subset_of_a_100k_cloud_fit_in_a_bounded_block() -> None:
    points = sphere_cloud(100_000)
    query = torch.arange(0, 100_000, 97)
    normals = pca_normals(points, query_index=query)  # [~1000, 100000] distances would be 400 MB in one block
    assert normals.shape == (len(query), 3)
    assert angle_deg(normals, points[query]).quantile(0.99) < 5.0


# ------------------------------------------------------------------------------------------------ eq. 6: children


def test_surface_guided_children_lie_on_the_tangent_plane_vanilla_ones_do_not() -> None:
    points, normal = plane_cloud(500)
    n = len(points)
    scales = torch.full((n, 3), 0.05)
    quats = torch.randn(n, 4, generator=torch.Generator().manual_seed(4))
    normals = pca_normals(points)
    guided = surface_guided_samples(points, normals, scales, quats, 2, torch.Generator().manual_seed(5))
    vanilla = points + gaussian_offsets(scales, quats, 2, torch.Generator().manual_seed(5))  # eq. 5
    height = lambda x: ((x - points) @ normal).abs()  # distance from the plane
    assert guided.shape == (2, n, 3)
    assert height(guided).max() < 1e-5
    assert height(vanilla).mean() > 0.02  # ~ 0.05 * sqrt(2 / pi)
    # the projection removes only the normal component: in-plane spread is the same draw
    assert torch.allclose(guided - points, tangent_project(vanilla - points, normals), atol=1e-6)


def test_gaussian_offsets_have_the_gaussians_covariance() -> None:
    quat = torch.tensor([[0.9, 0.1, -0.3, 0.2]])
    scale = torch.tensor([[0.3, 0.1, 0.02]])
    d = gaussian_offsets(scale, quat, 200_000, torch.Generator().manual_seed(6))[:, 0]  # [S, 3]
    from gsplat.utils import normalized_quat_to_rotmat

    rot = normalized_quat_to_rotmat(quat / quat.norm())[0]
    expected = rot @ torch.diag(scale[0] ** 2) @ rot.T  # paper 001 eq. 1: Sigma = R S S^T R^T
    assert torch.allclose(d.T @ d / len(d), expected, atol=2e-3)


# ------------------------------------------------------------------------------------------------ strategy hook


def grown_cloud() -> tuple[torch.nn.ParameterDict, dict[str, torch.optim.Optimizer], dict]:
    """A plane of Gaussians, half small (clone) and half large (split), with a third of them over the threshold."""
    points, _ = plane_cloud(600)
    params = init_gaussians(points, sh_degree=1)
    params["scales"][::2] = torch.log(torch.tensor(0.005))  # small: cloned; the rest 0.02: split
    params["quats"] = torch.nn.functional.normalize(torch.randn(600, 4, generator=torch.Generator().manual_seed(7)))
    gauss = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in gauss.items()}
    for name, p in gauss.items():  # give Adam some state to carry; the means stay on their plane
        p.grad = torch.zeros_like(p) if name == "means" else torch.ones_like(p)
    for opt in optimizers.values():
        opt.step()
    grads = torch.zeros(600)
    grads[::3] = 1e-3  # above 0.0002
    # screen radii well below the shipped screen-size split (5% of the image): only the gradient decides growth here
    state = {"grad2d": grads, "count": torch.ones(600), "radii": torch.zeros(600), "scene_scale": 1.0}
    return gauss, optimizers, state


def grow(strategy: DefaultStrategy, seed: int) -> tuple[torch.nn.ParameterDict, dict, dict, tuple[int, int]]:
    gauss, optimizers, state = grown_cloud()
    torch.manual_seed(seed)
    counts = strategy._grow_gs(gauss, optimizers, state, step=200)
    return gauss, optimizers, state, counts


def test_strategy_grows_exactly_like_gsplat_but_children_stay_on_the_surface() -> None:
    gsplat_default = DefaultStrategy(refine_every=100, grow_grad2d=0.0002, grow_scale3d=0.01, absgrad=False)
    default_gauss, _, default_state, default_counts = grow(gsplat_default, seed=0)
    gauss, optimizers, state, counts = grow(shipped_strategy(offset_clones=False), seed=0)
    n_dupli, n_split = counts
    assert counts == default_counts and n_dupli == 100 and n_split == 100
    assert set(state) == set(default_state), "no bookkeeping key is left behind"
    for key, value in default_gauss.items():
        assert gauss[key].shape == value.shape
        assert optimizers[key].state[gauss[key]]["exp_avg"].shape == value.shape
        assert optimizers[key].param_groups[0]["params"][0] is gauss[key]
        if key != "means":
            assert torch.equal(gauss[key], value), key  # scales / 1.6, opacities, colours: gsplat's
    for key in ("grad2d", "count"):
        assert torch.equal(state[key], default_state[key])

    points, normal = plane_cloud(600)
    first_new = 600 - n_split
    assert torch.equal(gauss["means"][:first_new], default_gauss["means"][:first_new]), "old Gaussians do not move"
    height = lambda x: ((x - points[0]) @ normal).abs()
    children = slice(first_new + n_dupli, None)
    assert height(gauss["means"][children]).max() < 1e-5  # paper 001 eq. 6
    assert height(default_gauss["means"][children]).mean() > 5e-3  # gsplat's eq. 5 leaves the plane
    # same draw, projected: each child differs from gsplat's only along the normal
    assert torch.allclose(
        tangent_project(gauss["means"][children] - default_gauss["means"][children], normal.expand(2 * n_split, 3)),
        torch.zeros(2 * n_split, 3),
        atol=1e-5,
    )


def test_clones_get_a_tangent_offset_by_default_and_stay_put_without_it() -> None:
    points, normal = plane_cloud(600)
    gauss, _, _, (n_dupli, n_split) = grow(shipped_strategy(), seed=1)
    clones = slice(600 - n_split, 600 - n_split + n_dupli)
    cloned_from = torch.arange(0, 600, 6)  # small (even) and high-gradient (multiple of 3) Gaussians
    offsets = gauss["means"][clones] - points[cloned_from]
    assert (offsets.norm(dim=-1) > 0).all()  # eq. 5-6: d ~ N(0, Sigma), then projected
    assert (offsets @ normal).abs().max() < 1e-5
    gauss, _, _, _ = grow(shipped_strategy(offset_clones=False), seed=1)
    assert torch.equal(gauss["means"][clones], points[cloned_from])


def test_from_default_copies_every_setting() -> None:
    base = DefaultStrategy(refine_every=7, grow_grad2d=0.123, absgrad=True, verbose=True)
    strategy = SurfaceGuidedStrategy.from_default(base, normal_neighbours=8)
    assert isinstance(strategy, DefaultStrategy)
    assert (strategy.refine_every, strategy.grow_grad2d, strategy.absgrad, strategy.verbose) == (7, 0.123, True, True)
    assert strategy.normal_neighbours == 8 and strategy.offset_clones


def test_paper_001_numbers() -> None:
    strategy = shipped_strategy()
    assert strategy.refine_every == 100  # IV.A.2: every 100 iteration steps
    assert strategy.grow_grad2d == 0.0002  # IV.A.2: beta_E
    assert strategy.grow_scale3d == 0.01  # IV.A.2: clone/split boundary
    assert strategy.normal_neighbours == 6  # IV.A.2: 6 nearest points


def test_step_post_backward_densifies_a_rendered_head_through_gsplats_path(one_torch_thread: None) -> None:  # noqa: ARG001
    """The hook in the real loop: render, backward, then the strategy's step_post_backward at a refine step."""
    from styleme3d_ns.data.head_template import sample_head_template
    from styleme3d_ns.data.portrait import front_camera
    from styleme3d_ns.render.camera import viewmat_from_c2w

    points, _ = sample_head_template(1500, seed=2)
    gauss = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in init_gaussians(points, sh_degree=0).items()})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in gauss.items()}
    strategy = shipped_strategy(refine_start_iter=0, grow_grad2d=1e-7, verbose=False)
    state = strategy.initialize_state(scene_scale=1.0)
    camera = front_camera(32)
    viewmat = viewmat_from_c2w(camera.camera_to_worlds)
    before = len(gauss["means"])
    torch.manual_seed(0)
    render, _, info = rasterize(
        means=gauss["means"],
        quats=gauss["quats"],
        scales=torch.exp(gauss["scales"]),
        opacities=torch.sigmoid(gauss["opacities"]).squeeze(-1),
        colors=torch.sigmoid(gauss["features_dc"]),
        viewmats=viewmat,
        Ks=camera.get_intrinsics_matrices(),
        width=32,
        height=32,
        packed=False,
        backend="torch",
    )
    step = 200  # the shipped schedule's first refine: after its step-0 opacity reset and pause (see the method config)
    strategy.step_pre_backward(gauss, optimizers, state, step, info)
    (render - torch.rand_like(render)).square().mean().backward()
    strategy.step_post_backward(gauss, optimizers, state, step, info, packed=False)
    after = len(gauss["means"])
    assert after > before, "visible Gaussians with gradient were grown"
    assert all(len(p) == after for p in gauss.values())
    assert all(optimizers[k].param_groups[0]["params"][0] is gauss[k] for k in gauss)
    assert state["grad2d"].shape == (after,) and "_surface_guided_parent" not in state


def test_no_growth_is_a_no_op() -> None:
    gauss, optimizers, state = grown_cloud()
    state["grad2d"].zero_()
    means = gauss["means"].detach().clone()
    assert shipped_strategy()._grow_gs(gauss, optimizers, state, step=200) == (0, 0)
    assert torch.equal(gauss["means"], means) and "_surface_guided_parent" not in state


def test_strategy_is_a_deepcopyable_dataclass() -> None:
    strategy = shipped_strategy()
    assert copy.deepcopy(strategy) == strategy
