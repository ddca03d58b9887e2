"""How a guided splat's Gaussians become pixels, for training and for everything that looks at a run.

:class:`SplatRenderer` is the model's rendering component (``model.renderer``). It rasterises the splat with any set of
colours (``render/``: gsplat on CUDA, our PyTorch rasteriser elsewhere), and while the geometry is frozen it renders
training views through each view's cached linear colour map instead (:class:`~styleme3d_ns.render.colour_map.ColourMap`,
the same image up to float rounding, 20x+ faster on CPU). For display (the viewer, ``ns-render``, eval) it renders the
look of a stylised run and its base colours in one rasterisation. Renders that train the geometry hand their
rasteriser info to the densification strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from styleme3d_ns.models.loss_terms import TRAIN_VIEW
from styleme3d_ns.render import rasterize
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.colour_map import ColourMap, ColourMapCache
from styleme3d_ns.render.sh import sh_colors

if TYPE_CHECKING:
    from styleme3d_ns.models.guided_splat import GuidedSplatModel


class SplatRenderer:
    """Renders `model`'s Gaussians (read from the model at each call: they change with training and loading).

    ``infos`` collects the rasteriser infos of this step's differentiable renders while the geometry trains, so that
    densification sees every view a method rendered, not only the last.
    """

    def __init__(self, model: GuidedSplatModel) -> None:
        self.model = model
        budget = int(model.config.fast_path_cache_gib * 2**30)
        self.colour_maps = ColourMapCache(model.config.fast_path_cache_views, budget)
        self.infos: list[dict] = []

    def take_infos(self) -> list[dict]:
        """This step's rasteriser infos (in render order), forgotten here."""
        infos, self.infos = self.infos, []
        return infos

    # ---------------------------------------------------------------- colours and cameras
    def sh_degree_now(self) -> int | None:
        """SH degree the rasteriser evaluates now: None for RGB colours (sh_degree 0), the full degree once the
        geometry is fixed or read from a base, splatfacto's schedule while reconstructing."""
        model = self.model
        if model.config.sh_degree == 0:
            return None
        if model.phase != "reconstruct" or model.lifecycle.from_base:
            return model.config.sh_degree  # a loaded or fixed base renders as it was reconstructed
        return min(model.step // model.config.sh_degree_interval, model.config.sh_degree)

    def colours(self, dc: Tensor, rest: Tensor) -> Tensor:
        """Per-Gaussian colour input of the rasteriser: SH coefficients `[N, K, 3]`, or RGB `[N, 3]` at degree 0."""
        colours = torch.cat((dc[:, None, :], rest), dim=1)
        return torch.sigmoid(colours).squeeze(1) if self.model.config.sh_degree == 0 else colours

    def view(self, camera: Cameras) -> tuple[Tensor, Tensor, int, int]:
        """World-to-camera `[1, 4, 4]`, intrinsics `[1, 3, 3]`, width and height of `camera` at this resolution."""
        model = self.model
        scale = model._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        width, height = int(camera.width.item()), int(camera.height.item())
        K = camera.get_intrinsics_matrices().to(model.device)
        camera.rescale_output_resolution(scale)
        model.last_size = (height, width)
        c2w = model.camera_optimizer.apply_to_camera(camera) if model.training else camera.camera_to_worlds
        return viewmat_from_c2w(c2w.to(model.device)), K, width, height

    # ---------------------------------------------------------------- rendering
    def render_colours(
        self, camera: Cameras, dc: Tensor, rest: Tensor, *, with_depth: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Render the splat's geometry with the given colour coefficients.

        Args:
            camera: one nerfstudio camera.
            dc: `[N, 3]` SH DC coefficients (or logits at sh_degree 0); rest: `[N, K-1, 3]`.

        Returns:
            premultiplied colour `[H, W, 3]`, alpha `[H, W, 1]` in [0, 1], expected depth `[H, W, 1]` or None.
        """
        viewmat, K, width, height = self.view(camera)
        colours = self.colours(dc, rest)
        if not with_depth and self.uses_colour_map(camera):
            model = self.model
            geometry = (model.means, model.quats, model.scales, model.opacities)
            key = (int(camera.metadata["cam_idx"]), width, height)
            cmap = self.colour_maps.get(key, geometry, lambda: self.colour_map(viewmat, K, width, height))
            rgb, alpha = cmap.render(colours)
            return rgb, alpha, None
        render, alpha = self.rasterize(colours, viewmat, K, width, height, self.sh_degree_now(), with_depth)
        depth = render[0, ..., 3:4] if with_depth else None
        return render[0, ..., :3], alpha[0], depth

    def uses_colour_map(self, camera: Cameras) -> bool:
        """A training view of a frozen geometry (opacity included), no crop box: linear in the colours."""
        model = self.model
        return (
            model.training
            and model.config.colour_fast_path
            and model.geometry_frozen
            and not model.config.train_opacity
            and model.crop_box is None
            and camera.metadata is not None
            and "cam_idx" in camera.metadata
        )

    @torch.no_grad()
    def colour_map(self, viewmat: Tensor, K: Tensor, width: int, height: int) -> ColourMap:
        """The linear colour -> pixel map of one view of the (frozen) geometry (render/colour_map.py)."""
        model = self.model
        return ColourMap.build(
            means=model.means,
            quats=model.quats,
            scales=torch.exp(model.scales),
            opacities=torch.sigmoid(model.opacities).squeeze(-1),
            viewmat=viewmat,
            K=K,
            width=width,
            height=height,
            sh_degree=self.sh_degree_now(),
            rasterize_mode=model.config.rasterize_mode,
        )

    def rasterize(
        self, colours: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int | None, depth: bool
    ) -> tuple[Tensor, Tensor]:
        """Rasterise the (crop-boxed) splat with `colours`; registers the render for densification while training."""
        model = self.model
        cropped = model.crop_box is not None and not model.training
        mask = model.crop_box.within(model.means).squeeze() if cropped else None
        sel = (lambda t: t[mask]) if mask is not None else (lambda t: t)
        render, alpha, model.info = rasterize(
            means=sel(model.means),
            quats=sel(model.quats),
            scales=torch.exp(sel(model.scales)),
            opacities=torch.sigmoid(sel(model.opacities)).squeeze(-1),
            colors=sel(colours),
            viewmats=viewmat,
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB+ED" if depth else "RGB",
            sh_degree=sh_degree,
            absgrad=model.strategy.absgrad,
            rasterize_mode=model.config.rasterize_mode,
            backend=model.config.rasterizer,
        )
        if model.training and not model.geometry_frozen and torch.is_grad_enabled():
            model.strategy.step_pre_backward(
                model.gauss_params, model.optimizers, model.strategy_state, model.step, model.info
            )
            self.infos.append(model.info)
        return render, alpha

    def outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        """nerfstudio's outputs of one camera: rgb, depth, accumulation, background, and ``content_rgb`` (the base's
        render) while stylising (in training only when a term reads it)."""
        model = self.model
        if model.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
        if model.crop_box is not None and not model.training and model.crop_box.within(model.means).sum() == 0:
            return model.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), model.background_color)
        background = model._get_background_color()
        if model.training:
            rgb, alpha, depth = self.render_colours(
                camera, model.features_dc, model.features_rest, with_depth=model.config.output_depth_during_training
            )
            reads_content = model.geometry_frozen and model.terms.reads(TRAIN_VIEW, "content")
            content = self.render_base(camera, background) if reads_content else None
        else:
            rgb, alpha, depth, content = self.display(camera, background)
        rgb = torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0)
        if depth is not None:
            depth = torch.where(alpha > 0, depth, depth.detach().max())
        height, width = rgb.shape[:2]
        if background.shape[0] == 3 and not model.training:
            background = background.expand(height, width, 3)
        outputs = {"rgb": rgb, "depth": depth, "accumulation": alpha, "background": background}
        if content is not None:
            outputs["content_rgb"] = content
        return outputs

    def display(self, camera: Cameras, background: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One rasterisation of the look's colours, depth and (while stylising) the unstylised colours as extra
        channels: colours are evaluated from SH here, so the look is a per-Gaussian colour operation
        (:meth:`~styleme3d_ns.models.palette.StylePalette.look_colours`) and both sets share one compositing pass.

        Returns rgb `[H, W, 3]` (premultiplied), alpha `[H, W, 1]`, depth `[H, W, 1]`, content `[H, W, 3]` or None.
        """
        model = self.model
        viewmat, K, width, height = self.view(camera)
        degree = self.sh_degree_now()
        campos = torch.linalg.inv(viewmat[0])[:3, 3]

        def rgb_of(dc: Tensor, rest: Tensor) -> Tensor:  # [N, 3] as the rasteriser would evaluate them
            colours = self.colours(dc, rest)
            return colours if degree is None else sh_colors(degree, model.means - campos, colours)

        styled = model.geometry_frozen and model.palette is not None
        if styled:
            colours = model.palette.look_colours(rgb_of, model.config.look, model.means)
        else:
            colours = rgb_of(model.features_dc, model.features_rest)
        render, alpha = self.rasterize(colours, viewmat, K, width, height, None, depth=True)
        rgb, depth = render[0, ..., :3], render[0, ..., -1:]
        content = torch.clamp(render[0, ..., 3:6] + (1 - alpha[0]) * background, 0.0, 1.0) if styled else None
        return rgb, alpha[0], depth, content

    def render_base(self, camera: Cameras, background: Tensor) -> Tensor:
        """The unstylised splat from this camera, `[H, W, 3]` in [0, 1], no gradient (content reference)."""
        model = self.model
        with torch.no_grad():
            rgb, alpha, _ = self.render_colours(camera, model.base_features_dc, model.base_features_rest)
            return torch.clamp(rgb + (1 - alpha) * background, 0.0, 1.0)
