"""The shared base of every styleme3d-ns method: a splatfacto model trained in explicit phases against loss terms.

A run goes through at most two phases (:data:`Phase`):

- ``reconstruct``: plain splatfacto (photometric loss, densification) from the data, when there is no base splat;
- then the method's own phase (:meth:`GuidedSplatModel.target_phase`):
  ``stylise`` (paper 000 "optimizing only RGB attributes preserves geometric integrity"; paper 002 fine-tune mode):
  means, scales, quats and (by default) opacities frozen, only colours train, rendered through a cached linear colour
  map; or ``generate`` (paper 001, paper 002's joint mode): every parameter trains against the method's terms, with
  densification.

What a method trains against is a list of declarative :class:`~styleme3d_ns.models.loss_terms.LossTerm`\\ s. The base
builds them when training starts (skipping or stopping on missing weights with the guidance's one-line reason), logs
which are active, renders each view set once per step, calls every term and logs its outputs, and owns the user-error
boundary. Guidance networks are kept in :attr:`GuidedSplatModel.guidance`, a plain dict: never submodules, so
checkpoints hold the splat only and ``ns-render``/``ns-export`` never need the networks.

It also runs on CPU: no ``.cuda()``, no ``torch.compile``, no LPIPS download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SH2RGB,
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

from styleme3d_ns.core.config_defaults import DefaultsOnLoad
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.ply_scene import base_splat_for_model
from styleme3d_ns.guidance.photometric import PhotometricConfig, PhotometricL1
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.checkpoint import GAUSSIAN_KEYS, load_gaussians
from styleme3d_ns.models.look import LookConfig, apply_look, apply_look_sh, check_look, styles_used
from styleme3d_ns.models.loss_terms import TRAIN_VIEW, LossTerm, TermOff, Views
from styleme3d_ns.models.palette import StylePalette, StyleTurns, style_of_turn
from styleme3d_ns.models.viewer_controls import AddStyle, LookControls
from styleme3d_ns.render import rasterize
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.colour_map import ColourMap
from styleme3d_ns.render.sh import sh_colors

GEOMETRY_KEYS = ("means", "scales", "quats")
COLOUR_KEYS = ("features_dc", "features_rest")

Phase = Literal["reconstruct", "stylise", "generate"]
"""reconstruct: splatfacto from the photos; stylise: colours of a fixed splat; generate: everything, method terms."""


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
    """Splatfacto with explicit phases and declarative loss terms; methods subclass it with their terms and data.

    Method hooks: :meth:`target_phase` (what follows reconstruction), :meth:`loss_terms` (what it trains against),
    :meth:`view_sets` (views other than the training camera), :meth:`on_stylise_start` (once, when colours start to
    train on a fixed splat), :meth:`uses_reconstruction_loss` (keep splatfacto's photometric loss in the method's
    phase).
    """

    config: GuidedSplatModelConfig
    method_name: ClassVar[str] = "guided-splat"
    """The method's ns-train name, used in its log lines."""

    # ---------------------------------------------------------------- construction
    def populate_modules(self) -> None:
        self._deferred_error: Exception | None = None
        base = self._read_base()
        params = base if base is not None else self._init_gaussians()
        self.gauss_params = torch.nn.ParameterDict(
            {k: Parameter(params[k].float().contiguous()) for k in GAUSSIAN_KEYS}
        )
        self.palette = StylePalette(*self.gauss_params["features_rest"].shape[:2])  # styles beyond the live colours
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
        self._step_infos: list[dict] = []  # rasteriser infos of this step's differentiable renders (densification)
        self.guidance: dict[str, Callable[..., dict[str, Tensor]]] = {}  # built terms; a dict, never submodules
        self.active_terms: list[LossTerm] = []
        self._terms_ready = False
        self._stylise_pending = False  # a fresh stylise phase still owes on_stylise_start (never after a load)
        self.train_cameras: Cameras | None = None  # known once training is set up
        self.done_after_step: int | None = None  # set when the plan ends early (StyleTrainer stops after that step)
        self._style_turns: StyleTurns | None = None  # several styles trained in turn, once the run's plan is known
        self._plan_end: int | None = None  # the trainer's planned last step + 1, once known
        self._turn_style: int | None = None  # the configured style whose turn on_style_turn last announced
        self.loaded_base = base is not None
        self.phase: Phase = "generate" if self.target_phase() == "generate" else "reconstruct"
        if self.target_phase() == "stylise":
            self._make_look_controls()
        if self.loaded_base and self.phase == "reconstruct":
            self.enter_stylise(capture_base=True)  # a loaded base is never reconstructed again

    def _read_base(self) -> dict[str, Tensor] | None:
        """The base splat: from the data parser (a .ply scene) or `--base-checkpoint`; None to start from scratch."""
        metadata = self.kwargs.get("metadata") or {}
        if "base_splat" in metadata:
            with exit_on_user_error():
                base = base_splat_for_model(metadata, self.config.sh_degree)
            CONSOLE.log(f"Base splat: {base['means'].shape[0]} Gaussians from {metadata.get('ply_path')}")
            return base
        if self.config.base_checkpoint is None:
            return None
        try:
            base = load_gaussians(
                self.config.base_checkpoint,
                sh_degree=self.config.sh_degree,
                drop_non_finite=self.config.drop_non_finite_gaussians,
            )
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
        return splatfacto_strategy(self.config, self.num_train_data)

    # ---------------------------------------------------------------- method hooks
    def target_phase(self) -> Phase | None:
        """The phase after reconstruction: ``"stylise"`` (default), ``"generate"`` (from the first step), or None
        when this run has nothing to stylise with (it stays a reconstruction whose checkpoint can serve as a base)."""
        return "stylise"

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

    # ---------------------------------------------------------------- phases
    @property
    def geometry_frozen(self) -> bool:
        """True in the stylise phase: means, scales, quats (and opacities unless --train-opacity) do not move."""
        return self.phase == "stylise"

    @property
    def frozen_keys(self) -> tuple[str, ...]:
        """Gaussian parameters that never move during stylisation."""
        return GEOMETRY_KEYS if self.config.train_opacity else (*GEOMETRY_KEYS, "opacities")

    def enter_stylise(self, *, capture_base: bool) -> None:
        """Freeze geometry (and opacity unless --train-opacity); densification stops with it.

        ``capture_base``: the current colours become the content reference (not when resuming a stylised run, whose
        reference was saved with it).
        """
        for key in self.frozen_keys:
            self.gauss_params[key].requires_grad_(False)
            self.gauss_params[key].grad = None
        if capture_base:
            self.base_features_dc = self.gauss_params["features_dc"].detach().clone()
            self.base_features_rest = self.gauss_params["features_rest"].detach().clone()
            self.palette.reset(*self.gauss_params["features_rest"].shape[:2])
        self.phase = "stylise"
        self._colour_maps.clear()
        self._stylise_pending = capture_base
        if self._terms_ready:
            self._start_stylising()

    def get_gaussian_param_groups(self) -> dict[str, list[Parameter]]:
        # A loaded base never optimises geometry, so those tensors are not even handed to an optimiser.
        # When reconstructing first, all groups exist; geometry is frozen by requires_grad at the switch.
        names = [k for k in GAUSSIAN_KEYS if not (self.geometry_frozen and k in self.frozen_keys)]
        return {name: [self.gauss_params[name]] for name in names}

    # ---------------------------------------------------------------- training set-up: the loss terms
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        datamanager = getattr(training_callback_attributes.pipeline, "datamanager", None)
        dataset = getattr(datamanager, "train_dataset", None)
        # the training cameras, for work over all views at once (the offline teacher's colour solve)
        self.train_cameras = getattr(dataset, "cameras", None)
        trainer_config = getattr(training_callback_attributes.trainer, "config", None)
        with exit_on_user_error():
            if self._deferred_error is not None:
                raise self._deferred_error
            if not 0.0 < self.config.colour_lr_decay <= 1.0:
                raise UserInputError(
                    f"--pipeline.model.colour-lr-decay must be in (0, 1] (got "
                    f"{self.config.colour_lr_decay}); 1 keeps the colour learning rate constant"
                )
            self._plan_end = getattr(trainer_config, "max_num_iterations", None)
            self._style_turns = self._plan_style_turns(self._plan_end)
            self.setup_terms()
        return [
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                self.step_cb,
                args=[training_callback_attributes.optimizers],
            ),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.step_post_backward),
        ]

    def setup_terms(self) -> None:
        """Build every enabled term; a term whose weights are missing is skipped with one line, or stops the run
        (``missing_experts error`` or a required term). Logs one line naming every active term."""
        self.guidance.clear()
        self.active_terms = []
        for term in self.loss_terms():
            built = self._build_term(term)
            if built is not None:
                self.guidance[term.name] = built
                self.active_terms.append(term)
        if self.target_phase() is not None or self.loaded_base:
            if not self.active_terms and not self.uses_reconstruction_loss():
                raise UserInputError(
                    f"{self.method_name} has nothing to train: every loss term is off (see the 'off:' lines above); "
                    "enable one, or give the weights or inputs it needs"
                )
            weights = [f" (weight {t.config.weight})" if t.config else "" for t in self.active_terms]
            active = "; ".join(t.label + w for t, w in zip(self.active_terms, weights, strict=True))
            CONSOLE.log(f"{self.method_name} terms active: {active}")
        self._terms_ready = True
        if self.phase == "stylise":
            self._start_stylising()

    def _build_term(self, term: LossTerm) -> Callable[..., dict[str, Tensor]] | None:
        reason = term.is_configured_off()
        if reason is not None:
            CONSOLE.log(f"{term.label} off: {reason}")
            return None
        try:
            return term.build()
        except TermOff as off:
            CONSOLE.log(f"{term.label} off: {off}")
            return None
        except MissingWeightsError as err:
            if term.required or self.config.missing_experts == "error":
                raise UserInputError(str(err)) from err
            CONSOLE.log(f"{term.label} off: {err}")
            return None

    def photo_term(self, name: str, weight: float, label: str) -> LossTerm:
        """L1 of the training camera's render to its photo (paper 000's L_recon, paper 001's front-view anchor)."""
        config = PhotometricConfig(weight=weight)
        return LossTerm(
            name=name, label=label, config=config, build=lambda: PhotometricL1(config),
            inputs={"target_images": "photos"},
        )  # fmt: skip

    # ---------------------------------------------------------------- training loop
    def step_cb(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        super().step_cb(optimizers, step)
        self._step_infos = []
        switch = self.phase == "reconstruct" and self.target_phase() == "stylise"
        if switch and step >= self.config.reconstruct_steps:
            CONSOLE.log(f"Step {step}: reconstruction done ({self.num_points} Gaussians); freezing geometry")
            self.enter_stylise(capture_base=True)
        if self.phase == "stylise" and self._style_turns is not None:
            self._take_style_turns(optimizers, step)
        if self.phase == "stylise":
            self._decay_colour_lr(optimizers, step)

    @property
    def stylise_start(self) -> int:
        """First step of the stylise phase: 0 with a base splat, else the reconstruction's length."""
        return 0 if self.loaded_base else self.config.reconstruct_steps

    def colour_lr_factor(self, step: int) -> float:
        """Factor on the configured SH DC learning rate at `step` of the stylise phase (``colour_lr_decay``):
        ``decay ** t`` with ``t`` in [0, 1] the progress through the stylise steps, or through the current style's
        turn; 1 before the trainer's plan is known."""
        decay, end = self.config.colour_lr_decay, self._plan_end
        if decay == 1.0 or end is None:
            return 1.0
        turns = self._style_turns
        start, end = (self.stylise_start, end) if turns is None else turns.turn_span(self.palette.stored)
        progress = min(max((step - start) / max(1, end - 1 - start), 0.0), 1.0)
        return decay**progress

    def _decay_colour_lr(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        # the SH DC group only: the view-dependent bands already train 20x slower, and decaying them too cost Gram
        # distance at no gain in content on the demo scene (docs/styleme3d.md)
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
        infos, self._step_infos = self._step_infos, []
        if step < self.strategy.refine_stop_iter:
            for info in infos[:-1]:
                if info["means2d"].grad is not None:
                    self.strategy._update_state(self.gauss_params, self.strategy_state, info, packed=False)
        super().step_post_backward(step)

    def _start_stylising(self) -> None:
        if self._stylise_pending:
            self._stylise_pending = False
            self.on_stylise_start()

    def update_to_step(self, step: int) -> None:
        """A loaded checkpoint's step decides its phase: past ``reconstruct_steps`` its geometry is already fixed.
        Its colours are what its run made of them: stylisation does not start over (no teacher, no pre-match)."""
        super().update_to_step(step)
        self._stylise_pending = False
        if self.phase == "reconstruct" and self.target_phase() == "stylise" and step >= self.config.reconstruct_steps:
            self.enter_stylise(capture_base=False)

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
        result = torch.nn.Module.load_state_dict(self, state_dict, **kwargs)
        with exit_on_user_error():  # ns-render / ns-export with a look the run cannot show: one line
            self.check_look()
        if hasattr(self, "look_controls"):
            if self.look_controls.gui_handle is None:  # ns-viewer: the viewer is built after the load
                self._make_look_controls()
            else:  # ns-train --load-dir: the panel is up already
                self.look_controls.set_palette(self.palette_labels())
        return result

    # ---------------------------------------------------------------- losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        """Reconstruction: splatfacto's loss. Otherwise the active terms, each on the views it sees, plus splatfacto's
        loss where the method keeps it; every term's side outputs go to ``metrics_dict`` (logged with the step)."""
        if self.phase == "reconstruct":
            return super().get_loss_dict(outputs, batch, metrics_dict)
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict) if self.uses_reconstruction_loss() else {}
        views = self._views_this_step(outputs, batch)
        if not loss_dict and not self.active_terms:  # e.g. after the offline teacher: a step that changes nothing
            loss_dict["idle"] = 0.0 * self.features_dc.sum()  # zero gradients: Adam's first update is then exactly 0
        for term in self.active_terms:
            seen = views(term.views)
            if seen.images.shape[0] == 0:
                continue  # e.g. every random view fell inside a cone this term may not look at
            out = self.guidance[term.name](seen.images, self.step, **{k: seen[v] for k, v in term.inputs.items()})
            loss_dict[term.name] = term.scale * out["loss"]
            if metrics_dict is not None:
                metrics_dict.update(_loggable(term.name, out))
        return loss_dict

    def _views_this_step(self, outputs: dict, batch: dict) -> Callable[[str], Views]:
        """Look-up of this step's view sets by name, each rendered on first use."""
        builders = {TRAIN_VIEW: lambda _: self.train_views(outputs, batch), **self.view_sets()}
        rendered: dict[str, Views] = {}

        def views(name: str) -> Views:
            if name not in rendered:
                rendered[name] = builders[name](views)
            return rendered[name]

        return views

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

    # ---------------------------------------------------------------- rendering
    def _sh_degree_now(self) -> int | None:
        if self.config.sh_degree == 0:
            return None
        if self.phase != "reconstruct" or self.loaded_base:
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
            cmap = self._build_colour_map(viewmat, K, width, height)
            self._colour_maps[key] = cmap
        return cmap

    @torch.no_grad()
    def _build_colour_map(self, viewmat: Tensor, K: Tensor, width: int, height: int) -> ColourMap:
        """The linear colour -> pixel map of one view of this (frozen) geometry (render/colour_map.py)."""
        return ColourMap.build(
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

    def _view(self, camera: Cameras) -> tuple[Tensor, Tensor, int, int]:
        """World-to-camera `[1, 4, 4]`, intrinsics `[1, 3, 3]`, width and height of `camera` at this resolution."""
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        width, height = int(camera.width.item()), int(camera.height.item())
        K = camera.get_intrinsics_matrices().to(self.device)
        camera.rescale_output_resolution(scale)
        self.last_size = (height, width)
        c2w = self.camera_optimizer.apply_to_camera(camera) if self.training else camera.camera_to_worlds
        return viewmat_from_c2w(c2w.to(self.device)), K, width, height

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
        viewmat, K, width, height = self._view(camera)
        colours = self._colours(dc, rest)
        if not with_depth and self._use_fast_path(camera):
            rgb, alpha = self._colour_map(camera, viewmat, K, width, height).render(colours)
            return rgb, alpha, None
        render, alpha = self._rasterize(colours, viewmat, K, width, height, self._sh_degree_now(), with_depth)
        depth = render[0, ..., 3:4] if with_depth else None
        return render[0, ..., :3], alpha[0], depth

    def _rasterize(
        self, colours: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int | None, depth: bool
    ) -> tuple[Tensor, Tensor]:
        """Rasterise the (crop-boxed) splat with `colours`; registers the render for densification while training."""
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
            render_mode="RGB+ED" if depth else "RGB",
            sh_degree=sh_degree,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.rasterizer,
        )
        if self.training and not self.geometry_frozen and torch.is_grad_enabled():
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
            self._step_infos.append(self.info)
        return render, alpha

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        """Training: the render (and, while stylising, the base render as ``content_rgb`` if a term reads it).
        Elsewhere (viewer, ns-render, eval): also ``content_rgb`` while stylising, from the same rasterisation."""
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
        if self.crop_box is not None and not self.training and self.crop_box.within(self.means).sum() == 0:
            return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        background = self._get_background_color()
        if self.training:
            rgb, alpha, depth = self.render_colours(
                camera, self.features_dc, self.features_rest, with_depth=self.config.output_depth_during_training
            )
            reads_content = any("content" in t.inputs.values() for t in self.active_terms if t.views == TRAIN_VIEW)
            content = self.render_base(camera, background) if self.geometry_frozen and reads_content else None
        else:
            rgb, alpha, depth, content = self._render_for_display(camera, background)
        rgb = torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0)
        if depth is not None:
            depth = torch.where(alpha > 0, depth, depth.detach().max())
        height, width = rgb.shape[:2]
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        outputs = {"rgb": rgb, "depth": depth, "accumulation": alpha, "background": background}
        if content is not None:
            outputs["content_rgb"] = content
        return outputs

    def _render_for_display(self, camera: Cameras, background: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One rasterisation of the look's colours (:attr:`GuidedSplatModelConfig.look`), depth and (while stylising)
        the unstylised colours as extra channels: colours are evaluated from SH here, so the look is a per-Gaussian
        colour operation and both sets share one compositing pass.

        Returns rgb `[H, W, 3]` (premultiplied), alpha `[H, W, 1]`, depth `[H, W, 1]`, content `[H, W, 3]` or None.
        """
        viewmat, K, width, height = self._view(camera)
        degree = self._sh_degree_now()
        campos = torch.linalg.inv(viewmat[0])[:3, 3]

        def rgb_of(dc: Tensor, rest: Tensor) -> Tensor:  # [N, 3] as the rasteriser would evaluate them
            colours = self._colours(dc, rest)
            return colours if degree is None else sh_colors(degree, self.means - campos, colours)

        if self.geometry_frozen:
            base = rgb_of(self.base_features_dc, self.base_features_rest)
            used = styles_used(self.config.look)
            styles = [rgb_of(*self.palette_entry(k)) if k in used else None for k in range(self.palette_size)]
            colours = torch.cat([apply_look(base, styles, self.means, self.config.look), base], dim=-1)
        else:
            colours = rgb_of(self.features_dc, self.features_rest)
        render, alpha = self._rasterize(colours, viewmat, K, width, height, None, depth=True)
        rgb, depth = render[0, ..., :3], render[0, ..., -1:]
        content = None
        if self.geometry_frozen:
            content = torch.clamp(render[0, ..., 3:6] + (1 - alpha[0]) * background, 0.0, 1.0)
        return rgb, alpha[0], depth, content

    # ---------------------------------------------------------------- palette and look
    @property
    def palette_size(self) -> int:
        """Styles this run holds: the live colours (entry 0) and the stored ones."""
        return 1 + self.palette.stored

    def palette_entry(self, index: int) -> tuple[Tensor, Tensor]:
        """SH colours (`dc [N, 3]`, `rest [N, K-1, 3]`) of palette entry `index` (0: the live, trained colours)."""
        if index == 0:
            return self.features_dc, self.features_rest
        return self.palette.dc[index - 1], self.palette.rest[index - 1]

    def palette_labels(self) -> list[str]:
        """A name per palette entry, for the viewer and logs."""
        return [self.live_style_name(), *self.palette.names]

    def live_style_name(self) -> str:
        """Name of palette entry 0: the configured style the live colours hold (or "style" without names)."""
        names = self.style_names()
        return names[self.live_style_index()] if names else "style"

    def style_names(self) -> list[str]:
        """Names of the styles this run is configured with, in palette order (style images' stems, prompts)."""
        return []

    def trains_styles_in_turn(self) -> bool:
        """Whether this method's optimiser trains its configured styles one after another (:class:`StyleTurns`),
        rather than a solve making the further styles' palette entries at once (the offline teacher)."""
        return False

    def on_style_turn(self, index: int) -> None:
        """Called when configured style `index` starts training in the live colours: point the terms at it."""

    def live_style_index(self) -> int:
        """Configured style the live colours hold: 0, or while styles train in turn, the one whose turn it is (the
        palette's stored count is the number of finished turns)."""
        if not self.trains_styles_in_turn():
            return 0
        return style_of_turn(self.palette.stored, max(1, len(self.style_names())))

    def _plan_style_turns(self, end: int | None) -> StyleTurns | None:
        """The turns of several styles trained in turn over the stylise steps up to `end` (the trainer's plan)."""
        count = len(self.style_names())
        if count < 2 or not self.trains_styles_in_turn() or end is None or self.target_phase() != "stylise":
            return None
        turns = StyleTurns(count, self.stylise_start, end)
        if turns.length < 1:
            raise UserInputError(f"{count} styles train in turn, one step each at least: raise --max-num-iterations "
                                 f"{end} to {turns.start + count} or more")  # fmt: skip
        CONSOLE.log(f"{self.method_name}: {count} styles trained in turn over one geometry, {turns.length} steps "
                    f"each from step {turns.start}: {', '.join(repr(n) for n in self.style_names())}")  # fmt: skip
        return turns

    def _take_style_turns(self, optimizers, step: int) -> None:  # noqa: ANN001 - nerfstudio's Optimizers
        """When a style's turn ends, store the live colours as its palette entry and start the next style from the
        base colours with fresh optimiser state (Adam's moments belong to the finished style)."""
        turns, names = self._style_turns, self.style_names()
        while self.palette.stored < turns.num_styles - 1 and step >= turns.turn_end(self.palette.stored):
            finished = names[self.live_style_index()]
            self.add_palette_entry(self.features_dc, self.features_rest, finished)
            for key, base in zip(COLOUR_KEYS, (self.base_features_dc, self.base_features_rest), strict=True):
                self.gauss_params[key].data.copy_(base)
                optimizer = optimizers.optimizers.get(key)
                if optimizer is not None:
                    optimizer.state.pop(self.gauss_params[key], None)
            CONSOLE.log(f"Step {step}: '{finished}' stored as palette entry {self.palette.stored}; "
                        f"'{names[self.live_style_index()]}' trains from the base colours")  # fmt: skip
        if self._turn_style != self.live_style_index():
            self._turn_style = self.live_style_index()
            self.on_style_turn(self._turn_style)

    def _make_look_controls(self) -> None:
        """The viewer's Style panel (nerfstudio installs the ViewerElements it finds on the model), showing the
        configured look, or the first style while the palette does not hold the look's entries yet."""
        look = self.config.look
        if max(look.style, look.blend_to or 0) >= self.palette_size:
            look = replace(look, style=0, blend_to=None)
        adder = self.style_adder()
        self.look_controls = LookControls(look, self.palette_labels(), on_change=self._set_look, on_add_style=adder)

    def style_adder(self) -> AddStyle | None:
        """How the viewer's "Add style" makes a palette entry from an image path, or None (no such button)."""
        return None

    def add_palette_entry(self, dc: Tensor, rest: Tensor, name: str) -> list[str]:
        """Store a colour set as a new palette entry; returns the palette's names (the viewer lists them)."""
        self.palette.append(dc, rest, name)
        if getattr(self, "look_controls", None) is not None and self.look_controls.gui_handle is not None:
            # a panel already up (the live training viewer) lists the new entry; it re-renders on its own
            self.look_controls.set_palette(self.palette_labels(), rerender=False)
        return self.palette_labels()

    def _set_look(self, look: LookConfig) -> None:
        check_look(look, self.palette_size)
        self.config.look = look

    def check_look(self) -> None:
        """One line (UserInputError) if the configured look does not fit this run's palette."""
        check_look(self.config.look, self.palette_size)

    def look_coefficients(self) -> tuple[Tensor, Tensor]:
        """The look as one set of SH coefficients (`dc [N, 3]`, `rest [N, K-1, 3]`): what `ns-export` writes.

        At sh_degree 0 the coefficients are sigmoid logits, so the look is applied to their colours and mapped back.
        """
        if not self.geometry_frozen:
            return self.features_dc, self.features_rest
        look = self.config.look
        used = styles_used(look)
        entries = [self.palette_entry(k) if k in used else (None, None) for k in range(self.palette_size)]
        if self.config.sh_degree > 0:
            return apply_look_sh(self.base_features_dc, self.base_features_rest, [e[0] for e in entries],
                                 [e[1] for e in entries], self.means, look)  # fmt: skip
        styles = [None if dc is None else torch.sigmoid(dc) for dc, _ in entries]
        rgb = apply_look(torch.sigmoid(self.base_features_dc), styles, self.means, look)
        return torch.logit(rgb.clamp(1e-6, 1 - 1e-6)), self.features_rest

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
        if "content_rgb" in outputs:
            # what stylisation cost: the same view of the unstyled splat (styleme3d-eval reports the same numbers)
            base = torch.moveaxis(outputs["content_rgb"], -1, 0)[None]
            metrics["content_psnr"] = float(self.psnr(base, pred).item())
            metrics["content_ssim"] = float(self.ssim(base, pred))
        return metrics, images


def splatfacto_strategy(config: SplatfactoModelConfig, num_train_data: int) -> DefaultStrategy:
    """gsplat's densification strategy with splatfacto's settings from `config` (as splatfacto 1.1.5 builds it)."""
    return DefaultStrategy(
        prune_opa=config.cull_alpha_thresh,
        grow_grad2d=config.densify_grad_thresh,
        grow_scale3d=config.densify_size_thresh,
        grow_scale2d=config.split_screen_size,
        prune_scale3d=config.cull_scale_thresh,
        prune_scale2d=config.cull_screen_size,
        refine_scale2d_stop_iter=config.stop_screen_size_at,
        refine_start_iter=config.warmup_length,
        refine_stop_iter=config.stop_split_at,
        reset_every=config.reset_alpha_every * config.refine_every,
        refine_every=config.refine_every,
        pause_refine_after_reset=num_train_data + config.refine_every,
        absgrad=config.use_absgrad,
        revised_opacity=False,
        verbose=True,
    )


def _loggable(name: str, terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """A term's scalar side outputs (timestep, guidance scale, similarities) named for the metrics dict."""
    return {f"{name}_{k}": v.detach().float().mean() for k, v in terms.items() if k != "loss" and v.numel() <= 4}


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
