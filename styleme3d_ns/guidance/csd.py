"""CSD, the Contrastive Style Descriptor (Somepalli et al. 2024), as a style loss and a style-similarity metric.

Paper 000 ("Contrastive Style Descriptor") uses CSD's ViT-L style encoder, trained contrastively on LAION-Styles, to
pull the renders' style towards the reference's. CSD is OpenAI CLIP's ViT-L/14 image tower fine-tuned, with CLIP's
final projection replaced by two heads of the same shape: a *style* head and a *content* head. Its descriptor is

    s(x) = normalize(ViT(x) @ W_style),   ViT(x) = ln_post(CLS token) in R^1024,  W_style in R^{1024 x 768}

and our loss is ``L_CSD = 1 - cos(s(render), s(style))``, with images CLIP-normalised at 224 px (CSD's own
preprocessing: bicubic resize of the shorter side to 224, centre crop, CLIP mean/std).

Weights: the released training checkpoint (``tomg-group-umd/CSD-ViT-L`` ``pytorch_model.bin``, the CSD repo's
``checkpoint.pth``) holds ``model_state_dict`` with ``module.backbone.*`` in OpenAI CLIP's visual layout (no
``proj``) and ``module.last_layer_style`` / ``module.last_layer_content``, both ``[1024, 768]``; beside it optimiser
states, ``args`` (an ``argparse.Namespace``) and numpy scalars. :func:`load_csd` reads it with
``torch.load(weights_only=True)`` plus an explicit allowlist of those plain-data types, strips ``module.`` and loads
strictly into :class:`CSDModel`.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.core.safe_load import load_data_only
from styleme3d_ns.guidance.base import Guidance, GuidanceConfig
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel input mean (CSD and the IP-Adapter image encoder were trained with it)."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel input std."""

CSD_REPO = "tomg-group-umd/CSD-ViT-L"
"""Hugging Face repo holding CSD's released ViT-L checkpoint."""
CSD_FILE = "pytorch_model.bin"
"""The checkpoint's name in :data:`CSD_REPO` (the same file as the CSD GitHub release's ``checkpoint.pth``)."""

# CSD ViT-L: OpenAI CLIP ViT-L/14 at 224 px (Somepalli et al. 2024, "vit_large").
CSD_VIT_L = {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24, "heads": 16, "embed_dim": 768}


def clip_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """CLIP input ``[B, 3, size, size]`` from images ``[B, 3, H, W]`` in [0, 1], differentiably.

    Bicubic (antialiased) resize of the shorter side to ``size``, centre crop, clamp to [0, 1] (as CLIP's uint8 PIL
    pipeline does implicitly), then ``(x - CLIP_MEAN) / CLIP_STD``.
    """
    h, w = images.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
        images = F.interpolate(images, size=new_hw, mode="bicubic", align_corners=False, antialias=scale < 1.0)
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    images = images[..., top : top + size, left : left + size].clamp(0.0, 1.0)
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


# ------------------------------------------------------------------------------------------ the ViT (CLIP layout)


