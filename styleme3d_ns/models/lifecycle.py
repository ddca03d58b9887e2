"""A guided splat's run as one inspectable state: its phase, its plan, and the transitions between them.

A run goes through at most two phases (:data:`Phase`):

- ``reconstruct``: plain splatfacto (photometric loss, densification) from the data, when there is no base splat;
- then the method's own phase (its *target*): ``stylise`` (paper 000 "optimizing only RGB attributes preserves
  geometric integrity"; paper 002's fine-tune mode): geometry frozen, only colours train; or ``generate`` (paper
  001, paper 002's joint mode): every parameter trains against the method's terms, with densification.

Transitions, each with one entry point (the model reacts through the two hooks it passes in):

=====================  =================================================  ==========================================
transition             when                                               what follows
=====================  =================================================  ==========================================
``__init__``           the model is built                                 ``generate`` for a generating method;
                                                                          ``stylise`` from a base splat (geometry
                                                                          frozen, a fresh start owed); else
                                                                          ``reconstruct``
``loaded(step)``       a checkpoint was loaded (``ns-render``, resume)    its step decides the phase; its colours are
                                                                          what its run made: no fresh start owed
``set_plan(...)``      training is set up and the terms are built         the plan is fixed; an owed start runs
``advance(step)``      before every training step                         reconstruction ends at
                                                                          ``reconstruct_steps``: ``stylise``, and the
                                                                          fresh start runs at once
``end_after(step)``    the method's plan ends early (the teacher's solve) ``plan_complete`` tells the trainer
=====================  =================================================  ==========================================

The *fresh start* is the method's one-off work when colours first train on a fixed splat (the offline teacher's
solve, the colour pre-match): it needs both the frozen geometry and the built terms, and it never runs again for a
run resumed from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from styleme3d_ns.models.palette import StyleTurns

Phase = Literal["reconstruct", "stylise", "generate"]
"""reconstruct: splatfacto from the photos; stylise: colours of a fixed splat; generate: everything, method terms."""


@dataclass(frozen=True)
class Plan:
    """What the run's steps do, fixed when training is set up."""

    stylise_start: int
    """First step of the stylise phase: 0 from a base splat, else the reconstruction's length."""
    end: int | None
    """The trainer's planned last step + 1 (--max-num-iterations); None when not known."""
    turns: StyleTurns | None = None
    """Several styles trained one after another over the stylise steps, or None."""
    done_after: int | None = None
    """The method's plan is complete after this step (the trainer saves and stops); None: run to `end`."""

    def stylise_progress(self, step: int, turn: int) -> float:
        """Progress in [0, 1] through the stylise steps at `step`, or through style turn `turn` when styles train in
        turn: 0 at the phase's (turn's) first step, 1 at its last."""
        if self.end is None:
            return 0.0
        start, end = (self.stylise_start, self.end) if self.turns is None else self.turns.turn_span(turn)
        return min(max((step - start) / max(1, end - 1 - start), 0.0), 1.0)


class Lifecycle:
    """The run's phase, plan and owed fresh start; see the module docstring for the transitions.

    Args:
        target: the method's phase after reconstruction, or None when the run has nothing to stylise with (it stays
            a reconstruction whose checkpoint can serve as a base).
        from_base: the splat was read from a base (checkpoint or .ply) rather than initialised for reconstruction.
        reconstruct_steps: steps of reconstruction before a stylise target starts (ignored from a base).
        freeze: the model's reaction to entering ``stylise``: freeze geometry; `fresh` also captures the base
            colours (not when a checkpoint's stylised state is loaded).
        fresh_start: the method's one-off work when colours first train on the fixed splat.
    """

    def __init__(
        self,
        target: Phase | None,
        *,
        from_base: bool,
        reconstruct_steps: int,
        freeze: Callable[[bool], None],
        fresh_start: Callable[[], None],
    ) -> None:
        self.target, self.from_base, self.reconstruct_steps = target, from_base, reconstruct_steps
        self._freeze, self._fresh_start = freeze, fresh_start
        self.phase: Phase = "generate" if target == "generate" else "reconstruct"
        self.plan: Plan | None = None
        self.start_owed = False
        if from_base and self.phase == "reconstruct":  # a base is never reconstructed again
            self._enter_stylise(fresh=True)

    def __repr__(self) -> str:
        return f"Lifecycle(phase={self.phase!r}, plan={self.plan!r}, start_owed={self.start_owed})"

    # ---------------------------------------------------------------- questions
    @property
    def geometry_frozen(self) -> bool:
        """True in the stylise phase: means, scales, quats (and opacities unless --train-opacity) do not move."""
        return self.phase == "stylise"

    @property
    def stylise_start(self) -> int:
        """First step of the stylise phase: 0 from a base splat, else the reconstruction's length."""
        return 0 if self.from_base else self.reconstruct_steps

    def plan_complete(self, step: int) -> bool:
        """Whether the method's plan ended with `step` (the trainer then saves and stops)."""
        done = self.plan.done_after if self.plan is not None else None
        return done is not None and step >= done

    # ---------------------------------------------------------------- transitions
    def loaded(self, step: int) -> None:
        """A checkpoint of step `step` was loaded: past ``reconstruct_steps`` its geometry is already fixed, and its
        colours are what its run made of them (no fresh start: no teacher, no pre-match)."""
        self.start_owed = False
        if self.phase == "reconstruct" and self.target == "stylise" and step >= self.reconstruct_steps:
            self._enter_stylise(fresh=False)

    def set_plan(self, end: int | None, turns: StyleTurns | None = None) -> None:
        """Training is set up (terms built): fix the plan, then run a fresh start owed since the base was read."""
        self.plan = Plan(self.stylise_start, end, turns)
        self._run_owed_start()

    def advance(self, step: int) -> None:
        """Before training step `step`: reconstruction ends at ``reconstruct_steps`` when the target is stylise."""
        if self.phase == "reconstruct" and self.target == "stylise" and step >= self.reconstruct_steps:
            self._enter_stylise(fresh=True)
            self._run_owed_start()

    def end_after(self, step: int) -> None:
        """The method's plan is complete after `step` (e.g. once the offline teacher has solved the colours)."""
        if self.plan is None:
            raise RuntimeError("end_after before the plan exists: call it from the fresh start or a training step")
        self.plan = replace(self.plan, done_after=step)

    def _enter_stylise(self, *, fresh: bool) -> None:
        self.phase = "stylise"
        self.start_owed = fresh
        self._freeze(fresh)

    def _run_owed_start(self) -> None:
        if self.start_owed and self.plan is not None:
            self.start_owed = False
            self._fresh_start()
