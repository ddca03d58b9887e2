"""Method `styleme3d` (paper 000): stylise a frozen splat's colours with a set of style experts.

This file composes guidance modules; it holds no guidance maths itself. The experts (paper 000):

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
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.data.style_image import StyleImageError, load_style_image
from styleme3d_ns.errors import UserInputError, exit_on_user_error
from styleme3d_ns.guidance.backbones import FeatureBackbone, build_backbone
from styleme3d_ns.guidance.base import Guidance
from styleme3d_ns.guidance.colour_transfer import SH_C0, apply_colour_transfer_to_sh, fit_colour_transfer
from styleme3d_ns.guidance.csd import CSDConfig, CSDStyleLoss
from styleme3d_ns.guidance.dssd import DSSDConfig, DynamicStyleScoreDistillation
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig, gram_distance
from styleme3d_ns.guidance.quality_prior import QualityPrior, QualityPriorConfig
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.frozen_colour import FrozenColourSplatModel, FrozenColourSplatModelConfig


@dataclass
class StyleMe3DModelConfig(FrozenColourSplatModelConfig):
    """StyleMe3D: colour-only stylisation of a splat from a style image (paper 000)."""

    _target: type = field(default_factory=lambda: StyleMe3DModel)
    style_image: Path | None = None
    """Style reference image (PNG/JPG; greyscale and RGBA are converted to RGB). Without it (and without a base
    checkpoint) the run only reconstructs the scene, which can then be stylised with --base-checkpoint."""
    style_prompt: str = ""
    """Optional text for DSSD's text branch, e.g. "a lego bulldozer, watercolor" (paper 000 conditions SD on text
    and the style image)."""
    sos: GramStyleLossConfig = field(default_factory=GramStyleLossConfig)
    """SOS expert: multi-scale Gram loss (paper 000). Backbone efficientnet-lite0 (packaged) or vgg19 (your weights)."""
    dssd: DSSDConfig = field(default_factory=DSSDConfig)
    """DSSD expert: SD 1.5 + IP-Adapter style score distillation (needs those weights; off without them)."""
    csd: CSDConfig = field(default_factory=CSDConfig)
    """CSD expert: contrastive style descriptor cosine (needs the CSD ViT-L checkpoint; off without it)."""
    qa: QualityPriorConfig = field(default_factory=lambda: QualityPriorConfig(weight=1.0))
    """3DG-QA expert: CLIP ViT-B aesthetic prior (needs CLIP weights; off without them)."""
    missing_experts: Literal["skip", "error"] = "skip"
    """What to do when an enabled expert's weights are not on this machine: skip it (one line says which and why)
    or stop with that line. SOS never needs downloads."""
    lambda_prior: float = 1.0
    """Weight of the style experts in L_align = lambda_prior L_style + lambda_geo L_recon (paper 000)."""
    lambda_geo: float = 0.0
    """Weight of the L1 reconstruction term against the training images in L_align (paper 000); 0 = off."""
    colour_prematch: bool = False
    """Before stylising, map the splat's colours to the style image's mean and covariance (StylizedGS). Stronger
    palette transfer, weaker content (demo scene: Gram distance -63% but 8 dB PSNR to the base, vs -54% / 16.5 dB)."""


class StyleMe3DModel(FrozenColourSplatModel):
    """Frozen-geometry splat whose colours follow the style experts."""

    config: StyleMe3DModelConfig

    def populate_modules(self) -> None:
        # set before the base class runs: it freezes a loaded splat, which calls on_geometry_frozen
        for name in ("sos", "dssd", "csd", "qa"):
            self.set_guidance(name, None)
        self.sos: GramStyleLoss | None
        self.dssd: DynamicStyleScoreDistillation | None
        self.csd: CSDStyleLoss | None
        self.qa: QualityPrior | None
        self._expert_logs: dict[str, Tensor] = {}
        self._style_image: Tensor | None = None
        self._metric_reference: tuple[Tensor, FeatureBackbone] | bool | None = None
        super().populate_modules()

    # ---------------------------------------------------------------- set-up (training only)
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        with exit_on_user_error():
            self._setup_experts()
        if self.geometry_frozen:
            self._prematch_colours()
        return callbacks

    def will_stylise(self) -> bool:
        return self.config.style_image is not None

    def _setup_experts(self) -> None:
        if self.config.style_image is None:
            if self.geometry_frozen:
                raise UserInputError("no style image: pass --pipeline.model.style-image <painting.png>")
            CONSOLE.log(
                "No --pipeline.model.style-image: this run only reconstructs the scene (geometry never freezes); "
                "stylise it afterwards with --pipeline.model.base-checkpoint <this run>"
            )
            return
        self._style_image = load_style_image(self.config.style_image).to(self.device)
        sos = GramStyleLoss(
            self.config.sos, weights_hint="pass --pipeline.model.sos.backbone-weights <vgg19-dcbb9e9d.pth>"
        ).to(self.device)
        sos.set_style(self._style_image)
        self.set_guidance("sos", sos)
        active = [f"SOS on {self.config.sos.backbone} (weight {self.config.sos.weight})"]
        for name, attr, config, build in self._optional_experts():
            if not config.enabled or config.weight == 0:
                CONSOLE.log(f"{name} off: disabled (--pipeline.model.{attr}.enabled/--pipeline.model.{attr}.weight)")
                continue
            try:
                self.set_guidance(attr, build())
            except MissingWeightsError as err:
                if self.config.missing_experts == "error":
                    raise UserInputError(str(err)) from err
                CONSOLE.log(f"{name} off: {err}")
                continue
            active.append(f"{name} (weight {config.weight})")
        CONSOLE.log(f"styleme3d experts active: {'; '.join(active)}")

    def _optional_experts(self) -> list[tuple[str, str, object, object]]:
        """(name, config attribute, config, builder) of the experts that need downloaded weights."""
        cfg = self.config
        return [
            ("DSSD", "dssd", cfg.dssd, self._build_dssd),
            ("CSD", "csd", cfg.csd, self._build_csd),
            ("3DG-QA", "qa", cfg.qa, self._build_qa),
        ]

    def _build_dssd(self) -> Guidance:
        config = replace(self.config.dssd, prompt=self.config.dssd.prompt or self.config.style_prompt)
        dssd = DynamicStyleScoreDistillation.from_config(config, self.device)
        dssd.set_style(self._style_image)
        if self.device.type == "cpu":
            CONSOLE.log("DSSD runs Stable Diffusion on the CPU: expect tens of seconds per step (a GPU is advised)")
        return dssd

    def _build_csd(self) -> Guidance:
        csd = CSDStyleLoss.from_config(self.config.csd, self.device)
        csd.set_style(self._style_image)
        return csd

    def _build_qa(self) -> Guidance:
        hint = "pass --pipeline.model.qa.pretrained <open_clip ViT-B checkpoint file>"
        return QualityPrior.from_config(self.config.qa, self.device, hint)

    def on_geometry_frozen(self) -> None:
        if self._style_image is not None:
            self._prematch_colours()

    def _prematch_colours(self) -> None:
        """Move the palette to the style's once, before any style step (never again on resume)."""
        untouched = torch.equal(self.features_dc.data, self.base_features_dc)
        if not (self.config.colour_prematch and untouched and self.config.sh_degree > 0):
            return
        style_pixels = self._style_image[0].reshape(3, -1).T
        colours = (0.5 + SH_C0 * self.features_dc.data).clamp(0.0, 1.0)
        a, b = fit_colour_transfer(colours, style_pixels)
        dc, rest = apply_colour_transfer_to_sh(self.features_dc.data, self.features_rest.data, a, b)
        self.features_dc.data.copy_(dc)
        self.features_rest.data.copy_(rest)
        CONSOLE.log("Colour pre-match: splat palette mapped to the style image's mean and covariance")

    # ---------------------------------------------------------------- losses
    def get_outputs(self, camera) -> dict:  # noqa: ANN001 - nerfstudio Cameras
        outputs = super().get_outputs(camera)
        if self.training and self.stylising():
            outputs["content_rgb"] = self.render_base(camera, outputs["background"])
        return outputs

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        if not self.stylising():
            return super().get_loss_dict(outputs, batch, metrics_dict)
        render = outputs["rgb"].permute(2, 0, 1)[None]
        content = outputs["content_rgb"].permute(2, 0, 1)[None]
        terms = self.sos(render, self.step, content_images=content)
        loss_dict = {"sos": self.config.lambda_prior * terms["loss"]}
        for name in ("dssd", "csd", "qa"):
            expert = getattr(self, name)
            if expert is not None:
                expert_terms = expert(render, self.step)
                loss_dict[name] = self.config.lambda_prior * expert_terms["loss"]
                self._expert_logs.update(_loggable(name, expert_terms))
        if self.config.lambda_geo > 0:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            loss_dict["recon"] = self.config.lambda_geo * torch.abs(gt - outputs["rgb"]).mean()
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        if self.training and self.stylising() and self.sos is not None:
            metrics["sos_scales"] = torch.tensor(float(len(self.sos.active_scales(self.step))))
            metrics.update(self._expert_logs)
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
        if self._metric_reference is None and self.config.style_image is not None:
            try:
                style = load_style_image(self.config.style_image).to(self.device)
            except StyleImageError as err:
                CONSOLE.log(f"gram_distance metric off: {err}")
                self._metric_reference = False
                return None
            shared = self.sos is not None and self.sos.backbone.name == "efficientnet-lite0"
            backbone = self.sos.backbone if shared else build_backbone("efficientnet-lite0").to(self.device)
            self._metric_reference = (style, backbone)
        return self._metric_reference or None


def _loggable(expert: str, terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """An expert's scalar side terms (timestep, guidance scale, similarities) named for the metrics dict."""
    return {f"{expert}_{k}": v.detach().float().mean() for k, v in terms.items() if k != "loss" and v.numel() <= 4}
