"""The shared base of every styleme3d-ns method: a splatfacto model trained in phases against declarative loss terms.

It composes three parts, each in its own module, and wires them to nerfstudio's hooks:

- :class:`~styleme3d_ns.models.lifecycle.Lifecycle` (``model.lifecycle``): the phase (``reconstruct``, then
  ``stylise`` or ``generate``), the plan (which steps do what, when the run ends) and their transitions;
- :class:`~styleme3d_ns.models.loss_terms.TermSet` (``model.terms``): the method's
  :class:`~styleme3d_ns.models.loss_terms.LossTerm`\\ s, built when training starts (skipping or stopping on missing
  weights with the guidance's one-line reason), called on the view sets they see; guidance networks are never
  submodules, so checkpoints hold the splat only and ``ns-render``/``ns-export`` never need them;
- :class:`~styleme3d_ns.models.palette.StylePalette` (``model.palette``, None for a method that never stylises a
  fixed splat): the styles over one geometry, their turns, the look and the viewer's Style panel.

A method is a thin subclass: its config, its terms (:meth:`loss_terms`, :meth:`view_sets`), its styles
(:meth:`style_set`), its one-off work when colours first train (:meth:`on_stylise_start`) and, where it starts or
densifies differently, the functions ``initial_gaussians`` and ``densification`` (docs/foundation.md has recipes).
It also runs on CPU: no ``.cuda()``, no ``torch.compile``, no LPIPS download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import RGB2SH, SH2RGB, SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE
from pytorch_msssim import SSIM
from torch import Tensor
from torch.nn import Parameter

from styleme3d_ns.core.config_defaults import DefaultsOnLoad
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.guidance.photometric import PhotometricConfig, PhotometricL1
from styleme3d_ns.models.base_splat import Gaussians, read_base, splatfacto_gaussians, splatfacto_strategy
from styleme3d_ns.models.checkpoint import GAUSSIAN_KEYS
from styleme3d_ns.models.lifecycle import Lifecycle, Phase
from styleme3d_ns.models.look import LookConfig
from styleme3d_ns.models.loss_terms import TRAIN_VIEW, LossTerm, TermSet, Views, view_lookup
from styleme3d_ns.models.palette import StylePalette, StyleSet
from styleme3d_ns.models.run_metrics import image_metrics, lpips_if_available, peak_memory_mb
from styleme3d_ns.models.splat_render import SplatRenderer

GEOMETRY_KEYS = ("means", "scales", "quats")


@dataclass
class GuidedSplatModelConfig(DefaultsOnLoad, SplatfactoModelConfig):
    """Splatfacto trained in phases (reconstruct, then stylise or generate) against a method's loss terms."""

    _target: type = field(default_factory=lambda: GuidedSplatModel)
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
    fast_path_cache_gib: float = 2.0
    """Most memory (GiB) the cached colour maps take: beyond it the oldest are dropped and rebuilt when their view
    comes again, so many views at full resolution never all sit in memory at once."""
    drop_non_finite_gaussians: bool = False
    """Drop base Gaussians with NaN/inf values (with a warning naming how many) instead of refusing the checkpoint."""
    look: LookConfig = field(default_factory=LookConfig)
    """The look shown by the viewer (its Style panel sets it live), `ns-render` and `ns-export`: which palette style,
    its strength, a blend with a second style, colour preservation and a region (docs/viewer.md)."""
    missing_experts: Literal["skip", "error"] = "skip"
    """What to do when an enabled term's weights are not on this machine: skip it (one line says which and why)
    or stop with that line. Terms on packaged networks never need downloads."""
    colour_lr_decay: float = 1.0
    """While stylising, the learning rate of the colours (SH DC) falls exponentially from its configured value to this
    fraction of it by the last stylise step (by the end of each style's turn when several train in turn); 1: constant.
    A features_dc group with a nerfstudio scheduler of its own keeps it. One view per step makes a constant rate leave
    view-to-view noise in the colours (docs/styleme3d.md, "Colour learning-rate decay and the demo's stylisation")."""


