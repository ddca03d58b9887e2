"""MVDream multi-view SDS: the 3D-consistency loss of paper 001 (section III.C eq. 15, IV.A.4).

MVDream (Shi et al. 2023, ``bytedance/MVDream``) is Stable Diffusion 2.1-base fine-tuned to denoise the 4 views of
one object jointly. Its UNet differs from SD's in exactly two places, and both map onto diffusers' building blocks:

1. **3D self-attention.** Every transformer block's self-attention (``attn1``) attends across the views of an object:
   tokens ``[B * V, h w, C]`` are regrouped to ``[B, V h w, C]`` before attention and back after
   (MVDream ``BasicTransformerBlock3D``). Here: :class:`MultiViewAttnProcessor`, installed on every attention of a
   diffusers :class:`~diffusers.UNet2DConditionModel`, with ``V`` passed as ``cross_attention_kwargs={"num_views": V}``;
   cross-attention (``attn2``, text) stays per view.
2. **Camera embedding.** ``emb = time_embed(t) + camera_embed(camera)`` with ``camera_embed`` = Linear(16, 4 c) -> SiLU
   -> Linear(4 c, 4 c) on the flattened, translation-normalised 4x4 camera-to-world matrix. That is diffusers'
   ``class_embed_type="projection"`` (a ``TimestepEmbedding`` MLP added to the time embedding), so the camera goes in
   as ``class_labels``.

The released checkpoint (``MVDream/MVDream`` ``sd-v2.1-base-4view.pt``) is a whole ldm ``LatentDiffusion`` state
dict; the UNet is under ``model.diffusion_model.*`` in the original (ldm / openaimodel) layout. Its keys are converted
by diffusers' own ldm -> diffusers converter (:func:`diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`)
after renaming ``camera_embed.{0,2}`` to the ``label_emb.0.{0,2}`` keys the converter maps to ``class_embedding``.
The VAE, text encoder (OpenCLIP ViT-H/14, penultimate layer), tokenizer and noise schedule are SD 2.1-base's (MVDream
only fine-tuned the UNet), read from a diffusers SD 2.1-base folder by :func:`load_stable_diffusion` with
``load_unet=False`` (the folder needs no ``unet/``).

Cameras (the ``C`` of eq. 15): camera-to-world matrices with OpenGL camera axes (x right, y up, z backwards, as
nerfstudio's ``camera_to_worlds``) in a z-up world centred on the object, the convention of MVDream's
``camera_utils.get_camera``; :func:`mvdream_poses` builds the 4 equally spaced views, :func:`camera_condition` turns
matrices into the model's 16-vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from styleme3d_ns.guidance.base import GuidanceConfig
from styleme3d_ns.guidance.diffusion import (
    ScheduledDiffusionGuidance,
    SdsWeighting,
    StableDiffusionComponents,
    TimestepSchedule,
    TimestepScheduleConfig,
    load_stable_diffusion,
    paper_001_timesteps,
    predict_noise,
    sds_grad,
    sds_loss,
    sds_weight,
)
from styleme3d_ns.guidance.prompts import PromptConfig
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights
from styleme3d_ns.render.camera import homogeneous, orbit_poses

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

MVDREAM_REPO = "MVDream/MVDream"
"""Hugging Face repo of the released MVDream checkpoints."""
MVDREAM_FILENAME = "sd-v2.1-base-4view.pt"
"""The SD 2.1-base 4-view checkpoint in :data:`MVDREAM_REPO` (ldm layout, ~5 GB, float32)."""
MVDREAM_BASE_MODEL = "stabilityai/stable-diffusion-2-1-base"
"""Diffusers SD 2.1-base folder/repo the VAE, text encoder, tokenizer and scheduler are read from."""
LDM_UNET_PREFIX = "model.diffusion_model."
"""Prefix of the UNet's keys in an ldm ``LatentDiffusion`` state dict."""
CAMERA_DIM = 16
"""Length of MVDream's camera vector: a flattened 4x4 camera-to-world matrix."""


