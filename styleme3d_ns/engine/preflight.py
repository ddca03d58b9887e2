"""The pre-flight of `ns-train`: every input a run reads, read and checked before anything is written.

`StyleTrainerConfig.save_config` calls :func:`check_run_inputs` before config.yml exists, so a run that would fail on
its inputs prints one line and leaves no run folder (docs/reliability.md). Each input is read by the same code that
reads it during training (one reader, never a second copy), and only read:

- the data: a nerfstudio dataset (layout, poses, image sizes), or a 3DGS `.ply` parsed in full by the `.ply` parser's
  reader (header, body length, finite values, a splat's properties), its options, and whether the folder its renders
  go to can be written;
- the base checkpoint (in full, against the model's SH degree), every style image;
- the checkpoint `--load-dir` resumes from (whole, not truncated);
- the look (`--pipeline.model.look.*`) against the palette the run will hold: one entry per style image or prompt.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from styleme3d_ns.core.errors import UserInputError


def configured_style_count(model_config: Any) -> int:  # noqa: ANN401 - any of our methods' model configs
    """Entries of the palette a run of this model config holds: one per style image or prompt, at least one (the
    live colours)."""
    from styleme3d_ns.models.clip_splat import configured_prompts
    from styleme3d_ns.models.style_reference import style_paths

    images = style_paths(getattr(model_config, "style_image", None))
    return max(1, len(images), len(configured_prompts(model_config)))


def resume_checkpoint(load_dir: Path, load_step: int | None) -> Path:
    """The checkpoint `--load-dir` (and `--load-step`) resume from: the newest complete name, or the step asked for;
    the run folder is accepted as well as its nerfstudio_models/. One line if it is missing or truncated."""
    from styleme3d_ns.models.checkpoint import check_complete, newest_checkpoint

    folder = Path(load_dir).expanduser()
    if (folder / "nerfstudio_models").is_dir():
        folder = folder / "nerfstudio_models"
    if not folder.is_dir():
        raise UserInputError(f"--load-dir {load_dir} does not exist; pass a run folder or its nerfstudio_models/")
    if load_step is None:
        newest = newest_checkpoint(folder)
        if newest is None:
            raise UserInputError(f"--load-dir {load_dir} holds no step-*.ckpt; pass <run>/nerfstudio_models")
        path = newest
    else:
        path = folder / f"step-{load_step:09d}.ckpt"
        if not path.is_file():
            raise UserInputError(f"checkpoint {path} does not exist; check --load-dir and --load-step")
    return check_complete(path, "pass --load-step with an earlier step, or train again")


def check_data_inputs(datamanager: Any) -> None:  # noqa: ANN401 - a nerfstudio DataManagerConfig
    """The data as the run's data parser will read it: a `.ply` scene (styleme3d-ply, or a .ply given to our
    nerfstudio-data parser) or a nerfstudio dataset."""
    from styleme3d_ns.data.dataparser import CheckedNerfstudioDataParserConfig, check_data
    from styleme3d_ns.data.ply_scene import PlySceneDataParserConfig, check_ply_scene

    dataparser = getattr(datamanager, "dataparser", None)
    data = getattr(datamanager, "data", None) or getattr(dataparser, "data", None)
    if isinstance(dataparser, PlySceneDataParserConfig):
        check_ply_scene(replace(dataparser, data=data))  # nerfstudio hands --data to the parser the same way
    elif isinstance(dataparser, CheckedNerfstudioDataParserConfig):
        check_data(data)


def check_run_inputs(config: Any) -> None:  # noqa: ANN401 - nerfstudio's TrainerConfig
    """Everything a run reads, checked before anything is written; one-line UserInputError on the first problem.

    Inputs are only read; warnings (a tiny style image, ...) are given here, before the run starts.
    """
    from styleme3d_ns.data.style_image import load_style_image
    from styleme3d_ns.models.checkpoint import load_gaussians
    from styleme3d_ns.models.look import check_look
    from styleme3d_ns.models.style_reference import style_paths

    check_data_inputs(config.pipeline.datamanager)
    model = config.pipeline.model
    if getattr(model, "base_checkpoint", None) is not None:
        load_gaussians(
            model.base_checkpoint,
            sh_degree=getattr(model, "sh_degree", None),
            drop_non_finite=getattr(model, "drop_non_finite_gaussians", False),
        )
    for path in style_paths(getattr(model, "style_image", None)):
        load_style_image(path)
    if getattr(config, "load_dir", None) is not None:
        resume_checkpoint(config.load_dir, getattr(config, "load_step", None))
    detail = getattr(model, "detail", None)
    if detail is not None and detail.enabled:
        detail.check()
    look = getattr(model, "look", None)
    if look is not None:
        check_look(look, configured_style_count(model))
