"""IP-Adapter on a bare UNet: image-prompt cross-attention with per-block scales (InstantStyle).

IP-Adapter (Ye et al. 2023) adds, in every cross-attention layer, a second attention over tokens projected from a
CLIP image embedding (paper 000 "Style-aware Image Customization"):

    f' = Attention(Q, K_t, V_t) + lambda * Attention(Q, K_s, V_s)

InstantStyle (cited by paper 003) found that only some blocks carry style; injecting the image tokens there alone
(``lambda = 0`` elsewhere) transfers style with little content leakage. For SD 1.5 its experimental style block is
``up_blocks.1`` (InstantStyle ``infer_style_sd15.py``: ``target_blocks=["up_blocks.1"]``; SDXL's is
``up_blocks.0.attentions.1``).

We attach the adapter to a UNet from :class:`~styleme3d_ns.guidance.diffusion.StableDiffusionComponents`, not to a
pipeline, through diffusers' UNet loader (``UNet2DConditionModel._load_ip_adapter_weights``, the routine
``pipeline.load_ip_adapter`` itself calls; diffusers 0.42.1 exposes no public UNet-level equivalent). The UNet then
expects ``added_cond_kwargs={"image_embeds": [embeds]}`` with ``embeds`` ``[B, 1, E]`` (one tensor per attached
adapter) in every call. Scales are set per attention processor by :func:`set_ip_adapter_scale`, which accepts
diffusers' per-block dict (``{"up": {"block_1": [0.0, 1.0, 0.0]}}``), module-path prefixes
(``{"up_blocks.1": 1.0}``) or one float. Everything here is generic over adapter variants (plain, Plus, FaceID):
the state dict's ``image_proj`` decides the projection, diffusers builds it. IP-Adapter-FaceID (paper 001's identity
branch on SD 1.5) also ships an attention LoRA in the same file; :func:`merge_faceid_lora` merges it into the UNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

IP_ADAPTER_REPO = "h94/IP-Adapter"
"""Hugging Face repo of the released IP-Adapter weights."""
IP_ADAPTER_SD15_FILE = "models/ip-adapter_sd15.bin"
"""IP-Adapter for SD 1.5 (4 image tokens from a 1024-d ViT-H/14 image embedding); ~44 MB."""
IP_ADAPTER_IMAGE_ENCODER = "models/image_encoder"
"""Subfolder of :data:`IP_ADAPTER_REPO` with its CLIP ViT-H/14 image encoder (CLIPVisionModelWithProjection)."""
SD15_STYLE_BLOCKS = ("up_blocks.1",)
"""SD 1.5 style-responsible block(s) (InstantStyle infer_style_sd15.py, experimental for SD 1.5)."""
FACEID_LORA_LAYERS = ("to_q", "to_k", "to_v", "to_out")
"""Attention projections the IP-Adapter-FaceID LoRA adapts (``to_out`` means ``to_out.0``)."""

ScaleSpec = float | Mapping[str, Any]
"""A float (every processor), diffusers' per-block dict, or ``{module-path prefix: float}``."""

_PARTS = ("down", "mid", "up")


def is_ip_adapter_processor(processor: object) -> bool:
    """Whether ``processor`` is one of diffusers' IP-Adapter attention processors (it has per-adapter scales)."""
    return hasattr(processor, "to_k_ip") and hasattr(processor, "scale") and isinstance(processor.scale, list)


def ip_adapter_processors(unet: UNet2DConditionModel) -> dict[str, nn.Module]:
    """``{processor name: processor}`` of the UNet's IP-Adapter cross-attention processors (empty if none)."""
    return {name: proc for name, proc in unet.attn_processors.items() if is_ip_adapter_processor(proc)}


def ip_adapter_scales(unet: UNet2DConditionModel) -> dict[str, list[float]]:
    """``{processor name: [scale per attached adapter]}`` as currently set."""
    return {name: list(proc.scale) for name, proc in ip_adapter_processors(unet).items()}


