"""Tests for styleme3d_ns.render: tile rasteriser vs brute force, projection/SH vs gsplat, fast path, dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor

from styleme3d_ns.render import (
    ColourMap,
    composite_weights,
    gsplat_cuda_status,
    project_gaussians,
    rasterize,
    rasterize_torch,
    resolve_backend,
    sh_basis,
    sh_colors,
)
from tests.reference_rasterizer import reference_absgrad, reference_project, reference_rasterization

W, H = 32, 24
F64 = torch.float64


def random_scene(n: int = 240, n_cameras: int = 1, seed: int = 0, dtype: torch.dtype = F64) -> dict:
    """A small scene with on-screen, off-screen, behind-camera and one saturating opaque cluster."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo

    n_front, n_behind, n_side = n // 2, n // 10, n // 10
    n_cluster = n - n_front - n_behind - n_side
    front = torch.stack([u(n_front, lo=-1.6, hi=1.6), u(n_front, lo=-1.2, hi=1.2), u(n_front, lo=1.0, hi=4.0)], 1)
    behind = torch.stack([u(n_behind, lo=-1, hi=1), u(n_behind, lo=-1, hi=1), u(n_behind, lo=-3, hi=-0.05)], 1)
    side = torch.stack([u(n_side, lo=4, hi=9), u(n_side, lo=-1, hi=1), u(n_side, lo=1, hi=3)], 1)
    cluster = torch.stack([u(n_cluster, lo=-0.3, hi=0.3), u(n_cluster, lo=-0.2, hi=0.2), u(n_cluster, lo=2, hi=2.6)], 1)
    means = torch.cat([front, behind, side, cluster])
    opac = torch.cat([u(n - n_cluster, lo=0.02, hi=1.0), u(n_cluster, lo=0.97, hi=0.999)])
    scales = torch.exp(u(n, 3, lo=-3.2, hi=-1.6))
    scales[-n_cluster:] *= 2.0  # big opaque blobs: pixels behind them saturate (T < 1e-4)
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    viewmats = torch.eye(4, dtype=F64).repeat(n_cameras, 1, 1)
    for c in range(1, n_cameras):  # further cameras: small yaw + shift
        a = 0.15 * c
        viewmats[c, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        viewmats[c, :3, 3] = torch.tensor([0.2 * c, -0.1, 0.3])
    Ks = torch.tensor([[26.0, 0, W / 2], [0, 26.0, H / 2], [0, 0, 1]], dtype=F64).repeat(n_cameras, 1, 1)
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opac, "viewmats": viewmats, "Ks": Ks}
    scene["sh"] = torch.randn(n, 16, 3, generator=g, dtype=F64) * 0.4
    scene["rgb"] = u(n, 3)
    return {k: v.to(dtype) for k, v in scene.items()}


def leaves(scene: dict, colour_key: str) -> list[Tensor]:
    keys = ("means", "quats", "scales", "opacities", colour_key)
    return [scene[k].clone().requires_grad_(True) for k in keys]


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str) -> None:
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"


CASES = [
    # (sh_degree, render_mode, rasterize_mode, with_background, n_cameras, packed, per_camera_colours)
    (None, "RGB", "classic", False, 1, False, False),
    (0, "RGB", "classic", True, 1, False, False),
    (1, "RGB+ED", "antialiased", False, 2, False, False),
    (2, "RGB", "classic", False, 1, True, False),
    (3, "RGB+ED", "classic", True, 2, True, False),
    (None, "D", "antialiased", False, 1, False, False),
    (None, "RGB+D", "classic", True, 2, False, True),
    (3, "RGB", "classic", False, 2, True, True),
]


