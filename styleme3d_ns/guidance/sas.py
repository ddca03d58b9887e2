"""SAS: the Style Aligned Sampling loss of paper 001 (section III.B, eq. 9-14; settings in IV.A.3).

Per step, for renders ``x`` with latents ``z = E(x)``:

1. ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, ``t ~ U(0.02, 0.98) T`` for the first 1000 steps, then
   ``U(0.02, 0.5) T`` (IV.A.3).
2. ``eps_p(z_t, t, y, I_e, I_l)`` from Stable Diffusion 1.5 with classifier-free guidance 50 (eq. 11), conditioned on
   the style text ``y`` and the input portrait's identity:

   * **identity embedding** ``I_e`` (eq. 9): ``Z = Att(Q, K, V) + lambda Att(Q, K_Ie, V_Ie)`` in every
     cross-attention, ``lambda = 1.0``. The paper uses InstantID, which exists only for SDXL; on SD 1.5 the same
     decoupled cross-attention on a face-recognition embedding is IP-Adapter-FaceID (``h94/IP-Adapter-FaceID``
     ``ip-adapter-faceid_sd15.bin``): ``I_e`` is the 512-d ArcFace embedding of the input face (insightface
     ``buffalo_l``, ``face.normed_embedding``), projected to 4 tokens and attached with
     :func:`~styleme3d_ns.guidance.ip_adapter.attach_ip_adapter`. Its LoRA (rank 128 on every attention's
     q/k/v/out, stored in the same file and trained with the adapter) is merged into the UNet weights
     (:func:`~styleme3d_ns.guidance.ip_adapter.merge_faceid_lora`).
   * **landmarks** ``I_l`` (eq. 10, optional): ``Y = F(z_t, t, y) + F_c(I_l)``: the residuals of a landmark
     ControlNet are added to the UNet's skip connections. InstantID's IdentityNet is SDXL-only; on SD 1.5 we use
     a face-landmark ControlNet (default suggestion ``CrucibleAI/ControlNetMediaPipeFace``, ``diffusion_sd15``)
     fed a landmark image the caller renders in that ControlNet's format.
3. ``z' = (z_t - sqrt(1 - abar_t) eps_p) / sqrt(abar_t)``, the one-step prediction (eq. 12).
4. ``z'_m = Sigma_s^{1/2} Sigma_g^{-1/2} (z' - mu_g) + mu_s`` (eq. 13, corrected: see
   :mod:`~styleme3d_ns.guidance.style_mapping`), with ``mu_s, Sigma_s`` from 20 images of the style sampled once at
   construction (CFG 7.5, 20 steps) and ``mu_g, Sigma_g`` of each ``z'``.
5. Gradient on ``z``: ``w(t) (z - z'_m)`` (eq. 14), weight 1.0.

Sign of eq. 14: the paper prints ``w(t) (z'_m - z)`` as the gradient of the loss. Descending that would push ``z``
*away* from the mapped prediction; the gradient that pulls ``z`` towards ``z'_m`` (and reduces to SDS,
``z - z' = sqrt((1 - abar) / abar) (eps_p - eps)``, without the mapping) is ``w(t) (z - z'_m)``, the gradient of
``0.5 ||z - sg(z'_m)||^2``. We implement that; the loss *decreases* along the paper's direction ``z'_m - z``.
``w(t)`` is not given; the default is 1 (``weighting="uniform"``, as MVDream's x0-reconstruction loss), ``"sds"`` uses
``1 - abar_t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from styleme3d_ns.guidance.base import GuidanceConfig
from styleme3d_ns.guidance.diffusion import (
    DEFAULT_SD_MODEL,
    ScheduledDiffusionGuidance,
    SdsWeighting,
    StableDiffusionComponents,
    TimestepSchedule,
    TimestepScheduleConfig,
    load_stable_diffusion,
    paper_001_timesteps,
    predict_noise,
    sds_loss,
    sds_weight,
)
from styleme3d_ns.guidance.ip_adapter import (
    attach_ip_adapter,
    ip_adapter_cond_kwargs,
    load_ip_adapter_state_dict,
    merge_faceid_lora,
)
from styleme3d_ns.guidance.prompts import PromptConfig
from styleme3d_ns.guidance.style_mapping import (
    DEFAULT_RIDGE,
    LatentStatistics,
    generate_style_latents,
    map_latents,
    one_step_prediction,
)
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

if TYPE_CHECKING:
    from diffusers import ControlNetModel, UNet2DConditionModel

IP_ADAPTER_FACEID_REPO = "h94/IP-Adapter-FaceID"
"""Hugging Face repo of IP-Adapter-FaceID."""
IP_ADAPTER_FACEID_SD15_FILE = "ip-adapter-faceid_sd15.bin"
"""IP-Adapter-FaceID for SD 1.5: ArcFace 512-d -> 4 tokens, plus its rank-128 attention LoRA (~100 MB)."""
FACE_LANDMARK_CONTROLNET_REPO = "CrucibleAI/ControlNetMediaPipeFace"
"""A face-landmark (MediaPipe face mesh) ControlNet for SD 1.5, the optional eq. 10 branch."""
FACE_LANDMARK_CONTROLNET_SUBFOLDER = "diffusion_sd15"
"""Diffusers-format SD 1.5 ControlNet inside :data:`FACE_LANDMARK_CONTROLNET_REPO`."""


@dataclass
class SASConfig(PromptConfig, GuidanceConfig):
    """Config of :class:`StyleAlignedSamplingLoss` (paper 001 III.B, IV.A.3). Its prompt is the style text y, e.g.
    'a 3D cartoon style portrait of a man' (paper 001 IV.B: '3D cartoon style', ...)."""

    weight: float = 1.0
    """Multiplier of the SAS loss (paper 001 IV.A.3: 1.0 throughout training)."""
    guidance_scale: float = 50.0
    """Classifier-free guidance scale of the SAS noise prediction (paper 001 IV.A.3: 50.0)."""
    timesteps: TimestepScheduleConfig = field(default_factory=paper_001_timesteps)
    """Timestep window: U(0.02, 0.98) T for steps < 1000, U(0.02, 0.5) T after (paper 001 IV.A.3)."""
    weighting: SdsWeighting = "uniform"
    """w(t) of eq. 14 (not given in the paper): 'uniform' = 1, 'sds' = 1 - alpha_bar_t."""
    image_size: int = 512
    """Renders are resized to this square size before VAE encoding (SD 1.5: 512 px, 64x64 latents)."""
    identity_conditioning: bool = True
    """Identity-preserving sampling (eq. 9-11); False is the paper's 'w/o ID preserving' ablation."""
    identity_scale: float = 1.0
    """lambda of eq. 9, the IP-Adapter-FaceID scale (paper 001 IV.A.3: control scale 1.0)."""
    style_mapping: bool = True
    """Style-preserving latent mapping (eq. 12-14); False is the paper's 'w/o style preserving' ablation."""
    style_prompt: str | None = None
    """Prompt of the style set I_s; None uses prompt."""
    style_samples: int = 20
    """Images sampled for the style statistics mu_s, Sigma_s (paper 001 IV.A.3: 20)."""
    style_guidance_scale: float = 7.5
    """CFG scale when sampling the style set (paper 001 IV.A.3: 7.5)."""
    style_steps: int = 20
    """DDIM steps when sampling the style set (paper 001 IV.A.3: 20)."""
    style_seed: int = 0
    """Seed of the style set's initial noise."""
    mapping_ridge: float = DEFAULT_RIDGE
    """Ridge added to Sigma_g before its inverse square root in eq. 13."""
    sd_model: str = DEFAULT_SD_MODEL
    """Stable Diffusion 1.5 diffusers folder or cached HF repo id (paper 001 IV.A.3: SD 1.5)."""
    ip_adapter: str = IP_ADAPTER_FACEID_REPO
    """IP-Adapter-FaceID checkpoint: the .bin file, a folder holding ip_adapter_file, or a cached HF repo id."""
    ip_adapter_file: str = IP_ADAPTER_FACEID_SD15_FILE
    """File name of the adapter inside a folder or repo."""
    landmark_controlnet: str | None = None
    """Face-landmark ControlNet (eq. 10): a diffusers folder or cached repo id, e.g.
    'CrucibleAI/ControlNetMediaPipeFace'; None leaves eq. 10 out."""
    landmark_controlnet_subfolder: str = FACE_LANDMARK_CONTROLNET_SUBFOLDER
    """Subfolder of the ControlNet inside its folder/repo ('' if the folder itself holds config.json)."""
    controlnet_scale: float = 1.0
    """Multiplier of the ControlNet residuals (eq. 10 adds them unscaled: 1.0)."""
    half: bool = True
    """float16 networks on CUDA (CPU is always float32)."""
    seed: int | None = None
    """Seed of the timestep/noise generator; None draws from torch's global RNG."""


