"""Method `clip-splat`: move a splat's colours toward a CLIP text prompt.

Paper 002: "Text-Based 3D Editing: Optimizing Gaussian Splatting with CLIP".

Two modes, as the paper:

- ``finetune`` (paper 002 eq. 4-5, its recommendation): a reconstructed splat's SH colours follow
  L = -CLIP(R(H(Theta)), T); geometry is frozen (opacity too, unless --train-opacity: paper 4.2's trade-off).
- ``joint`` (paper 002 eq. 3): L = L_recon(I_hat, I) - k CLIP(I_hat, T) with every Gaussian parameter trainable and
  splatfacto's densification running; L_recon is splatfacto's own photometric loss on the training images
  ((1 - ssim_lambda) L1 + ssim_lambda D-SSIM; --pipeline.model.ssim-lambda 0 gives the paper's pure L1).

Extensions beyond the paper are separate guidance modules (augmented views and the directional loss inside
:class:`ClipTextGuidance`, :class:`PerceptualContentLoss`, :class:`QualityPrior`), each weighted from the CLI.

Several prompts (``--pipeline.model.prompt "a" "b"``, fine-tune mode) make a style palette over the one geometry:
each prompt's colours train in turn from the base colours for an equal share of the steps and are kept as a palette
entry named by the prompt (:class:`~styleme3d_ns.models.palette.StyleTurns`), switchable in the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.guidance.clip_text import ClipTextGuidance, ClipTextGuidanceConfig
from styleme3d_ns.guidance.perceptual_content import PerceptualContentConfig, PerceptualContentLoss
from styleme3d_ns.guidance.quality_prior import QualityPrior, QualityPriorConfig
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.guided_splat import GuidedSplatModel, GuidedSplatModelConfig
from styleme3d_ns.models.lifecycle import Phase
from styleme3d_ns.models.loss_terms import LossTerm
from styleme3d_ns.models.palette import StyleSet

CLIP_HINT = "pass --pipeline.model.clip.pretrained <open_clip checkpoint file> (and --pipeline.model.clip.model-name)"


@dataclass
class ClipSplatModelConfig(GuidedSplatModelConfig):
    """clip-splat: CLIP-guided colour fine-tuning (or joint optimisation) of a splat (paper 002)."""

    _target: type = field(default_factory=lambda: ClipSplatModel)
    prompt: tuple[str, ...] = ()
    """Target style as text, e.g. "a watercolor painting" (required). Several (`--pipeline.model.prompt "a" "b"`,
    fine-tune mode) make a palette over the one geometry: each prompt trains its own colours for an equal share of
    the steps, the first prompt last; pick, blend and dial them in the viewer (docs/viewer.md)."""
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


class ClipSplatModel(GuidedSplatModel):
    """Text-Based 3D Editing with CLIP (paper 002): colours (or, in joint mode, all parameters) follow a CLIP score."""

    config: ClipSplatModelConfig
    method_name = "clip-splat"

    def populate_modules(self) -> None:
        self._eval_clip: ClipTextGuidance | None = None
        self._eval_clip_missing = False
        super().populate_modules()

    def target_phase(self) -> Phase:
        return "stylise" if self.config.mode == "finetune" else "generate"

    def uses_reconstruction_loss(self) -> bool:
        return self.config.mode == "joint"  # paper 002 eq. 3: L_recon - k CLIP

    # ---------------------------------------------------------------- terms
    def style_set(self) -> StyleSet | None:
        """Fine-tune mode: one palette entry per prompt, each trained in turn by the CLIP term itself."""
        if self.target_phase() != "stylise":
            return None
        return StyleSet(configured_prompts(self.config), in_turn=True, point_at=self._point_clip_at)

    def _point_clip_at(self, index: int) -> None:
        """Point the CLIP term at the prompt whose turn starts, keeping its loaded encoder."""
        built = self.guidance.get("clip")
        if isinstance(built, ClipTextGuidance) and built.config.prompt != self._prompt():
            self.guidance["clip"] = ClipTextGuidance(self._clip_config(), built.encoder).to(self.device)

    def loss_terms(self) -> list[LossTerm]:
        cfg = self.config
        if not self._prompt():
            raise UserInputError('no prompt: pass --pipeline.model.prompt "a watercolor painting"')
        prompts = configured_prompts(cfg)
        if cfg.mode == "joint" and len(prompts) > 1:
            raise UserInputError(f"{len(prompts)} prompts make a palette over one fixed geometry, which "
                                 "joint mode trains: pass --pipeline.model.mode finetune, or one prompt")  # fmt: skip
        if cfg.mode == "finetune" and self.phase == "reconstruct":
            CONSOLE.log(
                f"No --pipeline.model.base-checkpoint: reconstructing for {cfg.reconstruct_steps} steps, "
                "then fine-tuning the colours"
            )
        # the unstylised views: base renders when fine-tuning, the training photos in joint mode
        source = "content" if cfg.mode == "finetune" else "photos"
        directional = {"source_images": source} if cfg.clip.directional_weight > 0 else {}
        quality_hint = "pass --pipeline.model.quality.pretrained <open_clip ViT-B checkpoint file>"
        return [
            LossTerm(name="clip", label=self._clip_label(), build=self._load_clip_guidance, inputs=directional,
                     required=True),
            LossTerm(name="content", label=f"content on {cfg.content.backbone}",
                     config=cfg.content, flag="content", inputs={"content_images": source},
                     build=lambda: PerceptualContentLoss(
                         cfg.content, hint="pass --pipeline.model.content.backbone-weights <vgg19-dcbb9e9d.pth>"
                     ).to(self.device)),
            LossTerm(name="quality", label="3DG-QA", config=cfg.quality, flag="quality",
                     build=lambda: QualityPrior.from_config(cfg.quality, self.device, quality_hint), required=True),
        ]  # fmt: skip

    def _clip_label(self) -> str:
        cfg = self.config
        configured = configured_prompts(cfg)
        prompts = ", ".join(f"'{p}'" for p in configured)
        prompts = f"prompts {prompts} in turn" if len(configured) > 1 else f"prompt {prompts}"
        parts = [f"CLIP {cfg.clip.model_name}/{cfg.clip.pretrained} k={cfg.k}, {prompts}"]
        if cfg.clip.num_augs:
            parts.append(f"{cfg.clip.num_augs} augmented crops")
        if cfg.clip.directional_weight > 0:
            parts.append(f"directional x{cfg.clip.directional_weight} from '{cfg.clip.source_prompt}'")
        return ", ".join(parts)

    def _prompt(self) -> str:
        """The prompt the live colours hold (train toward, while prompts train in turn); "" without one."""
        prompts = configured_prompts(self.config)
        return prompts[self.palette.live_index() if self.palette is not None else 0] if prompts else ""

    def _clip_config(self, prompt: str | None = None) -> ClipTextGuidanceConfig:
        """The CLIP term's config with the model-level k and `prompt` (default: the live colours' prompt)."""
        cfg = self.config
        return replace(cfg.clip, prompt=prompt or self._prompt(), weight=cfg.k * cfg.clip.weight)

    def _load_clip_guidance(self, prompt: str | None = None) -> ClipTextGuidance:
        """The CLIP term for `prompt` (default: the live colours'); raises MissingWeightsError without weights."""
        try:
            return ClipTextGuidance.from_config(self._clip_config(prompt), self.device, CLIP_HINT)
        except ValueError as err:  # a malformed open_clip config or checkpoint: the user's file, one line
            raise UserInputError(str(err)) from err

    # ---------------------------------------------------------------- metrics
    def _metric_clip(self) -> ClipTextGuidance | None:
        """The CLIP term for metrics: the training one, or loaded on first use under ns-eval; None without weights."""
        built = self.guidance.get("clip")
        if built is not None:
            return built
        prompt = prompt_shown(self.config)
        if self._eval_clip is None and not self._eval_clip_missing and prompt:
            try:
                self._eval_clip = self._load_clip_guidance(prompt)  # the prompt of the style the look shows
            except (MissingWeightsError, UserInputError) as err:
                CONSOLE.log(f"clip_score metrics off: {err}")
                self._eval_clip_missing = True
        return self._eval_clip

    def get_image_metrics_and_images(self, outputs, batch):  # noqa: ANN001, ANN201
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        guidance = self._metric_clip()
        if guidance is None:
            return metrics, images
        with torch.no_grad():
            render = outputs["rgb"].permute(2, 0, 1)[None]
            embed = guidance.encoder.encode_images(render)
            metrics["clip_score"] = float(embed[0] @ guidance.text_target)
            if "content_rgb" in outputs:
                base = outputs["content_rgb"].permute(2, 0, 1)[None]
                delta = torch.nn.functional.normalize(embed - guidance.encoder.encode_images(base), dim=-1, eps=1e-8)
                metrics["clip_directional_similarity"] = float(delta[0] @ guidance.text_direction)
        return metrics, images


def configured_prompts(model_config: Any) -> tuple[str, ...]:  # noqa: ANN401 - any method's model config
    """A model config's prompts in palette order: `prompt` (a config from before prompt palettes holds one string),
    else its CLIP term's `clip.prompt`; blank ones dropped, () for a config without any."""

    def listed(value: object) -> tuple[str, ...]:
        values = (value,) if isinstance(value, str) else tuple(value or ())
        return tuple(text.strip() for text in map(str, values) if text.strip())

    clip = getattr(model_config, "clip", None)
    return listed(getattr(model_config, "prompt", None)) or listed(getattr(clip, "prompt", None))


def prompt_shown(model_config: Any) -> str | None:  # noqa: ANN401 - any method's model config
    """The prompt of the palette entry a model config's look shows (`ns-render`, `ns-eval`), None without prompts."""
    prompts = configured_prompts(model_config)
    look = getattr(model_config, "look", None)
    style = look.style if look is not None and look.style < len(prompts) else 0
    return prompts[style] if prompts else None