@pytest.mark.parametrize("composite", ["compiled", "sweep"])
@pytest.mark.parametrize(
    ("sh_degree", "render_mode", "rasterize_mode", "with_bg", "n_cameras", "packed", "per_camera"), CASES
)
def test_tile_rasteriser_matches_bruteforce_values_and_gradients(
    composite: str,
    sh_degree: int | None,
    render_mode: str,
    rasterize_mode: str,
    with_bg: bool,
    n_cameras: int,
    packed: bool,
    per_camera: bool,
) -> None:
    scene = random_scene(n_cameras=n_cameras, seed=n_cameras * 7 + (sh_degree or 0))
    colour_key = "rgb" if sh_degree is None else "sh"
    if per_camera:  # [C, N, ...] colours: a different colour per camera
        scene[colour_key] = torch.stack([scene[colour_key] * (1 + 0.3 * c) for c in range(n_cameras)])
    ours_in, ref_in = leaves(scene, colour_key), leaves(scene, colour_key)
    if with_bg:
        ours_in.append(torch.rand(n_cameras, 3, dtype=F64, requires_grad=True))
        ref_in.append(ours_in[-1].detach().clone().requires_grad_(True))
    kwargs = dict(sh_degree=sh_degree, render_mode=render_mode, rasterize_mode=rasterize_mode)
    views = (scene["viewmats"].clone().requires_grad_(True), scene["viewmats"].clone().requires_grad_(True))
    bgs = (ours_in[5], ref_in[5]) if with_bg else (None, None)
    render, alpha, _ = rasterize_torch(
        *ours_in[:5], views[0], scene["Ks"], W, H, packed=packed, backgrounds=bgs[0], composite=composite, **kwargs
    )
    ref_render, ref_alpha, ref_proj = reference_rasterization(
        *ref_in[:5], views[1], scene["Ks"], W, H, backgrounds=bgs[1], **kwargs
    )

    assert (ref_alpha > 0.999).any(), "scene must saturate some pixels to exercise early termination"
    assert (ref_proj["radii"] == 0).any(), "scene must contain culled Gaussians"
    assert_close(render, ref_render, 1e-5, "render")
    assert_close(alpha, ref_alpha, 1e-5, "alpha")

    g = torch.randn_like(render)
    ga = torch.randn_like(alpha)
    ((render * g).sum() + (alpha * ga).sum()).backward()
    ((ref_render * g).sum() + (ref_alpha * ga).sum()).backward()
    names = ("means", "quats", "scales", "opacities", colour_key, "backgrounds")
    for name, ours, ref in zip(names, ours_in, ref_in, strict=False):
        if ref.grad is None:  # colours are unused in "D" mode
            assert ours.grad is None, f"unexpected gradient for unused {name}"
            continue
        assert torch.isfinite(ours.grad).all(), f"non-finite gradient for {name}"
        assert_close(ours.grad, ref.grad, 1e-5, f"d/d{name}")
    assert_close(views[0].grad, views[1].grad, 1e-5, "d/dviewmats")  # camera optimisation


def test_float32_rasteriser_stays_close_to_float64_reference() -> None:
    # Training runs in float32: rounding may flip a borderline 1e-4 termination, so allow ~T_MIN.
    scene = random_scene(seed=21)
    args = [scene[k] for k in ("means", "quats", "scales", "opacities")] + [scene["sh"]]
    cams = (scene["viewmats"], scene["Ks"], W, H)
    render32, alpha32, _ = rasterize_torch(*(t.float() for t in args), *(c.float() for c in cams[:2]), W, H,
                                           sh_degree=3)  # fmt: skip
    ref, ref_alpha, _ = reference_rasterization(*args, *cams, sh_degree=3)
    assert_close(render32.double(), ref, 5e-4, "float32 render")
    assert_close(alpha32.double(), ref_alpha, 5e-4, "float32 alpha")


def test_gaussian_only_reaches_the_tiles_of_its_radius_box_like_gsplat_cuda() -> None:
    # A wide opaque Gaussian whose integer-radius box starts exactly on a tile edge: the pixel
    # column left of that edge is within alpha >= 1/255 reach but outside its tiles, so gsplat's
    # CUDA kernel (and we) must leave it empty.
    width, height, fx, z = 64, 32, 26.0, 2.0
    Ks = torch.tensor([[[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]]], dtype=F64)
    viewmats = torch.eye(4, dtype=F64)[None]
    quats, scales = torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), 0.46, dtype=F64)
    opac, rgb = torch.tensor([0.999], dtype=F64), torch.ones(1, 3, dtype=F64)
    x = 0.5
    for _ in range(5):  # place the mean so that mean_x - radius == 16 (a tile edge)
        means = torch.tensor([[x, 0.0, z]], dtype=F64)
        proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height)
        x = (16.0 + float(proj.radii[0, 0]) - width / 2) * z / fx
    assert abs(float(proj.means2d[0, 0, 0] - proj.radii[0, 0]) - 16.0) < 1e-9
    dx = float(proj.means2d[0, 0, 0]) - 15.5  # distance to the centre of pixel column 15
    row = int(proj.means2d[0, 0, 1])
    unclipped_alpha = 0.999 * math.exp(-0.5 * float(proj.conics[0, 0, 0]) * dx * dx)
    assert unclipped_alpha >= 1 / 255

    args = (means, quats, scales, opac, rgb, viewmats, Ks, width, height)
    render, alpha, _ = rasterize_torch(*args, packed=False)
    ref_render, ref_alpha, _ = reference_rasterization(*args)
    assert alpha[0, row, 15, 0] == 0 and alpha[0, row, 16, 0] > 0
    assert_close(render, ref_render, 1e-10, "render")
    assert_close(alpha, ref_alpha, 1e-10, "alpha")