class _QuickGELU(nn.Module):
    """OpenAI CLIP's activation ``x * sigmoid(1.702 x)`` (not nn.GELU: CSD inherits it from CLIP ViT-L/14)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block with OpenAI CLIP's parameter names (``attn``, ``ln_1``, ``mlp.c_fc``, ...)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPVisionTower(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` without its final ``proj`` (CSD's backbone), same parameter names.

    ``forward(pixels [B, 3, S, S] CLIP-normalised) -> [B, width]``: ``ln_post`` of the class token.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
        grid = image_size // patch_size
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0])


class CSDModel(nn.Module):
    """CSD: CLIP ViT backbone + style head + content head, parameter names as in the released checkpoint
    (without its ``module.`` prefix): ``backbone.*``, ``last_layer_style`` ``[width, E]``, ``last_layer_content``
    ``[width, E]``.

    ``forward(pixels) -> (features [B, width], content [B, E], style [B, E])``, heads L2-normalised, as CSD's
    ``CSD_CLIP.forward``. Use :meth:`style` / :meth:`embed_style` for the descriptor alone.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        embed_dim: int = 768,
    ) -> None:
        """Defaults build CSD ViT-L (:data:`CSD_VIT_L`); tests pass tiny sizes. Weights are random until loaded."""
        super().__init__()
        self.backbone = CLIPVisionTower(image_size, patch_size, width, layers, heads)
        scale = width**-0.5
        self.last_layer_style = nn.Parameter(scale * torch.randn(width, embed_dim))
        self.last_layer_content = nn.Parameter(scale * torch.randn(width, embed_dim))

    @property
    def image_size(self) -> int:
        """Input resolution (224 for CSD ViT-L)."""
        return self.backbone.image_size

    def freeze(self) -> CSDModel:
        """No parameter gradients, eval mode; returns ``self`` (gradients still flow to the input)."""
        self.requires_grad_(False)
        return self.eval()

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.backbone(pixels)
        content = F.normalize(features @ self.last_layer_content, dim=-1)
        style = F.normalize(features @ self.last_layer_style, dim=-1)
        return features, content, style

    def style(self, pixels: Tensor) -> Tensor:
        """Unit style descriptors ``[B, E]`` of CLIP-normalised ``pixels`` ``[B, 3, S, S]``."""
        return F.normalize(self.backbone(pixels) @ self.last_layer_style, dim=-1)

    def embed_style(self, images: Tensor) -> Tensor:
        """Unit style descriptors ``[B, E]`` (float32) of images ``[B, 3, H, W]`` in [0, 1] (preprocessed here)."""
        param = self.last_layer_style
        pixels = clip_preprocess(images.to(param.device), self.image_size).to(param.dtype)
        return self.style(pixels).float()


# ---------------------------------------------------------------------------------------------------------- loading


def csd_state_dict(checkpoint: dict) -> dict[str, Tensor]:
    """Map a released CSD checkpoint (``{"model_state_dict": {"module.backbone.conv1.weight": ...}}``, or that inner
    dict itself) to :class:`CSDModel` keys by dropping the ``module.`` prefix of DataParallel training."""
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError("not a CSD checkpoint: expected a dict with 'model_state_dict'.")
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, Tensor)}


def default_csd_hint(flag: str = "--pipeline.model.csd.weights") -> str:
    """How a user points us at CSD's checkpoint (ends the missing-weights message)."""
    return (
        f"download '{CSD_FILE}' of {CSD_REPO} (or checkpoint.pth from the CSD GitHub release) and pass {flag} "
        "<path/to/checkpoint.pth>"
    )


def load_csd(
    path: str | Path | None = CSD_REPO,
    device: str | torch.device | None = None,
    *,
    half: bool = True,
    hint: str | None = None,
    model: CSDModel | None = None,
) -> CSDModel:
    """Load CSD ViT-L from its released checkpoint, strictly, frozen.

    Args:
        path: The checkpoint file (``checkpoint.pth`` / ``pytorch_model.bin``), a folder holding ``pytorch_model.bin``,
            or a repo id in the HF cache (default :data:`CSD_REPO`). Never downloads.
        device: Target device (``None``: CUDA if available).
        half: float16 on CUDA.
        hint: How to pass the path (default: :func:`default_csd_hint`), ends the :class:`MissingWeightsError`.
        model: The module to load into (default: a new CSD ViT-L); tests pass a tiny one.

    Raises:
        MissingWeightsError: one line when the file is absent or its keys/shapes are not CSD's.
    """
    hint = hint or default_csd_hint()
    local = Path(path).expanduser() if path is not None else None
    filename = None if (local is not None and local.is_file()) else CSD_FILE
    ckpt_path = resolve_weights("CSD", path, filename=filename, hint=hint)
    try:
        # CSD's release pickles its argparse `args` beside the tensors: plain data, allowed by name
        checkpoint = load_data_only(ckpt_path, extra_globals=(argparse.Namespace,))
        state = csd_state_dict(checkpoint)
    except Exception as err:  # noqa: BLE001 - torch.load on arbitrary bytes raises almost any type
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise MissingWeightsError(f"CSD weights '{ckpt_path}' could not be read ({reason}); {hint}.") from None
    model = model if model is not None else CSDModel(**CSD_VIT_L)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        )
        raise MissingWeightsError(f"'{ckpt_path}' is not a CSD ViT-L checkpoint ({detail}); {hint}.")
    model.load_state_dict(state, strict=True)
    dev, dtype = select_device_dtype(device, half=half)
    return model.to(device=dev, dtype=dtype).freeze()


