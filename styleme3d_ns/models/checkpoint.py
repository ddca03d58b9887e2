"""Reading a base splat from a splatfacto (or styleme3d-ns) checkpoint, read-only, checked in full before use."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.core.safe_load import load_data_only

GAUSSIAN_KEYS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
# trailing shape of each per-Gaussian tensor (features_rest's band count depends on the SH degree)
_WIDTHS = {"means": (3,), "scales": (3,), "quats": (4,), "features_dc": (3,), "opacities": (1,)}
_DAMAGED = "the checkpoint is damaged or not a splatfacto splat: re-export the base"
DROP_NON_FINITE_FLAG = "--pipeline.model.drop-non-finite-gaussians"
"""The model option that lets `load_gaussians(..., drop_non_finite=True)` drop NaN/inf Gaussians."""


def newest_checkpoint(folder: Path) -> Path | None:
    """The highest-step `step-*.ckpt` in `folder` or in its `nerfstudio_models/` (a run folder), else None.

    Only complete names count: nerfstudio parses every name in the folder as a step, and our writers never leave
    another name there (docs/reliability.md).
    """
    folder = Path(folder)
    if (folder / "nerfstudio_models").is_dir():
        folder = folder / "nerfstudio_models"
    steps = []
    for ckpt in folder.glob("step-*.ckpt"):
        digits = ckpt.stem.removeprefix("step-")
        if digits.isdigit():
            steps.append((int(digits), ckpt))
    return max(steps)[1] if steps else None


def check_complete(path: Path, fix: str) -> Path:
    """`path` if it is a whole checkpoint (torch's zip archive with its closing directory), else a one-line
    UserInputError ending in `fix`. A checkpoint cut short (a full disk under an older writer, a partial copy) has no
    closing directory: torch would fail deep inside its zip reader."""
    if not zipfile.is_zipfile(path):
        raise UserInputError(f"checkpoint {path} is truncated or damaged (a full disk under an older writer?); {fix}")
    return path


def read_run_config(config_path: Path) -> Any:  # noqa: ANN401 - nerfstudio's TrainerConfig
    """A finished run's config.yml, read as nerfstudio's `eval_setup` reads it; one line if it cannot be."""
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    config_path = Path(config_path).expanduser()
    if not config_path.is_file():
        raise UserInputError(f"run config {config_path} does not exist; pass the config.yml of a finished ns-train run")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)  # noqa: S506 - nerfstudio's own format
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError, ImportError) as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise UserInputError(
            f"{config_path} is not a readable run config ({reason}); pass the config.yml of an ns-train run"
        ) from None
    if not isinstance(config, TrainerConfig):
        raise UserInputError(f"{config_path} is not a nerfstudio run config; pass the config.yml ns-train wrote")
    return config


def run_checkpoint(config: Any, config_path: Path) -> Path:  # noqa: ANN401 - nerfstudio's TrainerConfig
    """The checkpoint nerfstudio's `eval_setup` loads for a finished run (the newest step in its checkpoint folder),
    checked whole before anything loads it; one line naming it and the fix if it is missing or truncated."""
    folder = config.get_checkpoint_dir()
    newest = newest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        raise UserInputError(
            f"the run of {config_path} has no step-*.ckpt in {folder}; train it first, or run this command from the "
            "folder ns-train ran in (the run's output_dir is relative to it)"
        )
    older = sorted((c for c in folder.glob("step-*.ckpt") if c != newest and zipfile.is_zipfile(c)), reverse=True)
    fix = f"move it out of {folder} to use {older[0].name}" if older else "train the run again (no whole one is left)"
    return check_complete(newest, fix)


def resolve_checkpoint(path: Path) -> Path:
    """Find the checkpoint file a user meant.

    Accepts a `step-*.ckpt` file, a `nerfstudio_models/` folder, a run folder holding one, or the
    run's `config.yml`. The newest step wins, as in `ns-train --load-dir`.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        path = path.parent
    if path.is_dir():
        newest = newest_checkpoint(path)
        if newest is None:
            raise UserInputError(
                f"no step-*.ckpt checkpoint in {path}; pass --pipeline.model.base-checkpoint "
                "<run>/nerfstudio_models/step-000030000.ckpt (say) from a finished splatfacto or styleme3d-ns run"
            )
        return newest
    if not path.exists():
        raise UserInputError(
            f"base checkpoint {path} does not exist; pass --pipeline.model.base-checkpoint with the .ckpt file "
            "(or run folder) of a splatfacto run, or omit it to reconstruct from the data first"
        )
    return path


def sh_degree_of(features_rest_shape: tuple[int, ...]) -> int | None:
    """SH degree d of `features_rest` `[N, (d+1)^2 - 1, 3]`, or None when the band count is no such number."""
    bands = features_rest_shape[1] + 1
    degree = round(bands**0.5) - 1
    return degree if (degree + 1) ** 2 == bands else None


def _shape(tensor: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in tensor.shape) + "]"


def _check_shapes(found: dict[str, Tensor], where: str) -> None:
    """Every tensor floating point, one row per Gaussian, widths as splatfacto stores them; one line if not."""
    for key, value in found.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise UserInputError(f"{where}: {key} is {kind}, not a float tensor; {_DAMAGED}")
    rows = {key: value.shape[0] if value.dim() else 0 for key, value in found.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{k} {n}" for k, n in rows.items())
        raise UserInputError(f"{where}: the tensors disagree on the number of Gaussians ({counts}); {_DAMAGED}")
    if rows["means"] == 0:
        raise UserInputError(f"{where} holds no Gaussians (0 rows); point it at a trained splat")
    rest = found["features_rest"]
    for key, expected in _WIDTHS.items():
        value = found[key]
        if tuple(value.shape[1:]) != expected:
            want = ", ".join(["N", *(str(d) for d in expected)])
            raise UserInputError(f"{where}: {key} is {_shape(value)}, expected [{want}]; {_DAMAGED}")
    if rest.dim() != 3 or rest.shape[2] != 3 or sh_degree_of(tuple(rest.shape)) is None:
        raise UserInputError(
            f"{where}: features_rest is {_shape(rest)}, expected [N, (d+1)^2-1, 3] for an SH degree d; {_DAMAGED}"
        )


def _check_sh_degree(found: dict[str, Tensor], sh_degree: int | None, where: str) -> None:
    degree = sh_degree_of(tuple(found["features_rest"].shape))
    if sh_degree is not None and degree != sh_degree:
        raise UserInputError(
            f"{where} has SH degree {degree} (features_rest {_shape(found['features_rest'])}) but "
            f"--pipeline.model.sh-degree is {sh_degree}; pass --pipeline.model.sh-degree {degree}"
        )


def _finite_rows(found: dict[str, Tensor]) -> tuple[Tensor, dict[str, int]]:
    """`[N]` bool, True where every value of the Gaussian is finite; and the count of bad rows per tensor."""
    keep = torch.ones(found["means"].shape[0], dtype=torch.bool)
    bad: dict[str, int] = {}
    for key, value in found.items():
        finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
        if not finite.all():
            bad[key] = int((~finite).sum())
        keep &= finite
    return keep, bad


def load_gaussians(path: Path, *, sh_degree: int | None = None, drop_non_finite: bool = False) -> dict[str, Tensor]:
    """Gaussian parameters of a checkpoint, on CPU, checked in full, without modifying the file.

    Args:
        path: A `step-*.ckpt`, its `nerfstudio_models/` folder, the run folder or its `config.yml`.
        sh_degree: The SH degree the model will render with; a checkpoint of another degree is a one-line error
            naming the degree to pass. None: inferred from `features_rest`.
        drop_non_finite: Drop Gaussians with a NaN/inf anywhere (with a warning) instead of refusing them.

    Returns:
        `{"means": [N, 3], "scales": [N, 3] (log), "quats": [N, 4], "features_dc": [N, 3],
        "features_rest": [N, (d+1)^2-1, 3], "opacities": [N, 1] (logit)}`.

    Raises:
        UserInputError: one line when the file is unreadable, holds no splat, its tensors disagree with each other or
            with `sh_degree`, or (without `drop_non_finite`) some Gaussians are not finite.
    """
    ckpt_path = resolve_checkpoint(path)
    where = f"base checkpoint {ckpt_path}"
    try:
        # weights_only: a checkpoint is data, never code to run (torch's default since 2.6)
        state = load_data_only(ckpt_path)
    except Exception as err:  # noqa: BLE001 - torch.load on arbitrary bytes raises almost any type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"cannot read {where} ({reason[:120]}); it is corrupt or not a torch checkpoint: "
            "re-export it or point --pipeline.model.base-checkpoint at another step-*.ckpt"
        ) from None
    pipeline_state = state.get("pipeline", state) if isinstance(state, dict) else None
    if not isinstance(pipeline_state, dict):
        raise UserInputError(f"{where} holds no pipeline state; is it a nerfstudio checkpoint?")
    found: dict[str, Tensor] = {}
    for key, value in pipeline_state.items():
        name = key.rsplit(".", 1)[-1]
        # DataParallel checkpoints prefix "module."; very old splatfacto ones lack "gauss_params.".
        if name in GAUSSIAN_KEYS and key.replace("module.", "").replace("_model.", "") in (
            f"gauss_params.{name}",
            name,
        ):
            found[name] = value.detach().clone() if isinstance(value, Tensor) else value
    missing = [k for k in GAUSSIAN_KEYS if k not in found]
    if missing:
        raise UserInputError(
            f"{where} has no Gaussian splat (missing {', '.join(missing)}); "
            "it must come from splatfacto or a styleme3d-ns method"
        )
    found = {k: found[k] for k in GAUSSIAN_KEYS}
    _check_shapes(found, where)
    _check_sh_degree(found, sh_degree, where)
    keep, bad = _finite_rows(found)
    if bad:
        dropped = int((~keep).sum())
        detail = ", ".join(f"{k} {n}" for k, n in bad.items())
        if not drop_non_finite:
            raise UserInputError(
                f"{where} has {dropped} of {keep.numel()} Gaussians with NaN/inf values ({detail}); pass "
                f"{DROP_NON_FINITE_FLAG} True to drop them, or re-train the base"
            )
        if dropped == keep.numel():
            raise UserInputError(f"{where}: every Gaussian has NaN/inf values ({detail}); re-train the base")
        warnings.warn(
            f"{where}: dropped {dropped} of {keep.numel()} Gaussians with NaN/inf values ({detail})",
            UserWarning,
            stacklevel=2,
        )
        found = {k: v[keep] for k, v in found.items()}
    return found
