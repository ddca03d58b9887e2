"""Tiny, randomly initialised stand-ins for the diffusion/CLIP/CSD networks, built from configs (never downloaded).

They have the real architectures (diffusers UNet2DConditionModel/AutoencoderKL, transformers CLIP, our CSD ViT) at a
few hundred thousand parameters, so tests exercise the real code paths in well under a second per call. Outputs are
meaningless; tests assert maths (gradients, projections, scales), never image quality.

Sizes: UNet block_out_channels (32, 64), cross_attention_dim 32, sample_size 8 (latents [B, 4, 8, 8]); the VAE has
4 latent channels and 8x downsampling like SD's (4 encoder blocks), so 64 px images give 8x8 latents.
"""

from __future__ import annotations

import torch
from tokenizers import pre_tokenizers

TINY_TEXT_DIM = 32
"""Hidden size of the tiny SD text encoder == the tiny UNet's cross_attention_dim."""
TINY_TOKENS = 16
"""Tokenizer max length (SD's is 77)."""
TINY_IMAGE_EMBED_DIM = 16
"""Projection dim of the tiny IP-Adapter image encoder and content text encoder (SD 1.5's ViT-H/14: 1024)."""
TINY_IMAGE_SIZE = 32
"""Input size of the tiny CLIP vision models (real: 224)."""
TINY_RESOLUTION = 64
"""Image resolution the tiny SD works at (real: 512)."""


def tiny_clip_tokenizer(max_length: int = TINY_TOKENS):  # noqa: ANN201 - CLIPTokenizer
    """A CLIPTokenizer whose vocabulary is the 256 byte-level symbols (and their end-of-word forms) plus CLIP's two
    special tokens, with no merges: every character is one token. Built in memory (transformers ships no vocab)."""
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _tiny_text_config(projection_dim: int = TINY_IMAGE_EMBED_DIM):  # noqa: ANN202 - CLIPTextConfig
    from transformers import CLIPTextConfig

    tokenizer_vocab = 2 * 256 + 2
    return CLIPTextConfig(
        vocab_size=tokenizer_vocab,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_TOKENS,
        projection_dim=projection_dim,
        bos_token_id=tokenizer_vocab - 2,
        eos_token_id=tokenizer_vocab - 1,
        pad_token_id=tokenizer_vocab - 1,
    )


def tiny_sd_components(seed: int = 0):  # noqa: ANN201 - StableDiffusionComponents
    """Frozen tiny Stable Diffusion components with SD 1.5's topology in miniature.

    UNet: down (CrossAttnDown, Down), up (Up, CrossAttnUp) like SD 1.5's first/last blocks, so ``up_blocks.0`` has no
    attention and ``up_blocks.1`` (2 transformers) is the "style block"; a cross-attention mid block. Scheduler: SD's
    scaled-linear betas (0.00085 .. 0.012, T = 1000).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from styleme3d_ns.guidance.diffusion import StableDiffusionComponents

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(_tiny_text_config())
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    return StableDiffusionComponents(unet, vae, text_encoder, tiny_clip_tokenizer(), scheduler).freeze()


def tiny_ip_adapter_state_dict(unet, image_embed_dim: int = TINY_IMAGE_EMBED_DIM, seed: int = 0) -> dict:  # noqa: ANN001
    """A random IP-Adapter state dict in the released ``ip-adapter_sd15.bin`` layout, sized for ``unet``.

    ``{"image_proj": {"proj.weight": [4 C, E], "proj.bias": [4 C], "norm.weight": [C], "norm.bias": [C]},
    "ip_adapter": {"{k}.to_k_ip.weight": [H, C], "{k}.to_v_ip.weight": [H, C]}}`` with ``C`` the UNet's
    cross_attention_dim, ``E`` the image embedding dim, ``H`` the hidden size of the k-th attention processor; the
    cross-attention (``attn2``) processors are numbered ``k = 1, 3, 5, ...`` in ``unet.attn_processors`` order, as in
    the release (its ModuleList holds self- and cross-attention processors alternately).
    """
    gen = torch.Generator().manual_seed(seed)
    c = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.2

    image_proj = {"proj.weight": rand(4 * c, image_embed_dim), "proj.bias": rand(4 * c)}
    image_proj.update({"norm.weight": 1.0 + rand(c), "norm.bias": rand(c)})
    ip_adapter = {}
    cross = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for i, name in enumerate(cross):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        ip_adapter[f"{2 * i + 1}.to_k_ip.weight"] = rand(hidden, c)
        ip_adapter[f"{2 * i + 1}.to_v_ip.weight"] = rand(hidden, c)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def tiny_image_encoder(seed: int = 0):  # noqa: ANN201 - CLIPVisionModelWithProjection
    """A frozen tiny CLIPVisionModelWithProjection (32 px input, 8 px patches, image_embeds of size 16)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        projection_dim=TINY_IMAGE_EMBED_DIM,
    )
    return CLIPVisionModelWithProjection(config).eval().requires_grad_(False)


def tiny_content_text_encoder(seed: int = 0):  # noqa: ANN201 - (CLIPTextModelWithProjection, CLIPTokenizer)
    """A frozen tiny CLIPTextModelWithProjection whose text_embeds live in the tiny image encoder's space (dim 16),
    with its tokenizer: the ODCR content-prompt encoder in miniature."""
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(_tiny_text_config()).eval().requires_grad_(False)
    return model, tiny_clip_tokenizer()


def tiny_csd(seed: int = 0):  # noqa: ANN201 - CSDModel
    """A frozen tiny CSD: ViT of width 32, 2 layers, 4 heads, 8 px patches at 32 px, style/content heads of dim 16."""
    from styleme3d_ns.guidance.csd import CSDModel

    torch.manual_seed(seed)
    return CSDModel(image_size=TINY_IMAGE_SIZE, patch_size=8, width=32, layers=2, heads=4, embed_dim=16).freeze()
