"""The shared base of every styleme3d-ns method: a splatfacto model whose geometry is frozen.

One place owns what all three methods need (paper 000 sec. "Optimizing only RGB attributes preserves
geometric integrity"; paper 002 fine-tune mode):

- the base splat is read from a checkpoint *while the model is built*, so nerfstudio's optimisers are
  created on the loaded tensors (Instruct-GS2GS lost edits because its optimiser kept the pre-load ones);
- means, scales, quats and (by default) opacities are frozen: `requires_grad` off, absent from the
  optimiser's param groups, densification off;
- with no base checkpoint it reconstructs from the data for `reconstruct_steps`, then freezes;
- it renders through `styleme3d_ns.render.rasterize` (gsplat on CUDA, our PyTorch rasteriser on CPU),
  and, while geometry is frozen, through a cached per-view linear colour map (exactly equal, much faster);
- it runs on CPU: no `.cuda()`, no `torch.compile`, no LPIPS download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE
from pytorch_msssim import SSIM
from torch import Tensor
from torch.nn import Parameter

from styleme3d_ns.data.ply_scene import base_splat_for_model  # .ply base (issue 13)
from styleme3d_ns.errors import exit_on_user_error
from styleme3d_ns.models.checkpoint import GAUSSIAN_KEYS, load_gaussians
from styleme3d_ns.render import rasterize
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.colour_map import ColourMap

GEOMETRY_KEYS = ("means", "scales", "quats")
COLOUR_KEYS = ("features_dc", "features_rest")


@dataclass
class FrozenColourSplatModelConfig(SplatfactoModelConfig):
    """Splatfacto with frozen geometry: the base every styleme3d-ns method builds on."""

    _target: type = field(default_factory=lambda: FrozenColourSplatModel)
    base_checkpoint: Path | None = None
    """Base splat to stylise: a splatfacto/styleme3d-ns `step-*.ckpt`, its `nerfstudio_models/` folder or run folder.
    It is only read. Omit it to reconstruct from the data first (see --reconstruct-steps)."""
    reconstruct_steps: int = 2000
    """With no base checkpoint: steps of ordinary splatfacto reconstruction (densification on) before the geometry
    freezes and stylisation starts. Ignored when a base checkpoint is given."""
    train_opacity: bool = False
    """Also optimise opacities during stylisation (more freedom; means/scales/quats stay frozen)."""
    rasterizer: Literal["auto", "gsplat", "torch"] = "auto"
    """Render backend: gsplat's CUDA rasteriser, our pure-PyTorch one, or auto (gsplat only on CUDA when it loads)."""
    colour_fast_path: bool = True
    """While geometry and opacity are frozen, render training views through a cached linear colour map
    (bit-for-bit the same image up to float rounding, 20x+ faster on CPU). Rebuilt whenever geometry changes."""
    fast_path_cache_views: int = 256
    """How many training views the colour fast path keeps cached (each costs ~pixels x overlap floats)."""