# ------------------------------------------------------------------------------------------------ loss and metric


@torch.no_grad()
def csd_similarity(model: CSDModel, images_a: Tensor, images_b: Tensor) -> Tensor:
    """Cosine similarity ``[B]`` in [-1, 1] of CSD style descriptors (higher = closer in style).

    ``images_a`` ``[B, 3, H, W]`` and ``images_b`` ``[B or 1, 3, H', W']`` in [0, 1] (a single reference broadcasts),
    any sizes: each is CLIP-preprocessed to the model's 224 px. A metric: no gradient.
    """
    a = model.embed_style(images_a)
    b = model.embed_style(images_b)
    return (a * b).sum(dim=-1)


@dataclass
class CSDConfig(GuidanceConfig):
    """Config of :class:`CSDStyleLoss` (paper 000, "Contrastive Style Descriptor")."""

    weights: str | None = CSD_REPO
    """CSD checkpoint: a checkpoint.pth / pytorch_model.bin file, its folder, or a repo id in the HF cache."""
    half: bool = True
    """Run CSD in float16 on CUDA (always float32 on CPU)."""


class CSDStyleLoss(Guidance):
    """``L = weight * mean_b(1 - cos(s(render_b), s(style)))`` with ``s`` CSD's unit style descriptor.

    Usage: ``loss = CSDStyleLoss(cfg, model); loss.set_style(style [1, 3, H, W]); out = loss(renders, step)``;
    returns ``{"loss", "loss_csd", "csd_similarity"}`` (scalars; ``csd_similarity`` detached, for logging).

    The CSD network is a frozen submodule (no gradients, eval mode). Models hold guidances outside their module tree
    (:attr:`GuidedSplatModel.guidance`), so its 1.2 GB never reach a training checkpoint or an optimiser.
    """

    config: CSDConfig

    def __init__(self, config: CSDConfig, model: CSDModel) -> None:
        """``model``: a loaded :class:`CSDModel` (:meth:`from_config` loads the real one; tests pass a tiny one)."""
        super().__init__(config)
        self.model = model.freeze()
        self.register_buffer("_style_embed", None, persistent=False)

    @classmethod
    def from_config(
        cls, config: CSDConfig, device: str | torch.device | None = None, *, flag: str = "--pipeline.model.csd.weights"
    ) -> CSDStyleLoss:
        """Load CSD from ``config.weights`` (offline) and build the loss on ``device``; ``flag`` names the option
        that sets ``weights`` in the missing-weights message."""
        model = load_csd(config.weights, device, half=config.half, hint=default_csd_hint(flag))
        param = model.last_layer_style
        return cls(config, model).to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def set_style(self, style_image: Tensor) -> None:
        """Cache the style descriptor of ``style_image`` ``[1, 3, H, W]`` in [0, 1] (float32 ``[1, E]``)."""
        self.check_images(style_image, "style_image")
        if style_image.shape[0] != 1:
            raise ValueError(f"style_image must be a single image [1, 3, H, W], got {tuple(style_image.shape)}.")
        self._style_embed = self.model.embed_style(style_image.to(self.device))

    @property
    def style_embed(self) -> Tensor | None:
        """The cached unit style descriptor ``[1, E]`` (None before :meth:`set_style`)."""
        return self._style_embed

    def forward(self, images: Tensor, step: int) -> dict[str, Tensor]:
        """Loss terms for renders ``images`` ``[B, 3, H, W]`` in [0, 1]; gradients flow to ``images`` only."""
        if self._style_embed is None:
            raise RuntimeError("CSDStyleLoss: call set_style(style_image) before computing the loss.")
        images = self.prepare_images(images)
        similarity = (self.model.embed_style(images) * self._style_embed).sum(dim=-1)  # [B]
        loss_csd = (1.0 - similarity).mean()
        return {
            "loss_csd": loss_csd,
            "csd_similarity": similarity.detach().mean(),
            "loss": self.config.weight * loss_csd,
        }
