"""Method `sas-portrait`: one portrait photo plus a style prompt to a stylised 3D Gaussian head.

Paper 001: "Fast 3D Stylized Gaussian Portrait Generation From a Single Image With Style Aligned Sampling Loss".

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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from gsplat.strategy.ops import remove
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.face_fit import FrontCamera
from styleme3d_ns.data.head_template import init_gaussians
from styleme3d_ns.data.portrait import PortraitRig, orbit_poses, random_views
from styleme3d_ns.data.portrait_colour import uncovered
from styleme3d_ns.data.portrait_style import stylise_colours, teacher_views
from styleme3d_ns.guidance.arcface import load_face_embedding
from styleme3d_ns.guidance.faces import FaceIdentity, landmark_image
from styleme3d_ns.guidance.gram import GramStyleLossConfig
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks
from styleme3d_ns.guidance.mvdream import MultiViewSDS, MVDreamSDSConfig
from styleme3d_ns.guidance.prompts import with_fallback_prompt
from styleme3d_ns.guidance.sas import SASConfig, StyleAlignedSamplingLoss
from styleme3d_ns.guidance.style_teacher import StyleTeacher
from styleme3d_ns.models.base_splat import Gaussians, splatfacto_strategy
from styleme3d_ns.models.lifecycle import Phase
from styleme3d_ns.models.loss_terms import LossTerm, TermOff, Views
from styleme3d_ns.models.portrait_priors import SilhouettePrior, SilhouettePriorConfig, front_cone_mask
from styleme3d_ns.models.style_reference import StyleImageSplatModel, StyleImageSplatModelConfig
from styleme3d_ns.models.surface_densify import SurfaceGuidedStrategy
from styleme3d_ns.render.camera import square_cameras

GREY_INIT_RGB = 0.5
"""Initial colour (see :attr:`SASPortraitModelConfig.init_rgb`): logit 0, where a sigmoid colour moves at
``0.25 x lr`` per step, the rate of paper 001's linear colours (SH DC, ``0.28 x lr``) at the same lr."""
PRIOR_OPACITY = 0.8
"""Initial opacity with the offline prior (ours). Paper 001's 0.2 leaves the 10,000-point head translucent: the
front view then sees, and the front L1 repaints, the back of the head's Gaussians (confetti on the back, measured
on the astronaut at 300 steps); at 0.8 the face covers them from the first step."""
FACING_KEY = "portrait_facing"
"""Key of the per-Gaussian "faces the photo's camera" flag in the densification state (inherited by children)."""
FACING_COS = 0.35
"""With photo-only training, a Gaussian's colour trains only where its initial surface normal is within about 70
degrees of its ray to the photo's camera (cosine at least this)."""
COLOUR_MASK = 0.9
"""With photo-only training, a Gaussian's colour trains only where the head mask at its centre is at least this."""
STYLE_WEIGHT = 1e-4
"""Default Gram style weight: the Gram loss starts ~1e4 times the front L1, and 1e-3 already loses the face
(docs/sas-portrait.md, the offline style table)."""
STYLE_FRONT_CONE_DEG = 45.0
"""Default :attr:`SASPortraitModelConfig.style_front_cone_deg`: views within 45 degrees of the photo show mostly the
face the photo already fixes."""

# Our template frame is +y up with the face toward +z; MVDream's world is z-up with the front view looking along +y
# (camera on -y). This rotation takes our world vectors to MVDream's: x -> x, y -> z, z -> -y.
_TO_MVDREAM = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def facing_the_photo(means: Tensor, normals: Tensor, rig: PortraitRig) -> Tensor:
    """`[N]` bool: the normals `[N, 3]` at `means` `[N, 3]` are within :data:`FACING_COS` of the ray to the
    photo's camera (on +z at the rig's distance)."""
    rays = torch.tensor([0.0, 0.0, rig.radius], device=means.device, dtype=means.dtype) - means
    return (torch.nn.functional.normalize(rays, dim=-1) * normals).sum(dim=-1) >= FACING_COS