def test_projection_matches_gsplat_torch_impl() -> None:
    scene = random_scene(n_cameras=2, seed=3)
    covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    ref = _fully_fused_projection(scene["means"], covars, scene["viewmats"], scene["Ks"], W, H, calc_compensations=True)
    ours = project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["viewmats"], scene["Ks"], W, H, calc_compensations=True
    )
    ref_radii, ref_means2d, ref_depths, ref_conics, ref_comp = ref
    assert torch.equal(ours.radii, ref_radii)
    visible = ref_radii > 0
    assert visible.any() and (~visible).any()
    assert_close(ours.means2d[visible], ref_means2d[visible], 1e-5, "means2d")
    assert_close(ours.conics[visible], ref_conics[visible], 1e-5, "conics")
    assert_close(ours.depths, ref_depths, 1e-5, "depths")
    assert_close(ours.compensations[visible], ref_comp[visible], 1e-5, "compensations")


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compiled_projection_matches_the_torch_projection_values_and_gradients(dtype: torch.dtype) -> None:
    # The compiled path runs when the cameras are not optimised; viewmats that require grad take the torch path,
    # so the same call with and without grad on viewmats compares the two.
    scene = random_scene(n_cameras=2, seed=8, dtype=dtype)
    outs, grads = [], []
    for camera_grad in (False, True):
        leaves_ = [scene[k].clone().requires_grad_(True) for k in ("means", "quats", "scales")]
        views = scene["viewmats"].clone().requires_grad_(camera_grad)
        proj = project_gaussians(*leaves_, views, scene["Ks"], W, H, near_plane=0.5, far_plane=3.5)
        live = proj.radii > 0
        g = torch.Generator().manual_seed(0)
        weights = [torch.randn(t.shape, generator=g, dtype=dtype) for t in (proj.means2d, proj.conics, proj.depths)]
        loss = sum((w * t)[live].sum() for w, t in zip(weights, (proj.means2d, proj.conics, proj.depths), strict=True))
        loss.backward()
        outs.append(proj)
        grads.append([t.grad for t in leaves_])
    fast, ref = outs
    assert torch.equal(fast.radii, ref.radii) and (fast.radii == 0).any() and (fast.radii > 0).any()
    live, tol = ref.radii > 0, 1e-9 if dtype == F64 else 2e-4
    for name in ("means2d", "conics", "depths"):
        a, b = getattr(fast, name)[live], getattr(ref, name)[live]
        assert_close(a, b, tol * (1 + b.abs().max().item()), name)
    for name, a, b in zip(("means", "quats", "scales"), *grads, strict=True):
        assert b.abs().max() > 0, f"the reference gives no gradient to {name}"
        assert_close(a, b, tol * (1 + b.abs().max().item()), f"d/d{name}")


def test_projection_keeps_culled_gaussians_finite_with_finite_gradients() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, -1.0], [0.0, 0.0, 0.005], [0.0, 0.0, 2.0]], requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1)
    scales = torch.full((4, 3), 0.1)
    viewmats, Ks = torch.eye(4)[None], torch.tensor([[[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]]])
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H, calc_compensations=True)
    assert proj.radii[0].tolist()[:3] == [0, 0, 0] and proj.radii[0, 3] > 0
    out = proj.means2d.sum() + proj.conics.sum() + proj.compensations.sum()
    out.backward()
    assert torch.isfinite(means.grad).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_torch_impl(degree: int) -> None:
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=g) * 3.0  # un-normalised on purpose
    coeffs = torch.randn(500, 16, 3, generator=g)
    expected = _spherical_harmonics(degree, dirs, coeffs)
    assert_close(sh_colors(degree, dirs, coeffs), torch.clamp_min(expected + 0.5, 0.0), 1e-6, "sh colours")
    basis = sh_basis(degree, dirs)
    assert basis.shape == (500, (degree + 1) ** 2)
    assert_close((basis[..., None] * coeffs[:, : basis.shape[1]]).sum(1), expected, 1e-6, "basis . coeffs")