# ---------------------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class MultiViewUNetSpec:
    """MVDream UNet hyper-parameters in the ldm ``openaimodel`` vocabulary; defaults are ``sd-v2-base.yaml``'s.

    ``attention_resolutions`` lists the downsampling factors with a transformer (1 = full latent resolution);
    heads per level are ``channels // num_head_channels`` (SD 2 style fixed head width).
    """

    model_channels: int = 320
    """Channels of the first level; the time/camera embedding width is 4x this."""
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Channel multiplier per level."""
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    """Downsampling factors whose blocks carry a (multi-view) transformer."""
    num_res_blocks: int = 2
    """ResBlocks per down level (up levels have one more)."""
    num_head_channels: int = 64
    """Width of one attention head."""
    context_dim: int = 1024
    """Text embedding width (OpenCLIP ViT-H/14: 1024)."""
    camera_dim: int = CAMERA_DIM
    """Length of the camera vector fed to ``camera_embed``."""
    transformer_depth: int = 1
    """Transformer blocks per attention site."""
    in_channels: int = 4
    """Latent channels in."""
    out_channels: int = 4
    """Predicted-noise channels out."""
    sample_size: int = 32
    """Latent side the model was trained at (256 px images / VAE factor 8)."""

    def diffusers_config(self) -> dict[str, Any]:
        """Keyword arguments of the equivalent :class:`~diffusers.UNet2DConditionModel` (camera as a projection
        class embedding, linear transformer projections as in SD 2)."""
        channels = [self.model_channels * m for m in self.channel_mult]
        has_attn = [2**level in self.attention_resolutions for level in range(len(channels))]
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": tuple(channels),
            "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
            "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
            "layers_per_block": self.num_res_blocks,
            "cross_attention_dim": self.context_dim,
            # diffusers' historical naming: for SD-style UNets `attention_head_dim` holds the number of heads
            "attention_head_dim": tuple(c // self.num_head_channels for c in channels),
            "transformer_layers_per_block": self.transformer_depth,
            "use_linear_projection": True,
            "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": self.camera_dim,
        }


class MultiViewAttnProcessor:
    """Attention processor that makes self-attention span the ``V`` views of each object (MVDream's 3D attention).

    Self-attention (no ``encoder_hidden_states``) regroups tokens ``[B * V, L, C] -> [B, V * L, C]``, runs ordinary
    scaled-dot-product attention, and splits back; rows must be grouped view-major per object (``b * V + v``).
    Cross-attention and ``num_views=1`` are plain per-image attention, so with ``num_views=1`` the UNet is exactly a
    standard SD UNet.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._attend = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        num_views: int = 1,
    ) -> Tensor:
        if encoder_hidden_states is not None or num_views == 1:
            return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        rows, length, channels = hidden_states.shape
        if rows % num_views:
            raise ValueError(f"multi-view attention: batch {rows} is not a multiple of num_views={num_views}.")
        joint = hidden_states.reshape(rows // num_views, num_views * length, channels)
        out = self._attend(attn, joint, None, attention_mask, temb)
        return out.reshape(rows, length, channels)


def build_multiview_unet(spec: MultiViewUNetSpec | None = None) -> UNet2DConditionModel:
    """A randomly initialised MVDream UNet: a diffusers UNet with :class:`MultiViewAttnProcessor` everywhere.

    Call it as ``unet(latents [B*V, 4, h, w], t [B*V], encoder_hidden_states=text [B*V, L, D],
    class_labels=camera_condition(c2w) [B*V, 16], cross_attention_kwargs={"num_views": V}).sample``.
    Do not call ``set_attention_slice``/``set_attn_processor`` on it afterwards: that removes the 3D attention.
    """
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**(spec or MultiViewUNetSpec()).diffusers_config())
    unet.set_attn_processor(MultiViewAttnProcessor())
    return unet


