"""DSSD: Dynamic Style Score Distillation (paper 000, "Dynamic Style Score Distillation").

Score distillation on Stable Diffusion 1.5 with the style reference injected as an image prompt:

    grad_x L_DSSD = E_{t, eps}[ w(t) (eps_hat(z_t; y, e_s', t) - eps) dz/dx ]                (paper 000, SDS eq.)
    eps_hat = eps(z_t; 0, 0, t) + lambda_t (eps(z_t; y, e_s', t) - eps(z_t; 0, 0, t))      (CFG, uncond = empty
                                                                                           prompt, zero image)

* Style injection. Paper 000 builds DSSD on StyleShot's style-aware encoder; StyleShot's encoder is not in
  diffusers, so we inject the style through IP-Adapter SD 1.5 (``h94/IP-Adapter``) into the style-responsible
  blocks only (InstantStyle, as StyleTex, paper 003, does): ``up_blocks.1`` at scale 1, every other block 0.
* Content removal. ``e_s' = e_s - Q Q^T e_s`` (ODCR, paper 003 eq. 9, :mod:`styleme3d_ns.guidance.odcr`): the CLIP
  image embedding of the style image minus its projection on the content directions (CLIP text embedding of
  ``content_prompt``, and/or image embeddings of content renders given to :meth:`set_style`).
* Fine timestep sampling (paper 000: T = 1000, T_min = 0.02 T, T_max = 0.75 T, "dynamically reducing noise
  intensity"): ``t ~ U{0.02 T .. t_max(step)}`` with ``t_max`` linear from 0.75 T at step 0 to
  ``max_ratio_end`` = 0.5 T at ``adaptive_steps`` = 1000, then fixed. The end value 0.5 is our choice (the paper
  gives none); the 1000 steps are the paper's "Adaptive Iteration (Global Mode): Steps 1-1000".
* Dynamic guidance (paper 000: lambda_max = 20, lambda in [7.5, 20]): ``lambda_t`` linear from 20 at step 0 to 7.5
  at ``adaptive_steps``, then 7.5. Our reading: lambda_max is where it starts, and it falls with the noise level
  (strong guidance while the style is being established at high t, low guidance once t is small, where a large
  CFG over-saturates SDS results). The paper does not state the shape; a constant is ``guidance_scale ==
  guidance_scale_end``.
* Multi-stage plan over 2800 steps (paper 000): global mode (the full render) for steps [0, 1900) -- "Adaptive
  Iteration" [0, 1000) with the schedules above annealing, then "Fixed/Free Global" [1000, 1900) with them held --
  and local mode (random square crops, each resized to 512 px) for [1900, 2800] and beyond. The crop is taken
  inside this guidance; the box is returned as ``crop_box``. The paper's "Main RGB Loss (Local Mode): Steps 100-600"
  is a loss of the model, not of DSSD, and is not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
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
    predict_noise,
    sds_grad,
    sds_loss,
    sds_weight,
)
from styleme3d_ns.guidance.ip_adapter import (
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_REPO,
    IP_ADAPTER_SD15_FILE,
    SD15_STYLE_BLOCKS,
    attach_ip_adapter,
    encode_image_embeds,
    ip_adapter_cond_kwargs,
    ip_adapter_processors,
    load_image_encoder,
    load_ip_adapter_state_dict,
    set_ip_adapter_scale,
)
from styleme3d_ns.guidance.odcr import remove_content
from styleme3d_ns.guidance.prompts import PromptConfig
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

CONTENT_TEXT_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
"""CLIP whose text tower shares the IP-Adapter SD 1.5 image encoder's 1024-d space (OpenCLIP ViT-H/14, LAION-2B)."""

Stage = Literal["global", "local"]


