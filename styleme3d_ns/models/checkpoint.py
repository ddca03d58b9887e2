"""Reading a base splat from a splatfacto (or styleme3d-ns) checkpoint, read-only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from styleme3d_ns.errors import UserInputError

GAUSSIAN_KEYS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


def resolve_checkpoint(path: Path) -> Path:
    """Find the checkpoint file a user meant.

    Accepts a `step-*.ckpt` file, a `nerfstudio_models/` folder, a run folder holding one, or the
    run's `config.yml`. The newest step wins, as in `ns-train --load-dir`.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        path = path.parent
    if path.is_dir():
        folder = path / "nerfstudio_models" if (path / "nerfstudio_models").is_dir() else path
        ckpts = sorted(folder.glob("step-*.ckpt"))
        if not ckpts:
            raise UserInputError(
                f"no step-*.ckpt checkpoint in {folder}; pass --pipeline.model.base-checkpoint "
                "<run>/nerfstudio_models/step-000030000.ckpt (say) from a finished splatfacto or styleme3d-ns run"
            )
        return ckpts[-1]
    if not path.exists():
        raise UserInputError(
            f"base checkpoint {path} does not exist; pass --pipeline.model.base-checkpoint with the .ckpt file "
            "(or run folder) of a splatfacto run, or omit it to reconstruct from the data first"
        )
    return path


def _numpy_scalar_globals() -> list:
    """The numpy types a pickled numpy float needs (numpy 2 moved them from numpy.core to numpy._core)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]


def load_gaussians(path: Path) -> dict[str, Tensor]:
    """Gaussian parameters of a checkpoint, on CPU, without modifying the file.

    Returns:
        `{"means": [N, 3], "scales": [N, 3] (log), "quats": [N, 4], "features_dc": [N, 3],
        "features_rest": [N, K-1, 3], "opacities": [N, 1] (logit)}`.
    """
    ckpt_path = resolve_checkpoint(path)
    try:
        # weights_only: a checkpoint is data, never code to run (torch's default since 2.6). nerfstudio's own
        # scheduler stores numpy float64 learning rates, so numpy's scalar types (plain data) are allowed too.
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load on arbitrary bytes raises almost any type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"cannot read base checkpoint {ckpt_path} ({reason[:120]}); it is corrupt or not a torch checkpoint: "
            "re-export it or point --pipeline.model.base-checkpoint at another step-*.ckpt"
        ) from None
    pipeline_state = state.get("pipeline", state) if isinstance(state, dict) else None
    if not isinstance(pipeline_state, dict):
        raise UserInputError(f"base checkpoint {ckpt_path} holds no pipeline state; is it a nerfstudio checkpoint?")
    found: dict[str, Tensor] = {}
    for key, value in pipeline_state.items():
        name = key.rsplit(".", 1)[-1]
        # DataParallel checkpoints prefix "module."; very old splatfacto ones lack "gauss_params.".
        if name in GAUSSIAN_KEYS and key.replace("module.", "").replace("_model.", "") in (
            f"gauss_params.{name}",
            name,
        ):
            found[name] = value.detach().clone()
    missing = [k for k in GAUSSIAN_KEYS if k not in found]
    if missing:
        raise UserInputError(
            f"base checkpoint {ckpt_path} has no Gaussian splat (missing {', '.join(missing)}); "
            "it must come from splatfacto or a styleme3d-ns method"
        )
    return found
