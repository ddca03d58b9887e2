"""Method `clip-splat` (paper 002): move a splat's colours toward a CLIP text prompt.

Two modes, as the paper:

- ``finetune`` (paper 002 eq. 4-5, its recommendation): a reconstructed splat's SH colours follow
  L = -CLIP(R(H(Theta)), T); geometry is frozen (opacity too, unless --train-opacity: paper 4.2's trade-off).
- ``joint`` (paper 002 eq. 3): L = L_recon(I_hat, I) - k CLIP(I_hat, T) with every Gaussian parameter trainable and
  splatfacto's densification running; L_recon is splatfacto's own photometric loss on the training images
  ((1 - ssim_lambda) L1 + ssim_lambda D-SSIM; --pipeline.model.ssim-lambda 0 gives the paper's pure L1).

Extensions beyond the paper are separate guidance modules (augmented views and the directional loss inside
:class:`ClipTextGuidance`, :class:`PerceptualContentLoss`, :class:`QualityPrior`), each weighted from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.errors import UserInputError, exit_on_user_error
from styleme3d_ns.guidance.clip_text import ClipTextGuidance, ClipTextGuidanceConfig
from styleme3d_ns.guidance.perceptual_content import PerceptualContentConfig, PerceptualContentLoss
from styleme3d_ns.guidance.quality_prior import QualityPrior, QualityPriorConfig
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.frozen_colour import FrozenColourSplatModel, FrozenColourSplatModelConfig

CLIP_HINT = "pass --pipeline.model.clip.pretrained <open_clip checkpoint file> (and --pipeline.model.clip.model-name)"


@dataclass
class ClipSplatModelConfig(FrozenColourSplatModelConfig):
    """clip-splat: CLIP-guided colour fine-tuning (or joint optimisation) of a splat (paper 002)."""

    _target: type = field(default_factory=lambda: ClipSplatModel)
    prompt: str = ""
    """Target style as text, e.g. "a watercolor painting" (required)."""
    mode: Literal["finetune", "joint"] = "finetune"
    """finetune: colours only (opacity with --train-opacity), paper 002's recommendation; joint: L_recon - k CLIP
    with all parameters trainable (paper 002 eq. 3)."""
    k: float = 1.0
    """Weight k of the CLIP term. Paper 002 finds joint mode very sensitive to it; 1.0 suits finetune, start joint
    mode around 0.1."""
    clip: ClipTextGuidanceConfig = field(default_factory=ClipTextGuidanceConfig)
    """CLIP model, weights, augmentations and directional loss (its prompt is --pipeline.model.prompt)."""
    content: PerceptualContentConfig = field(default_factory=PerceptualContentConfig)
    """Feature-space content loss against the unstyled renders (weight 0 = off)."""
    quality: QualityPriorConfig = field(default_factory=QualityPriorConfig)
    """3DG-QA aesthetic prior of paper 000 (weight 0 = off; needs CLIP ViT-B weights)."""


class ClipSplatModel(FrozenColourSplatModel):
    """Splat whose colours (or, in joint mode, all parameters) follow a CLIP text score."""

    config: ClipSplatModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.set_guidance("clip_guidance", None)
        self.set_guidance("content_loss", None)
        self.set_guidance("quality_prior", None)
        self.clip_guidance: ClipTextGuidance | None
        self.content_loss: PerceptualContentLoss | None
        self.quality_prior: QualityPrior | None

    # ---------------------------------------------------------------- mode
    def freezes_geometry(self) -> bool:
        return self.config.mode == "finetune"

    def stylising(self) -> bool:
        return self.config.mode == "joint" or self.geometry_frozen

    # ---------------------------------------------------------------- set-up (training only)
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        with exit_on_user_error():
            self._setup_guidance()
        return callbacks

    def _setup_guidance(self) -> None:
        cfg = self.config
        if not self._prompt():
            raise UserInputError('no prompt: pass --pipeline.model.prompt "a watercolor painting"')
        if cfg.mode == "finetune" and not self.geometry_frozen and self.config.base_checkpoint is None:
            CONSOLE.log(
                f"No --pipeline.model.base-checkpoint: reconstructing for {cfg.reconstruct_steps} steps, "
                "then fine-tuning the colours"
            )
        try:
            self.set_guidance("clip_guidance", self._load_clip_guidance())
            if cfg.quality.weight > 0:
                hint = "pass --pipeline.model.quality.pretrained <open_clip ViT-B checkpoint file>"
                self.set_guidance("quality_prior", QualityPrior.from_config(cfg.quality, self.device, hint))
        except (MissingWeightsError, ValueError) as err:
            raise UserInputError(str(err)) from err
        if cfg.content.weight > 0:
            hint = "pass --pipeline.model.content.backbone-weights <vgg19-dcbb9e9d.pth>"
            self.set_guidance("content_loss", PerceptualContentLoss(cfg.content, hint=hint).to(self.device))
        self._log_active_terms()

    def _prompt(self) -> str:
        return (self.config.prompt or self.config.clip.prompt).strip()

    def _load_clip_guidance(self) -> ClipTextGuidance:
        """The CLIP term with the model-level prompt and k (raises MissingWeightsError without weights)."""
        cfg = self.config
        clip_cfg = replace(cfg.clip, prompt=self._prompt(), weight=cfg.k * cfg.clip.weight)
        return ClipTextGuidance.from_config(clip_cfg, self.device, CLIP_HINT)

    def _eval_guidance(self) -> ClipTextGuidance | None:
        """The CLIP term for metrics; loaded on first use under ns-eval (no training set-up), None without weights."""
        if self.clip_guidance is None and not getattr(self, "_clip_unavailable", False) and self._prompt():
            try:
                self.set_guidance("clip_guidance", self._load_clip_guidance())
            except (MissingWeightsError, ValueError) as err:
                CONSOLE.log(f"clip_score metrics off: {err}")
                self._clip_unavailable = True
        return self.clip_guidance

    def _log_active_terms(self) -> None:
        cfg = self.config
        terms = [f"CLIP {cfg.clip.model_name}/{cfg.clip.pretrained} k={cfg.k}"]
        if cfg.clip.num_augs:
            terms.append(f"{cfg.clip.num_augs} augmented crops")
        if cfg.clip.directional_weight > 0:
            terms.append(f"directional x{cfg.clip.directional_weight} from '{cfg.clip.source_prompt}'")
        if self.content_loss is not None:
            terms.append(f"content x{cfg.content.weight} on {cfg.content.backbone}")
        if self.quality_prior is not None:
            terms.append(f"3DG-QA x{cfg.quality.weight}")
        frozen = "all parameters trainable" if cfg.mode == "joint" else f"frozen: {', '.join(self.frozen_keys)}"
        CONSOLE.log(f"clip-splat ({cfg.mode}, {frozen}): prompt '{self._prompt()}'; terms: {'; '.join(terms)}")

    # ---------------------------------------------------------------- losses
    def get_outputs(self, camera: Cameras) -> dict:
        outputs = super().get_outputs(camera)
        needs_source = self.config.clip.directional_weight > 0 or self.config.content.weight > 0
        if self.training and self.stylising() and self.geometry_frozen and needs_source:
            outputs["content_rgb"] = self.render_base(camera, outputs["background"])
        return outputs

    def _source_images(self, outputs: dict, batch: dict) -> Tensor | None:
        """Unstyled views `[1, 3, H, W]`: base renders when fine-tuning, the training photo in joint mode."""
        if "content_rgb" in outputs:
            source = outputs["content_rgb"]
        elif self.config.mode == "joint":
            source = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        else:
            return None
        return source.permute(2, 0, 1)[None]

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:  # noqa: ANN001
        if self.config.mode == "joint":
            loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)  # splatfacto's L_recon (+ scale reg)
        elif not self.stylising():
            return super().get_loss_dict(outputs, batch, metrics_dict)  # reconstructing the base first
        else:
            loss_dict = {}
        if self.clip_guidance is None:
            return loss_dict
        render = outputs["rgb"].permute(2, 0, 1)[None]
        source = self._source_images(outputs, batch)
        terms = self.clip_guidance(render, self.step, source_images=source)
        loss_dict["clip"] = terms["loss"]
        self._last_clip_score = terms["clip_score"]
        if self.content_loss is not None and source is not None:
            loss_dict["content"] = self.content_loss(render, self.step, content_images=source)["loss"]
        if self.quality_prior is not None:
            loss_dict["quality"] = self.quality_prior(render, self.step)["loss"]
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:  # noqa: ANN001
        metrics = super().get_metrics_dict(outputs, batch)
        score = getattr(self, "_last_clip_score", None)
        if self.training and score is not None:
            metrics["clip_score"] = score
        return metrics

    def get_image_metrics_and_images(self, outputs, batch):  # noqa: ANN001, ANN201
        camera = self._eval_camera
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        guidance = self._eval_guidance()
        if guidance is None:
            return metrics, images
        with torch.no_grad():
            render = outputs["rgb"].permute(2, 0, 1)[None]
            embed = guidance.encoder.encode_images(render)
            metrics["clip_score"] = float(embed[0] @ guidance.text_target)
            if camera is not None and self.geometry_frozen:
                base = self.render_base(camera, outputs["background"]).permute(2, 0, 1)[None]
                delta = torch.nn.functional.normalize(embed - guidance.encoder.encode_images(base), dim=-1, eps=1e-8)
                metrics["clip_directional_similarity"] = float(delta[0] @ guidance.text_direction)
        return metrics, images
