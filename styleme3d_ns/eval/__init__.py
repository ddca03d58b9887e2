"""Evaluation of stylised runs (`styleme3d-eval`): rendering, content/style/consistency metrics, cost, sheets.

One concept per module: `render` (load a run, render cameras and base colours), `image_metrics` (PSNR, SSIM,
LPIPS, saturation), `style_metrics` (Gram distance; CLIP/CSD reported as null with a note until their scorers
land), `consistency` (depth-warped multi-view error), `orbit` (portrait orbit cameras), `run_logs` (wall time and
memory from tensorboard logs), `sheet` (contact sheets) and `cli` (the command). docs/evaluation.md defines every
metric.
"""

from styleme3d_ns.eval.image_metrics import mean_psnr, mean_ssim, psnr
from styleme3d_ns.eval.render import RenderedViews, render_eval_views
from styleme3d_ns.eval.sheet import contact_sheet, to_uint8

__all__ = ["RenderedViews", "contact_sheet", "mean_psnr", "mean_ssim", "psnr", "render_eval_views", "to_uint8"]
