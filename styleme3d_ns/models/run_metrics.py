"""What a guided splat reports about its renders and its run: image metrics, and the run's peak memory.

Used by the model's nerfstudio hooks (`ns-eval`, the training logs); `styleme3d-eval` computes the same image
metrics over its own views (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor


def image_metrics(model: Any, reference: Tensor, render: Tensor, *, lpips: bool = True) -> dict[str, float]:  # noqa: ANN401
    """PSNR, SSIM (and LPIPS when `model.lpips` is set and `lpips`) of `render` against `reference`, both `[H, W, 3]`
    in [0, 1], with the model's metric modules."""
    ref, out = (torch.moveaxis(image, -1, 0)[None] for image in (reference, render))
    metrics = {"psnr": float(model.psnr(ref, out).item()), "ssim": float(model.ssim(ref, out))}
    if lpips and model.lpips is not None:
        metrics["lpips"] = float(model.lpips(ref, out))
    return metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on GPU, resident set size on CPU (Linux), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def lpips_if_available() -> torch.nn.Module | None:
    """torchmetrics' LPIPS when its AlexNet weights are already in the torch hub cache, else None and one log line.

    Constructing it without them starts a download (splatfacto does so unconditionally, which fails offline).
    """
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not hub.is_file():
        CONSOLE.log(f"LPIPS off: AlexNet weights not found at {hub} (copy them there to enable); PSNR/SSIM reported")
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)
