"""Method `styleme3d`: stylise a frozen splat's colours with a set of style experts.

Paper 000: "StyleMe3D: Stylize 3D Gaussians with Disentangled Style Encoders"; paper 003 (arXiv:2411.00399):
"StyleTex: Style Image-Guided Texture Generation for 3D Models" (ODCR and style-block injection in DSSD).

This file lists loss terms; it holds no guidance maths and no training loop. The experts (paper 000):

- SOS, the multi-scale Gram/perceptual loss ("Simultaneously Optimized Scale"), on the packaged ImageNet
  EfficientNet-Lite0 by default (real offline) or on VGG19 with user weights (the paper's layers);
- DSSD, style score distillation on Stable Diffusion 1.5 with the style image injected through IP-Adapter into the
  style blocks only and its content removed by ODCR (paper 003);
- CSD, the contrastive style descriptor (ViT-L) cosine to the style image;
- 3DG-QA, the CLIP antonym-prompt aesthetic prior.

SOS always runs; the others run when their weights are on this machine. With ``missing_experts="skip"`` (default)
an expert without weights is switched off with one line saying what is missing; ``"error"`` stops the run instead.

The total loss while stylising is paper 000's regularised form
    L_align = lambda_prior * L_style + lambda_geo * L_recon
with L_style the weighted sum of the active experts and L_recon the L1 to the training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.style_image import StyleImageError, load_style_image
from styleme3d_ns.guidance.backbones import FeatureBackbone, build_backbone
from styleme3d_ns.guidance.base import Guidance
from styleme3d_ns.guidance.colour_transfer import SH_C0, apply_colour_transfer_to_sh, fit_colour_transfer
from styleme3d_ns.guidance.csd import CSDConfig, CSDStyleLoss
from styleme3d_ns.guidance.dssd import DSSDConfig, DynamicStyleScoreDistillation
from styleme3d_ns.guidance.gram import gram_distance
from styleme3d_ns.guidance.prompts import with_fallback_prompt
from styleme3d_ns.guidance.quality_prior import QualityPrior, QualityPriorConfig
from styleme3d_ns.models.loss_terms import LossTerm
from styleme3d_ns.models.style_reference import StyleImageSplatModel, StyleImageSplatModelConfig


@dataclass
class StyleMe3DModelConfig(StyleImageSplatModelConfig):
    """StyleMe3D: colour-only stylisation of a splat from a style image (paper 000)."""

    _target: type = field(default_factory=lambda: StyleMe3DModel)
    style_prompt: str = ""
    """Optional text for DSSD's text branch, e.g. "a lego bulldozer, watercolor" (paper 000 conditions SD on text
    and the style image)."""
    dssd: DSSDConfig = field(default_factory=DSSDConfig)
    """DSSD expert: SD 1.5 + IP-Adapter style score distillation (needs those weights; off without them)."""
    csd: CSDConfig = field(default_factory=CSDConfig)
    """CSD expert: contrastive style descriptor cosine (needs the CSD ViT-L checkpoint; off without it)."""
    qa: QualityPriorConfig = field(default_factory=lambda: QualityPriorConfig(weight=1.0))
    """3DG-QA expert: CLIP ViT-B aesthetic prior (needs CLIP weights; off without them)."""
    lambda_prior: float = 1.0
    """Weight of the style experts in L_align = lambda_prior L_style + lambda_geo L_recon (paper 000)."""
    lambda_geo: float = 0.0
    """Weight of the L1 reconstruction term against the training images in L_align (paper 000); 0 = off."""
    colour_prematch: bool = False
    """Before stylising, map the splat's colours to the style image's mean and covariance (StylizedGS): stronger
    palette transfer, weaker content (measured in docs/styleme3d.md)."""


class StyleMe3DModel(StyleImageSplatModel):
    """StyleMe3D (paper 000): a frozen-geometry splat whose colours follow the style experts SOS, DSSD, CSD, 3DG-QA."""

    config: StyleMe3DModelConfig
    method_name = "styleme3d"

    def populate_modules(self) -> None:
        self._metric_reference: tuple[Tensor, FeatureBackbone] | None = None
        self._metric_reference_missing = False
        super().populate_modules()

    def target_phase(self) -> str | None:
        return "stylise" if self.style_paths else None

    # ---------------------------------------------------------------- terms
    def loss_terms(self) -> list[LossTerm]:
        cfg = self.config
        if not self.style_paths:
            if self.geometry_frozen:
                raise UserInputError("no style image: pass --pipeline.model.style-image <painting.png>")
            CONSOLE.log(
                "No --pipeline.model.style-image: this run only reconstructs the scene (geometry never freezes); "
                "stylise it afterwards with --pipeline.model.base-checkpoint <this run>"
            )
            return []
        for index in range(len(self.style_paths)):  # a bad style image stops the run before anything is built
            self.style_image(index)
        if cfg.colour_prematch and len(self.style_paths) > 1 and self.palette.styles.in_turn:
            raise UserInputError(f"--pipeline.model.colour-prematch matches one style image's colours, and "
                                 f"{len(self.style_paths)} style images train in turn here (no offline teacher): "
                                 "pass --pipeline.model.colour-prematch False, or one style image")  # fmt: skip
        prior = cfg.lambda_prior
        terms = [
            self.sos_term(inputs={"content_images": "content"}, scale=prior),
            LossTerm(name="dssd", label="DSSD", config=cfg.dssd, flag="dssd",
                     build=self._build_dssd, scale=prior, follows_style=True),
            LossTerm(name="csd", label="CSD", config=cfg.csd, flag="csd",
                     build=self._build_csd, scale=prior, follows_style=True),
            LossTerm(name="qa", label="3DG-QA", config=cfg.qa, flag="qa", build=self._build_qa, scale=prior),
        ]  # fmt: skip
        if cfg.lambda_geo > 0:  # the teacher's ridge stands in for it
            terms.append(replace(self.photo_term("recon", cfg.lambda_geo, "L1 to the photos"), offline=True))
        return terms

    def _build_dssd(self) -> Guidance:
        config = with_fallback_prompt(self.config.dssd, self.config.style_prompt)
        dssd = DynamicStyleScoreDistillation.from_config(config, self.device)
        dssd.set_style(self.live_style_image())
        if self.device.type == "cpu":
            CONSOLE.log("DSSD runs Stable Diffusion on the CPU: expect tens of seconds per step (a GPU is advised)")
        return dssd

    def _build_csd(self) -> Guidance:
        csd = CSDStyleLoss.from_config(self.config.csd, self.device)
        csd.set_style(self.live_style_image())
        return csd

    def _build_qa(self) -> Guidance:
        hint = "pass --pipeline.model.qa.pretrained <open_clip ViT-B checkpoint file>"
        return QualityPrior.from_config(self.config.qa, self.device, hint)

    def on_stylise_start(self) -> None:
        """Optionally move the palette to the style's first, then the offline teacher (never again on resume)."""
        if self.config.colour_prematch and self.config.sh_degree > 0:
            self._prematch_colours()
        super().on_stylise_start()

    def _prematch_colours(self) -> None:
        """Map the colours to the style image's mean and covariance (StylizedGS)."""
        style_pixels = self.style_image()[0].reshape(3, -1).T
        colours = (0.5 + SH_C0 * self.features_dc.data).clamp(0.0, 1.0)
        a, b = fit_colour_transfer(colours, style_pixels)
        dc, rest = apply_colour_transfer_to_sh(self.features_dc.data, self.features_rest.data, a, b)
        self.features_dc.data.copy_(dc)
        self.features_rest.data.copy_(rest)
        CONSOLE.log("Colour pre-match: splat palette mapped to the style image's mean and covariance")

    # ---------------------------------------------------------------- metrics
    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        sos = self.guidance.get("sos")
        if self.training and self.geometry_frozen and sos is not None:
            metrics["sos_scales"] = torch.tensor(float(len(sos.active_scales(self.step))))
        return metrics

    def get_image_metrics_and_images(self, outputs, batch):  # noqa: ANN001, ANN201
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        reference = self._style_metric_reference()
        if reference is not None:
            style, backbone = reference
            render = outputs["rgb"].permute(2, 0, 1)[None]
            metrics["gram_distance"] = float(gram_distance(render, style, backbone))
        return metrics, images

    def _style_metric_reference(self) -> tuple[Tensor, FeatureBackbone] | None:
        """Style image and the packaged EfficientNet-Lite0 for the `gram_distance` metric (as styleme3d-eval),
        loaded once on first use, so `ns-eval` reports it without training-time set-up; None without a style."""
        if self._metric_reference is None and not self._metric_reference_missing and self.style_paths:
            try:
                style = load_style_image(self.style_paths[0]).to(self.device)
            except StyleImageError as err:
                CONSOLE.log(f"gram_distance metric off: {err}")
                self._metric_reference_missing = True
                return None
            sos = self.guidance.get("sos")
            shared = sos is not None and sos.backbone.name == "efficientnet-lite0"
            backbone = sos.backbone if shared else build_backbone("efficientnet-lite0").to(self.device)
            self._metric_reference = (style, backbone)
        return self._metric_reference