@dataclass
class SASPortraitModelConfig(StyleImageSplatModelConfig):
    """sas-portrait: a stylised 3D Gaussian head from one photo (paper 001)."""

    _target: type = field(default_factory=lambda: SASPortraitModel)
    style_prompt: str = ""
    """Style text, e.g. "3D cartoon style" (paper 001 IV.B); used by the SAS and MVDream terms."""
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
    """Offline Gram style term on the random views; active only with --pipeline.model.style-image (an optional
    style image, packaged EfficientNet-Lite0 by default). Its weight is
    small (1e-4) because the Gram loss is ~1e4x the front L1; 1e-3 already overrides the photo's face."""
    face_embedding: Path | None = None
    """Precomputed 512-D ArcFace embedding of the photo (.npy/.pt) for SAS identity conditioning; default: computed
    with insightface when installed with its buffalo_l models."""
    init: Literal["prior", "template"] = "prior"
    """prior (ours, offline): each Gaussian starts with the colour the data parser's offline prior gave its point (the
    photo, its mirror image, the person's hair and skin colours) and opacity prior-opacity, so the photo's view does
    not see through the face to the back; template: paper 001 IV.A.1, opacity 0.2 and init-rgb everywhere."""
    prior_opacity: float = PRIOR_OPACITY
    """Initial opacity of every Gaussian with init prior (in (0, 1))."""
    photo_only: Literal["auto", "on", "off"] = "auto"
    """Train only the Gaussians the photo's camera sees (a z-buffer of their centres, each step): the rest keep the
    offline prior's colours and places, which nothing offline supervises (Adam, which normalises gradients, would
    repaint them at full speed from the faint light they add to the front view: confetti). auto: on with init prior
    while no SAS, MVDream or Gram style term is active."""
    init_rgb: float = GREY_INIT_RGB
    """With init template: the initial colour of every Gaussian, one RGB value in [0, 1]. Paper 001 IV.A.1 says 0
    (black) for linear colours; ours are sigmoid logits at sh_degree 0, where black barely moves and the splat fades
    out instead (0 = paper)."""
    silhouette_prior: Literal["auto", "on", "off"] = "auto"
    """Penalise 1 - alpha inside the head template's silhouette on the random views, so the sides and back stay
    solid. auto: only while neither SAS nor MVDream is active (they shape the head and may move its outline) and
    photo-only training does not hold the offline prior's head (it is solid from every side already)."""
    silhouette_weight: float = 1.0
    """Weight of the template-silhouette prior (mean 1 - alpha over the template's pixels, 0 to 1, like the L1)."""
    style_front_cone_deg: float = STYLE_FRONT_CONE_DEG
    """The Gram style term uses no view less than this azimuth (degrees) from the photo's camera, where the photo
    decides the colours; 0 styles every view. Without SAS the random views are drawn outside the cone."""


def head_template_gaussians(model: SASPortraitModel) -> Gaussians:
    """Paper 001 IV.A.1: the data parser's points with scale 0.02 and identity rotation; colour and opacity: the
    offline prior's (`init` prior) or `init_rgb` and paper 001's 0.2."""
    if model.seed_points is None:
        raise UserInputError("sas-portrait needs the portrait data parser: pass --data <photo.jpg> (no subcommand)")
    points, rgb = model.seed_points
    config = model.config
    if config.init == "prior":
        return init_gaussians(points.float(), opacity=config.prior_opacity, colour=rgb.float() / 255.0,
                              sh_degree=config.sh_degree)  # fmt: skip
    return init_gaussians(points.float(), colour=config.init_rgb, sh_degree=config.sh_degree)


def surface_guided_strategy(config: SASPortraitModelConfig, num_train_data: int) -> SurfaceGuidedStrategy:
    """Paper 001 III.A.2: splatfacto's densification, with new Gaussians kept on the surface. The offline prior starts
    opaque on purpose: gsplat's step-0 opacity reset would cap it at 0.2."""
    default = splatfacto_strategy(config, num_train_data)
    return SurfaceGuidedStrategy.from_default(default, reset_at_start=config.init != "prior")