@pytest.mark.parametrize("composite", ["compiled", "sweep"])
def test_absgrad_equals_bruteforce_sum_of_per_pixel_abs_gradients(composite: str) -> None:
    scene = random_scene(seed=11)
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["rgb"])
    render, alpha, info = rasterize_torch(*args, scene["viewmats"], scene["Ks"], W, H, packed=False, absgrad=True)
    g, ga = torch.randn_like(render), torch.randn_like(alpha)
    # means2d is the only leaf-like input here: make it require grad through a fresh graph.
    assert not info["means2d"].requires_grad
    ours_in = leaves(scene, "rgb")
    render, alpha, info = rasterize_torch(
        *ours_in, scene["viewmats"], scene["Ks"], W, H, packed=False, absgrad=True, composite=composite
    )
    info["means2d"].retain_grad()
    ((render * g).sum() + (alpha * ga).sum()).backward()

    proj = reference_project(*args, scene["viewmats"], scene["Ks"], W, H)
    expected = reference_absgrad(proj, W, H, g, ga)
    assert expected.abs().sum() > 0
    assert_close(info["means2d"].absgrad, expected, 1e-5, "absgrad")
    # absgrad >= |grad| elementwise (triangle inequality) and means2d.grad is populated
    assert (info["means2d"].absgrad + 1e-12 >= info["means2d"].grad.abs()).all()


def test_info_drives_gsplat_default_strategy() -> None:
    from gsplat.strategy import DefaultStrategy

    scene = random_scene(seed=5, dtype=torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(scene[k].clone()) for k in ("means", "quats", "scales")})
    params["opacities"] = torch.nn.Parameter(scene["opacities"].clone())
    strategy = DefaultStrategy(absgrad=True)
    state = strategy.initialize_state()
    render, alpha, info = rasterize_torch(
        params["means"],
        params["quats"],
        params["scales"],
        params["opacities"],
        scene["rgb"],
        scene["viewmats"],
        scene["Ks"],
        W,
        H,
        packed=False,
        absgrad=True,
    )
    strategy.step_pre_backward(params, {}, state, 0, info)
    render.sum().backward()
    strategy._update_state(params, state, info, packed=False)
    assert state["grad2d"].shape == (len(scene["means"]),) and state["grad2d"].sum() > 0
    assert info["radii"].dtype == torch.int32


def test_packed_info_is_consistent_with_unpacked() -> None:
    scene = random_scene(n_cameras=2, seed=2)
    cams = (scene["viewmats"], scene["Ks"], W, H)
    ins_u, ins_p = leaves(scene, "rgb"), leaves(scene, "rgb")
    ru, au, iu = rasterize_torch(*ins_u, *cams, packed=False, absgrad=True)
    rp, ap, ip = rasterize_torch(*ins_p, *cams, packed=True, absgrad=True)
    assert_close(rp, ru, 1e-10, "packed render")
    sel = iu["radii"] > 0
    cam_ids, gauss_ids = torch.nonzero(sel, as_tuple=True)
    assert torch.equal(ip["camera_ids"], cam_ids) and torch.equal(ip["gaussian_ids"], gauss_ids)
    for key in ("radii", "means2d", "depths", "conics", "opacities"):
        assert torch.equal(ip[key], iu[key][sel]), key
    iu["means2d"].retain_grad()
    ip["means2d"].retain_grad()
    ru.sum().backward()
    rp.sum().backward()
    assert_close(ip["means2d"].grad, iu["means2d"].grad[sel], 1e-10, "packed means2d grad")
    assert_close(ip["means2d"].absgrad, iu["means2d"].absgrad[sel], 1e-10, "packed absgrad")


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_colour_map_matches_rasteriser_values_and_colour_gradients(sh_degree: int | None) -> None:
    scene = random_scene(seed=9)
    colour_key = "rgb" if sh_degree is None else "sh"
    geom = (scene["means"], scene["quats"], scene["scales"], scene["opacities"])
    bg = torch.tensor([0.1, 0.4, 0.8], dtype=F64)
    colours = scene[colour_key].clone().requires_grad_(True)
    render, alpha, _ = rasterize_torch(
        *geom, colours, scene["viewmats"], scene["Ks"], W, H, sh_degree=sh_degree, backgrounds=bg[None], packed=False
    )
    cmap = ColourMap.build(*geom, scene["viewmats"][0], scene["Ks"][0], W, H, sh_degree=sh_degree)
    colours_fast = scene[colour_key].clone().requires_grad_(True)
    image, fast_alpha = cmap.render(colours_fast, bg)
    assert_close(image, render[0], 1e-6, "colour map image")
    assert_close(fast_alpha, alpha[0], 1e-6, "colour map alpha")
    g = torch.randn_like(image)
    (render[0] * g).sum().backward()
    (image * g).sum().backward()
    assert_close(colours_fast.grad, colours.grad, 1e-6, "colour gradient")


