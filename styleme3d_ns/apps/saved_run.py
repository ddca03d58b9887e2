"""A finished run opened by `styleme3d-render` and `styleme3d-export`: checked before it loads, its look overridable.

nerfstudio's `eval_setup` reads a run's config.yml and loads its newest checkpoint: a truncated checkpoint fails deep
inside torch's zip reader, and a look the run cannot show (stored in config.yml, e.g. by a hand edit or an older
version) fails once the model has loaded, without saying where the value lives. :func:`opened_run` checks both first,
in one line each, and applies `--pipeline.model.look.*` (:class:`PipelineOverride`): the config.yml it hands to
nerfstudio is then a copy with that look, written into the command's private staging folder, never the run's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.engine.preflight import configured_style_count
from styleme3d_ns.models.checkpoint import read_run_config, run_checkpoint
from styleme3d_ns.models.look import ColourPreservation, LookConfig, Region, check_look


@dataclass
class LookOverride:
    """The look to render or export; a field left unset keeps the run's (its config.yml's `pipeline.model.look`)."""

    style: int | None = None
    """Palette index of the style shown (0 = the first style given). Default: the run's."""
    strength: float | None = None
    """How much of the style to show, in [0, 1]: 0 = the base colours exactly. Default: the run's."""
    blend_to: int | None = None
    """Palette index of a second style to interpolate towards. Default: the run's (undo a stored one with blend 0)."""
    blend: float | None = None
    """Interpolation from style (0) to blend-to (1), in [0, 1]. Default: the run's."""
    preserve_colour: ColourPreservation | None = None
    """base-colour, style-colour or off. Default: the run's."""
    region: Region | None = None
    """Where the style applies: all, inside or outside the box. Default: the run's."""
    box_center: tuple[float, float, float] | None = None
    """Centre of the region box (world units, the viewer's crop center). Default: the run's."""
    box_size: tuple[float, float, float] | None = None
    """Full side lengths of the region box. Default: the run's."""
    box_rotation: tuple[float, float, float] | None = None
    """Roll, pitch, yaw of the region box in radians. Default: the run's."""

    def given(self) -> dict[str, Any]:
        """The fields set on the command line."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass
class ModelOverride:
    """The model options a finished run can be rendered or exported with."""

    look: LookOverride = field(default_factory=LookOverride)
    """The look shown (palette entry, strength, blend, colour, region), as in the viewer's Style look panel."""


@dataclass
class PipelineOverride:
    """`--pipeline.model.look.*`: the options ns-train spells that way."""

    model: ModelOverride = field(default_factory=ModelOverride)
    """The model's options."""


def look_to_show(config: Any, config_path: Path, override: LookOverride) -> LookConfig | None:  # noqa: ANN401
    """The run's stored look with `override` applied, checked against the run's palette; None for a run without a
    look. One line naming the flag for a bad value given here, or config.yml and the flag for a stored one."""
    model = config.pipeline.model
    stored = getattr(model, "look", None)
    given = override.given()
    if stored is None:
        if given:
            raise UserInputError(
                f"{config_path} is a {config.method_name} run, which has no look: leave out --pipeline.model.look.*"
            )
        return None
    styles = configured_style_count(model)
    check_look(replace(LookConfig(), **given), styles)  # the values given here, each with its flag
    look = replace(stored, **given)
    check_look(look, styles, stored_in=config_path)  # what is left wrong came from config.yml
    return look


@contextlib.contextmanager
def opened_run(config_path: Path, override: PipelineOverride, staging: Path) -> Iterator[Path]:
    """Check a finished run before anything loads it and yield the config.yml nerfstudio should load.

    Args:
        config_path: the run's config.yml.
        override: `--pipeline.model.look.*` given on the command line.
        staging: a private folder of the command's (removed by the caller): a copy of config.yml with the
            overridden look goes there. Without an override the run's own config.yml is yielded.

    Raises:
        UserInputError: one line for an unreadable config.yml, a missing or truncated checkpoint, or a look the run
            cannot show.
    """
    config_path = Path(config_path).expanduser()
    config = read_run_config(config_path)
    run_checkpoint(config, config_path)
    look = look_to_show(config, config_path, override.model.look)
    if look is None or look == config.pipeline.model.look:
        yield config_path
        return
    config.pipeline.model.look = look
    copy = Path(staging) / "config.yml"
    copy.write_text(yaml.dump(config), encoding="utf-8")  # nerfstudio finds the checkpoint from the config's fields
    yield copy
