"""Rendering runs for evaluation: held-out views, any camera of the run, and a stylised run's base colours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.base_model import Model
    from nerfstudio.pipelines.base_pipeline import Pipeline


@dataclass
class RenderedViews:
    """Renders of one run from a list of cameras."""

    rgb: Tensor
    """`[V, H, W, 3]` in [0, 1], composited over the run's background."""
    depth: Tensor
    """`[V, H, W, 1]` expected depth: camera-space z (along the optical axis) in the run's scene units; pixels
    that hit nothing hold the view's largest depth, as the model outputs it."""
    camera_indices: list[int]
    """Camera id of each view: an index into the run's evaluation cameras, or into a :class:`CameraPool`."""
    alpha: Tensor | None = None
    """`[V, H, W, 1]` accumulated opacity in [0, 1] (None if the model does not output it)."""

    def select(self, ids: Sequence[int]) -> RenderedViews:
        """The views of the given camera ids, in that order."""
        rows = [self.camera_indices.index(i) for i in ids]
        alpha = self.alpha[rows] if self.alpha is not None else None
        return RenderedViews(self.rgb[rows], self.depth[rows], list(ids), alpha)

    def with_rgb(self, rgb: Tensor) -> RenderedViews:
        """Same cameras and geometry, other colours `[V, H, W, 3]` (e.g. a test's tinted copy)."""
        return RenderedViews(rgb, self.depth, list(self.camera_indices), self.alpha)


def load_pipeline(config_path: Path) -> tuple[TrainerConfig, Pipeline]:
    """Load a finished run (its `config.yml`) with nerfstudio's `eval_setup`, in eval mode, newest checkpoint."""
    from nerfstudio.utils.eval_utils import eval_setup

    from styleme3d_ns.models.checkpoint import read_run_config, run_checkpoint

    config_path = Path(config_path).expanduser()
    run_checkpoint(read_run_config(config_path), config_path)  # one line for a missing or truncated checkpoint
    config, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    return config, pipeline


@dataclass
class CameraPool:
    """All cameras of a run in one id space: evaluation cameras first (ids 0..E-1), then training cameras.

    Consistency pairs need neighbours of the held-out views, and those are mostly training cameras.
    """

    eval_cameras: Cameras
    """`[E]` held-out cameras."""
    train_cameras: Cameras
    """`[T]` training cameras."""
    long_side: int | None = None
    """Every camera handed out is rescaled to this longer side in pixels (None: the run's own resolution)."""

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, long_side: int | None = None) -> CameraPool:
        datamanager = pipeline.datamanager
        return cls(datamanager.eval_dataset.cameras, datamanager.train_dataset.cameras, long_side)

    @property
    def num_eval(self) -> int:
        return len(self.eval_cameras)

    def __len__(self) -> int:
        return len(self.eval_cameras) + len(self.train_cameras)

    def __getitem__(self, index: int) -> Cameras:
        """Camera `index` as a batch of one, `[1]`."""
        if not 0 <= index < len(self):
            raise IndexError(f"camera id {index} out of range for {len(self)} cameras")
        camera = self.eval_cameras[index : index + 1] if index < self.num_eval else \
            self.train_cameras[index - self.num_eval : index - self.num_eval + 1]  # fmt: skip
        if self.long_side is not None:  # a slice holds its own intrinsics: the run's cameras are not touched
            camera.rescale_output_resolution(self.long_side / float(max(camera.width.item(), camera.height.item())))
        return camera

    def label(self, index: int) -> str:
        """Human-readable name of a camera id, e.g. `eval 1` or `train 7`."""
        return f"eval {index}" if index < self.num_eval else f"train {index - self.num_eval}"

    def camera_to_worlds(self) -> Tensor:
        """`[E + T, 3, 4]` nerfstudio camera-to-world poses (OpenGL axes) in id order."""
        return torch.cat([self.eval_cameras.camera_to_worlds, self.train_cameras.camera_to_worlds], dim=0)


@torch.no_grad()
def render_views(
    model: Model, cameras: Sequence[Cameras], ids: Sequence[int], *, with_base: bool = False
) -> tuple[RenderedViews, RenderedViews | None]:
    """Render `cameras` (each `[1]`) through the model's own `get_outputs_for_camera`.

    With `with_base`, also render the same cameras with the colours the run started from (the frozen-colour
    model's `base_features_dc/rest` buffers, via `render_base`): same geometry, so depth and alpha are shared and
    no second run is needed.

    Returns:
        the run's renders, and the base renders (None unless `with_base`).
    """
    if with_base and not hasattr(model, "render_base"):
        raise UserInputError(
            f"{type(model).__name__} keeps no base colours to compare against; pass --base-config <base run config.yml>"
        )
    rgbs, depths, alphas, base_rgbs = [], [], [], []
    for camera in cameras:
        camera = camera.to(model.device)
        outputs = model.get_outputs_for_camera(camera)
        rgbs.append(outputs["rgb"].cpu())
        depths.append(outputs["depth"].cpu())
        alphas.append(outputs["accumulation"].cpu())
        if with_base:
            base_rgbs.append(model.render_base(camera, outputs["background"]).cpu())
    views = RenderedViews(torch.stack(rgbs), torch.stack(depths), list(ids), torch.stack(alphas))
    base = views.with_rgb(torch.stack(base_rgbs)) if with_base else None
    return views, base


def render_eval_views(config_path: Path, max_views: int | None = None) -> RenderedViews:
    """Load a run and render its first `max_views` (default all) evaluation (held-out) cameras."""
    _, pipeline = load_pipeline(config_path)
    cameras = pipeline.datamanager.eval_dataset.cameras
    count = len(cameras) if max_views is None else min(max_views, len(cameras))
    views, _ = render_views(pipeline.model, [cameras[i : i + 1] for i in range(count)], list(range(count)))
    return views