@dataclass
class DSSDConfig(PromptConfig, GuidanceConfig):
    """Config of :class:`DynamicStyleScoreDistillation` (paper 000 DSSD). Defaults follow the paper's plan. Its prompt
    is a short description of the scene ('a lego bulldozer'); its guidance scale is where the dynamic CFG starts."""

    RENAMED = {"guidance_scale_max": "guidance_scale", "guidance_scale_min": "guidance_scale_end"}

    sd_model: str = DEFAULT_SD_MODEL
    """Stable Diffusion 1.5: a local diffusers folder or a repo id in the HF cache (never downloaded)."""
    ip_adapter: str = IP_ADAPTER_REPO
    """IP-Adapter weights: a .bin/.safetensors file, a folder holding ip_adapter_file, or a repo id in the HF cache."""
    ip_adapter_file: str = IP_ADAPTER_SD15_FILE
    """File of the IP-Adapter inside the folder/repo (ip-adapter_sd15.bin: 4 tokens from a ViT-H/14 embedding)."""
    image_encoder: str = IP_ADAPTER_REPO
    """IP-Adapter's CLIP image encoder: its folder, or a folder/repo id containing models/image_encoder."""
    half: bool = True
    """float16 on CUDA (float32 on CPU)."""
    style_blocks: tuple[str, ...] = SD15_STYLE_BLOCKS
    """UNet blocks receiving the style image (InstantStyle SD 1.5: up_blocks.1); all other blocks get scale 0."""
    style_scale: float = 1.0
    """IP-Adapter scale lambda in the style blocks (f' = Attn(Q,K_t,V_t) + lambda Attn(Q,K_s,V_s), paper 000)."""
    content_prompt: str | None = None
    """What the style image depicts ('a girl'); its CLIP text embedding is removed from the style embedding (ODCR)."""
    content_text_encoder: str = CONTENT_TEXT_ENCODER
    """CLIP text model in the image encoder's space, for content_prompt: a folder or a repo id in the HF cache."""
    odcr_strength: float = 1.0
    """Fraction of the content projection removed from the style embedding (1 = StyleTex eq. 9, orthogonal)."""
    min_ratio: float = 0.02
    """T_min / T (paper 000: 0.02)."""
    max_ratio: float = 0.75
    """T_max / T at the start (paper 000: 0.75)."""
    max_ratio_end: float = 0.5
    """T_max / T after annealing (our choice; the paper says only that the noise level decreases)."""
    guidance_scale: float = 20.0
    """CFG scale at step 0 (paper 000: lambda_max = 20)."""
    guidance_scale_end: float = 7.5
    """CFG scale once annealed over adaptive_steps (paper 000: lambda within [7.5, 20])."""
    adaptive_steps: int = 1000
    """Steps over which t_max and the CFG scale anneal (paper 000 'Adaptive Iteration (Global Mode): Steps 1-1000')."""
    local_start_step: int = 1900
    """First step of local mode (random crops); global (full render) before (paper 000: local 1900-2800)."""
    local_crop_scale: tuple[float, float] = (0.3, 0.6)
    """Range of the crop side as a fraction of the render's shorter side in local mode (our choice)."""
    weighting: SdsWeighting = "sds"
    """w(t) of the SDS gradient: 'sds' (1 - alpha_bar_t) or 'uniform'."""
    resolution: int = 512
    """Side of the square image fed to the VAE (SD 1.5: 512)."""
    seed: int = 0
    """Seed of the guidance's own generator (timesteps, noise, crops)."""


def load_content_text_encoder(
    path_or_id: str | Path = CONTENT_TEXT_ENCODER,
    *,
    device: str | torch.device | None = None,
    half: bool = True,
    hint: str,
) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
    """CLIP text tower with projection + tokenizer (for ODCR's content prompt), frozen, offline.

    ``path_or_id``: a transformers CLIP folder (CLIPModel or CLIPTextModelWithProjection config) or a repo id in the
    HF cache; for a full CLIPModel checkpoint only the text tower and projection are loaded.
    """
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = resolve_weights("CLIP text encoder (ODCR)", path_or_id, filename="config.json", hint=hint)
    folder = folder.parent if folder.is_file() else folder
    dev, dtype = select_device_dtype(device, half=half)
    try:
        model = CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise MissingWeightsError(f"CLIP text encoder in '{folder}' could not be read ({reason}); {hint}.") from None
    return model.to(dev).eval().requires_grad_(False), tokenizer