class FrozenColourSplatModel(SplatfactoModel):
    """Splatfacto whose means/scales/quats (and by default opacities) are frozen after load or reconstruction."""

    config: FrozenColourSplatModelConfig

    # ---------------------------------------------------------------- construction
    def populate_modules(self) -> None:
        self._deferred_error: Exception | None = None
        base = self._read_base_checkpoint()
        params = base if base is not None else self._init_gaussians()
        self.gauss_params = torch.nn.ParameterDict(
            {k: Parameter(params[k].float().contiguous()) for k in GAUSSIAN_KEYS}
        )
        # Colours of the splat before stylisation: the content reference (paper 000 SOS content term).
        self.register_buffer("base_features_dc", self.gauss_params["features_dc"].detach().clone())
        self.register_buffer("base_features_rest", self.gauss_params["features_rest"].detach().clone())

        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = _lpips_if_available()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            # viser's default background, as splatfacto: only affects renders outside training
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            raise SystemExit("styleme3d: error: --pipeline.model.use-bilateral-grid is not supported; leave it off")
        self.strategy = self._make_strategy()
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self._colour_maps: dict[tuple, ColourMap] = {}
        self.geometry_frozen = False
        self.loaded_base = base is not None
        self._eval_camera: Cameras | None = None
        if base is not None and self.freezes_geometry():
            self.freeze_geometry()

    def _read_base_checkpoint(self) -> dict[str, Tensor] | None:
        # >>> .ply base (issue 13, data/ply_scene.py): the splat comes with the data; the lead carries this over.
        metadata = self.kwargs.get("metadata") or {}
        if "base_splat" in metadata:
            with exit_on_user_error():
                base = base_splat_for_model(metadata, self.config.sh_degree)
            CONSOLE.log(f"Base splat: {base['means'].shape[0]} Gaussians from {metadata.get('ply_path')}")
            return base
        # <<< .ply base
        if self.config.base_checkpoint is None:
            return None
        try:
            base = load_gaussians(self.config.base_checkpoint)
        except Exception as err:  # noqa: BLE001 - reported when training starts, see get_training_callbacks
            # ns-render / ns-export rebuild this model from config.yml and then load the stylised state:
            # they must work even if the base checkpoint has since moved, so only training fails on it.
            self._deferred_error = err
            return None
        CONSOLE.log(f"Loaded base splat: {base['means'].shape[0]} Gaussians from {self.config.base_checkpoint}")
        return base

    def _init_gaussians(self) -> dict[str, Tensor]:
        """Initial splat for reconstruction, as splatfacto does, on CPU (splatfacto calls `.cuda()` here)."""
        use_seed = self.seed_points is not None and not self.config.random_init
        if use_seed:
            means = self.seed_points[0].float()
        else:
            means = (torch.rand((self.config.num_random, 3)) - 0.5) * self.config.random_scale
        distances, _ = self.k_nearest_sklearn(means, 3)
        # log of the mean distance to the 3 nearest neighbours: splatfacto's initial isotropic scale
        scales = torch.log(torch.from_numpy(distances).mean(dim=-1, keepdim=True).repeat(1, 3))
        n = means.shape[0]
        dim_sh = num_sh_bases(self.config.sh_degree)
        shs = torch.zeros((n, dim_sh, 3))
        if use_seed and self.seed_points[1].shape[0] > 0:
            rgb = self.seed_points[1].float() / 255.0
            shs[:, 0, :] = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
        else:
            shs[:, 0, :] = torch.rand(n, 3)
        return {
            "means": means,
            "scales": scales,
            "quats": random_quat_tensor(n),
            "features_dc": shs[:, 0, :],
            "features_rest": shs[:, 1:, :],
            "opacities": torch.logit(0.1 * torch.ones(n, 1)),  # splatfacto's initial opacity 0.1
        }

    def _make_strategy(self) -> DefaultStrategy:
        cfg = self.config
        return DefaultStrategy(
            prune_opa=cfg.cull_alpha_thresh,
            grow_grad2d=cfg.densify_grad_thresh,
            grow_scale3d=cfg.densify_size_thresh,
            grow_scale2d=cfg.split_screen_size,
            prune_scale3d=cfg.cull_scale_thresh,
            prune_scale2d=cfg.cull_screen_size,
            refine_scale2d_stop_iter=cfg.stop_screen_size_at,
            refine_start_iter=cfg.warmup_length,
            refine_stop_iter=cfg.stop_split_at,
            reset_every=cfg.reset_alpha_every * cfg.refine_every,
            refine_every=cfg.refine_every,
            pause_refine_after_reset=self.num_train_data + cfg.refine_every,
            absgrad=cfg.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )

    # ---------------------------------------------------------------- freezing
    @property
    def frozen_keys(self) -> tuple[str, ...]:
        """Gaussian parameters that never move during stylisation."""
        return GEOMETRY_KEYS if self.config.train_opacity else (*GEOMETRY_KEYS, "opacities")

    def freeze_geometry(self) -> None:
        """Stop geometry (and opacity unless --train-opacity) from changing; densification stops with it."""
        for key in self.frozen_keys:
            self.gauss_params[key].requires_grad_(False)
            self.gauss_params[key].grad = None
        self.base_features_dc = self.gauss_params["features_dc"].detach().clone()
        self.base_features_rest = self.gauss_params["features_rest"].detach().clone()
        self.geometry_frozen = True
        self._colour_maps.clear()
        self.on_geometry_frozen()

    def on_geometry_frozen(self) -> None:
        """Hook for methods: called once the base splat is fixed (after load, or after reconstruction)."""

    def get_gaussian_param_groups(self) -> dict[str, list[Parameter]]:
        # A loaded base never optimises geometry, so those tensors are not even handed to an optimiser.
        # When reconstructing first, all groups exist; geometry is frozen by requires_grad at the switch.
        names = [k for k in GAUSSIAN_KEYS if not (self.geometry_frozen and k in self.frozen_keys)]
        return {name: [self.gauss_params[name]] for name in names}

    def set_guidance(self, name: str, guidance: torch.nn.Module | None) -> None:
        """Attach a frozen guidance network as a plain attribute, not a submodule.

        A registered submodule would put its weights (hundreds of MB for CLIP or Stable Diffusion) into every
        nerfstudio checkpoint and make runs depend on them when rendering or exporting; checkpoints hold the splat.
        """
        object.__setattr__(self, name, guidance)

    def freezes_geometry(self) -> bool:
        """Whether geometry freezes at all (after load or reconstruction); joint optimisation modes say no."""
        return True

    def will_stylise(self) -> bool:
        """Whether this run has what stylisation needs; if not, reconstruction simply continues."""
        return True

    def stylising(self) -> bool:
        """True once the geometry is fixed and the method's own (style) losses apply."""
        return self.geometry_frozen

    # ---------------------------------------------------------------- training loop hooks
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        if self._deferred_error is not None:
            with exit_on_user_error():
                raise self._deferred_error
        return [
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                self.step_cb,
                args=[training_callback_attributes.optimizers],
            ),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.step_post_backward),
        ]

    def step_cb(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        super().step_cb(optimizers, step)
        ready = step >= self.config.reconstruct_steps and self.freezes_geometry() and self.will_stylise()
        if not self.geometry_frozen and ready:
            CONSOLE.log(f"Step {step}: reconstruction done ({self.num_points} Gaussians); freezing geometry")
            self.freeze_geometry()

    def step_post_backward(self, step: int) -> None:
        if not self.geometry_frozen:
            super().step_post_backward(step)

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]  # noqa: ANN001
        """Load in place: resize each tensor's `.data` instead of replacing the Parameter.

        splatfacto swaps in new Parameter objects here, which silently detaches any optimiser built
        before the load (`ns-train --load-dir`), the Instruct-GS2GS bug. Keeping identity makes that impossible.
        """
        self.step = 30000  # as splatfacto: a loaded splat renders with its full SH degree
        for name, param in self.gauss_params.items():
            key = f"gauss_params.{name}"
            if key in state_dict and param.shape != state_dict[key].shape:
                param.data = torch.zeros(state_dict[key].shape, device=param.device, dtype=param.dtype)
        for name in ("base_features_dc", "base_features_rest"):
            if name in state_dict and getattr(self, name).shape != state_dict[name].shape:
                setattr(self, name, torch.zeros_like(state_dict[name], device=self.device))
        self._colour_maps.clear()
        return torch.nn.Module.load_state_dict(self, state_dict, **kwargs)

    # ---------------------------------------------------------------- rendering
    def _sh_degree_now(self) -> int | None:
        if self.config.sh_degree == 0:
            return None
        if self.geometry_frozen or self.loaded_base:
            return self.config.sh_degree  # a loaded or fixed base renders as it was reconstructed
        return min(self.step // self.config.sh_degree_interval, self.config.sh_degree)

    def _colours(self, dc: Tensor, rest: Tensor) -> Tensor:
        """Per-Gaussian colour input of the rasteriser: SH coefficients `[N, K, 3]`, or RGB `[N, 3]` at degree 0."""
        colours = torch.cat((dc[:, None, :], rest), dim=1)
        return torch.sigmoid(colours).squeeze(1) if self.config.sh_degree == 0 else colours

    def _use_fast_path(self, camera: Cameras) -> bool:
        return (
            self.training
            and self.config.colour_fast_path
            and self.geometry_frozen
            and not self.config.train_opacity
            and self.crop_box is None
            and camera.metadata is not None
            and "cam_idx" in camera.metadata
        )

    def _colour_map(self, camera: Cameras, viewmat: Tensor, K: Tensor, width: int, height: int) -> ColourMap:
        geometry = tuple((p.data_ptr(), p._version) for p in (self.means, self.quats, self.scales, self.opacities))
        key = (int(camera.metadata["cam_idx"]), width, height, geometry)
        cmap = self._colour_maps.get(key)
        if cmap is None:
            if len(self._colour_maps) >= self.config.fast_path_cache_views:
                self._colour_maps.pop(next(iter(self._colour_maps)))
            with torch.no_grad():
                cmap = ColourMap.build(
                    means=self.means,
                    quats=self.quats,
                    scales=torch.exp(self.scales),
                    opacities=torch.sigmoid(self.opacities).squeeze(-1),
                    viewmat=viewmat,
                    K=K,
                    width=width,
                    height=height,
                    sh_degree=self._sh_degree_now(),
                    rasterize_mode=self.config.rasterize_mode,
                )
            self._colour_maps[key] = cmap
        return cmap

    def render_colours(
        self, camera: Cameras, dc: Tensor, rest: Tensor, *, with_depth: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Render this splat's geometry with the given colour coefficients.

        Args:
            camera: one nerfstudio camera.
            dc: `[N, 3]` SH DC coefficients (or logits at sh_degree 0); rest: `[N, K-1, 3]`.

        Returns:
            premultiplied colour `[H, W, 3]`, alpha `[H, W, 1]` in [0, 1], expected depth `[H, W, 1]` or None.
        """
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        width, height = int(camera.width.item()), int(camera.height.item())
        K = camera.get_intrinsics_matrices().to(self.device)
        camera.rescale_output_resolution(scale)
        self.last_size = (height, width)
        c2w = self.camera_optimizer.apply_to_camera(camera) if self.training else camera.camera_to_worlds
        viewmat = viewmat_from_c2w(c2w.to(self.device))
        colours = self._colours(dc, rest)
        if not with_depth and self._use_fast_path(camera):
            rgb, alpha = self._colour_map(camera, viewmat, K, width, height).render(colours)
            return rgb, alpha, None
        mask = self.crop_box.within(self.means).squeeze() if self.crop_box is not None and not self.training else None
        sel = (lambda t: t[mask]) if mask is not None else (lambda t: t)
        render, alpha, self.info = rasterize(
            means=sel(self.means),
            quats=sel(self.quats),
            scales=torch.exp(sel(self.scales)),
            opacities=torch.sigmoid(sel(self.opacities)).squeeze(-1),
            colors=sel(colours),
            viewmats=viewmat,
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB+ED" if with_depth else "RGB",
            sh_degree=self._sh_degree_now(),
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.rasterizer,
        )
        if self.training and not self.geometry_frozen:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        depth = render[0, ..., 3:4] if with_depth else None
        return render[0, ..., :3], alpha[0], depth

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
        if self.crop_box is not None and not self.training and self.crop_box.within(self.means).sum() == 0:
            return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        with_depth = self.config.output_depth_during_training or not self.training
        if not self.training:
            self._eval_camera = camera  # the view get_image_metrics_and_images scores next (content metrics)
        rgb, alpha, depth = self.render_colours(camera, self.features_dc, self.features_rest, with_depth=with_depth)
        background = self._get_background_color()
        rgb = torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0)
        if depth is not None:
            depth = torch.where(alpha > 0, depth, depth.detach().max())
        height, width = rgb.shape[:2]
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb, "depth": depth, "accumulation": alpha, "background": background}

    def render_base(self, camera: Cameras, background: Tensor) -> Tensor:
        """The unstylised splat from this camera, `[H, W, 3]` in [0, 1], no gradient (content reference)."""
        with torch.no_grad():
            rgb, alpha, _ = self.render_colours(camera, self.base_features_dc, self.base_features_rest)
            return torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0)

    # ---------------------------------------------------------------- metrics
    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001 - nerfstudio's signature
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training:
            # logged with the run so `styleme3d-eval` can report the cost of a run from its own logs
            metrics["peak_memory_mb"] = torch.tensor(_peak_memory_mb(self.device))
        return metrics

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        predicted_rgb = outputs["rgb"]
        gt = torch.moveaxis(gt_rgb, -1, 0)[None]
        pred = torch.moveaxis(predicted_rgb, -1, 0)[None]
        metrics = {"psnr": float(self.psnr(gt, pred).item()), "ssim": float(self.ssim(gt, pred))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(gt, pred))
        images = {"img": torch.cat([gt_rgb, predicted_rgb], dim=1)}
        camera, self._eval_camera = self._eval_camera, None
        if self.geometry_frozen and camera is not None:
            # what stylisation cost: the same view of the unstyled splat (styleme3d-eval reports the same numbers)
            base = torch.moveaxis(self.render_base(camera, outputs["background"]), -1, 0)[None]
            metrics["content_psnr"] = float(self.psnr(base, pred).item())
            metrics["content_ssim"] = float(self.ssim(base, pred))
        return metrics, images


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on GPU, resident set size on CPU (Linux), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _lpips_if_available() -> torch.nn.Module | None:
    """torchmetrics' LPIPS when its AlexNet weights are already in the torch hub cache, else None and one log line.

    Constructing it without them starts a download (splatfacto does so unconditionally, which fails offline).
    """
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not hub.is_file():
        CONSOLE.log(f"LPIPS off: AlexNet weights not found at {hub} (copy them there to enable); PSNR/SSIM reported")
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)
