"""Method `sas-portrait` (paper 001): `ns-train sas-portrait --data photo.jpg --pipeline.model.style-prompt "..."`."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification
from styleme3d_ns.method_configs.common import gaussian_optimizers, splat_trainer

from styleme3d_ns.data.portrait import PortraitDataParserConfig
from styleme3d_ns.models.sas_portrait import SASPortraitModelConfig
from styleme3d_ns.models.surface_densify import GROW_GRAD2D, GROW_SCALE3D, REFINE_EVERY

# Paper 001 IV.A.2: "the total number of iterations is 3000".
PORTRAIT_STEPS = 3000

sas_portrait = MethodSpecification(
    config=splat_trainer(
        "sas-portrait",
        SASPortraitModelConfig(
            num_downscales=0,
            background_color="white",
            # view-independent colour, as the text-to-3D Gaussian methods paper 001 builds on (DreamGaussian):
            # SH bands would let each guidance view paint its own colours onto the same Gaussian
            sh_degree=0,
            densify_grad_thresh=GROW_GRAD2D,  # paper 001 IV.A.2: beta_E = 0.0002
            densify_size_thresh=GROW_SCALE3D,  # paper 001 IV.A.2: clone/split boundary 0.01
            refine_every=REFINE_EVERY,  # paper 001 IV.A.2: every 100 steps
            # paper: no warm-up stated. gsplat refines when step > warmup and step % reset period >= num images +
            # refine_every (101 here, after its step-0 opacity reset), so the first densification is at step 200
            warmup_length=REFINE_EVERY,
            # cull_alpha_thresh stays splatfacto's 0.1: gsplat's reset at step 0 clamps opacities to 2 x the threshold,
            # 0.2, paper 001's initial opacity (IV.A.1); a lower threshold would clamp the template to it at step 0
            use_absgrad=False,  # beta_E thresholds the mean 2D gradient (3DGS), not AbsGS's
        ),
        max_num_iterations=PORTRAIT_STEPS,
        # paper 001 IV.A.2: opacity 0.05, colour 0.01, rotation 0.001, scale 0.001, position 1e-3 -> 1e-4 (exp)
        optimizers=gaussian_optimizers(
            colour_lr=0.01,
            opacity_lr=0.05,
            quats_lr=0.001,
            scales_lr=0.001,
            means_lr=1e-3,
            means_lr_final=1e-4,
            max_steps=PORTRAIT_STEPS,
        ),  # fmt: skip
        dataparser=PortraitDataParserConfig(),
    ),
    description="sas-portrait (paper 001): one portrait photo plus a style prompt to a stylised 3D Gaussian head.",
)
