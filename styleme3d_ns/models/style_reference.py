"""Methods that take style images: the images, loaded once; the multi-scale Gram term; the offline teacher; the palette.

Shared by ``styleme3d`` (paper 000's SOS expert on the training views, the teacher's colour solve when stylising
starts) and ``sas-portrait`` (an offline style term on its random views), so option names, loading and error lines
are the same in both. With several style images each becomes a palette entry over the one geometry
(:mod:`styleme3d_ns.models.palette`): the teacher fits every further one at once and the first trains; without the
teacher the style images train in turn, the Gram term pointed at each in its turn (:class:`StyleTurns`). The viewer's
"Add style" fits a new image with the teacher. A method that trains its geometry with the style (sas-portrait) takes
one style image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.rigs import OrbitRig, orbit_views
from styleme3d_ns.data.style_image import load_style_image
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig
from styleme3d_ns.guidance.style_teacher import StyleTeacherConfig
from styleme3d_ns.models.detail import DetailConfig
from styleme3d_ns.models.guided_splat import GuidedSplatModel, GuidedSplatModelConfig
from styleme3d_ns.models.loss_terms import TRAIN_VIEW, LossTerm
from styleme3d_ns.models.offline_teacher import OfflineTeacher, teach, teach_styles, teacher_views
from styleme3d_ns.models.palette import StyleSet


@dataclass
class StyleImageSplatModelConfig(GuidedSplatModelConfig):
    """A guided splat with a style reference image."""

    _target: type = field(default_factory=lambda: StyleImageSplatModel)
    style_image: tuple[Path, ...] = ()
    """Style reference image(s), PNG/JPG (greyscale and RGBA are converted to RGB). Several
    (`--pipeline.model.style-image a.jpg b.jpg c.jpg`) make a palette, one entry each over the same geometry: the
    offline teacher fits them, or without it they train in turn for an equal share of the steps; pick, blend and dial
    them in the viewer (docs/viewer.md)."""
    sos: GramStyleLossConfig = field(default_factory=GramStyleLossConfig)
    """Multi-scale Gram style term (paper 000's SOS): backbone efficientnet-lite0 (packaged) or vgg19 (your weights)."""
    offline_teacher: Literal["auto", "on", "off"] = "auto"
    """When colours start to train on the fixed splat, fit them in seconds to the Magenta style network's renditions of
    every training view (docs/styleme3d.md, "Offline teacher"). auto: when the `style` extra is installed (one line
    says when it is not); on: stop without it; off: never."""
    teacher: StyleTeacherConfig = field(default_factory=StyleTeacherConfig)
    """The teacher's rounds, strength, colour preservation, content weight (ridge), SH degree and view harmonisation."""
    steps_after_teacher: int = 0
    """Steps the Gram (SOS) and photo terms train after the offline teacher's solve when no diffusion or CSD expert is
    active (0: the teacher's solution is the result, saved after one idle step; measured in docs/styleme3d.md:
    Gram-loss refinement there trades view consistency and content for Gram distance). Runs whose diffusion experts
    loaded always train the full --max-num-iterations."""
    teacher_memory_gib: float = 6.0
    """Most memory (GiB) the offline teacher's colour maps take: a capture with more views than fit is fitted on the
    views that fit, spread over all of them (one line says how many)."""
    teacher_render_scale: float = 4 / 3
    """The teacher fits the training views rendered this many times larger (below --teacher-max-size): memory and time
    grow with its square (docs/styleme3d.md, "Offline teacher", measures the choice on 96 px views)."""
    detail: DetailConfig = field(default_factory=DetailConfig)
    """Detail beyond the base's Gaussians (off by default: it changes the Gaussian count): after the offline
    teacher, split the Gaussians that miss the most stylised detail and fit again (docs/styleme3d.md, "Detail")."""
    teacher_max_size: int = 512
    """Longest side (px) of the views the teacher fits (its colour maps and targets); the stroke size, not this, sets
    the scale the style network paints at (--pipeline.model.teacher.stroke-size)."""


class StyleImageSplatModel(GuidedSplatModel):
    """Loads the style images once, builds the Gram term on them for any view set, and (while stylising a fixed
    splat) fits the colours with the offline teacher; a method passes this its style set's turn policy."""

    config: StyleImageSplatModelConfig

    def populate_modules(self) -> None:
        self._styles: dict[int, Tensor] = {}  # style images by index, loaded on first use
        self.teacher = OfflineTeacher()
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

    def live_style_image(self) -> Tensor:
        """The style image `[1, 3, H, W]` the live colours train toward: the first, or while the images train in turn,
        the one whose turn it is."""
        return self.style_image(self.palette.live_index() if self.palette is not None else 0)

    # ---------------------------------------------------------------- the styles and their turns
    def style_set(self) -> StyleSet | None:
        """One palette entry per style image. The offline teacher fits them at once; without it (decided when
        training starts; before that, e.g. ns-render, from the config) the Gram (SOS) term trains them in turn."""
        if self.target_phase() != "stylise":
            return None
        cfg = self.config
        in_turn = not self.teacher.runs if self.teacher.runs is not None else (
            cfg.offline_teacher == "off" or cfg.sh_degree == 0)  # fmt: skip
        adds = cfg.offline_teacher != "off" and cfg.sh_degree > 0
        return StyleSet(tuple(p.stem for p in self.style_paths), in_turn, self._point_terms_at,
                        self.add_style if adds else None)  # fmt: skip

    def prepare_training(self) -> None:
        """Several style images: decide whether the teacher fits them or they train in turn (before the terms)."""
        if self.config.detail.enabled:
            self.config.detail.check()
        if self.palette is not None and len(self.style_paths) > 1:
            self.teacher.decide(self.config.offline_teacher, self.config.sh_degree, self.device)

    def _point_terms_at(self, index: int) -> None:
        """Point every built term that follows the style (SOS's Gram targets; DSSD, CSD) at style image `index`,
        keeping its loaded network."""
        for term in self.terms.active:
            if term.follows_style:
                self.guidance[term.name].set_style(self.style_image(index))

    # ---------------------------------------------------------------- the offline teacher
    def on_stylise_start(self) -> None:
        """Fit the colours to the teacher's renditions of every view (first style), and one palette entry per
        further style image; with only packaged-network terms left, the run ends there (--steps-after-teacher)."""
        if not self.style_paths:
            return
        networks = self.teacher.decide(self.config.offline_teacher, self.config.sh_degree, self.device)
        if networks is None:
            return
        styles = [(self.style_image(index), path.stem) for index, path in enumerate(self.style_paths)]
        fitted = teach_styles(self, self.config.teacher, networks, styles, lambda: self._teacher_views(CONSOLE.log),
                              self.config.detail, CONSOLE.log)  # fmt: skip
        for index, (colours, path) in enumerate(zip(fitted, self.style_paths, strict=True)):
            if index == 0:
                self.features_dc.data.copy_(colours[:, 0])
                self.features_rest.data.copy_(colours[:, 1:])
            else:
                self.palette.add(colours[:, 0], colours[:, 1:], path.stem)
        if all(term.offline for term in self.terms.active):  # the teacher stands in for every term that runs
            done = self.step + max(0, self.config.steps_after_teacher - 1)
            self.lifecycle.end_after(done)
            if self.config.steps_after_teacher == 0:  # the teacher's solution is the result: nothing else moves it
                self.terms.drop(lambda term: not term.offline)
            CONSOLE.log(f"offline teacher: the run ends after step {done} (--steps-after-teacher)")

    def add_style(self, path: str, report: Callable[[str], None]) -> list[str]:
        """A new palette entry from the style image at `path`, fitted by the teacher (the viewer's "Add style");
        returns the palette's names. Raises UserInputError (one line) for an unreadable image or a missing extra."""
        if not self.geometry_frozen:
            raise UserInputError("styles can be added once the splat's geometry is fixed (after reconstruction)")
        style = load_style_image(Path(path).expanduser()).to(self.device)
        networks = self.teacher.networks("on", self.device)
        views = self._teacher_views(report)
        colours, _ = teach(self, self.config.teacher, networks, style, views, Path(path).stem, report)
        return self.palette.add(colours[:, 0], colours[:, 1:], Path(path).stem)

    def _teacher_views(self, report: Callable[[str], None]) -> dict[str, object]:
        """The teacher's views of the training cameras and the current geometry, within
        --pipeline.model.teacher-memory-gib (models/offline_teacher.py::teacher_views)."""
        cfg = self.config
        budget = int(cfg.teacher_memory_gib * 2**30)
        return teacher_views(self, self._teacher_cameras(), cfg.teacher_render_scale, cfg.teacher_max_size, budget,
                             report)  # fmt: skip

    def _teacher_cameras(self) -> Cameras:
        """The training cameras (known once training is set up), else 24 views around the splat's robust bounds at
        three heights (+z up, nerfstudio's oriented scenes)."""
        if self.train_cameras is not None:
            return self.train_cameras
        rig = OrbitRig.around(self.means.detach().cpu(), "+z", 2.0, 128, 50.0, 1.1)
        azimuth, elevation = orbit_views(24, (-10.0, 15.0, 40.0), 1)["train"]
        return rig.cameras(azimuth, elevation)

    def sos_term(
        self, *, views: str = TRAIN_VIEW, inputs: dict[str, str] | None = None, scale: float = 1.0
    ) -> LossTerm:
        """The Gram style term against the style image, seeing `views` (paper 000 SOS), its loss times `scale`."""
        config = self.config.sos

        def build() -> GramStyleLoss:
            hint = "pass --pipeline.model.sos.backbone-weights <vgg19-dcbb9e9d.pth>"
            sos = GramStyleLoss(config, weights_hint=hint).to(self.device)
            sos.set_style(self.live_style_image())
            return sos

        return LossTerm(
            name="sos", label=f"SOS on {config.backbone}", config=config, flag="sos", build=build, views=views,
            inputs=inputs or {}, scale=scale, follows_style=True, offline=True,
            required=True,  # the user chose the backbone: its weights missing stops the run
        )  # fmt: skip


def style_paths(value: object) -> tuple[Path, ...]:
    """A model config's `style_image` as a tuple of paths (configs written before palettes hold one path or None)."""
    if value is None:
        return ()
    if isinstance(value, str | Path):
        return (Path(value),)
    return tuple(Path(v) for v in value)