class DynamicStyleScoreDistillation(ScheduledDiffusionGuidance):
    """Paper 000 DSSD on SD 1.5 + IP-Adapter (style blocks only) + ODCR.

    Usage: ``dssd = DynamicStyleScoreDistillation.from_config(cfg, device)``; ``dssd.set_style(style [1, 3, H, W])``;
    then every step ``out = dssd(renders, step)``: ``out["loss"]`` back-propagates ``w(t)(eps_hat - eps)`` through the
    VAE encoder into the renders. See the module docstring for the schedules.

    The diffusion networks are frozen submodules (no gradients, eval mode); models hold guidances outside their module
    tree, so their ~2.5 GB never reach a training checkpoint or an optimiser.
    """

    config: DSSDConfig

    def __init__(
        self,
        config: DSSDConfig,
        components: StableDiffusionComponents,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        *,
        ip_adapter_state_dict: dict | None = None,
        content_text_encoder: CLIPTextModelWithProjection | None = None,
        content_tokenizer: CLIPTokenizer | None = None,
    ) -> None:
        """Build from already-loaded networks (:meth:`from_config` loads the real ones; tests pass tiny ones).

        Args:
            config: The DSSD config.
            components: Frozen SD components; an IP-Adapter is attached to ``components.unet`` if
                ``ip_adapter_state_dict`` is given, otherwise the UNet must already carry one.
            image_encoder: CLIP image encoder of the IP-Adapter; needed by :meth:`set_style` (not when style
                embeddings are passed to ``forward``).
            ip_adapter_state_dict: Released IP-Adapter state dict to attach.
            content_text_encoder: CLIP text model in the image encoder's space, needed iff ``config.content_prompt``.
            content_tokenizer: Its tokenizer.
        """
        super().__init__(config)
        if config.local_crop_scale[0] <= 0 or config.local_crop_scale[0] > config.local_crop_scale[1] > 1:
            raise ValueError(f"local_crop_scale must satisfy 0 < lo <= hi <= 1, got {config.local_crop_scale}.")
        if config.content_prompt and (content_text_encoder is None or content_tokenizer is None):
            raise ValueError("content_prompt is set but no content text encoder was given (ODCR needs one).")
        components.freeze()
        if ip_adapter_state_dict is not None:
            attach_ip_adapter(components.unet, ip_adapter_state_dict, scale=0.0)
        if not ip_adapter_processors(components.unet):
            raise ValueError("the UNet has no IP-Adapter: pass ip_adapter_state_dict (ip-adapter_sd15.bin).")
        set_ip_adapter_scale(components.unet, {block: config.style_scale for block in config.style_blocks})
        for module in (image_encoder, content_text_encoder):
            if module is not None:
                module.eval().requires_grad_(False)
        self.hold_components(components)
        self.image_encoder = image_encoder
        self.content_text_encoder = content_text_encoder
        self._tokenizer = content_tokenizer
        self.schedule = TimestepSchedule(
            TimestepScheduleConfig(
                min_ratio=config.min_ratio,
                max_ratio=config.max_ratio,
                mode="linear",
                max_ratio_end=config.max_ratio_end,
                start_step=0,
                end_step=config.adaptive_steps,
            ),
            components.num_train_timesteps,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.set_prompt(config.prompt, config.negative_prompt)
        for name in ("_style_embeds", "_content_embeds"):  # set with the style, moved with .to()
            self.register_buffer(name, None, persistent=False)

    # ------------------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        config: DSSDConfig,
        device: str | torch.device | None = None,
        *,
        flag_prefix: str = "--pipeline.model.dssd",
    ) -> DynamicStyleScoreDistillation:
        """Load SD 1.5, IP-Adapter, its image encoder (and the ODCR text encoder if ``content_prompt``) offline.

        ``flag_prefix`` is where the config lives on the command line; missing weights raise a one-line
        :class:`MissingWeightsError` naming the exact flag (e.g. ``--pipeline.model.dssd.sd-model``).
        """
        hint = f"pass {flag_prefix}.{{}} <{{}}>"
        components = load_stable_diffusion(
            config.sd_model, device=device, half=config.half, hint=hint.format("sd-model", "diffusers folder")
        )
        state = load_ip_adapter_state_dict(
            config.ip_adapter, filename=config.ip_adapter_file, hint=hint.format("ip-adapter", "ip-adapter_sd15.bin")
        )
        encoder = load_image_encoder(
            config.image_encoder,
            subfolder=IP_ADAPTER_IMAGE_ENCODER,
            device=device,
            half=config.half,
            hint=hint.format("image-encoder", "image_encoder folder"),
        )
        text_model, tokenizer = None, None
        if config.content_prompt:
            text_model, tokenizer = load_content_text_encoder(
                config.content_text_encoder,
                device=device,
                half=config.half,
                hint=f"{hint.format('content-text-encoder', 'CLIP folder')} or unset {flag_prefix}.content-prompt",
            )
        guidance = cls(
            config,
            components,
            encoder,
            ip_adapter_state_dict=state,
            content_text_encoder=text_model,
            content_tokenizer=tokenizer,
        )
        return guidance.to(device=components.device, dtype=components.dtype)

    # ------------------------------------------------------------------------------------------------ schedules
    def stage(self, step: int) -> Stage:
        """Paper 000's mode at ``step``: ``"global"`` (full render) before ``local_start_step``, ``"local"``
        (random crops) from it on."""
        return "local" if step >= self.config.local_start_step else "global"

    def phase(self, step: int) -> str:
        """Paper 000 plan at ``step``: ``"global-adaptive"`` (schedules annealing), ``"global-fixed"``, ``"local"``."""
        if self.stage(step) == "local":
            return "local"
        return "global-adaptive" if step < self.config.adaptive_steps else "global-fixed"

    def guidance_scale(self, step: int) -> float:
        """CFG scale ``lambda`` at ``step``: linear from ``guidance_scale`` (step 0) to ``guidance_scale_end``
        (``adaptive_steps``), then constant (paper 000 dynamic guidance, our reading of its shape)."""
        c = self.config
        frac = 1.0 if c.adaptive_steps <= 0 else min(max(step / c.adaptive_steps, 0.0), 1.0)
        return c.guidance_scale + frac * (c.guidance_scale_end - c.guidance_scale)

    def crop_box(self, height: int, width: int, step: int) -> tuple[int, int, int, int]:
        """``(top, left, size_h, size_w)`` of the region used at ``step``: the whole render in global mode, a random
        square of side ``U(local_crop_scale) * min(H, W)`` (at least 8 px) in local mode."""
        if self.stage(step) == "global":
            return 0, 0, height, width
        lo, hi = self.config.local_crop_scale
        frac = lo + (hi - lo) * float(torch.rand((), generator=self.generator))
        side = max(min(8, height, width), round(frac * min(height, width)))
        top = int(torch.randint(0, height - side + 1, (), generator=self.generator))
        left = int(torch.randint(0, width - side + 1, (), generator=self.generator))
        return top, left, side, side

    # -------------------------------------------------------------------------------------------------- style
    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """IP-Adapter image embeddings ``[B, E]`` of images ``[B, 3, H, W]`` in [0, 1] (CLIP at 224 px)."""
        encoder = self.image_encoder
        if encoder is None:
            raise RuntimeError("DSSD was built without an image encoder; pass style_embeds to forward instead.")
        self.check_images(images)
        return encode_image_embeds(encoder, images.to(self.device)).to(self.dtype)

    @torch.no_grad()
    def embed_content_prompt(self, prompt: str) -> Tensor:
        """CLIP text embedding ``[1, E]`` of ``prompt`` in the image encoder's space (ODCR's content direction)."""
        model = self.content_text_encoder
        if model is None or self._tokenizer is None:
            raise RuntimeError("DSSD was built without a content text encoder.")
        tok = self._tokenizer
        tokens = tok(
            [prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        )
        return model(input_ids=tokens.input_ids.to(self.device)).text_embeds.to(self.dtype)

    @torch.no_grad()
    def set_style(self, style_image: Tensor, content_images: Tensor | None = None) -> None:
        """Cache the style embedding of ``style_image`` ``[1, 3, H, W]`` and the ODCR content directions.

        Content directions: the text embedding of ``config.content_prompt`` (if set) and the image embeddings of
        ``content_images`` ``[K, 3, H, W]`` (if given), stacked ``[K', E]``.
        """
        if style_image.shape[0] != 1:
            raise ValueError(f"style_image must be a single image [1, 3, H, W], got {tuple(style_image.shape)}.")
        self._style_embeds = self.embed_images(style_image)
        directions = []
        if self.config.content_prompt:
            directions.append(self.embed_content_prompt(self.config.content_prompt))
        if content_images is not None:
            directions.append(self.embed_images(content_images))
        self._content_embeds = torch.cat(directions) if directions else None

    def style_embedding(self, style_embeds: Tensor | None = None, content_embeds: Tensor | None = None) -> Tensor:
        """The image prompt actually injected: ``remove_content(e_s, content, odcr_strength)`` ``[1 or B, E]``."""
        e_s = style_embeds if style_embeds is not None else self._style_embeds
        if e_s is None:
            raise RuntimeError("DSSD: call set_style(style_image) or pass style_embeds before computing the loss.")
        content = content_embeds if content_embeds is not None else self._content_embeds
        return remove_content(e_s.to(self.device, self.dtype), content, self.config.odcr_strength)

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        step: int,
        style_embeds: Tensor | None = None,
        content_embeds: Tensor | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """DSSD loss for renders ``images`` ``[B, 3, H, W]`` in [0, 1].

        Args:
            images: Differentiable renders.
            step: Global step: selects the stage (crop), timestep window and guidance scale.
            style_embeds: IP-Adapter image embeddings ``[1 or B, E]`` overriding the cached style (ODCR still
                applied).
            content_embeds: ODCR content directions ``[K, E]`` overriding the cached ones.
            t: Fixed timesteps ``[B]`` (tests, ablations); default sampled from the schedule.
            noise: Fixed noise ``[B, 4, h, w]``; default drawn from the guidance's generator.

        Returns:
            ``loss`` (= weight * loss_dssd), ``loss_dssd`` (its value is ``0.5 ||grad||^2 / B``; only its gradient
            ``grad / B`` on the latents matters), ``t`` ``[B]``, ``guidance_scale``, ``grad_norm`` (``||w(t)(eps_hat -
            eps)||`` over the batch) and ``crop_box`` ``[4]`` (top, left, height, width in render pixels).
        """
        images = self.prepare_images(images)
        b, _, h, w = images.shape
        top, left, ch, cw = self.crop_box(h, w, step)
        latents = self.components.encode_square(images[..., top : top + ch, left : left + cw], self.config.resolution)
        if t is None:
            t = self.schedule.sample(b, self.generator, step=step)
        t = t.to(self.device).long()
        if noise is None:
            noise = torch.randn(latents.shape, generator=self.generator).to(latents)
        scale = self.guidance_scale(step)
        cond, uncond = self.cond_embeds, self.uncond_embeds
        image_kwargs = ip_adapter_cond_kwargs(self.style_embedding(style_embeds, content_embeds), batch=b)
        with torch.no_grad():
            z_t = self.components.add_noise(latents.detach(), noise, t)
            eps_hat = predict_noise(self.components.unet, z_t, t, cond, uncond, scale, added_cond_kwargs=image_kwargs)
        grad = sds_grad(eps_hat, noise, sds_weight(self.components.alphas_cumprod, t, self.config.weighting))
        loss_dssd = sds_loss(latents, grad)
        return {
            "loss": self.config.weight * loss_dssd,
            "loss_dssd": loss_dssd,
            "t": t,
            "guidance_scale": torch.tensor(scale, device=self.device),
            "grad_norm": grad.norm().detach(),
            "crop_box": torch.tensor([top, left, ch, cw], device=self.device),
        }