def load_landmark_controlnet(
    path_or_id: str | Path,
    *,
    subfolder: str = FACE_LANDMARK_CONTROLNET_SUBFOLDER,
    device: str | torch.device | None = None,
    half: bool = True,
    hint: str,
) -> ControlNetModel:
    """Load a diffusers ControlNet offline (folder or cached repo id, optionally a ``subfolder`` of it), frozen."""
    from diffusers import ControlNetModel

    config = f"{subfolder}/config.json" if subfolder else "config.json"
    folder = resolve_weights("Landmark ControlNet", path_or_id, filename=config, hint=hint).parent
    dev, dtype = select_device_dtype(device, half=half)
    try:
        model = ControlNetModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise MissingWeightsError(
            f"Landmark ControlNet in '{folder}' could not be read ({reason}); download '{config}' and its weights "
            f"from {FACE_LANDMARK_CONTROLNET_REPO} or {hint}."
        ) from None
    return model.to(dev).eval().requires_grad_(False)


class _LandmarkControlledUNet:
    """The UNet with a ControlNet's residuals added (paper 001 eq. 10), callable like the UNet by ``predict_noise``.

    The ControlNet sees the same noisy latents, timesteps and text as the UNet (both CFG halves) plus the landmark
    image, repeated to the batch.
    """

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel, landmarks: Tensor, scale: float):
        self.unet, self.controlnet, self.landmarks, self.scale = unet, controlnet, landmarks, scale

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, **kwargs: Any) -> Any:
        cond = self.landmarks.to(sample.device, self.controlnet.dtype)
        cond = cond.expand(sample.shape[0], -1, -1, -1) if cond.shape[0] == 1 else cond.repeat(2, 1, 1, 1)
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=cond,
            conditioning_scale=self.scale,
            return_dict=False,
        )
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            **kwargs,
        )


