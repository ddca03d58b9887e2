"""Gaussian rasterisation: gsplat on CUDA, a pure-PyTorch tile rasteriser elsewhere."""

from .backend import Backend, gsplat_cuda_status, rasterize, resolve_backend
from .colour_map import ColourMap
from .sh import eval_sh, num_sh_bases, sh_basis, sh_colors
from .torch_rasterizer import CompositeWeights, Projection, composite_weights, project_gaussians, rasterize_torch

__all__ = [
    "Backend",
    "ColourMap",
    "CompositeWeights",
    "Projection",
    "composite_weights",
    "eval_sh",
    "gsplat_cuda_status",
    "num_sh_bases",
    "project_gaussians",
    "rasterize",
    "rasterize_torch",
    "resolve_backend",
    "sh_basis",
    "sh_colors",
]
