"""Method `sas-portrait` (paper 001): one portrait photo plus a style prompt to a stylised 3D Gaussian head.

The splat starts from the head template (IV.A.1) and every parameter trains (3000 steps, IV.A.2) with
surface-guided densification (III.A.2, :class:`SurfaceGuidedStrategy`). Each step the model renders the photo's
front camera and random views around the head, and sums whatever terms are active:

    L = w_front L1(front render, photo)                      identity anchor (ours; the photo is the one real view)
      + w_SAS L_SAS(random views; face embedding, style)     paper 001 eq. 9-14  (needs SD 1.5 + IP-Adapter-FaceID)
      + w_3D L_MVDream(4 equally spaced views)               paper 001 eq. 15    (needs MVDream + SD 2.1-base)
      + w_SOS L_Gram(random views off the photo's cone)      offline style term (packaged EfficientNet-Lite0)
      + w_sil mean(1 - alpha | template silhouette)         offline shape prior (ours, :mod:`portrait_priors`)

The diffusion terms switch themselves off with one line when their weights are not on this machine (or stop the
run with ``--pipeline.model.missing-experts error``), so on a CPU without downloads the run trains the front view,
keeps the template's silhouette solid from every side and, given ``--pipeline.model.style-image``, paints the Gram
style on the views away from the photo's.

Colours start mid-grey, not paper 001's black: at ``sh_degree`` 0 they are sigmoid logits, and black (logit -5.5)
is so far out on the sigmoid's tail that at the paper's colour rate (lr 0.01) the front L1 is met by fading the black
Gaussians over the white background instead (85% fall under splatfacto's 0.1 cull and go at the first refine).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from torch import Tensor

from styleme3d_ns.data.head_template import init_gaussians
from styleme3d_ns.data.portrait import PortraitRig, orbit_cameras, orbit_poses, portrait_cameras
from styleme3d_ns.data.style_image import load_style_image
from styleme3d_ns.errors import UserInputError, exit_on_user_error
from styleme3d_ns.guidance.arcface import load_face_embedding
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig
from styleme3d_ns.guidance.mvdream import MultiViewSDS, MVDreamSDSConfig
from styleme3d_ns.guidance.sas import SASConfig, StyleAlignedSamplingLoss
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.frozen_colour import FrozenColourSplatModel, FrozenColourSplatModelConfig
from styleme3d_ns.models.portrait_priors import front_cone_mask, silhouette_loss, template_silhouette
from styleme3d_ns.models.surface_densify import SurfaceGuidedStrategy, knn_indices

GREY_INIT_RGB = 0.5
"""Initial colour (see :attr:`SASPortraitModelConfig.init_rgb`): logit 0, where a sigmoid colour moves at
``0.25 x lr`` per step, the rate of paper 001's linear colours (SH DC, ``0.28 x lr``) at the same lr."""
STYLE_WEIGHT = 1e-4
"""Default Gram style weight. The Gram loss starts at ~1e3-1e4 against a front L1 of ~0.4; measured at 128 px and
300 steps (astronaut photo, immunohistochemistry style): 1e-4 keeps the face (dlib distance 0.30) while the side
views take the style, 1e-3 loses the face (no face found)."""
STYLE_FRONT_CONE_DEG = 45.0
"""Default :attr:`SASPortraitModelConfig.style_front_cone_deg`: views within 45 degrees of the photo show mostly the
face the photo already fixes."""

