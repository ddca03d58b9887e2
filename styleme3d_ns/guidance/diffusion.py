"""Shared Stable Diffusion machinery for score-distillation guidances (paper 000 DSSD, paper 001 SAS).

Components, not pipelines: a guidance needs the UNet, the VAE, the text encoder/tokenizer and the noise schedule, and
nothing of a pipeline's sampling loop. The pieces here are the ones every SDS-style loss repeats:

* :class:`StableDiffusionComponents` + :func:`load_stable_diffusion`: the five components loaded offline from a local
  diffusers folder or the Hugging Face cache (a missing model is one :class:`MissingWeightsError` line); with
  ``load_unet=False`` the UNet is neither required nor read (MVDream brings its own).
* :class:`TimestepSchedule`: the window ``[t_min, t_max]`` timesteps are drawn from, optionally annealed over steps
  (paper 000 DSSD: ``[0.02 T, 0.75 T]`` shrinking during training) or switched at a step (paper 001: ``U(0.02, 0.98)``
  for the first 1000 steps, ``U(0.02, 0.5)`` after).
* :func:`predict_noise`: classifier-free guidance in one batched UNet call.
* :func:`sds_weight`, :func:`sds_grad`, :func:`sds_loss`: the SDS gradient ``w(t) (eps_hat - eps)`` (paper 000,
  "Score Distillation Sampling") written as a loss whose derivative with respect to the latents is that gradient.

Notation: ``T`` = ``num_train_timesteps`` (1000 for SD 1.5), ``alpha_bar_t`` = ``alphas_cumprod[t]``, latents
``z_0 = scaling_factor * E(2 x - 1)`` for images ``x`` in [0, 1], ``z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t)
eps`` (DDPM forward process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.guidance.base import Guidance
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

if TYPE_CHECKING:  # diffusers/transformers are optional dependencies (the `guidance` extra)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""Hugging Face repo id of Stable Diffusion 1.5 (the base model of IP-Adapter ``ip-adapter_sd15.bin``)."""

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""Subfolders of a diffusers Stable Diffusion folder that :func:`load_stable_diffusion` reads (all but ``unet`` with
``load_unet=False``)."""

SdsWeighting = Literal["sds", "uniform"]


# ------------------------------------------------------------------------------------------------------ components


@dataclass(eq=False)
class StableDiffusionComponents:
    """The frozen pieces of Stable Diffusion a score-distillation loss needs.

    All image tensors are ``[B, 3, H, W]`` in [0, 1]; latents are ``[B, 4, H / f, W / f]`` with ``f`` the VAE's
    downsampling factor (8 for SD 1.5) and already multiplied by ``vae.config.scaling_factor`` (0.18215 for SD 1.5).
    ``unet`` is None when loaded with ``load_unet=False`` until the caller sets its own (MVDream).
    """

    unet: UNet2DConditionModel | None
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    _alphas_cumprod: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def _networks(self) -> list[torch.nn.Module]:
        """The UNet (when loaded), VAE and text encoder."""
        return [m for m in (self.unet, self.vae, self.text_encoder) if m is not None]

    @property
    def device(self) -> torch.device:
        """Device of the UNet, or of the VAE without one (all components live together, see :meth:`to`)."""
        return next(self._networks[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the UNet, or of the VAE without one (float16 on CUDA by default, float32 on CPU)."""
        return next(self._networks[0].parameters()).dtype

    @property
    def num_train_timesteps(self) -> int:
        """``T``: the number of diffusion steps the model was trained with (1000 for SD 1.5)."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> Tensor:
        """``alpha_bar_t`` for ``t = 0 .. T-1``, float32 ``[T]`` on the UNet's device (cached per device)."""
        cached = self._alphas_cumprod
        if cached is None or cached.device != self.device:
            cached = self.scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
            self._alphas_cumprod = cached
        return cached

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> StableDiffusionComponents:
        """Move (and cast) the UNet (if any), VAE and text encoder; returns ``self``."""
        for module in self._networks:
            module.to(device=device, dtype=dtype)
        self._alphas_cumprod = None
        return self

    def freeze(self) -> StableDiffusionComponents:
        """Disable gradients of every parameter and put the networks in eval mode; returns ``self``.

        Gradients still flow *through* the networks to their inputs (the render, via the VAE encoder).
        """
        for module in self._networks:
            module.requires_grad_(False)
            module.eval()
        return self

    def encode_images(
        self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """VAE-encode images ``[B, 3, H, W]`` in [0, 1] to latents ``[B, 4, H / f, W / f]`` (times ``scaling_factor``).

        Differentiable with respect to ``images``. ``sample=False`` takes the posterior mean (deterministic; the SD
        VAE's posterior std is ~1e-3 of its mean, so sampling it changes little); ``sample=True`` draws from it.
        """
        x = images.to(device=self.device, dtype=self.vae.dtype) * 2.0 - 1.0
        posterior = self.vae.encode(x).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents * self.vae.config.scaling_factor

    def encode_square(self, images: Tensor, size: int) -> Tensor:
        """Resize renders ``[B, 3, H, W]`` in [0, 1] to the model's square input ``size`` and VAE-encode them.

        Bilinear, antialiased when shrinking (for enlarging, antialiasing changes nothing); differentiable.
        """
        if images.shape[-2:] != (size, size):
            shrinking = min(images.shape[-2:]) > size
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=shrinking)
        return self.encode_images(images)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """VAE-decode latents ``[B, 4, h, w]`` (scaled as :meth:`encode_images` returns them) to ``[B, 3, H, W]`` in
        [0, 1] (clamped)."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (x.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """CLIP text embeddings ``[B, L, D]`` of ``prompts`` (``L`` = tokenizer max length, 77 for SD 1.5; ``D`` = the
        UNet's ``cross_attention_dim``, 768), padded to ``L`` as SD was trained. Constant: no gradient."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]
        return hidden.to(self.dtype)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """DDPM forward process ``z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps`` for ``t`` ``[B]``."""
        return add_noise(latents, noise, t, self.alphas_cumprod)


def add_noise(latents: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """DDPM forward process ``z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps``.

    ``latents``/``noise`` ``[B, C, h, w]``, ``t`` ``[B]``, ``alphas_cumprod`` ``[T]``; computed in float32,
    returned in ``latents.dtype``.
    """
    a = alphas_cumprod.to(latents.device)[t.to(latents.device).long()].float().view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents.float() + (1.0 - a).sqrt() * noise.float()
    return noisy.to(latents.dtype)


def _missing_subfolders(root: Path, subfolders: tuple[str, ...] = SD_SUBFOLDERS) -> list[str]:
    """Those of ``subfolders`` of ``root`` that lack a config (``config.json`` / ``scheduler_config.json`` / tokenizer
    files), in ``subfolders`` order."""
    config_file = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json"}
    config_file["scheduler"] = "scheduler_config.json"
    tok = root / "tokenizer"
    missing = []
    for sub in subfolders:
        if sub == "tokenizer":
            present = (tok / "tokenizer.json").is_file() or (tok / "vocab.json").is_file()
        else:
            present = (root / sub / config_file[sub]).is_file()
        if not present:
            missing.append(sub)
    return missing


def load_stable_diffusion(
    path_or_id: str | Path = DEFAULT_SD_MODEL,
    *,
    device: str | torch.device | None = None,
    half: bool = True,
    hint: str,
    variant: str | None = None,
    load_unet: bool = True,
) -> StableDiffusionComponents:
    """Load Stable Diffusion's components offline from a diffusers folder or the Hugging Face cache, frozen.

    Args:
        path_or_id: A local diffusers folder (with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
            ``scheduler/``; ``unet/`` only if ``load_unet``) or a repo id already in the HF cache (default
            :data:`DEFAULT_SD_MODEL`). Never downloads.
        device: Target device; ``None`` picks CUDA when available.
        half: float16 on CUDA (always float32 on CPU, see :func:`select_device_dtype`). On CUDA attention slicing is
            also enabled to bound the 512 px UNet's memory.
        hint: How the user passes a path instead (e.g. ``"pass --pipeline.model.dssd.sd-model PATH"``), ends the
            :class:`MissingWeightsError` message.
        variant: diffusers weight variant to read (e.g. ``"fp16"`` for ``*.fp16.safetensors``); ``None``: the
            full-precision files.
        load_unet: Read ``unet/``. ``False`` neither requires nor loads it and returns ``unet=None``, for callers
            that bring their own UNet (MVDream uses SD 2.1-base's VAE, text encoder, tokenizer and scheduler only).

    Returns:
        Frozen :class:`StableDiffusionComponents` on ``device``.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = resolve_weights("Stable Diffusion", path_or_id, hint=hint)
    # a repo id resolves to its snapshot in the HF cache; a local folder to itself
    source = str(path_or_id) if root != Path(path_or_id).expanduser() else "the model's Hugging Face repo"
    needed = SD_SUBFOLDERS if load_unet else tuple(sub for sub in SD_SUBFOLDERS if sub != "unet")
    missing = _missing_subfolders(root, needed)
    if missing:
        raise MissingWeightsError(
            f"Stable Diffusion weights: '{root}' is not a complete diffusers folder (missing {', '.join(missing)}); "
            f"download {', '.join(needed)} of {source} or {hint}."
        )
    dev, dtype = select_device_dtype(device, half=half)
    common: dict[str, Any] = {"local_files_only": True}
    weights = {**common, "torch_dtype": dtype, "variant": variant}
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **weights) if load_unet else None
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **weights)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **weights)
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **common)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler", **common)
    except (OSError, ValueError) as err:
        first = " ".join(str(err).split())[:300]
        raise MissingWeightsError(
            f"Stable Diffusion weights in '{root}' could not be read ({first}); re-download {', '.join(needed)} of "
            f"{source} or {hint}."
        ) from None
    components = StableDiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler).to(dev, dtype).freeze()
    if dev.type == "cuda" and unet is not None:
        components.unet.set_attention_slice("auto")
    return components


# ------------------------------------------------------------------------------------------------ timestep schedule


@dataclass
class TimestepScheduleConfig:
    """Window of diffusion timesteps ``t ~ U{t_min .. t_max}`` as a function of the training step.

    Ratios are fractions of ``T``: ``t_min = int(min_ratio * T)``, ``t_max = int(max_ratio * T)`` (inclusive).

    * ``mode="constant"``: always ``[min_ratio, max_ratio]``.
    * ``mode="linear"``: the ratios move linearly from ``(min_ratio, max_ratio)`` at ``start_step`` to
      ``(min_ratio_end, max_ratio_end)`` at ``end_step`` and stay there (paper 000 DSSD annealing).
    * ``mode="step"``: ``(min_ratio, max_ratio)`` before ``end_step``, ``(min_ratio_end, max_ratio_end)`` from
      ``end_step`` on (paper 001: ``U(0.02, 0.98)`` for steps < 1000, ``U(0.02, 0.5)`` after).

    An ``*_end`` left at ``None`` keeps the start value.
    """

    min_ratio: float = 0.02
    """Lower end of the window as a fraction of T at the start (paper 000: T_min = 0.02 T)."""
    max_ratio: float = 0.98
    """Upper end of the window as a fraction of T at the start (paper 000 DSSD: 0.75; paper 001: 0.98)."""
    mode: Literal["constant", "linear", "step"] = "constant"
    """How the window changes with the step: 'constant', 'linear' (annealing) or 'step' (switch at end_step)."""
    min_ratio_end: float | None = None
    """Lower end after annealing/switching; None keeps min_ratio."""
    max_ratio_end: float | None = None
    """Upper end after annealing/switching; None keeps max_ratio."""
    start_step: int = 0
    """Step where linear annealing begins (ignored by 'constant' and 'step')."""
    end_step: int = 0
    """Step where linear annealing ends, or where 'step' mode switches to the end values."""

    def __post_init__(self) -> None:
        ends = (
            self.min_ratio_end if self.min_ratio_end is not None else self.min_ratio,
            self.max_ratio_end if self.max_ratio_end is not None else self.max_ratio,
        )
        for lo, hi in ((self.min_ratio, self.max_ratio), ends):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"timestep window ratios must satisfy 0 <= min <= max <= 1, got [{lo}, {hi}].")
        if self.mode == "linear" and self.end_step < self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be >= start_step ({self.start_step}).")


def paper_001_timesteps() -> TimestepScheduleConfig:
    """Paper 001 IV.A.3's window: ``U(0.02, 0.98)`` for the first 1000 iterations, ``U(0.02, 0.5)`` after (the SAS loss;
    our MVDream term uses it too, so both losses see the same noise levels)."""
    return TimestepScheduleConfig(min_ratio=0.02, max_ratio=0.98, mode="step", max_ratio_end=0.5, end_step=1000)


class TimestepSchedule:
    """Samples diffusion timesteps from the step-dependent window of a :class:`TimestepScheduleConfig`.

    ``update_step(step)`` sets the current training step (a guidance calls it from its own ``update_step``);
    ``sample(batch, generator)`` draws ``t`` ``[batch]`` (int64) uniformly from ``{t_min, ..., t_max}``.
    """

    def __init__(self, config: TimestepScheduleConfig, num_train_timesteps: int = 1000) -> None:
        self.config = config
        self.num_train_timesteps = int(num_train_timesteps)
        self.step = 0

    def update_step(self, step: int) -> None:
        """Set the training step the window is evaluated at."""
        self.step = int(step)

    def ratios(self, step: int | None = None) -> tuple[float, float]:
        """``(min_ratio, max_ratio)`` at ``step`` (default: the current step)."""
        c = self.config
        step = self.step if step is None else int(step)
        lo_end = c.min_ratio_end if c.min_ratio_end is not None else c.min_ratio
        hi_end = c.max_ratio_end if c.max_ratio_end is not None else c.max_ratio
        if c.mode == "constant":
            return c.min_ratio, c.max_ratio
        if c.mode == "step":
            return (c.min_ratio, c.max_ratio) if step < c.end_step else (lo_end, hi_end)
        if c.end_step == c.start_step:
            frac = 0.0 if step < c.start_step else 1.0
        else:
            frac = min(max((step - c.start_step) / (c.end_step - c.start_step), 0.0), 1.0)
        return c.min_ratio + frac * (lo_end - c.min_ratio), c.max_ratio + frac * (hi_end - c.max_ratio)

    def bounds(self, step: int | None = None) -> tuple[int, int]:
        """Inclusive integer window ``(t_min, t_max)`` at ``step``, clipped to ``[0, T - 1]``."""
        lo, hi = self.ratios(step)
        top = self.num_train_timesteps - 1
        t_min = min(max(int(lo * self.num_train_timesteps), 0), top)
        t_max = min(max(int(hi * self.num_train_timesteps), t_min), top)
        return t_min, t_max

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        step: int | None = None,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """Timesteps ``[batch]`` (int64) uniform on ``{t_min, ..., t_max}`` at ``step`` (default: current step).

        ``generator`` must live on CPU (the draw happens there; the result is moved to ``device``).
        """
        t_min, t_max = self.bounds(step)
        t = torch.randint(t_min, t_max + 1, (batch,), generator=generator, dtype=torch.long)
        return t.to(device)


# ---------------------------------------------------------------------------------------------------------- SDS math


class ScheduledDiffusionGuidance(Guidance):
    """A diffusion guidance whose timestep window follows the training step (set ``self.schedule`` in ``__init__``)."""

    schedule: TimestepSchedule
    components: StableDiffusionComponents

    @classmethod
    def from_config(cls, config: Any, device: str | torch.device | None = None) -> ScheduledDiffusionGuidance:  # noqa: ANN401
        """Load the networks offline (one line naming the missing weights and the flag) and build on ``device``
        (None: CUDA when available), as every guidance is built: a subclass whose constructor loads what it is not
        given (SAS, MVDream) needs nothing more."""
        return cls(config, device=device)

    def hold_components(self, components: StableDiffusionComponents) -> None:
        """Keep the frozen SD components and register their networks as submodules, so ``.to()`` moves them like any
        network of a guidance (models keep guidances out of their checkpoints, not the guidances their networks)."""
        self.components = components
        self.networks = nn.ModuleDict({name: m for name, m in vars(components).items() if isinstance(m, nn.Module)})

    def update_step(self, step: int) -> None:
        super().update_step(step)
        self.schedule.update_step(step)

    def set_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Encode the text condition ``y`` and the CFG negative prompt once, kept as buffers ``cond_embeds`` and
        ``uncond_embeds`` ``[1, L, D]`` that move with ``.to()`` (:mod:`styleme3d_ns.guidance.prompts`)."""
        self.register_buffer("cond_embeds", self.components.encode_text([prompt]), persistent=False)
        self.register_buffer("uncond_embeds", self.components.encode_text([negative_prompt]), persistent=False)


def predict_noise(
    unet: UNet2DConditionModel,
    latents_noisy: Tensor,
    t: Tensor,
    cond_embeds: Tensor,
    uncond_embeds: Tensor,
    guidance_scale: float | Tensor,
    **unet_kwargs: Any,
) -> Tensor:
    """Classifier-free-guided noise prediction ``eps_uncond + s (eps_cond - eps_uncond)`` in one UNet call.

    Args:
        unet: The (frozen) diffusion UNet.
        latents_noisy: ``z_t`` ``[B, 4, h, w]``.
        t: Timesteps ``[B]`` (or a scalar, broadcast).
        cond_embeds: Conditional text embeddings ``[B, L, D]`` or ``[1, L, D]`` (broadcast to ``B``).
        uncond_embeds: Unconditional (empty / negative prompt) embeddings, same shapes.
        guidance_scale: ``s``; a float or a ``[B]`` tensor (one scale per sample).
        **unet_kwargs: Passed to the UNet. The UNet input is ``[uncond; cond]`` (``2B`` rows, unconditional first),
            so batch-dependent kwargs must follow that order, e.g. IP-Adapter
            ``added_cond_kwargs={"image_embeds": [torch.cat([zeros, style])]}`` with ``2B`` rows.

    Returns:
        ``eps_hat`` ``[B, 4, h, w]`` in the UNet's dtype. Not wrapped in ``no_grad``: SDS callers wrap it themselves.
    """
    b = latents_noisy.shape[0]
    t = t.reshape(-1).to(latents_noisy.device)
    if t.numel() == 1:
        t = t.expand(b)
    cond = cond_embeds.expand(b, *cond_embeds.shape[1:]) if cond_embeds.shape[0] == 1 else cond_embeds
    uncond = uncond_embeds.expand(b, *uncond_embeds.shape[1:]) if uncond_embeds.shape[0] == 1 else uncond_embeds
    if cond.shape[0] != b or uncond.shape[0] != b:
        raise ValueError(
            f"text embeddings must have batch 1 or {b}, got cond {tuple(cond_embeds.shape)} and "
            f"uncond {tuple(uncond_embeds.shape)}."
        )
    latent_in = torch.cat([latents_noisy, latents_noisy]).to(unet.dtype)
    embeds = torch.cat([uncond, cond]).to(unet.dtype)
    eps = unet(latent_in, torch.cat([t, t]), encoder_hidden_states=embeds, **unet_kwargs).sample
    eps_uncond, eps_cond = eps.chunk(2)
    scale = guidance_scale
    if isinstance(scale, Tensor) and scale.ndim > 0:
        scale = scale.to(eps.device, eps.dtype).view(-1, 1, 1, 1)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_weight(alphas_cumprod: Tensor, t: Tensor, weighting: SdsWeighting = "sds") -> Tensor:
    """``w(t)`` ``[B, 1, 1, 1]`` (float32) of the SDS gradient (paper 000 eq. "SDS").

    * ``"sds"``: ``1 - alpha_bar_t`` (DreamFusion's choice, threestudio's ``weighting_strategy="sds"``).
    * ``"uniform"``: ``1``.
    """
    t = t.reshape(-1).long()
    if weighting == "sds":
        return (1.0 - alphas_cumprod.to(t.device)[t].float()).view(-1, 1, 1, 1)
    if weighting == "uniform":
        return torch.ones(t.shape[0], 1, 1, 1, device=t.device)
    raise ValueError(f"unknown SDS weighting '{weighting}'; choose 'sds' or 'uniform'.")


def sds_grad(eps_hat: Tensor, noise: Tensor, weight: Tensor) -> Tensor:
    """The SDS gradient on the latents, ``w(t) (eps_hat - eps)`` ``[B, 4, h, w]`` (float32, NaN/inf zeroed)."""
    return torch.nan_to_num(weight.float() * (eps_hat.float() - noise.float()), nan=0.0, posinf=0.0, neginf=0.0)


def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """A scalar whose gradient with respect to ``latents`` ``[B, ...]`` is exactly ``grad / B``.

    ``target = (latents - grad).detach()``; ``0.5 * ||latents - target||^2 / B`` (threestudio's reparametrisation:
    the value equals ``0.5 ||grad||^2 / B``, only its gradient is meaningful).
    """
    target = (latents.float() - grad.float()).detach()
    return 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]
