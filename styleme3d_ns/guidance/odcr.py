"""ODCR: orthogonal decomposition for content removal (StyleTex, paper 003, eq. 9).

A CLIP image embedding of a style reference mixes *how* it looks with *what* it shows. StyleTex removes the content
part by projecting the embedding onto the orthogonal complement of a content direction ``e_c`` (the CLIP text
embedding of a description of the reference's content, in the same joint space):

    e_s' = e_s - (<e_s, e_c> / ||e_c||^2) e_c                                   (paper 003, eq. 9)

With ``K`` content directions (several prompts, or image embeddings of content renders) the same idea removes the
projection onto their span: with ``Q`` ``[D, K']`` an orthonormal basis of span(e_c1 .. e_cK) (QR = Gram-Schmidt,
linearly dependent directions dropped),

    e_s' = e_s - Q Q^T e_s

so ``<e_s', e_ck> = 0`` for every ``k``. ``strength`` in [0, 1] scales the removed part (1 = the paper's full
removal; InstantStyle's softer "subtract a scaled content embedding" is a different operation and not used).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Relative threshold on |R_ii| below which a content direction is treated as linearly dependent on the previous
# ones (float64 QR; ~1e-6 of the largest |R_ii| is far above float32 round-off of real CLIP embeddings).
_RANK_TOLERANCE = 1e-6


def content_basis(content: Tensor) -> Tensor:
    """Orthonormal basis ``Q`` ``[D, K']`` (float64) of the span of ``content`` ``[K, D]`` (or ``[D]``), ``K' <= K``.

    Zero and linearly dependent directions are dropped; an all-zero ``content`` gives ``K' = 0``.
    """
    c = content.detach().double().reshape(-1, content.shape[-1])
    q, r = torch.linalg.qr(c.T, mode="reduced")  # c^T = Q R: columns of Q span the content directions
    diag = r.diagonal().abs()
    if diag.numel() == 0 or float(diag.max()) == 0.0:
        return q[:, :0]
    keep = diag > _RANK_TOLERANCE * diag.max()
    return q[:, keep]


def remove_content(style: Tensor, content: Tensor | None, strength: float = 1.0) -> Tensor:
    """Style embeddings with their component along the content directions removed (paper 003 eq. 9, ODCR).

    Args:
        style: Style embeddings ``e_s`` ``[B, D]`` (or ``[D]``), e.g. CLIP image embeddings of the style image.
        content: Content directions ``[K, D]`` (or ``[D]``) in the same space, e.g. CLIP text embeddings of a
            content prompt or image embeddings of content renders. ``None`` or ``K = 0`` returns ``style``.
        strength: Fraction of the projection removed; 1.0 makes the result orthogonal to every direction.

    Returns:
        ``e_s - strength * Q Q^T e_s`` with the shape and dtype of ``style``; no gradient flows to ``content``
        (directions are constants), gradients flow to ``style``. Not renormalised: IP-Adapter was trained on
        unnormalised CLIP image embeddings, so the caller decides.
    """
    if content is None or content.numel() == 0:
        return style
    if content.shape[-1] != style.shape[-1]:
        raise ValueError(
            f"content directions have dimension {content.shape[-1]} but the style embedding {style.shape[-1]}; "
            "both must come from the same CLIP space (e.g. ViT-H/14 text and image embeddings)."
        )
    q = content_basis(content.to(style.device))
    if q.shape[1] == 0:
        return style
    s = style.double()
    removed = (s @ q) @ q.T
    return (s - strength * removed).to(style.dtype)