# Our template frame is +y up with the face toward +z; MVDream's world is z-up with the front view looking along +y
# (camera on -y). This rotation takes our world vectors to MVDream's: x -> x, y -> z, z -> -y.
_TO_MVDREAM = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass
class SASPortraitModelConfig(FrozenColourSplatModelConfig):
    """sas-portrait: a stylised 3D Gaussian head from one photo (paper 001)."""

    _target: type = field(default_factory=lambda: SASPortraitModel)
    style_prompt: str = ""
    """Style text, e.g. "3D cartoon style" (paper 001 IV.B); used by the SAS and MVDream terms."""
    style_image: Path | None = None
    """Optional style image for the offline Gram style term on the random views (packaged EfficientNet-Lite0)."""
    front_weight: float = 1.0
    """Weight of the L1 between the front-view render and the photo (keeps the face; 0 = off)."""
    guidance_views: int = 1
    """Random views around the head rendered each step for SAS and the Gram style term."""
    sas: SASConfig = field(default_factory=SASConfig)
    """SAS loss (paper 001 eq. 9-14): SD 1.5, IP-Adapter-FaceID identity conditioning, style-preserving mapping."""
    mvdream: MVDreamSDSConfig = field(default_factory=MVDreamSDSConfig)
    """3D loss (paper 001 eq. 15): MVDream 4-view SDS, weight 0.05, CFG 10."""
    sos: GramStyleLossConfig = field(
        default_factory=lambda: GramStyleLossConfig(content_weight=0.0, weight=STYLE_WEIGHT)
    )
    """Offline Gram style term on the random views; active only with --pipeline.model.style-image. Its weight is
    small (1e-4) because the Gram loss is ~1e4x the front L1; 1e-3 already overrides the photo's face."""
    face_embedding: Path | None = None
    """Precomputed 512-D ArcFace embedding of the photo (.npy/.pt) for SAS identity conditioning; default: computed
    with insightface when installed with its buffalo_l models."""
    missing_experts: Literal["skip", "error"] = "skip"
    """When SAS/MVDream weights are missing: skip the term (one line says why) or stop the run."""
    init_rgb: float = GREY_INIT_RGB
    """Initial colour of every Gaussian, one RGB value in [0, 1]. Paper 001 IV.A.1 says 0 (black) for linear colours;
    ours are sigmoid logits at sh_degree 0, where black barely moves and the splat fades out instead (0 = paper)."""
    silhouette_prior: Literal["auto", "on", "off"] = "auto"
    """Penalise 1 - alpha inside the head template's silhouette on the random views, so the sides and back stay
    solid. auto: only while neither SAS nor MVDream is active (they shape the head and may move its outline)."""
    silhouette_weight: float = 1.0
    """Weight of the template-silhouette prior (mean 1 - alpha over the template's pixels, 0 to 1, like the L1)."""
    style_front_cone_deg: float = STYLE_FRONT_CONE_DEG
    """The Gram style term uses no view less than this azimuth (degrees) from the photo's camera, where the photo
    decides the colours; 0 styles every view. Without SAS the random views are drawn outside the cone."""


