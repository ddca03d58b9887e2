"""Methods that take a style image: the image, loaded once, and the multi-scale Gram term built on it.

Shared by ``styleme3d`` (paper 000's SOS expert on the training views) and ``sas-portrait`` (an offline style term on
its random views), so the option names, loading and error lines are the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from styleme3d_ns.data.style_image import load_style_image
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig
from styleme3d_ns.models.guided_splat import GuidedSplatModel, GuidedSplatModelConfig
from styleme3d_ns.models.loss_terms import TRAIN_VIEW, LossTerm


@dataclass
class StyleImageSplatModelConfig(GuidedSplatModelConfig):
    """A guided splat with a style reference image."""

    _target: type = field(default_factory=lambda: StyleImageSplatModel)
    style_image: tuple[Path, ...] = ()
    """Style reference image(s), PNG/JPG (greyscale and RGBA are converted to RGB). Several
    (`--pipeline.model.style-image a.jpg b.jpg c.jpg`) make a palette: the first is trained, each further one becomes
    a palette entry of its own over the same geometry; pick, blend and dial them in the viewer (docs/viewer.md)."""
    sos: GramStyleLossConfig = field(default_factory=GramStyleLossConfig)
    """Multi-scale Gram style term (paper 000's SOS): backbone efficientnet-lite0 (packaged) or vgg19 (your weights)."""


class StyleImageSplatModel(GuidedSplatModel):
    """Loads the style image once and builds the Gram term on it for any view set."""

    config: StyleImageSplatModelConfig

    def populate_modules(self) -> None:
        self._styles: dict[int, Tensor] = {}
        super().populate_modules()

    @property
    def style_paths(self) -> tuple[Path, ...]:
        """The configured style images, in palette order."""
        return style_paths(self.config.style_image)

    def style_image(self, index: int = 0) -> Tensor:
        """Style image `index` `[1, 3, H, W]` in [0, 1] on the model's device, loaded once (one line if unreadable)."""
        if index not in self._styles:
            self._styles[index] = load_style_image(self.style_paths[index]).to(self.device)
        return self._styles[index]

    def live_style_name(self) -> str:
        return self.style_paths[0].stem if self.style_paths else super().live_style_name()

    def sos_term(
        self, *, views: str = TRAIN_VIEW, inputs: dict[str, str] | None = None, scale: float = 1.0
    ) -> LossTerm:
        """The Gram style term against the style image, seeing `views` (paper 000 SOS), its loss times `scale`."""
        config = self.config.sos

        def build() -> GramStyleLoss:
            hint = "pass --pipeline.model.sos.backbone-weights <vgg19-dcbb9e9d.pth>"
            sos = GramStyleLoss(config, weights_hint=hint).to(self.device)
            sos.set_style(self.style_image())
            return sos

        label = f"SOS on {config.backbone}"
        return LossTerm(
            name="sos", label=label, config=config, flag="sos", build=build, views=views, inputs=inputs or {},
            scale=scale, required=True,  # the user chose the backbone: its weights missing stops the run
        )  # fmt: skip


def style_paths(value: object) -> tuple[Path, ...]:
    """A model config's `style_image` as a tuple of paths (configs written before palettes hold one path or None)."""
    if value is None:
        return ()
    if isinstance(value, str | Path):
        return (Path(value),)
    return tuple(Path(v) for v in value)