class GuidedSplatModel(SplatfactoModel):
    """Splatfacto with an explicit lifecycle, declarative loss terms and a style palette; methods subclass it.

    Method hooks: :meth:`target_phase` (what follows reconstruction), :meth:`loss_terms` (what it trains against),
    :meth:`view_sets` (views other than the training camera), :meth:`style_set` (its styles and their turn policy),
    :meth:`prepare_training` (decide what runs, before the terms are built), :meth:`on_stylise_start` (once, when
    colours start to train on a fixed splat), :meth:`uses_reconstruction_loss` (keep splatfacto's photometric loss in
    the method's phase). Strategy functions: ``initial_gaussians(model)`` and ``densification(config, num_views)``.
    """

    config: GuidedSplatModelConfig
    method_name: ClassVar[str] = "guided-splat"
    """The method's ns-train name, used in its log lines."""
    initial_gaussians: ClassVar[Callable[[Any], Gaussians]] = staticmethod(splatfacto_gaussians)
    """The splat a reconstruction starts from (no base): `initial_gaussians(model)`."""
    densification: ClassVar[Callable[[SplatfactoModelConfig, int], Any]] = staticmethod(splatfacto_strategy)
    """gsplat strategy while the geometry may move: `densification(config, num_train_data)`."""

    # ---------------------------------------------------------------- construction
    def populate_modules(self) -> None:
        base, self._base_error = read_base(self.config, self.kwargs.get("metadata") or {})
        params = base if base is not None else self.initial_gaussians(self)
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
        self.lpips = lpips_if_available()
        self.step = 0
        self.crop_box = None
        background = self.config.background_color
        # "random": viser's default background, as splatfacto (it only affects renders outside training)
        viser_grey = torch.tensor([0.1490, 0.1647, 0.2157])
        self.background_color = viser_grey if background == "random" else get_color(background)
        if self.config.use_bilateral_grid:
            raise SystemExit("styleme3d: error: --pipeline.model.use-bilateral-grid is not supported; leave it off")
        self.strategy = self.densification(self.config, self.num_train_data)
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.renderer = SplatRenderer(self)
        self.terms = TermSet()
        self.train_cameras: Cameras | None = None  # known once training is set up
        styles = self.style_set()
        self.palette = None if styles is None else StylePalette(
            *self.gauss_params["features_rest"].shape[:2], styles,
            live=lambda: (self.features_dc, self.features_rest),
            base=lambda: (self.base_features_dc, self.base_features_rest),
        )  # fmt: skip
        if self.palette is not None:
            self.palette.make_controls(self.config.look, self._set_look)
        self.lifecycle = Lifecycle(self.target_phase(), from_base=base is not None,
                                   reconstruct_steps=self.config.reconstruct_steps, freeze=self._freeze_geometry,
                                   fresh_start=self.on_stylise_start)  # fmt: skip

    # ---------------------------------------------------------------- method hooks
    def target_phase(self) -> Phase | None:
        """The phase after reconstruction: ``"stylise"`` (default), ``"generate"`` (from the first step), or None
        when this run has nothing to stylise with (it stays a reconstruction whose checkpoint can serve as a base)."""
        return "stylise"

    def style_set(self) -> StyleSet | None:
        """The method's configured styles and how they become palette entries; None: this method never stylises a
        fixed splat, so it holds no palette. Asked when the model is built and again when training starts."""
        return StyleSet() if self.target_phase() == "stylise" else None

    def prepare_training(self) -> None:
        """Decide what runs in this run (e.g. the offline teacher), before the styles are planned and terms built."""

    def loss_terms(self) -> list[LossTerm]:
        """The method's terms for its phase; built once, when training starts (after the base splat is known)."""
        return []

    def view_sets(self) -> dict[str, Callable[[Callable[[str], Views]], Views]]:
        """Views other than the training camera a method's terms see, by name; each rendered at most once a step.
        A builder gets this step's look-up of view sets by name, so one set can be derived from another."""
        return {}

    def on_stylise_start(self) -> None:
        """Called once when colours start to train on a fixed splat and the terms are built (not again on resume)."""

    def uses_reconstruction_loss(self) -> bool:
        """Whether splatfacto's photometric loss stays in the method's phase (paper 002's joint mode)."""
        return False

    # ---------------------------------------------------------------- the lifecycle
    @property
    def phase(self) -> Phase:
        """The lifecycle's phase (read-only here; transitions are the lifecycle's)."""
        return self.lifecycle.phase

    @property
    def geometry_frozen(self) -> bool:
        """True in the stylise phase: means, scales, quats (and opacities unless --train-opacity) do not move."""
        return self.lifecycle.geometry_frozen

    @property
    def frozen_keys(self) -> tuple[str, ...]:
        """Gaussian parameters that never move during stylisation."""
        return GEOMETRY_KEYS if self.config.train_opacity else (*GEOMETRY_KEYS, "opacities")

    def _freeze_geometry(self, fresh: bool) -> None:
        """The lifecycle entered ``stylise``: freeze geometry (and opacity unless --train-opacity); densification stops
        with it. `fresh`: the current colours become the content reference and the palette starts empty (not when a
        stylised checkpoint is loaded, which brings both)."""
        for key in self.frozen_keys:
            self.gauss_params[key].requires_grad_(False)
            self.gauss_params[key].grad = None
        if fresh:
            self.base_features_dc = self.gauss_params["features_dc"].detach().clone()
            self.base_features_rest = self.gauss_params["features_rest"].detach().clone()
            if self.palette is not None:
                self.palette.reset(*self.gauss_params["features_rest"].shape[:2])
        self.renderer.colour_maps.clear()

    @torch.no_grad()
    def resize_gaussians(self, source: Tensor, geometry: dict[str, Tensor]) -> None:
        """Replace the splat's Gaussians by new ones, in one place for every per-Gaussian tensor: new Gaussian j takes
        old Gaussian `source[j]`'s colours in every colour set (live, base, each palette entry) and the `geometry`
        tensors given by splatfacto's names (the others are gathered by `source` too).

        Each Parameter keeps its identity (its `.data` is replaced; an optimiser holding it keeps training it, its
        stale state dropped), colour maps are rebuilt on next use, densification state restarts.

        Args:
            source: `[N']` indices into the current N Gaussians.
            geometry: e.g. `means [N', 3]`, `scales [N', 3]`, `quats [N', 4]`, `opacities [N', 1]`.
        """
        source = source.to(self.device)
        for name, param in self.gauss_params.items():
            param.data = geometry[name].to(param) if name in geometry else param.data[source]
            for optimizer in getattr(self, "optimizers", {}).values():
                optimizer.state.pop(param, None)
        self.base_features_dc = self.base_features_dc[source]
        self.base_features_rest = self.base_features_rest[source]
        if self.palette is not None:
            self.palette.gather(source)
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.renderer.colour_maps.clear()

    def get_gaussian_param_groups(self) -> dict[str, list[Parameter]]:
        # A loaded base never optimises geometry, so those tensors are not even handed to an optimiser.
        # When reconstructing first, all groups exist; geometry is frozen by requires_grad at the switch.
        names = [k for k in GAUSSIAN_KEYS if not (self.geometry_frozen and k in self.frozen_keys)]
        return {name: [self.gauss_params[name]] for name in names}

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        """Training starts: decide what runs, plan the styles' turns, build the terms, fix the lifecycle's plan."""
        datamanager = getattr(training_callback_attributes.pipeline, "datamanager", None)
        # the training cameras, for work over all views at once (the offline teacher's colour solve)
        self.train_cameras = getattr(getattr(datamanager, "train_dataset", None), "cameras", None)
        end = getattr(getattr(training_callback_attributes.trainer, "config", None), "max_num_iterations", None)
        with exit_on_user_error():
            if self._base_error is not None:
                raise self._base_error
            decay = self.config.colour_lr_decay
            if not 0.0 < decay <= 1.0:
                raise UserInputError(f"--pipeline.model.colour-lr-decay must be in (0, 1] (got {decay}); "
                                     "1 keeps the colour learning rate constant")  # fmt: skip
            self.prepare_training()
            turns = None
            if self.palette is not None:
                self.palette.styles = self.style_set()  # as decided now
                turns = self.palette.plan_turns(self.lifecycle.stylise_start, end, self.method_name)
            self.terms.build(self.loss_terms(), self.config.missing_experts)
            if self.target_phase() is not None or self.lifecycle.from_base:
                self.terms.log_active(self.method_name, self.uses_reconstruction_loss())
            self.lifecycle.set_plan(end, turns)  # runs the fresh stylise start a base splat owes
        before, after = TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, TrainingCallbackLocation.AFTER_TRAIN_ITERATION
        return [
            TrainingCallback([before], self.step_cb, args=[training_callback_attributes.optimizers]),
            TrainingCallback([after], self.step_post_backward),
        ]

    def step_cb(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        super().step_cb(optimizers, step)
        self.renderer.infos.clear()
        reconstructing = self.phase == "reconstruct"
        self.lifecycle.advance(step)
        if reconstructing and self.geometry_frozen:
            CONSOLE.log(f"Step {step}: reconstruction done ({self.num_points} Gaussians); geometry frozen")
        if self.geometry_frozen:
            if self.palette is not None and self.lifecycle.plan is not None:
                self.palette.take_turns(self.lifecycle.plan.turns, step, optimizers)
            self._decay_colour_lr(optimizers, step)

    def colour_lr_factor(self, step: int) -> float:
        """Factor on the configured SH DC learning rate at `step` of the stylise phase (``colour_lr_decay``):
        ``decay ** t`` with ``t`` in [0, 1] the progress through the stylise steps, or through the current style's
        turn; 1 before the trainer's plan is known."""
        plan, decay = self.lifecycle.plan, self.config.colour_lr_decay
        if decay == 1.0 or plan is None:
            return 1.0
        return decay ** plan.stylise_progress(step, self.palette.stored if self.palette is not None else 0)

    def _decay_colour_lr(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        # the SH DC group only: the view-dependent bands already train 20x slower, and decaying them too cost Gram
        # distance at no gain in content (docs/styleme3d.md)
        optimizer = optimizers.optimizers.get("features_dc")
        if optimizer is None or "features_dc" in optimizers.schedulers:
            return
        for group in optimizer.param_groups:
            group["lr"] = optimizers.config["features_dc"]["optimizer"].lr * self.colour_lr_factor(step)

    def step_post_backward(self, step: int) -> None:
        """Densify from the screen-space gradients of every view rendered this step (paper 001 eq. 4).

        splatfacto hands the strategy only the last render's `info`; methods that render extra views would drop the
        training camera's. gsplat accumulates a batch of C cameras as C visible counts, so the others are added the
        same way before the strategy's own step.
        """
        if self.geometry_frozen:
            return
        infos = self.renderer.take_infos()
        if step < self.strategy.refine_stop_iter:
            for info in infos[:-1]:
                if info["means2d"].grad is not None:
                    self.strategy._update_state(self.gauss_params, self.strategy_state, info, packed=False)
        super().step_post_backward(step)

    def update_to_step(self, step: int) -> None:
        """A loaded checkpoint's step decides its phase (nerfstudio calls this before loading its state)."""
        super().update_to_step(step)
        self.lifecycle.loaded(step)

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]  # noqa: ANN001
        """Load in place: resize each tensor's `.data` instead of replacing the Parameter.

        splatfacto swaps in new Parameter objects here, which silently detaches any optimiser built
        before the load (`ns-train --load-dir`), the Instruct-GS2GS bug. Keeping identity makes that impossible.
        """
        self.step = 30000  # as splatfacto: a loaded splat renders with its full SH degree
        if self.palette is None:  # a checkpoint of this method from before palettes were only held where used
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("palette.")}
        for name, param in self.gauss_params.items():
            key = f"gauss_params.{name}"
            if key in state_dict and param.shape != state_dict[key].shape:
                param.data = torch.zeros(state_dict[key].shape, device=param.device, dtype=param.dtype)
        for name in ("base_features_dc", "base_features_rest"):
            if name in state_dict and getattr(self, name).shape != state_dict[name].shape:
                setattr(self, name, torch.zeros_like(state_dict[name], device=self.device))
        self.renderer.colour_maps.clear()
        result = torch.nn.Module.load_state_dict(self, state_dict, **kwargs)
        if self.palette is not None:
            with exit_on_user_error():  # ns-render / ns-export with a look the run cannot show: one line
                self.palette.check(self.config.look)
            self.palette.refresh_controls(self.config.look)
        return result

    # ---------------------------------------------------------------- losses
    def photo_term(self, name: str, weight: float, label: str) -> LossTerm:
        """L1 of the training camera's render to its photo (paper 000's L_recon, paper 001's front-view anchor)."""
        config = PhotometricConfig(weight=weight)
        return LossTerm(
            name=name, label=label, config=config, build=lambda: PhotometricL1(config),
            inputs={"target_images": "photos"},
        )  # fmt: skip

    @property
    def guidance(self) -> dict[str, Callable[..., dict[str, Tensor]]]:
        """The built guidances by term name (``model.terms.guidance``)."""
        return self.terms.guidance

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        """Reconstruction: splatfacto's loss. Otherwise the active terms, each on the views it sees, plus splatfacto's
        loss where the method keeps it; every term's side outputs go to ``metrics_dict`` (logged with the step)."""
        if self.phase == "reconstruct":
            return super().get_loss_dict(outputs, batch, metrics_dict)
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict) if self.uses_reconstruction_loss() else {}
        if not loss_dict and not self.terms.active:  # e.g. after the offline teacher: a step that changes nothing
            loss_dict["idle"] = 0.0 * self.features_dc.sum()  # zero gradients: Adam's first update is then exactly 0
        views = view_lookup({TRAIN_VIEW: lambda _: self.train_views(outputs, batch), **self.view_sets()})
        loss_dict.update(self.terms.losses(views, self.step, metrics_dict))
        return loss_dict

    def train_views(self, outputs: dict, batch: dict) -> Views:
        """The training camera's render `[1, 3, H, W]` with its photo (``"photos"``) and, while stylising, the same
        view of the unstylised splat (``"content"``)."""

        def photos() -> Tensor:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            return gt.permute(2, 0, 1)[None]

        lazy = {"photos": photos}
        if "content_rgb" in outputs:
            lazy["content"] = lambda: outputs["content_rgb"].permute(2, 0, 1)[None]
        return Views(outputs["rgb"].permute(2, 0, 1)[None], lazy=lazy)

    # ---------------------------------------------------------------- rendering (models/splat_render.py)
    def render_colours(
        self, camera: Cameras, dc: Tensor, rest: Tensor, *, with_depth: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """This splat's geometry with colours `dc [N, 3]`, `rest [N, K-1, 3]` from one camera: premultiplied colour
        `[H, W, 3]`, alpha `[H, W, 1]`, expected depth `[H, W, 1]` or None (:meth:`SplatRenderer.render_colours`)."""
        return self.renderer.render_colours(camera, dc, rest, with_depth=with_depth)

    def render_base(self, camera: Cameras, background: Tensor) -> Tensor:
        """The unstylised splat from this camera, `[H, W, 3]` in [0, 1], no gradient (content reference)."""
        return self.renderer.render_base(camera, background)

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        """Training: the render (and, while stylising, the base render as ``content_rgb`` if a term reads it).
        Elsewhere (viewer, ns-render, eval): the look, and ``content_rgb`` while stylising, in one rasterisation."""
        if not isinstance(camera, Cameras):
            return {}
        return self.renderer.outputs(camera)

    # ---------------------------------------------------------------- the palette and look, as nerfstudio reads them
    @property
    def palette_size(self) -> int:
        """Styles this run holds: the live colours (entry 0) and the stored ones."""
        return self.palette.size if self.palette is not None else 1

    def palette_entry(self, index: int) -> tuple[Tensor, Tensor]:
        """SH colours (`dc [N, 3]`, `rest [N, K-1, 3]`) of palette entry `index` (0: the live, trained colours)."""
        return self.palette.entry(index) if self.palette is not None else (self.features_dc, self.features_rest)

    def palette_labels(self) -> list[str]:
        """A name per palette entry, for the viewer and logs."""
        return self.palette.labels() if self.palette is not None else ["style"]

    def _set_look(self, look: LookConfig) -> None:
        self.palette.check(look)
        self.config.look = look

    def look_coefficients(self) -> tuple[Tensor, Tensor]:
        """The look as one set of SH coefficients (`dc [N, 3]`, `rest [N, K-1, 3]`): what `ns-export` writes."""
        if not self.geometry_frozen or self.palette is None:
            return self.features_dc, self.features_rest
        return self.palette.look_coefficients(self.config.look, self.means, self.config.sh_degree)

    @property
    def shs_0(self) -> Tensor:  # what ns-export reads: the look, not only the live colours
        dc = self.look_coefficients()[0]
        return dc if self.config.sh_degree > 0 else RGB2SH(torch.sigmoid(dc))

    @property
    def shs_rest(self) -> Tensor:
        return self.look_coefficients()[1]

    @property
    def colors(self) -> Tensor:
        dc = self.look_coefficients()[0]
        return SH2RGB(dc) if self.config.sh_degree > 0 else torch.sigmoid(dc)

    # ---------------------------------------------------------------- metrics
    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001 - nerfstudio's signature
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training:
            # logged with the run so `styleme3d-eval` can report the cost of a run from its own logs
            metrics["peak_memory_mb"] = torch.tensor(peak_memory_mb(self.device))
        return metrics

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        metrics = image_metrics(self, gt_rgb, outputs["rgb"])
        if "content_rgb" in outputs:  # what stylisation cost: the same view of the unstyled splat (as styleme3d-eval)
            content = image_metrics(self, outputs["content_rgb"], outputs["rgb"], lpips=False)
            metrics.update({f"content_{k}": v for k, v in content.items()})
        return metrics, {"img": torch.cat([gt_rgb, outputs["rgb"]], dim=1)}
