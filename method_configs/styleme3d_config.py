"""Method `styleme3d` (paper 000): `ns-train styleme3d --data <scene> --pipeline.model.style-image <img>`."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification
from styleme3d_ns.method_configs.common import gaussian_optimizers, splat_trainer

from styleme3d_ns.guidance.gram import GramStyleLossConfig
from styleme3d_ns.models.styleme3d import StyleMe3DModelConfig

# Paper 000 (DSSD): "2800 steps across different guidance modes".
STYLE_STEPS = 2800

styleme3d = MethodSpecification(
    config=splat_trainer(
        "styleme3d",
        StyleMe3DModelConfig(
            num_downscales=0,  # scenes are stylised at full resolution from the first step
            background_color="white",
            sos=GramStyleLossConfig(
                # paper 000 SOS: a fixed 0.5-scale phase, then all scales; the paper's 10k-step phase is longer than
                # the whole 2800-step plan, so it gets the first quarter (measured: content 17.5 dB vs 16.5 without)
                pretrain_steps=STYLE_STEPS // 4,
                # measured on the demo scene (docs/styleme3d.md): 2 halves the Gram distance in 1000 steps while the
                # content stays readable (14.5 dB PSNR to the base); 5 keeps more content (16.4 dB) but stops at -48%;
                # 0.05 (the 2D finding) leaves the content term negligible (~0.1% of the loss)
                content_weight=2.0,
            ),
        ),
        max_num_iterations=STYLE_STEPS,
        # a colour-only step can move further than a photometric-fitting one (splatfacto: 0.0025); measured best
        optimizers=gaussian_optimizers(colour_lr=0.03),
    ),
    description="StyleMe3D (paper 000): stylise a splat's colours from a style image; geometry stays frozen.",
)