class SASPortraitModel(FrozenColourSplatModel):
    """Full-splat training from the head template with paper 001's guidance terms."""

    config: SASPortraitModelConfig

    def populate_modules(self) -> None:
        rig = self.kwargs.get("metadata", {}).get("portrait_rig")
        self.rig: PortraitRig = rig if isinstance(rig, PortraitRig) else PortraitRig()
        super().populate_modules()
        for name in ("sas", "mvdream", "sos"):
            self.set_guidance(name, None)
        self.sas: StyleAlignedSamplingLoss | None
        self.mvdream: MultiViewSDS | None
        self.sos: GramStyleLoss | None
        self._face_embeds: Tensor | None = None
        self._landmark_image: Tensor | None = None
        self._view_generator = torch.Generator().manual_seed(0)
        self._logs: dict[str, Tensor] = {}
        self._silhouette_on = False
        self._step_infos: list[dict] = []

    # ---------------------------------------------------------------- geometry
    def freezes_geometry(self) -> bool:
        return False  # a portrait is generated: positions, shapes and opacities all train (paper 001 IV.A.2)

    def stylising(self) -> bool:
        return True

    def _init_gaussians(self) -> dict[str, Tensor]:
        """Paper 001 IV.A.1: the template points with opacity 0.2, scale 0.02, identity rotation; colour `init_rgb`."""
        if self.seed_points is None:
            raise UserInputError("sas-portrait needs the portrait data parser: pass --data <photo.jpg> (no subcommand)")
        return init_gaussians(self.seed_points[0].float(), colour=self.config.init_rgb, sh_degree=self.config.sh_degree)

    def _make_strategy(self) -> SurfaceGuidedStrategy:
        return SurfaceGuidedStrategy.from_default(super()._make_strategy())

    # ---------------------------------------------------------------- densification statistics
    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        if self.training:
            self._step_infos = []  # the photo's view is the first render of a training step
        return super().get_outputs(camera)

    def render_colours(
        self, camera: Cameras, dc: Tensor, rest: Tensor, *, with_depth: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        out = super().render_colours(camera, dc, rest, with_depth=with_depth)
        if self.training:
            self._step_infos.append(self.info)
        return out

    def step_post_backward(self, step: int) -> None:
        """Densify from the screen-space gradients of every view rendered this step (paper 001 eq. 4).

        splatfacto hands the strategy only the last render's `info`; with guidance views that would drop the photo's
        view. gsplat accumulates a batch of C cameras as C visible counts, so the other renders are added the same way.
        """
        infos, self._step_infos = self._step_infos, []
        if step < self.strategy.refine_stop_iter:
            for info in infos[:-1]:
                if info["means2d"].grad is not None:
                    self.strategy._update_state(self.gauss_params, self.strategy_state, info, packed=False)
        super().step_post_backward(step)

    # ---------------------------------------------------------------- set-up (training only)
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        with exit_on_user_error():
            self._setup_terms()
        return callbacks

    def _setup_terms(self) -> None:
        cfg = self.config
        active = [f"front-view L1 (weight {cfg.front_weight})"] if cfg.front_weight > 0 else []
        if cfg.style_image is not None:
            sos = GramStyleLoss(cfg.sos).to(self.device)
            sos.set_style(load_style_image(cfg.style_image).to(self.device))
            self.set_guidance("sos", sos)
            active.append(f"Gram style on {cfg.sos.backbone} (weight {cfg.sos.weight})")
        for name, attr, config, build in (
            ("SAS", "sas", cfg.sas, self._build_sas),
            ("MVDream 3D loss", "mvdream", cfg.mvdream, self._build_mvdream),
        ):
            if not config.enabled or config.weight == 0:
                CONSOLE.log(f"{name} off: disabled (--pipeline.model.{attr}.enabled/--pipeline.model.{attr}.weight)")
                continue
            if not (cfg.style_prompt or config.prompt):
                CONSOLE.log(f'{name} off: no prompt (pass --pipeline.model.style-prompt "3D cartoon style")')
                continue
            try:
                self.set_guidance(attr, build())
            except MissingWeightsError as err:
                if cfg.missing_experts == "error":
                    raise UserInputError(str(err)) from err
                CONSOLE.log(f"{name} off: {err}")
                continue
            active.append(f"{name} (weight {config.weight})")
        self._silhouette_on = self._silhouette_active(diffusion=self.sas is not None or self.mvdream is not None)
        if self._silhouette_on:
            active.append(f"template silhouette prior (weight {cfg.silhouette_weight})")
        if not active:
            raise UserInputError(
                "sas-portrait has nothing to train: every term is off (set --pipeline.model.front-weight, a style "
                "image, or the SAS/MVDream weights)"
            )
        CONSOLE.log(f"sas-portrait terms active: {'; '.join(active)}")

    def _silhouette_active(self, diffusion: bool) -> bool:
        """Whether the template-silhouette prior trains this run; logs one line when it is off and why."""
        cfg = self.config
        reason = None
        if cfg.silhouette_prior == "off" or cfg.silhouette_weight == 0:
            reason = "disabled (--pipeline.model.silhouette-prior/--pipeline.model.silhouette-weight)"
        elif cfg.silhouette_prior == "auto" and diffusion:
            reason = "SAS/MVDream shape the head (--pipeline.model.silhouette-prior on keeps it)"
        elif self.seed_points is None:
            reason = "no head template (the portrait data parser provides it)"
        if reason is not None:
            CONSOLE.log(f"template silhouette prior off: {reason}")
            return False
        points = self.seed_points[0].float().to(self.device)
        nearest = knn_indices(points, 1)[:, 0]
        self._template_points = points
        # a uniform random sample leaves gaps up to ~2x its mean nearest-neighbour distance: closing by that much
        # fills the projected silhouette (no holes at 128-1024 px) without growing its outline
        self._template_spacing = 2.0 * float((points - points[nearest]).norm(dim=-1).mean())
        return True

    def _build_sas(self) -> StyleAlignedSamplingLoss:
        cfg = self.config
        config = replace(cfg.sas, prompt=cfg.sas.prompt or cfg.style_prompt, device=str(self.device))
        if config.identity_conditioning:
            photo = self._photo()
            self._face_embeds = load_face_embedding(photo, cfg.face_embedding).to(self.device)
            if config.landmark_controlnet is not None:
                self._landmark_image = self._photo_landmark_image(photo, config.image_size)
        return StyleAlignedSamplingLoss(config)

    def _photo_landmark_image(self, photo: Tensor, size: int) -> Tensor:
        """The photo's 68 dlib landmarks drawn for the landmark ControlNet (paper 001 eq. 10's I_l), `[1, 3, S, S]`."""
        from styleme3d_ns.eval.face_identity import FaceIdentity, landmark_image

        pixels = photo.numpy()
        faces = FaceIdentity()
        box = faces.detect(pixels)
        if box is None:
            raise UserInputError("no face found in the portrait photo for the landmark ControlNet; unset "
                                 "--pipeline.model.sas.landmark-controlnet or use a frontal photo")  # fmt: skip
        scale = size / pixels.shape[0]
        drawn = landmark_image(faces.landmarks(pixels, box) * scale, size)
        return torch.from_numpy(drawn).permute(2, 0, 1)[None].float().div(255).to(self.device)

    def _build_mvdream(self) -> MultiViewSDS:
        cfg = self.config
        return MultiViewSDS(
            replace(cfg.mvdream, prompt=cfg.mvdream.prompt or cfg.style_prompt, device=str(self.device))
        )

    def _photo(self) -> Tensor:
        """The training photo `[H, W, 3]` uint8 (the data parser's one image)."""
        path = self.kwargs["metadata"].get("portrait_image")
        if path is None:
            raise UserInputError("sas-portrait identity conditioning needs the portrait data parser's photo")
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())

    # ---------------------------------------------------------------- views
    def _random_views(self, n: int, front_cone_deg: float = 0.0) -> Cameras:
        """`n` random views around the head, none less than `front_cone_deg` of azimuth from the photo's camera."""
        rig = self.rig
        return orbit_cameras(
            n, rig.elevation_range_deg, rig.radius, image_size=rig.image_size, fov_deg=rig.fov_deg,
            azimuth_range_deg=(front_cone_deg, 360.0 - front_cone_deg), generator=self._view_generator,
        ).to(self.device)  # fmt: skip

    def _mvdream_views(self) -> tuple[Cameras, Tensor]:
        """Four equally spaced views at a random azimuth and elevation (paper 001 IV.A.4) and their c2w in
        MVDream's world frame `[4, 4, 4]`."""
        lo, hi = self.rig.elevation_range_deg
        u = torch.rand(2, generator=self._view_generator)
        start, elevation = float(u[0]) * 360.0, lo + (hi - lo) * float(u[1])
        views = self.config.mvdream.num_views
        azimuth = start + torch.arange(views, dtype=torch.float32) * (360.0 / views)
        c2w = orbit_poses(azimuth, torch.full((views,), elevation), self.rig.radius)  # [V, 3, 4], our frame
        cameras = portrait_cameras(c2w, self.rig.image_size, self.rig.fov_deg).to(self.device)
        mv = torch.eye(4).repeat(views, 1, 1)
        mv[:, :3, :3] = _TO_MVDREAM @ c2w[:, :3, :3]
        mv[:, :3, 3] = c2w[:, :3, 3] @ _TO_MVDREAM.T
        return cameras, mv.to(self.device)

    def _render_views(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """Differentiable renders `[V, 3, H, W]` in [0, 1] over the background colour, and their alphas `[V, H, W]`."""
        background = self._get_background_color()
        renders, alphas = [], []
        for i in range(cameras.shape[0]):
            rgb, alpha, _ = self.render_colours(cameras[i : i + 1], self.features_dc, self.features_rest)
            renders.append(torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0).permute(2, 0, 1))
            alphas.append(alpha[..., 0])
        return torch.stack(renders), torch.stack(alphas)

    def _silhouette_loss(self, cameras: Cameras, alphas: Tensor) -> Tensor:
        """Mean over views of ``1 - alpha`` inside the template's silhouette (:func:`template_silhouette`)."""
        K = cameras.get_intrinsics_matrices()
        terms = []
        for i in range(cameras.shape[0]):
            height, width = alphas.shape[1:]
            mask = template_silhouette(
                self._template_points, cameras.camera_to_worlds[i], K[i], width, height, self._template_spacing
            )
            terms.append(silhouette_loss(alphas[i], mask))
        return torch.stack(terms).mean()

    # ---------------------------------------------------------------- losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        cfg = self.config
        losses: dict[str, Tensor] = {}
        if cfg.front_weight > 0:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            losses["front"] = cfg.front_weight * torch.abs(gt - outputs["rgb"]).mean()
        if self.sas is not None or self.sos is not None or self._silhouette_on:
            # SAS sees the whole circle (paper 001); without it every view may keep out of the photo's cone
            cone = cfg.style_front_cone_deg if self.sas is None and self.sos is not None else 0.0
            cameras = self._random_views(cfg.guidance_views, cone)
            views, alphas = self._render_views(cameras)
            if self.sas is not None:
                terms = self.sas(views, self.step, face_embeds=self._face_embeds, landmark_image=self._landmark_image)
                losses["sas"] = terms["loss"]
                self._logs["sas_t"] = terms["t"].float().mean()
            if self.sos is not None:
                styled = ~front_cone_mask(cameras.camera_to_worlds, cfg.style_front_cone_deg)
                if bool(styled.any()):
                    losses["style"] = self.sos(views[styled], self.step)["loss"]
            if self._silhouette_on:
                losses["silhouette"] = cfg.silhouette_weight * self._silhouette_loss(cameras, alphas)
        if self.mvdream is not None:
            cameras, c2w = self._mvdream_views()
            losses["mvdream"] = self.mvdream(self._render_views(cameras)[0], self.step, c2w=c2w)["loss"]
        return losses

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training:
            metrics.update(self._logs)
            metrics["num_gaussians"] = torch.tensor(float(self.num_points))
        return metrics