def convert_mvdream_unet_state_dict(state_dict: Mapping[str, Tensor], spec: MultiViewUNetSpec) -> dict[str, Tensor]:
    """Convert the UNet of an ldm-layout MVDream state dict (``model.diffusion_model.*``) to diffusers keys.

    Other entries (``first_stage_model.*``, ``cond_stage_model.*``, schedule buffers) are ignored.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(LDM_UNET_PREFIX):
            continue
        local = key[len(LDM_UNET_PREFIX) :]
        if local.startswith("camera_embed."):  # camera_embed.{0,2} -> label_emb.0.{0,2}: the converter's class MLP
            local = "label_emb.0." + local[len("camera_embed.") :]
        renamed[LDM_UNET_PREFIX + local] = value
    if not renamed:
        raise MissingWeightsError(
            f"MVDream checkpoint has no '{LDM_UNET_PREFIX}*' keys (found e.g. {list(state_dict)[:3]}); "
            f"expected the ldm state dict {MVDREAM_FILENAME} from {MVDREAM_REPO}."
        )
    return convert_ldm_unet_checkpoint(renamed, spec.diffusers_config())


def load_multiview_unet(
    path_or_id: str | Path = MVDREAM_REPO,
    *,
    filename: str = MVDREAM_FILENAME,
    spec: MultiViewUNetSpec | None = None,
    hint: str,
    allow_download: bool = False,
) -> UNet2DConditionModel:
    """Load MVDream's UNet from the released ldm checkpoint (strictly: every key must match), frozen, float32 CPU.

    Args:
        path_or_id: The ``.pt`` file, a folder holding ``filename``, or an HF repo id in the local cache.
        filename: Checkpoint file inside a folder/repo (default :data:`MVDREAM_FILENAME`).
        spec: Architecture (default: SD 2.1-base 4-view).
        hint: How the user passes a path instead; ends the one-line :class:`MissingWeightsError`.
        allow_download: Permit a Hub download (see :func:`resolve_weights`).
    """
    spec = spec or MultiViewUNetSpec()
    path = resolve_weights("MVDream", path_or_id, filename=filename, hint=hint, allow_download=allow_download)
    try:
        try:  # memory-map the 5 GB file: only the UNet's tensors are ever read
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file becomes the same one-line error as a missing one
        reason = " ".join(str(err).split())[:200]
        raise MissingWeightsError(
            f"MVDream weights: '{path}' could not be read as a torch checkpoint ({reason}); re-download "
            f"'{filename}' from {MVDREAM_REPO} or {hint}."
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    unet = build_multiview_unet(spec)
    try:
        converted = {k: v for k, v in convert_mvdream_unet_state_dict(state, spec).items() if v is not None}
        missing, unexpected = unet.load_state_dict(converted, strict=False)
        problem = f"missing {missing[:2]} ({len(missing)} in all), unexpected {unexpected[:2]} ({len(unexpected)})"
    except (KeyError, RuntimeError) as err:  # no camera_embed, or tensors of the wrong shape
        missing, unexpected, problem = ["?"], [], " ".join(str(err).split())[:200]
    if missing or unexpected:
        raise MissingWeightsError(
            f"MVDream weights: '{path}' does not fit the MVDream UNet (diffusers key names: {problem}); use "
            f"{filename} from {MVDREAM_REPO} or {hint}."
        )
    return unet.requires_grad_(False).eval()


# --------------------------------------------------------------------------------------------------------- cameras


def mvdream_poses(
    num_views: int = 4,
    *,
    elevation_deg: float = 15.0,
    azimuth_start_deg: float = 0.0,
    radius: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Camera-to-world matrices ``[V, 4, 4]`` of ``V`` views equally spaced in azimuth, looking at the origin.

    OpenGL camera axes in a z-up world, MVDream's ``get_camera(..., blender_coord=True)`` convention: azimuth 0 is the
    camera on the -y axis, azimuth grows counter-clockwise seen from +z, elevation lifts the camera towards +z.
    """
    azimuths = azimuth_start_deg + 360.0 * torch.arange(num_views, dtype=torch.float64) / num_views
    elevations = torch.full((num_views,), float(elevation_deg), dtype=torch.float64)
    poses = orbit_poses(azimuths, elevations, radius, azimuth_zero=(0.0, -1.0, 0.0), dtype=torch.float64)
    return homogeneous(poses).to(dtype)