class StyleAlignedSamplingLoss(ScheduledDiffusionGuidance):
    """Paper 001's SAS loss (eq. 9-14) on Stable Diffusion 1.5; see the module docstring for the steps.

    Usage: ``sas = StyleAlignedSamplingLoss(SASConfig(prompt=...)); out = sas(renders [B, 3, H, W], step,
    face_embeds=arcface [1, 512], landmark_image=[1, 3, 512, 512])``; returns ``{"loss", "loss_sas", "t",
    "grad_norm", "mapped_shift"}``. ``"loss"`` is ``weight * loss_sas`` and
    ``d loss_sas / d z = w(t) (z - z'_m) / B``.

    Construction samples the style set (``style_samples`` DDIM runs) unless ``style_statistics`` is given or
    ``style_mapping`` is off, then attaches the identity adapter (unless ``identity_conditioning`` is off). The
    adapter (and its merged LoRA) changes ``components.unet`` in place: do not share those components with another
    guidance.
    """

    config: SASConfig

    def __init__(
        self,
        config: SASConfig,
        components: StableDiffusionComponents | None = None,
        *,
        ip_adapter_state: Mapping[str, Any] | None = None,
        controlnet: ControlNetModel | None = None,
        style_statistics: LatentStatistics | None = None,
        flag_prefix: str = "--pipeline.model.sas.",
        device: str | torch.device | None = None,
    ) -> None:
        """``components``/``ip_adapter_state``/``controlnet``/``style_statistics`` override loading or sampling
        (tests, shared models, cached statistics). ``flag_prefix`` is how the user's CLI spells this config, for the
        one-line missing-weights errors (e.g. ``--pipeline.model.sas.ip-adapter PATH``)."""
        super().__init__(config)
        self.flag_prefix = flag_prefix
        if components is None:
            components = load_stable_diffusion(
                config.sd_model, device=device, half=config.half, hint=f"pass {flag_prefix}sd-model DIR"
            )
        self.hold_components(components)
        self.schedule = TimestepSchedule(config.timesteps, components.num_train_timesteps)
        self.generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.to(device=components.device, dtype=components.dtype)
        self.set_prompt(config.prompt, config.negative_prompt)

        self.style_statistics: LatentStatistics | None = None
        if config.style_mapping:  # sampled before the adapter is attached: the style set is text-only
            if style_statistics is None:
                style_statistics = self.sample_style_statistics()
            self.style_statistics = style_statistics.to(device=components.device, dtype=torch.float32)

        self.face_embed_dim: int | None = None
        self.controlnet: ControlNetModel | None = None
        if config.identity_conditioning:
            self._attach_identity(ip_adapter_state, controlnet)

    def sample_style_statistics(self) -> LatentStatistics:
        """Sample the style set with the current (text-only) UNet and return ``mu_s, Sigma_s`` (paper 001 IV.A.3)."""
        c = self.config
        prompt = c.style_prompt if c.style_prompt is not None else c.prompt
        latents = generate_style_latents(
            self.components,
            prompt,
            n=c.style_samples,
            guidance_scale=c.style_guidance_scale,
            steps=c.style_steps,
            negative_prompt=c.negative_prompt,
            seed=c.style_seed,
            latent_size=c.image_size // self._vae_factor(),
        )
        return LatentStatistics.from_latents(latents)

    def _vae_factor(self) -> int:
        """Spatial downsampling of the VAE (8 for SD)."""
        return 2 ** (len(self.components.vae.config.block_out_channels) - 1)

    def _attach_identity(self, ip_adapter_state: Mapping[str, Any] | None, controlnet: ControlNetModel | None) -> None:
        """Attach IP-Adapter-FaceID (eq. 9, LoRA merged) and, if configured, the landmark ControlNet (eq. 10)."""
        c = self.config
        if ip_adapter_state is None:
            hint = f"pass {self.flag_prefix}ip-adapter PATH (the {c.ip_adapter_file} file)"
            ip_adapter_state = load_ip_adapter_state_dict(c.ip_adapter, filename=c.ip_adapter_file, hint=hint)
        image_proj = ip_adapter_state["image_proj"]
        if "proj.0.weight" not in image_proj:
            raise ValueError(
                f"the identity adapter must be IP-Adapter-FaceID ({IP_ADAPTER_FACEID_SD15_FILE} of "
                f"{IP_ADAPTER_FACEID_REPO}, image_proj 'proj.0.*'); got image_proj keys {sorted(image_proj)[:4]}."
            )
        self.face_embed_dim = int(image_proj["proj.0.weight"].shape[1])
        unet = self.components.unet
        merge_faceid_lora(unet, ip_adapter_state)
        attach_ip_adapter(unet, dict(ip_adapter_state), scale=c.identity_scale)
        unet.to(device=self.components.device, dtype=self.components.dtype)
        if controlnet is None and c.landmark_controlnet is not None:
            controlnet = load_landmark_controlnet(
                c.landmark_controlnet,
                subfolder=c.landmark_controlnet_subfolder,
                device=self.components.device,
                half=c.half,
                hint=f"pass {self.flag_prefix}landmark-controlnet DIR",
            )
        if controlnet is not None:
            self.controlnet = controlnet.to(device=self.components.device, dtype=self.components.dtype)

    def forward(
        self,
        images: Tensor,
        step: int,
        face_embeds: Tensor | None = None,
        landmark_image: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for renders ``[B, 3, H, W]`` in [0, 1].

        Args:
            images: Renders of the portrait from random views.
            step: Training step (the schedule was already advanced by ``__call__``).
            face_embeds: ArcFace embedding ``I_e`` of the input image, ``[1, 512]`` or ``[B, 512]``; required with
                identity conditioning, ignored without.
            landmark_image: Landmark image ``I_l`` ``[1 or B, 3, H', W']`` in [0, 1] in the ControlNet's format;
                required when a landmark ControlNet is loaded, ignored otherwise.
            t: Optional timesteps ``[B]`` instead of sampling them.
            noise: Optional noise ``[B, 4, h, w]`` instead of drawing it.
        """
        images = self.prepare_images(images)
        latents = self.components.encode_square(images, self.config.image_size)
        return self.latent_loss(latents, face_embeds=face_embeds, landmark_image=landmark_image, t=t, noise=noise)

    def _unet_and_kwargs(
        self, batch: int, face_embeds: Tensor | None, landmark_image: Tensor | None
    ) -> tuple[Any, dict[str, Any]]:
        """The callable ``predict_noise`` runs and its extra kwargs: identity embeds (eq. 9), landmarks (eq. 10)."""
        if not self.config.identity_conditioning:
            return self.components.unet, {}
        if face_embeds is None:
            raise ValueError(
                "SAS identity conditioning needs face_embeds=[1, 512] (ArcFace of the input portrait); "
                "pass them or set identity_conditioning=False."
            )
        if face_embeds.ndim != 2 or face_embeds.shape[-1] != self.face_embed_dim:
            raise ValueError(f"face_embeds must be [1 or B, {self.face_embed_dim}], got {tuple(face_embeds.shape)}.")
        embeds = face_embeds.to(device=self.device, dtype=self.dtype)
        kwargs = {"added_cond_kwargs": ip_adapter_cond_kwargs(embeds, batch=batch)}
        if self.controlnet is None:
            return self.components.unet, kwargs
        if landmark_image is None:
            raise ValueError("a landmark ControlNet is loaded: pass landmark_image=[1, 3, H, W] in [0, 1].")
        self.check_images(landmark_image, "landmark_image")
        size = self.config.image_size
        landmarks = F.interpolate(landmark_image.float(), (size, size), mode="bilinear", align_corners=False)
        controlled = _LandmarkControlledUNet(
            self.components.unet, self.controlnet, landmarks, self.config.controlnet_scale
        )
        return controlled, kwargs

    def latent_loss(
        self,
        latents: Tensor,
        face_embeds: Tensor | None = None,
        landmark_image: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 11-14 on latents ``z`` ``[B, 4, h, w]``: ``d loss_sas / d z = w(t) (z - z'_m) / B``.

        Returned terms: ``loss`` (weighted), ``loss_sas`` (unweighted, its value is ``0.5 ||grad||^2 / B``), ``t``
        ``[B]``, ``grad_norm`` (of ``w(t) (z - z'_m)``) and ``mapped_shift``, the RMS change ``z'_m - z'`` the style
        mapping made (0 with ``style_mapping`` off): how far the one-step predictions were from the style statistics.
        """
        b = latents.shape[0]
        if t is None:
            t = self.schedule.sample(b, self.generator)
        t = t.reshape(-1).to(latents.device).long()
        if noise is None:
            noise = torch.randn(latents.shape, generator=self.generator, dtype=torch.float32).to(latents)
        unet, unet_kwargs = self._unet_and_kwargs(b, face_embeds, landmark_image)
        with torch.no_grad():
            noisy = self.components.add_noise(latents.detach(), noise, t)
            eps_p = predict_noise(
                unet, noisy, t, self.cond_embeds, self.uncond_embeds, self.config.guidance_scale, **unet_kwargs
            )  # paper 001 eq. 11
            abar = self.components.alphas_cumprod[t]
            z_pred = one_step_prediction(noisy.float(), eps_p.float(), abar)  # paper 001 eq. 12
            if self.style_statistics is not None:
                z_mapped = map_latents(z_pred, None, self.style_statistics, self.config.mapping_ridge)  # eq. 13
            else:
                z_mapped = z_pred
            w = sds_weight(self.components.alphas_cumprod, t, self.config.weighting)
            grad = torch.nan_to_num(w * (latents.detach().float() - z_mapped), nan=0.0, posinf=0.0, neginf=0.0)
        loss = sds_loss(latents, grad)  # paper 001 eq. 14 (descent sign, see module docstring)
        return {
            "loss": self.config.weight * loss,
            "loss_sas": loss.detach(),
            "t": t.detach(),
            "grad_norm": grad.norm().detach(),
            "mapped_shift": (z_mapped - z_pred).square().mean().sqrt().detach(),
        }
