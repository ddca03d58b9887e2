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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.ply_scene import OrbitRig, orbit_views
from styleme3d_ns.data.style_image import load_style_image
from styleme3d_ns.guidance.gram import GramStyleLoss, GramStyleLossConfig
from styleme3d_ns.guidance.magenta import CONTENT_SIZE, MagentaStyleNetworks
from styleme3d_ns.guidance.style_teacher import StyleTeacher, StyleTeacherConfig
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.guided_splat import GuidedSplatModel, GuidedSplatModelConfig
from styleme3d_ns.models.loss_terms import TRAIN_VIEW, LossTerm
from styleme3d_ns.models.palette import StyleTurns


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
    teacher_render_scale: float = 4 / 3
    """The teacher sees the training views rendered this many times larger (its strokes need pixels; never above its
    384 px input): memory and time grow with its square (docs/styleme3d.md: 4/3 and 2 stylise alike at 96 px)."""


class StyleImageSplatModel(GuidedSplatModel):
    """Loads the style image once and builds the Gram term on it for any view set."""

    config: StyleImageSplatModelConfig

    def populate_modules(self) -> None:
        self._styles: dict[int, Tensor] = {}
        self._teacher_runs: bool | None = None  # whether the offline teacher runs here, decided once when training
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
        return self.style_image(self.live_style_index())

    def style_names(self) -> list[str]:
        return [path.stem for path in self.style_paths]

    # ---------------------------------------------------------------- several style images
    def trains_styles_in_turn(self) -> bool:
        """Without the offline teacher the Gram (SOS) term trains the style images one after another; with it the
        teacher fits them at once. Decided when training is set up (before that, e.g. ns-render: from the config)."""
        if self._teacher_runs is None:
            return self.config.offline_teacher == "off" or self.config.sh_degree == 0
        return not self._teacher_runs

    def _plan_style_turns(self, end: int | None) -> StyleTurns | None:
        """Several style images: decide whether the teacher fits them or they train in turn (before the terms are
        built); a method whose geometry trains with the style cannot keep them over one geometry and stops."""
        count = len(self.style_paths)
        if count > 1 and self.target_phase() != "stylise":
            raise UserInputError(
                f"{self.method_name} trains its geometry with the style, so {count} style images cannot share one "
                "geometry as a palette: pass one --pipeline.model.style-image"
            )
        if count > 1:
            self._offline_teacher()
        return super()._plan_style_turns(end)

    def on_style_turn(self, index: int) -> None:
        """Point every built term that holds a style image (SOS's Gram targets; DSSD, CSD) at style image `index`,
        keeping its loaded network."""
        for term in self.active_terms:
            built = self.guidance[term.name]
            if hasattr(built, "set_style"):
                built.set_style(self.style_image(index))

    # ---------------------------------------------------------------- the offline teacher
    def on_stylise_start(self) -> None:
        """Fit the colours to the teacher's renditions of every view (first style), and one palette entry per
        further style image."""
        if not self.style_paths:
            return
        networks = self._offline_teacher()
        if networks is None:
            return
        views = self._teacher_views(self._teacher_cameras())
        for index, path in enumerate(self.style_paths):
            colours = self._teach(networks, self.style_image(index), views, path.stem, CONSOLE.log)
            if index == 0:
                self.features_dc.data.copy_(colours[:, 0])
                self.features_rest.data.copy_(colours[:, 1:])
            else:
                self.add_palette_entry(colours[:, 0], colours[:, 1:], path.stem)
        offline = {"sos", "recon"}  # the terms the teacher stands in for when no diffusion or CSD expert runs
        if {t.name for t in self.active_terms} <= offline:
            self.done_after_step = self.step + max(0, self.config.steps_after_teacher - 1)
            if self.config.steps_after_teacher == 0:  # the teacher's solution is the result: nothing else moves it
                self.active_terms = [t for t in self.active_terms if t.name not in offline]
            CONSOLE.log(f"offline teacher: the run ends after step {self.done_after_step} (--steps-after-teacher)")

    def style_adder(self) -> Callable[[str, Callable[[str], None]], list[str]] | None:
        return self.add_style if self.config.offline_teacher != "off" and self.config.sh_degree > 0 else None

    def add_style(self, path: str, report: Callable[[str], None]) -> list[str]:
        """A new palette entry from the style image at `path`, fitted by the teacher (the viewer's "Add style");
        returns the palette's names. Raises UserInputError (one line) for an unreadable image or a missing extra."""
        if not self.geometry_frozen:
            raise UserInputError("styles can be added once the splat's geometry is fixed (after reconstruction)")
        style = load_style_image(Path(path).expanduser()).to(self.device)
        networks = self._teacher_networks("on")
        cameras = self.train_cameras if self.train_cameras is not None else self._orbit_cameras()
        colours = self._teach(networks, style, self._teacher_views(cameras), Path(path).stem, report)
        return self.add_palette_entry(colours[:, 0], colours[:, 1:], Path(path).stem)

    def _offline_teacher(self) -> MagentaStyleNetworks | None:
        """The teacher's networks when it runs in this run (--offline-teacher, SH colours, the `style` extra), else
        None; decided once, with one line when it is off."""
        if self._teacher_runs is None:
            networks = None
            if self.config.sh_degree == 0:  # colours are sigmoid logits there; the solve fits SH coefficients
                CONSOLE.log("offline teacher off: the splat has no SH colours (--pipeline.model.sh-degree 0)")
            else:
                networks = self._teacher_networks(self.config.offline_teacher)
            self._teacher_runs = networks is not None
        return self._networks if self._teacher_runs else None

    def _teacher_networks(self, mode: str) -> MagentaStyleNetworks | None:
        """The Magenta networks, or None (with one line) when the teacher is off or cannot run here."""
        if mode == "off":
            return None
        try:
            if getattr(self, "_networks", None) is None:
                self._networks = MagentaStyleNetworks.load(self.device)
            return self._networks
        except MissingWeightsError as err:
            reason = str(err)
        if mode == "on":
            raise UserInputError(f"offline teacher: {reason}")
        CONSOLE.log(f"offline teacher off: {reason}")
        return None

    def _teacher_cameras(self) -> Cameras:
        """The training cameras (known once training is set up), else an orbit around the splat."""
        return self.train_cameras if self.train_cameras is not None else self._orbit_cameras()

    def _orbit_cameras(self) -> Cameras:
        """24 views around the splat's robust bounds at three heights (+z up, nerfstudio's oriented scenes)."""
        rig = OrbitRig.around(self.means.detach().cpu(), "+z", 2.0, 128, 50.0, 1.1)
        azimuth, elevation = orbit_views(24, (-10.0, 15.0, 40.0), 1)["train"]
        return rig.cameras(azimuth, elevation)

    @torch.no_grad()
    def _teacher_views(self, cameras: Cameras) -> dict[str, object]:
        """Colour maps, depths, world-to-camera matrices and intrinsics of `cameras`, each scaled by
        `teacher_render_scale` (capped at the network's input size)."""
        maps, depths, viewmats, Ks = [], [], [], []
        dc, rest = self.base_features_dc, self.base_features_rest
        for i in range(cameras.shape[0]):
            camera = cameras[i : i + 1].to(self.device)
            longest = float(max(camera.width.item(), camera.height.item()))
            camera.rescale_output_resolution(min(self.config.teacher_render_scale, CONTENT_SIZE / longest))
            viewmat, K, width, height = self._view(camera)
            maps.append(self._build_colour_map(viewmat, K, width, height))
            depths.append(self.render_colours(camera, dc, rest, with_depth=True)[2].permute(2, 0, 1))
            viewmats.append(viewmat[0])
            Ks.append(K[0])
        return {"maps": maps, "depths": torch.stack(depths), "viewmats": torch.stack(viewmats), "Ks": torch.stack(Ks)}

    def _teach(
        self, networks: MagentaStyleNetworks, style: Tensor, views: dict, name: str, report: Callable[[str], None]
    ) -> Tensor:
        """Teacher-fitted SH colours `[N, K, 3]` for one style image `[1, 3, H, W]`, starting from the base."""
        start = time.perf_counter()
        teacher = StyleTeacher(self.config.teacher, networks, style)
        base = torch.cat([self.base_features_dc[:, None], self.base_features_rest], dim=1)
        rounds = self.config.teacher.rounds

        def progress(index: int, solution: object) -> None:
            report(f"offline teacher '{name}': round {index + 1}/{rounds} ({time.perf_counter() - start:.1f} s)")

        colours = teacher.fit(views["maps"], base, base, self._get_background_color(), views["depths"],
                              views["viewmats"], views["Ks"], progress)  # fmt: skip
        report(f"offline teacher '{name}': {len(views['maps'])} views fitted in {time.perf_counter() - start:.1f} s")
        return colours

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
