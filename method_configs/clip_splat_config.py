"""Method `clip-splat` (paper 002): `ns-train clip-splat --data <scene> --pipeline.model.prompt "..."`."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification
from styleme3d_ns.method_configs.common import gaussian_optimizers, splat_trainer

from styleme3d_ns.models.clip_splat import ClipSplatModelConfig

# Fine-tuning an already reconstructed splat's colours is short: paper 002 fine-tunes a trained scene; 1000 steps
# lets every training view be revisited many times on typical captures (100-300 views).
FINETUNE_STEPS = 1000

clip_splat = MethodSpecification(
    config=splat_trainer(
        "clip-splat",
        ClipSplatModelConfig(num_downscales=0, background_color="white"),
        max_num_iterations=FINETUNE_STEPS,
        # colours move at styleme3d's measured colour rate; geometry groups (joint mode) keep splatfacto's rates
        optimizers=gaussian_optimizers(colour_lr=0.03),
    ),
    description="clip-splat (paper 002): fine-tune a splat's colours (or jointly optimise it) toward a CLIP prompt.",
)