@pytest.mark.parametrize("composite", ["compiled", "sweep"])
def test_composite_weights_reproduce_the_rasterised_image(composite: str) -> None:
    scene = random_scene(seed=4)
    geom = (scene["means"], scene["quats"], scene["scales"], scene["opacities"])
    render, alpha, _ = rasterize_torch(*geom, scene["rgb"], scene["viewmats"], scene["Ks"], W, H, packed=False)
    cw = composite_weights(*geom, scene["viewmats"], scene["Ks"], W, H, composite=composite)
    contrib = cw.weights[:, None] * scene["rgb"][cw.gaussian_ids]
    image = torch.zeros(W * H, 3, dtype=F64).index_add_(0, cw.pixel_ids, contrib)
    assert_close(image.reshape(H, W, 3), render[0], 1e-6, "index_add image")
    assert_close(cw.alpha.reshape(H, W, 1), alpha[0], 1e-6, "alpha")
    assert (cw.weights > 0).all() and (cw.weights <= 1).all()


def test_backend_auto_on_cpu_uses_torch_and_forced_gsplat_raises_one_line_error() -> None:
    scene = random_scene(seed=1, dtype=torch.float32)
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["rgb"])
    cams = (scene["viewmats"], scene["Ks"], W, H)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    auto, _, _ = rasterize(*args, *cams, backend="auto")
    direct, _, _ = rasterize_torch(*args, *cams)
    assert torch.equal(auto, direct)
    with pytest.raises(RuntimeError) as err:
        rasterize(*args, *cams, backend="gsplat")
    assert "gsplat" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError):
        rasterize(*args, *cams, backend="cuda")  # type: ignore[arg-type]


def test_unsupported_gsplat_options_raise_value_error() -> None:
    scene = random_scene(seed=1, dtype=torch.float32)
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["rgb"])
    cams = (scene["viewmats"], scene["Ks"], W, H)
    for bad in ({"sparse_grad": True}, {"distributed": True}, {"camera_model": "fisheye"}):
        with pytest.raises(ValueError):
            rasterize(*args, *cams, backend="torch", **bad)


def test_empty_view_gives_background_and_zero_means2d_grad() -> None:
    scene = random_scene(seed=1, dtype=torch.float32)
    means = (scene["means"] * 0 + torch.tensor([0.0, 0.0, -5.0])).requires_grad_(True)  # all behind the camera
    bg = torch.tensor([[0.3, 0.2, 0.1]])
    render, alpha, info = rasterize_torch(
        means,
        scene["quats"],
        scene["scales"],
        scene["opacities"],
        scene["rgb"],
        scene["viewmats"],
        scene["Ks"],
        W,
        H,
        backgrounds=bg,
        packed=False,
    )
    info["means2d"].retain_grad()
    render.sum().backward()
    assert torch.equal(alpha, torch.zeros_like(alpha))
    assert_close(render, bg.expand(H * W, 3).reshape(1, H, W, 3), 0.0, "background")
    assert info["means2d"].grad is not None and (info["means2d"].grad == 0).all()


_GSPLAT_CUDA, _GSPLAT_WHY = gsplat_cuda_status()


@pytest.mark.skipif(not _GSPLAT_CUDA, reason=f"needs gsplat's CUDA ops ({_GSPLAT_WHY})")
def test_cuda_gsplat_and_torch_backends_agree_on_values_and_gradients() -> None:
    """The same scene through gsplat's CUDA kernels and our torch rasteriser on CUDA (float32 both)."""
    scene = {k: v.cuda() for k, v in random_scene(n=400, n_cameras=2, seed=3, dtype=torch.float32).items()}
    weights = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(0)).cuda()
    results = {}
    for backend in ("gsplat", "torch"):
        params = leaves(scene, "sh")
        render, alpha, info = rasterize(
            *params, scene["viewmats"], scene["Ks"], W, H, sh_degree=3, packed=False, backend=backend
        )
        ((render * weights).sum() + alpha.sum()).backward()
        results[backend] = (render.detach(), alpha.detach(), info["radii"], [p.grad for p in params])
    (img_g, a_g, radii_g, grads_g), (img_t, a_t, radii_t, grads_t) = results["gsplat"], results["torch"]
    assert torch.equal(radii_g.int(), radii_t.int())
    assert_close(img_t, img_g, 2e-3, "image")
    assert_close(a_t, a_g, 2e-3, "alpha")
    for name, g_g, g_t in zip(("means", "quats", "scales", "opacities", "sh"), grads_g, grads_t, strict=True):
        rel = ((g_t - g_g).norm() / g_g.norm().clamp(min=1e-12)).item()
        assert rel <= 2e-2, f"grad {name}: relative L2 error {rel:.2e}"