def _position(name: str) -> tuple[str, int, int]:
    """``("up", block, attention)`` of a processor name such as ``up_blocks.1.attentions.2.transformer_...``."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        return "mid", 0, int(parts[2])
    return parts[0].removesuffix("_blocks"), int(parts[1]), int(parts[3])


def _attentions_per_block(unet: UNet2DConditionModel) -> dict[tuple[str, int], int]:
    """``{(part, block): number of attention (transformer) modules}`` for blocks that have any."""
    counts: dict[tuple[str, int], int] = {}
    for part, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        for i, block in enumerate(blocks):
            if getattr(block, "attentions", None):
                counts[(part, i)] = len(block.attentions)
    if getattr(unet.mid_block, "attentions", None):
        counts[("mid", 0)] = len(unet.mid_block.attentions)
    return counts


def _scale_from_block_dict(spec: Mapping[str, Any], position: tuple[str, int, int]) -> float:
    """Scale of one processor under diffusers' per-block dict; unmentioned parts/blocks get 0."""
    part, block, attention = position
    value = spec.get(part, 0.0)
    if part != "mid" and isinstance(value, Mapping):
        value = value.get(f"block_{block}", 0.0)
    if isinstance(value, Sequence):
        return float(value[attention])
    return float(value)


def _check_block_dict(unet: UNet2DConditionModel, spec: Mapping[str, Any]) -> None:
    """Refuse blocks without attention and per-attention lists of the wrong length (one line each)."""
    counts = _attentions_per_block(unet)
    for part, value in spec.items():
        blocks = value.items() if (part != "mid" and isinstance(value, Mapping)) else [("block_0", value)]
        for block_name, block_value in blocks:
            if not block_name.startswith("block_") or not block_name[len("block_") :].isdigit():
                raise ValueError(f"IP-Adapter scale key '{part}.{block_name}' must look like 'block_<index>'.")
            key = (part, int(block_name[len("block_") :]))
            if part != "mid" and isinstance(value, Mapping) and key not in counts:
                with_attn = sorted(f"block_{i}" for p, i in counts if p == part)
                raise ValueError(
                    f"'{part}.{block_name}' has no cross-attention in this UNet; {part} blocks with attention: "
                    f"{with_attn}."
                )
            if isinstance(block_value, Sequence) and key in counts and len(block_value) != counts[key]:
                raise ValueError(
                    f"'{part}.{block_name}' has {counts[key]} attention layers, got {len(block_value)} scales."
                )


def expand_ip_adapter_scale(unet: UNet2DConditionModel, scale: ScaleSpec) -> dict[str, float]:
    """Per-processor scale ``{processor name: float}`` for every IP-Adapter processor of ``unet``.

    ``scale`` is one of:

    * a float: every processor;
    * diffusers'/InstantStyle's per-block dict with keys ``"down"``, ``"mid"``, ``"up"``: a float for a whole part,
      ``{"block_i": float | [one float per attention layer]}`` per block (e.g. ``{"up": {"block_0": [0.0, 1.0,
      0.0]}}``); anything not mentioned is 0;
    * module-path prefixes: ``{"up_blocks.1": 1.0, "down_blocks.2.attentions.1": 0.5}``; a processor takes the scale
      of the longest prefix it starts with, 0 if none. Every prefix must match at least one processor.
    """
    names = list(ip_adapter_processors(unet))
    if not isinstance(scale, Mapping):
        return {name: float(scale) for name in names}
    keys = set(scale)
    if keys <= set(_PARTS):
        _check_block_dict(unet, scale)
        return {name: _scale_from_block_dict(scale, _position(name)) for name in names}
    if keys & set(_PARTS):
        raise ValueError(f"IP-Adapter scale mixes part keys {sorted(keys & set(_PARTS))} with module paths.")
    for prefix in keys:
        if not any(name == prefix or name.startswith(prefix.rstrip(".") + ".") for name in names):
            raise ValueError(
                f"IP-Adapter scale prefix '{prefix}' matches no cross-attention processor of this UNet "
                f"(e.g. '{names[0] if names else 'none'}')."
            )
    out = {}
    for name in names:
        matches = [p for p in keys if name == p or name.startswith(p.rstrip(".") + ".")]
        out[name] = float(scale[max(matches, key=len)]) if matches else 0.0
    return out