class SASPortraitModel(StyleImageSplatModel):
    """Fast 3D Stylized Gaussian Portrait Generation (paper 001): full-splat training from the head template with
    the photo's front view, SAS, MVDream and offline style and silhouette terms."""

    config: SASPortraitModelConfig
    method_name = "sas-portrait"
    initial_gaussians = staticmethod(head_template_gaussians)
    densification = staticmethod(surface_guided_strategy)

    def populate_modules(self) -> None:
        rig = self.kwargs.get("metadata", {}).get("portrait_rig")
        self.rig: PortraitRig = rig if isinstance(rig, PortraitRig) else PortraitRig()
        self._view_generator = torch.Generator().manual_seed(0)
        self._face_embeds: Tensor | None = None  # SAS identity conditioning, set when SAS is built
        self._stylist: MagentaStyleNetworks | None = None  # the offline teacher's network, set with a style image
        self._landmark_image: Tensor | None = None
        self._seen: tuple[int, Tensor, Tensor] | None = None  # (step, seen by the photo, and inside the head)
        super().populate_modules()
        normals = self.kwargs.get("metadata", {}).get("points3D_normals")
        if self.config.init == "prior" and normals is not None and normals.shape[0] == self.num_points:
            # per Gaussian, carried by gsplat through densification and pruning like its own running statistics
            self.strategy_state[FACING_KEY] = facing_the_photo(self.means.detach(), normals.to(self.means), self.rig)

    @property
    def _silhouette_config(self) -> SilhouettePriorConfig:
        return SilhouettePriorConfig(weight=self.config.silhouette_weight)

    def target_phase(self) -> Phase:
        return "generate"  # a portrait is generated: positions, shapes and opacities all train (paper 001 IV.A.2)

    # ---------------------------------------------------------------- terms
    def loss_terms(self) -> list[LossTerm]:
        cfg = self.config
        if len(self.style_paths) > 1:
            raise UserInputError(f"{self.method_name} trains its geometry with the style, so {len(self.style_paths)} "
                                 "style images cannot share one geometry as a palette: pass one "
                                 "--pipeline.model.style-image")  # fmt: skip
        front = self.photo_term("front", cfg.front_weight, "front-view L1")
        if self.style_paths:
            self.style_image()  # a bad style image stops the run before anything is built
            # the offline teacher styles the trained head at the last step (step_post_backward)
            self._stylist = self.teacher.networks(cfg.offline_teacher, self.device)
        terms = [front]
        if self.style_paths and self._stylist is None:  # without the teacher, the Gram term styles the sides
            terms.append(self.sos_term(views="styled"))
        no_prompt = 'no prompt (pass --pipeline.model.style-prompt "3D cartoon style")'
        sas, mvdream = (with_fallback_prompt(c, cfg.style_prompt) for c in (cfg.sas, cfg.mvdream))
        terms += [
            LossTerm(name="sas", label="SAS", config=sas, flag="sas",
                     build=lambda: self._build_sas(sas), views="random",
                     inputs={"face_embeds": "face_embeds", "landmark_image": "landmark_image"},
                     off_reason=None if sas.prompt else no_prompt),
            LossTerm(name="mvdream", label="MVDream 3D loss", config=mvdream, flag="mvdream",
                     build=lambda: self._build_mvdream(mvdream), views="mvdream",
                     inputs={"c2w": "c2w"}, off_reason=None if mvdream.prompt else no_prompt),
            # after SAS and MVDream: whether it runs depends on whether they did
            LossTerm(name="silhouette", label="template silhouette prior", config=self._silhouette_config,
                     build=self._build_silhouette, views="random", inputs={"alphas": "alphas", "cameras": "cameras"},
                     off_reason=self._silhouette_off_reason()),
        ]  # fmt: skip
        return terms

    @torch.no_grad()
    def _stylise(self) -> None:
        """The offline teacher styles the head from a ring of views at once (data/portrait_style.py), as styleme3d
        stylises a reconstructed scene: every side from one solve, the trained face included."""
        teacher = StyleTeacher(self.config.teacher, self._stylist, self.style_image())
        splat = (self.means, self.quats, torch.exp(self.scales), torch.sigmoid(self.opacities)[:, 0])
        rgb = stylise_colours(*splat, torch.sigmoid(self.features_dc), teacher, self.rig, self._get_background_color())
        self.features_dc.data.copy_(torch.logit(rgb.clamp(1e-4, 1 - 1e-4)))
        CONSOLE.log(f"offline teacher: the head styled from {len(teacher_views(self.rig)[0])} views around it")

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        """After the terms are built: say when the style prompt does nothing here, and with photo-only training,
        gate every optimiser step to the Gaussians the photo sees."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        prompt = self.config.style_prompt
        if prompt and not {"sas", "mvdream"} & set(self.guidance):
            CONSOLE.log(f"style prompt {prompt!r} does nothing offline: SAS and MVDream need their weights (the 'off:' "
                        "lines above); --pipeline.model.style-image IMAGE styles the head offline")  # fmt: skip
        if self._gates_to_photo():
            for optimizer in training_callback_attributes.optimizers.optimizers.values():
                optimizer.register_step_pre_hook(self._gate_gradients)
            CONSOLE.log("sas-portrait: only the Gaussians the photo sees train; the offline prior keeps the rest "
                        "(--pipeline.model.photo-only)")  # fmt: skip
        return callbacks

    def _silhouette_off_reason(self) -> str | None:
        cfg = self.config
        if cfg.silhouette_prior == "off" or cfg.silhouette_weight == 0:
            return "disabled (--pipeline.model.silhouette-prior/--pipeline.model.silhouette-weight)"
        if self.seed_points is None:
            return "no head template (the portrait data parser provides it)"
        return None

    def _gates_to_photo(self) -> bool:
        """Whether only the Gaussians the photo sees train (`photo_only`), given the built terms."""
        cfg = self.config
        if cfg.photo_only != "auto":
            return cfg.photo_only == "on"
        return cfg.init == "prior" and not {"sas", "mvdream", "sos"} & set(self.guidance)

    def _seen_by_photo(self) -> tuple[Tensor, Tensor]:
        """`[N]` bool each, this step: the Gaussians whose centre the photo's camera sees (nothing nearer at its
        pixel), and those of them whose pixel is inside the head (head mask >= :data:`COLOUR_MASK`)."""
        if self._seen is None or self._seen[0] != self.step or self._seen[1].shape[0] != self.num_points:
            camera = FrontCamera(self.rig.image_size, self.rig.fov_deg, self.rig.radius)
            means = self.means.detach().double().cpu().numpy()
            seen = torch.from_numpy(uncovered(means, camera, splat=1))  # conservative: no leaks through gaps
            inside = seen.clone()
            mask = self.kwargs.get("metadata", {}).get("portrait_head_mask")
            if mask is not None:
                pixels = torch.from_numpy(camera.project(means)[0]).floor().long().clamp(0, mask.shape[0] - 1)
                inside &= mask[pixels[:, 1], pixels[:, 0]] >= COLOUR_MASK
            self._seen = (self.step, seen.to(self.device), inside.to(self.device))
        return self._seen[1], self._seen[2]

    def _gate_gradients(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        """Optimizer pre-step hook (`photo_only`): zero the gradients of the Gaussians the photo does not see, and
        the colour gradients of those on the head's outline, where the photo's target fades to the white background
        (they should fade out, not turn white), and of those the photo sees at a grazing angle (their pixels are the
        face's outline: trained, they turn into speckles seen from the side)."""
        seen, inside = self._seen_by_photo()
        facing = self.strategy_state.get(FACING_KEY)
        if facing is not None and facing.shape == inside.shape:
            inside = inside & facing
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.shape[:1] == seen.shape:
                    param.grad[~(inside if param is self.features_dc else seen)] = 0.0

    def step_post_backward(self, step: int) -> None:
        super().step_post_backward(step)
        if self._gates_to_photo():
            self._drop_background()
        end = self.lifecycle.plan.end if self.lifecycle.plan is not None else None
        if self._stylist is not None and end is not None and step == end - 1:
            self._stylise()  # after the last optimiser step: the saved colours are the teacher's

    @torch.no_grad()
    def _drop_background(self) -> None:
        """Photo-only training keeps the background out of the head: a Gaussian whose centre the photo's camera sees
        off the head (head mask < 0.5: background or body) is removed (gsplat's own removal: optimiser state and
        densification statistics follow)."""
        mask = self.kwargs.get("metadata", {}).get("portrait_head_mask")
        if mask is None:
            return
        camera = FrontCamera(self.rig.image_size, self.rig.fov_deg, self.rig.radius)
        pixels = torch.from_numpy(camera.project(self.means.detach().double().cpu().numpy())[0]).floor().long()
        inside = ((pixels >= 0) & (pixels < mask.shape[0])).all(dim=1)
        pixels = pixels.clamp(0, mask.shape[0] - 1)
        off_head = ~inside | (mask[pixels[:, 1], pixels[:, 0]] < 0.5)
        if off_head.any():
            remove(self.gauss_params, self.optimizers, self.strategy_state, off_head.to(self.device))

    def _build_silhouette(self) -> SilhouettePrior:
        diffusion = "sas" in self.guidance or "mvdream" in self.guidance
        if self.config.silhouette_prior == "auto" and diffusion:
            raise TermOff("SAS/MVDream shape the head (--pipeline.model.silhouette-prior on keeps it)")
        if self.config.silhouette_prior == "auto" and self._gates_to_photo():
            raise TermOff("the offline prior's head is solid from every side and only what the photo sees trains "
                          "(--pipeline.model.silhouette-prior on keeps it)")  # fmt: skip
        return SilhouettePrior(self._silhouette_config, self.seed_points[0].float()).to(self.device)

    def _build_sas(self, config: SASConfig) -> StyleAlignedSamplingLoss:
        if config.identity_conditioning:
            photo = self._photo()
            self._face_embeds = load_face_embedding(photo, self.config.face_embedding).to(self.device)
            if config.landmark_controlnet is not None:
                self._landmark_image = self._photo_landmark_image(photo, config.image_size)
        return StyleAlignedSamplingLoss.from_config(config, self.device)

    def _photo_landmark_image(self, photo: Tensor, size: int) -> Tensor:
        """The photo's 68 dlib landmarks drawn for the landmark ControlNet (paper 001 eq. 10's I_l), `[1, 3, S, S]`."""
        pixels = photo.numpy()
        faces = FaceIdentity()
        box = faces.detect(pixels)
        if box is None:
            raise UserInputError("no face found in the portrait photo for the landmark ControlNet; unset "
                                 "--pipeline.model.sas.landmark-controlnet or use a frontal photo")  # fmt: skip
        scale = size / pixels.shape[0]
        drawn = landmark_image(faces.landmarks(pixels, box) * scale, size)
        return torch.from_numpy(drawn).permute(2, 0, 1)[None].float().div(255).to(self.device)

    def _build_mvdream(self, config: MVDreamSDSConfig) -> MultiViewSDS:
        return MultiViewSDS.from_config(config, self.device)

    def _photo(self) -> Tensor:
        """The training photo `[H, W, 3]` uint8 (the data parser's one image)."""
        path = self.kwargs["metadata"].get("portrait_image")
        if path is None:
            raise UserInputError("sas-portrait identity conditioning needs the portrait data parser's photo")
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())

    # ---------------------------------------------------------------- views
    def view_sets(self) -> dict[str, Callable[[Callable[[str], Views]], Views]]:
        return {"random": self._random_view_set, "styled": self._styled_view_set, "mvdream": self._mvdream_view_set}

    def _random_view_set(self, views: Callable[[str], Views]) -> Views:
        """`guidance_views` random views around the head with their alphas and cameras. SAS sees the whole circle
        (paper 001); without it the views keep out of the photo's cone, where only the style term looks."""
        cfg = self.config
        cone = cfg.style_front_cone_deg if "sas" not in self.guidance and "sos" in self.guidance else 0.0
        cameras = self._random_views(cfg.guidance_views, cone)
        images, alphas = self._render_views(cameras)
        return Views(images, alphas=alphas, cameras=cameras, face_embeds=self._face_embeds,
                     landmark_image=self._landmark_image)  # fmt: skip

    def _styled_view_set(self, views: Callable[[str], Views]) -> Views:
        """The random views the Gram style may paint: none within `style_front_cone_deg` of the photo's camera."""
        random = views("random")
        return random.subset(~front_cone_mask(random["cameras"].camera_to_worlds, self.config.style_front_cone_deg))

    def _mvdream_view_set(self, views: Callable[[str], Views]) -> Views:
        cameras, c2w = self._mvdream_views()
        return Views(self._render_views(cameras)[0], c2w=c2w)

    def _random_views(self, n: int, front_cone_deg: float = 0.0) -> Cameras:
        """`n` random views around the head, none less than `front_cone_deg` of azimuth from the photo's camera."""
        rig = self.rig
        return random_views(
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
        cameras = square_cameras(c2w, self.rig.image_size, self.rig.fov_deg).to(self.device)
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

    # ---------------------------------------------------------------- metrics
    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training:
            metrics["num_gaussians"] = torch.tensor(float(self.num_points))
        return metrics