def camera_condition(c2w: Tensor) -> Tensor:
    """MVDream's camera vector ``[N, 16]`` from camera-to-world matrices ``[N, 4, 4]`` or ``[N, 3, 4]``.

    The translation is scaled to unit length (MVDream ``normalize_camera``: only the direction to the camera counts)
    and the 4x4 matrix is flattened row-major.
    """
    if c2w.ndim != 3 or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
        raise ValueError(f"c2w must be [N, 4, 4] or [N, 3, 4] camera-to-world matrices, got {tuple(c2w.shape)}.")
    mats = c2w.float()
    if mats.shape[-2] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=mats.device).expand(mats.shape[0], 1, 4)
        mats = torch.cat([mats, bottom], dim=1)
    mats = mats.clone()
    translation = mats[:, :3, 3]
    mats[:, :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + 1e-8)
    return mats.reshape(-1, 16)


# ------------------------------------------------------------------------------------------------------- guidance


@dataclass
class MVDreamSDSConfig(PromptConfig, GuidanceConfig):
    """Config of :class:`MultiViewSDS` (paper 001 eq. 15, IV.A.4). Its prompt is ``y`` of eq. 15 (the style
    description, e.g. 'a 3D cartoon style portrait of a man')."""

    weight: float = 0.05
    """Multiplier of the 3D loss (paper 001 IV.A.4: 0.05 for the whole training)."""
    guidance_scale: float = 10.0
    """Classifier-free guidance scale (paper 001 IV.A.4: 10.0)."""
    num_views: int = 4
    """Views denoised jointly; renders come in groups of this many (paper 001: four equally spaced views)."""
    image_size: int = 256
    """Renders are resized to this square size before VAE encoding (MVDream was trained at 256 px)."""
    timesteps: TimestepScheduleConfig = field(default_factory=paper_001_timesteps)
    """Timestep window: U(0.02, 0.98) T before step 1000, U(0.02, 0.5) T after (paper 001 gives it for SAS and none
    for MVDream; threestudio's MVDream configs also anneal 0.98 -> 0.5)."""
    weighting: SdsWeighting = "sds"
    """w(t) of eq. 15: 'sds' = 1 - alpha_bar_t (DreamFusion), 'uniform' = 1."""
    checkpoint: str = MVDREAM_REPO
    """MVDream checkpoint: a .pt file, a folder holding checkpoint_file, or an HF repo id in the local cache."""
    checkpoint_file: str = MVDREAM_FILENAME
    """File name of the checkpoint inside a folder or repo."""
    base_model: str = MVDREAM_BASE_MODEL
    """Diffusers SD 2.1-base folder or cached repo id: VAE, OpenCLIP text encoder, tokenizer, noise schedule."""
    half: bool = True
    """float16 networks on CUDA (CPU is always float32)."""
    seed: int | None = None
    """Seed of the timestep/noise generator; None draws from torch's global RNG."""