def set_ip_adapter_scale(unet: UNet2DConditionModel, scale: ScaleSpec | Sequence[ScaleSpec]) -> dict[str, list[float]]:
    """Set the image-prompt weight ``lambda`` of every IP-Adapter processor; returns the resulting scales.

    ``scale`` is a :data:`ScaleSpec` applied to every attached adapter, or a list with one spec per adapter (in the
    order they were attached).
    """
    processors = ip_adapter_processors(unet)
    if not processors:
        raise ValueError("this UNet has no IP-Adapter attached; call attach_ip_adapter(unet, state_dict) first.")
    n_adapters = len(next(iter(processors.values())).scale)
    specs = list(scale) if isinstance(scale, (list, tuple)) else [scale] * n_adapters
    if len(specs) != n_adapters:
        raise ValueError(f"got {len(specs)} IP-Adapter scale specs for {n_adapters} attached adapters.")
    expanded = [expand_ip_adapter_scale(unet, spec) for spec in specs]
    for name, proc in processors.items():
        proc.scale = [per_adapter[name] for per_adapter in expanded]
    return ip_adapter_scales(unet)


def attach_ip_adapter(
    unet: UNet2DConditionModel,
    state_dict: Mapping[str, Mapping[str, Tensor]] | Sequence[Mapping[str, Mapping[str, Tensor]]],
    scale: ScaleSpec | Sequence[ScaleSpec] = 1.0,
) -> dict[str, list[float]]:
    """Attach one or more IP-Adapters to ``unet`` in place, frozen, and set their scales.

    Args:
        unet: A diffusers UNet2DConditionModel (e.g. ``components.unet``).
        state_dict: The released layout ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight": ..., ...}}``
            (as :func:`load_ip_adapter_state_dict` returns it), or a list of such dicts for several adapters.
        scale: Per-block scales (see :func:`expand_ip_adapter_scale`), or one per adapter.

    Returns:
        ``{processor name: [scale per adapter]}``.

    After this, every UNet call needs ``added_cond_kwargs={"image_embeds": [e_1, ...]}`` with ``e_i`` ``[B, 1, E_i]``
    (the i-th adapter's image embeddings; zeros for an unconditional row, as IP-Adapter was trained).
    """
    dicts = [state_dict] if isinstance(state_dict, Mapping) else list(state_dict)
    for sd in dicts:
        if not (isinstance(sd, Mapping) and {"image_proj", "ip_adapter"} <= set(sd)):
            got = sorted(sd)[:4] if isinstance(sd, Mapping) else type(sd).__name__
            raise ValueError(f"not an IP-Adapter state dict: expected keys 'image_proj' and 'ip_adapter', got {got}.")
    unet._load_ip_adapter_weights(dicts, low_cpu_mem_usage=False)
    for module in (unet.encoder_hid_proj, *ip_adapter_processors(unet).values()):
        module.requires_grad_(False)
    return set_ip_adapter_scale(unet, scale)


def merge_faceid_lora(unet: UNet2DConditionModel, ip_adapter_state: Mapping[str, Any], scale: float = 1.0) -> int:
    """Merge IP-Adapter-FaceID's attention LoRA into ``unet`` in place; returns the number of layers changed.

    The release stores, for the ``k``-th attention processor of ``unet.attn_processors`` (self- and cross-attention
    alternating), ``"{k}.to_q_lora.down.weight"`` ``[r, in]`` and ``"{k}.to_q_lora.up.weight"`` ``[out, r]`` (and
    ``to_k``/``to_v``/``to_out``) under ``"ip_adapter"``. FaceID computes ``W x + scale * up(down(x))``, so the merge
    ``W += scale * up @ down`` is exact. Adapters without LoRA keys (plain IP-Adapter) leave ``unet`` unchanged.
    """
    weights = ip_adapter_state["ip_adapter"]
    changed = 0
    with torch.no_grad():
        for k, name in enumerate(unet.attn_processors):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            for layer in FACEID_LORA_LAYERS:
                down, up = weights.get(f"{k}.{layer}_lora.down.weight"), weights.get(f"{k}.{layer}_lora.up.weight")
                if down is None or up is None:
                    continue
                linear = attn.to_out[0] if layer == "to_out" else getattr(attn, layer)
                delta = up.to(torch.float32) @ down.to(torch.float32)
                if delta.shape != linear.weight.shape:
                    raise ValueError(
                        f"FaceID LoRA '{k}.{layer}' is {tuple(delta.shape)} but {name} has {tuple(linear.weight.shape)}"
                        "; the adapter does not belong to this UNet (SD 1.5 expected)."
                    )
                linear.weight += (scale * delta).to(linear.weight)
                changed += 1
    return changed


