"""The stylise phase's colour learning-rate decay (`--pipeline.model.colour-lr-decay`): the SH DC rate falls from its
configured value to `decay` times it by the last stylise step, restarts with each style's turn, and leaves the
view-dependent bands and the reconstruction alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_style_image_turns import TURN, _config, _trainer, coffee_path  # noqa: F401 - coffee_path is a fixture


def _lrs(trainer) -> tuple[float, float]:  # noqa: ANN001
    groups = trainer.optimizers.optimizers
    return groups["features_dc"].param_groups[0]["lr"], groups["features_rest"].param_groups[0]["lr"]


def test_the_colour_rate_falls_to_decay_times_its_value_by_the_last_step(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path
) -> None:
    steps, decay = 2 * TURN + 1, 0.1
    trainer = _trainer(_config(scene_dir, tmp_path, steps, base_checkpoint, (style_path,), colour_lr_decay=decay))
    model, config = trainer.pipeline.model, trainer.optimizers.config
    dc0, rest0 = config["features_dc"]["optimizer"].lr, config["features_rest"]["optimizer"].lr
    seen = []
    for step in range(steps):
        model.step_cb(trainer.optimizers, step)
        seen.append(_lrs(trainer))
    # reference: dc0 * decay ** (step / (steps - 1)), the rest bands constant
    for step, (dc, rest) in enumerate(seen):
        assert dc == pytest.approx(dc0 * decay ** (step / (steps - 1)), rel=1e-12)
        assert rest == rest0
    assert seen[0][0] == pytest.approx(dc0) and seen[-1][0] == pytest.approx(decay * dc0)


def test_each_style_turn_restarts_the_decay(
    scene_dir: Path,
    base_checkpoint: Path,
    style_path: Path,
    coffee_path: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    styles = (style_path, coffee_path)
    trainer = _trainer(_config(scene_dir, tmp_path, 2 * TURN, base_checkpoint, styles, colour_lr_decay=0.25))
    model, dc0 = trainer.pipeline.model, trainer.optimizers.config["features_dc"]["optimizer"].lr
    rates = []
    for step in range(2 * TURN):
        model.step_cb(trainer.optimizers, step)
        rates.append(_lrs(trainer)[0])
    for turn in range(2):
        first, last = rates[turn * TURN], rates[(turn + 1) * TURN - 1]
        assert first == pytest.approx(dc0) and last == pytest.approx(0.25 * dc0), f"turn {turn}: {rates}"


def test_a_constant_rate_is_the_default_and_a_bad_decay_is_one_line(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path
) -> None:
    trainer = _trainer(_config(scene_dir, tmp_path / "a", 4, base_checkpoint, (style_path,)))
    dc0 = trainer.optimizers.config["features_dc"]["optimizer"].lr
    for step in range(4):
        trainer.pipeline.model.step_cb(trainer.optimizers, step)
        assert _lrs(trainer)[0] == dc0
    for bad in (0.0, 1.5):
        with pytest.raises(SystemExit) as err:
            _trainer(_config(scene_dir, tmp_path / "b", 4, base_checkpoint, (style_path,), colour_lr_decay=bad))
        assert f"--pipeline.model.colour-lr-decay must be in (0, 1] (got {bad})" in str(err.value)
        assert "\n" not in str(err.value)