class MultiViewSDS(ScheduledDiffusionGuidance):
    """SDS with MVDream over groups of ``V`` views (paper 001 eq. 15).

    ``grad_z = w(t) (eps_p(z_t, t, y, C) - eps)`` on the latents ``z`` of the ``V`` renders of each object, with one
    ``t`` per object (the views are one joint sample) and independent noise per view; CFG with scale 10.

    Usage: ``sds = MultiViewSDS(cfg); out = sds(renders [B*V, 3, H, W], step, c2w=[B*V, 4, 4])``; returns
    ``{"loss", "loss_mvdream", "t", "grad_norm"}``. ``"loss"`` is ``weight * loss_mvdream``.
    """

    config: MVDreamSDSConfig

    def __init__(
        self,
        config: MVDreamSDSConfig,
        components: StableDiffusionComponents | None = None,
        *,
        flag_prefix: str = "--pipeline.model.mvdream.",
        device: str | torch.device | None = None,
    ) -> None:
        """``components`` overrides loading (e.g. tiny test models); its ``unet`` must be a
        :func:`build_multiview_unet` UNet. ``flag_prefix`` is how the user's CLI spells this config, for the
        one-line missing-weights errors (e.g. ``--pipeline.model.mvdream.checkpoint PATH``)."""
        super().__init__(config)
        if config.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {config.num_views}.")
        if components is None:
            unet = load_multiview_unet(
                config.checkpoint,
                filename=config.checkpoint_file,
                hint=f"pass {flag_prefix}checkpoint PATH (the {config.checkpoint_file} file)",
            )
            components = load_stable_diffusion(
                config.base_model,
                device=device,
                half=config.half,
                hint=f"pass {flag_prefix}base-model DIR (a diffusers SD 2.1-base folder)",
                load_unet=False,  # MVDream replaces SD 2.1's UNet: neither needed on disk nor read
            )
            components.unet = unet
            components.to(components.vae.device, components.vae.dtype).freeze()
        if not isinstance(components.unet.attn_processors.get(_first_attn(components.unet)), MultiViewAttnProcessor):
            raise ValueError("components.unet must be an MVDream UNet from build_multiview_unet/load_multiview_unet.")
        self.hold_components(components)
        self.schedule = TimestepSchedule(config.timesteps, components.num_train_timesteps)
        self.generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.to(device=components.device, dtype=components.dtype)
        self.set_prompt(config.prompt, config.negative_prompt)

    def forward(
        self,
        images: Tensor,
        step: int,
        c2w: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for renders ``[B*V, 3, H, W]`` in [0, 1] (views of object ``b`` in rows ``b*V .. b*V+V-1``).

        Args:
            images: Renders, ``V = config.num_views`` per object.
            step: Training step (the schedule was already advanced by ``__call__``).
            c2w: Camera-to-world matrices ``[B*V, 4, 4]`` or ``[B*V, 3, 4]`` of the renders (see module docstring).
            t: Optional timesteps ``[B]`` (one per object) instead of sampling them.
            noise: Optional noise ``[B*V, 4, h, w]`` instead of drawing it.
        """
        if c2w is None:
            raise ValueError("MultiViewSDS needs the renders' camera-to-world matrices: call it with c2w=[B*V, 4, 4].")
        images = self.prepare_images(images)
        if images.shape[0] % self.config.num_views:
            raise ValueError(f"got {images.shape[0]} renders, not a multiple of num_views={self.config.num_views}.")
        if c2w.shape[0] != images.shape[0]:
            raise ValueError(f"got {c2w.shape[0]} cameras for {images.shape[0]} renders; pass one c2w per render.")
        latents = self.components.encode_square(images, self.config.image_size)
        return self.latent_loss(latents, c2w, t=t, noise=noise)

    def latent_loss(
        self, latents: Tensor, c2w: Tensor, t: Tensor | None = None, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Eq. 15 on latents ``[B*V, 4, h, w]``: ``d loss_mvdream / d latents = w(t) (eps_hat - eps) / (B V)``."""
        views = self.config.num_views
        objects = latents.shape[0] // views
        if t is None:
            t = self.schedule.sample(objects, self.generator)
        t = t.reshape(-1).to(latents.device).long()
        if t.shape[0] != objects:
            raise ValueError(f"t must have one timestep per object ({objects}), got {tuple(t.shape)}.")
        t_views = t.repeat_interleave(views)
        if noise is None:
            noise = torch.randn(latents.shape, generator=self.generator, dtype=torch.float32).to(latents)
        camera = camera_condition(c2w.to(latents.device)).to(self.components.dtype)
        with torch.no_grad():
            noisy = self.components.add_noise(latents.detach(), noise, t_views)
            eps_hat = predict_noise(
                self.components.unet,
                noisy,
                t_views,
                self.cond_embeds,
                self.uncond_embeds,
                self.config.guidance_scale,
                class_labels=torch.cat([camera, camera]),  # rows [uncond; cond], as predict_noise stacks them
                cross_attention_kwargs={"num_views": views},
            )
            w = sds_weight(self.components.alphas_cumprod, t_views, self.config.weighting)
            grad = sds_grad(eps_hat, noise, w)  # paper 001 eq. 15
        loss = sds_loss(latents, grad)
        return {
            "loss": self.config.weight * loss,
            "loss_mvdream": loss.detach(),
            "t": t.detach(),
            "grad_norm": grad.norm().detach(),
        }


def _first_attn(unet: UNet2DConditionModel) -> str:
    """Name of the UNet's first attention processor (to check the multi-view processors are installed)."""
    return next(iter(unet.attn_processors))