def load_ip_adapter_state_dict(
    path_or_id: str | Path = IP_ADAPTER_REPO, *, filename: str = IP_ADAPTER_SD15_FILE, hint: str
) -> dict[str, dict[str, Tensor]]:
    """Read an IP-Adapter checkpoint (``.bin`` or ``.safetensors``) as ``{"image_proj": ..., "ip_adapter": ...}``.

    ``path_or_id``: the checkpoint file, a folder holding ``filename``, or a repo id in the HF cache (never
    downloads). A missing file raises the one-line :class:`MissingWeightsError` ending with ``hint``.
    """
    path = resolve_weights("IP-Adapter", path_or_id, filename=filename, hint=hint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path), device="cpu")
            state: dict[str, dict[str, Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for key, value in flat.items():
                top, _, rest = key.partition(".")
                if top in state:
                    state[top][rest] = value
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - arbitrary bytes make torch.load raise almost anything
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise MissingWeightsError(f"IP-Adapter weights '{path}' could not be read ({reason}); {hint}.") from None
    if not (isinstance(state, dict) and state.get("image_proj") and state.get("ip_adapter")):
        raise MissingWeightsError(
            f"'{path}' is not an IP-Adapter checkpoint (needs 'image_proj' and 'ip_adapter' entries); {hint}."
        )
    return state


def load_image_encoder(
    path_or_id: str | Path = IP_ADAPTER_REPO,
    *,
    subfolder: str = IP_ADAPTER_IMAGE_ENCODER,
    device: str | torch.device | None = None,
    half: bool = True,
    hint: str,
) -> CLIPVisionModelWithProjection:
    """Load the IP-Adapter's CLIP image encoder (CLIPVisionModelWithProjection), frozen, offline.

    ``path_or_id``: the encoder folder itself (with ``config.json``), a folder/repo id containing ``subfolder``, or
    a repo id in the HF cache. float16 only on CUDA with ``half``.
    """
    from transformers import CLIPVisionModelWithProjection

    local = Path(path_or_id).expanduser()
    if (local / "config.json").is_file():
        folder = local
    else:
        folder = resolve_weights("IP-Adapter image encoder", path_or_id, filename=f"{subfolder}/config.json", hint=hint)
        folder = folder.parent
    dev, dtype = select_device_dtype(device, half=half)
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise MissingWeightsError(
            f"IP-Adapter image encoder in '{folder}' could not be read ({reason}); download '{subfolder}' of "
            f"{IP_ADAPTER_REPO} or {hint}."
        ) from None
    return model.to(dev).eval().requires_grad_(False)


def encode_image_embeds(image_encoder: CLIPVisionModelWithProjection, images: Tensor) -> Tensor:
    """CLIP image embeddings ``[B, E]`` (the projection output IP-Adapter consumes; E = 1024 for ViT-H/14) of
    images ``[B, 3, H, W]`` in [0, 1], CLIP-normalised at the encoder's input size (224 px). Differentiable."""
    from styleme3d_ns.guidance.csd import clip_preprocess

    param = next(image_encoder.parameters())
    pixels = clip_preprocess(images.to(param.device), image_encoder.config.image_size).to(param.dtype)
    return image_encoder(pixel_values=pixels).image_embeds


def ip_adapter_cond_kwargs(
    image_embeds: Tensor, batch: int | None = None, uncond_embeds: Tensor | None = None
) -> dict[str, list[Tensor]]:
    """``added_cond_kwargs`` for a classifier-free-guided call (:func:`~styleme3d_ns.guidance.diffusion.predict_noise`).

    ``image_embeds`` ``[B, E]`` or ``[1, E]`` (broadcast to ``batch``); ``uncond_embeds`` defaults to zeros
    (IP-Adapter's unconditional image prompt). Returns ``{"image_embeds": [[2B, 1, E]]}``, unconditional rows first,
    matching ``predict_noise``'s ``[uncond; cond]`` batch.
    """
    if uncond_embeds is None:
        uncond_embeds = torch.zeros_like(image_embeds)
    b = batch if batch is not None else max(image_embeds.shape[0], uncond_embeds.shape[0])
    cond = image_embeds.expand(b, -1)
    uncond = uncond_embeds.expand(b, -1)
    return {"image_embeds": [torch.cat([uncond, cond]).unsqueeze(1)]}
