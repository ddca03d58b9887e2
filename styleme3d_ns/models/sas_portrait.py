"""Method `sas-portrait` (paper 001): one portrait photo plus a style prompt to a stylised 3D Gaussian head.

The splat starts from the head template (IV.A.1) and every parameter trains (3000 steps, IV.A.2) with
surface-guided densification (III.A.2, :class:`SurfaceGuidedStrategy`). Each step the model renders the photo's
front camera and random views around the head, and sums whatever terms are active:

    L = w_front L1(front render, photo)                      identity anchor (ours; the photo is the one real view)
      + w_SAS L_SAS(random views; face embedding, style)     paper 001 eq. 9-14  (needs SD 1.5 + IP-Adapter-FaceID)
      + w_3D L_MVDream(4 equally spaced views)               paper 001 eq. 15    (needs MVDream + SD 2.1-base)
      + w_SOS L_Gram(random views; style image)              offline style term (packaged EfficientNet-Lite0)

The diffusion terms switch themselves off with one line when their weights are not on this machine (or stop the
run with ``--pipeline.model.missing-experts error``), so on a CPU without downloads the run trains the front view
and, given ``--pipeline.model.style-image``, the Gram style on every side.
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
from styleme3d_ns.data.portrait import PortraitRig, orbit_poses, portrait_cameras
from styleme3d_ns.data.style_image import load_style_image
from styleme3d_ns.errors import UserInputError, exit_on_user_error
from styleme3d_ns.guidance.arcface import load_face_embedding
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig
from styleme3d_ns.guidance.mvdream import MultiViewSDS, MVDreamSDSConfig
from styleme3d_ns.guidance.sas import SASConfig, StyleAlignedSamplingLoss
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.frozen_colour import FrozenColourSplatModel, FrozenColourSplatModelConfig
from styleme3d_ns.models.surface_densify import SurfaceGuidedStrategy

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
    sos: GramStyleLossConfig = field(default_factory=lambda: GramStyleLossConfig(content_weight=0.0))
    """Offline Gram style term on the random views; active only with --pipeline.model.style-image."""
    face_embedding: Path | None = None
    """Precomputed 512-D ArcFace embedding of the photo (.npy/.pt) for SAS identity conditioning; default: computed
    with insightface when installed with its buffalo_l models."""
    missing_experts: Literal["skip", "error"] = "skip"
    """When SAS/MVDream weights are missing: skip the term (one line says why) or stop the run."""


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
        self._view_generator = torch.Generator().manual_seed(0)
        self._logs: dict[str, Tensor] = {}

    # ---------------------------------------------------------------- geometry
    def freezes_geometry(self) -> bool:
        return False  # a portrait is generated: positions, shapes and opacities all train (paper 001 IV.A.2)

    def stylising(self) -> bool:
        return True

    def _init_gaussians(self) -> dict[str, Tensor]:
        """Paper 001 IV.A.1: the template points with opacity 0.2, scale 0.02, black, identity rotation."""
        if self.seed_points is None:
            raise UserInputError("sas-portrait needs the portrait data parser: pass --data <photo.jpg> (no subcommand)")
        return init_gaussians(self.seed_points[0].float(), sh_degree=self.config.sh_degree)

    def _make_strategy(self) -> SurfaceGuidedStrategy:
        return SurfaceGuidedStrategy.from_default(super()._make_strategy())

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
        if not active:
            raise UserInputError(
                "sas-portrait has nothing to train: every term is off (set --pipeline.model.front-weight, a style "
                "image, or the SAS/MVDream weights)"
            )
        CONSOLE.log(f"sas-portrait terms active: {'; '.join(active)}")

    def _build_sas(self) -> StyleAlignedSamplingLoss:
        cfg = self.config
        config = replace(cfg.sas, prompt=cfg.sas.prompt or cfg.style_prompt, device=str(self.device))
        if config.identity_conditioning:
            photo = self._photo()
            self._face_embeds = load_face_embedding(photo, cfg.face_embedding).to(self.device)
        return StyleAlignedSamplingLoss(config)

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
    def _random_views(self, n: int) -> Cameras:
        return self.rig.random_views(n, generator=self._view_generator).to(self.device)

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

    def _render_views(self, cameras: Cameras) -> Tensor:
        """Differentiable renders `[V, 3, H, W]` in [0, 1] over the background colour."""
        background = self._get_background_color()
        renders = []
        for i in range(cameras.shape[0]):
            rgb, alpha, _ = self.render_colours(cameras[i : i + 1], self.features_dc, self.features_rest)
            renders.append(torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0).permute(2, 0, 1))
        return torch.stack(renders)

    # ---------------------------------------------------------------- losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        cfg = self.config
        losses: dict[str, Tensor] = {}
        if cfg.front_weight > 0:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            losses["front"] = cfg.front_weight * torch.abs(gt - outputs["rgb"]).mean()
        if self.sas is not None or self.sos is not None:
            views = self._render_views(self._random_views(cfg.guidance_views))
            if self.sas is not None:
                terms = self.sas(views, self.step, face_embeds=self._face_embeds)
                losses["sas"] = terms["loss"]
                self._logs["sas_t"] = terms["t"].float().mean()
            if self.sos is not None:
                losses["style"] = self.sos(views, self.step)["loss"]
        if self.mvdream is not None:
            cameras, c2w = self._mvdream_views()
            losses["mvdream"] = self.mvdream(self._render_views(cameras), self.step, c2w=c2w)["loss"]
        return losses

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training:
            metrics.update(self._logs)
            metrics["num_gaussians"] = torch.tensor(float(self.num_points))
        return metrics
