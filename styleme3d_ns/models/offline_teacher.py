"""The offline teacher as a model component: the Magenta style networks, loaded once, and a fixed splat's colours
fitted to their renditions of every view (docs/styleme3d.md, "Offline teacher").

The maths lives in :mod:`styleme3d_ns.guidance.style_teacher` (render, stylise, agree, solve); this module gives it a
model's views (each view's colour map, depth and camera at the teacher's render scale) and decides, once per run,
whether the teacher runs at all (``--pipeline.model.offline-teacher``, SH colours, the ``style`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.guidance.magenta import MagentaStyleNetworks
from styleme3d_ns.guidance.style_teacher import StyleTeacher, StyleTeacherConfig
from styleme3d_ns.guidance.weights import MissingWeightsError
from styleme3d_ns.models.detail import DetailConfig, missed_detail, pick_parents, split_children

if TYPE_CHECKING:
    from styleme3d_ns.models.guided_splat import GuidedSplatModel

TeacherMode = Literal["auto", "on", "off"]


class OfflineTeacher:
    """The Magenta networks of one model (loaded on first use) and whether the teacher runs in this run.

    ``runs`` is None until :meth:`decide` (then True or False for the rest of the run).
    """

    def __init__(self) -> None:
        self.runs: bool | None = None
        self._networks: MagentaStyleNetworks | None = None

    def networks(self, mode: TeacherMode, device: torch.device) -> MagentaStyleNetworks | None:
        """The Magenta networks (on `device`), or None (with one line) when `mode` is off or they cannot load here;
        with `mode` "on" a missing `style` extra stops with one line instead."""
        if mode == "off":
            return None
        try:
            if self._networks is None:
                self._networks = MagentaStyleNetworks.load(device)
            return self._networks
        except MissingWeightsError as err:
            reason = str(err)
        if mode == "on":
            raise UserInputError(f"offline teacher: {reason}")
        CONSOLE.log(f"offline teacher off: {reason}")
        return None

    def decide(self, mode: TeacherMode, sh_degree: int, device: torch.device) -> MagentaStyleNetworks | None:
        """The networks when the teacher runs in this run, else None; decided on the first call, with one line when
        it is off."""
        if self.runs is None:
            networks = None
            if sh_degree == 0:  # colours are sigmoid logits there; the solve fits SH coefficients
                CONSOLE.log("offline teacher off: the splat has no SH colours (--pipeline.model.sh-degree 0)")
            else:
                networks = self.networks(mode, device)
            self.runs = networks is not None
        return self._networks if self.runs else None


@torch.no_grad()
def teacher_views(
    model: GuidedSplatModel, cameras: Cameras, render_scale: float, max_size: int, max_bytes: int | None = None,
    report: Callable[[str], None] = CONSOLE.log,
) -> dict[str, object]:  # fmt: skip
    """Colour maps, depths, world-to-camera matrices and intrinsics of `cameras`, each scaled by `render_scale`
    (its longer side capped at `max_size` px), of `model`'s frozen geometry and base colours.

    Built one view at a time, farthest first (:func:`spread_order`: each next view the least like those taken), until
    the maps hold `max_bytes`: with many views (a capture's hundreds of cameras) the teacher fits the ones that fit,
    spread over all of them, and says so in one line; memory stays bounded however many views there are.
    """
    maps, depths, viewmats, Ks = [], [], [], []
    dc, rest = model.base_features_dc, model.base_features_rest
    held = 0
    order = spread_order(cameras.camera_to_worlds)
    for i in order:
        camera = cameras[int(i) : int(i) + 1].to(model.device)
        longest = float(max(camera.width.item(), camera.height.item()))
        camera.rescale_output_resolution(min(render_scale, max_size / longest))
        viewmat, K, width, height = model.renderer.view(camera)
        cmap = model.renderer.colour_map(viewmat, K, width, height)
        if maps and max_bytes is not None and held + cmap.nbytes > max_bytes:
            report(f"offline teacher: {len(maps)} of {len(order)} views (spread over all) fit in "
                   f"{max_bytes / 2**30:.1f} GiB of colour maps (--pipeline.model.teacher-memory-gib)")  # fmt: skip
            break
        held += cmap.nbytes
        maps.append(cmap)
        depths.append(model.render_colours(camera, dc, rest, with_depth=True)[2].permute(2, 0, 1))
        viewmats.append(viewmat[0])
        Ks.append(K[0])
    return {"maps": maps, "depths": torch.stack(depths), "viewmats": torch.stack(viewmats), "Ks": torch.stack(Ks)}


def spread_order(c2w: Tensor) -> Tensor:
    """Indices of the poses `[V, 3, 4]` in farthest-first order: view 0, then each time the view farthest (position,
    relative to the cameras' spread, plus viewing direction) from every view taken, so any first k cover them all."""
    position = c2w[:, :3, 3].double()
    spread = (position - position.mean(0)).norm(dim=1).mean().clamp_min(1e-9)
    features = torch.cat([position / spread, c2w[:, :3, 2].double()], dim=1)
    taken = [0]
    distance = (features - features[0]).norm(dim=1)
    for _ in range(len(features) - 1):
        nxt = int(distance.argmax())
        taken.append(nxt)
        distance = torch.minimum(distance, (features - features[nxt]).norm(dim=1))
    return torch.tensor(taken)


def teach(
    model: GuidedSplatModel,
    config: StyleTeacherConfig,
    networks: MagentaStyleNetworks,
    style: Tensor,
    views: dict,
    name: str,
    report: Callable[[str], None],
) -> tuple[Tensor, Tensor | None]:
    """Teacher-fitted SH colours `[N, K, 3]` of `model` for style image `style` `[1, 3, H, W]`, from the base, and the
    last round's targets `[V, 3, H, W]` (None at strength 0)."""
    start = time.perf_counter()
    teacher = StyleTeacher(config, networks, style)
    base = torch.cat([model.base_features_dc[:, None], model.base_features_rest], dim=1)
    rounds = teacher.config.rounds

    def progress(index: int, solution: object) -> None:
        report(f"offline teacher '{name}': round {index + 1}/{rounds} ({time.perf_counter() - start:.1f} s)")

    colours, targets = teacher.fit_targets(views["maps"], base, base, model._get_background_color(), views["depths"],
                                           views["viewmats"], views["Ks"], progress, model.means)  # fmt: skip
    report(f"offline teacher '{name}': {len(views['maps'])} views fitted in {time.perf_counter() - start:.1f} s")
    return colours, targets


def teach_styles(
    model: GuidedSplatModel,
    config: StyleTeacherConfig,
    networks: MagentaStyleNetworks,
    styles: list[tuple[Tensor, str]],
    make_views: Callable[[], dict],
    detail: DetailConfig,
    report: Callable[[str], None],
) -> list[Tensor]:
    """Teacher-fitted SH colours `[N, K, 3]` for each (style image, name) in `styles`; with `detail.enabled`, the
    Gaussians that miss the most detail of any style are split and every style fitted again (models/detail.py),
    `detail.levels` times within the budget: the model's Gaussians change (``resize_gaussians``); every fit then
    paints at ``detail.stroke_size`` (finer strokes, which the split Gaussians hold)."""
    if detail.enabled and detail.stroke_size is not None:
        config = replace(config, stroke_size=detail.stroke_size)
    views = make_views()
    fits = [teach(model, config, networks, image, views, name, report) for image, name in styles]
    if not detail.enabled or any(targets is None for _, targets in fits):
        return [colours for colours, _ in fits]
    base_count = model.num_points
    background = model._get_background_color()
    for level in range(detail.levels):
        count = model.num_points
        scores = sum(missed_detail(views["maps"], targets, colours, background, count) for colours, targets in fits)
        parents = pick_parents(scores, count, base_count, detail)
        if len(parents) == 0:
            break
        source, geometry = split_children(model.means, model.scales, model.quats, model.opacities, parents)
        model.resize_gaussians(source, geometry)
        report(f"detail {level + 1}/{detail.levels}: {len(parents)} Gaussians split, {count} -> {model.num_points}")
        views = make_views()
        fits = [teach(model, config, networks, image, views, name, report) for image, name in styles]
    return [colours for colours, _ in fits]
