"""nerfstudio's Trainer with our promises kept: inputs checked first, whole checkpoints, clean Ctrl-C, planned resumes.

Our method configs use :class:`StyleTrainerConfig` (its `_target` is :class:`StyleTrainer`); nothing in nerfstudio
is patched. What changes against nerfstudio 1.1.5's `Trainer` (docs/reliability.md):

- `save_config` (called by `ns-train` before training) reads and checks every input first
  (:mod:`styleme3d_ns.engine.preflight`: the data or `.ply`, the base checkpoint, style images, the `--load-dir`
  checkpoint, the look), so a failed attempt prints one line and leaves no run folder; config.yml is written
  atomically.
- `save_checkpoint` writes `step-*.ckpt` whole or not at all: a temporary file in the run folder (never in
  `nerfstudio_models/`, whose every name nerfstudio parses as a step), fsync, rename; then the older ones go.
  A full disk stops the run with one line and the previous checkpoint intact.
- Ctrl-C finishes the current step, saves it, prints one line and exits with status 130; a second Ctrl-C stops at
  once (the last saved checkpoint stays valid).
- `--load-dir` resumes the plan: the run ends at step `--max-num-iterations` counted from the start of training,
  not that many steps after the resumed one. It takes the newest complete checkpoint and refuses a damaged one.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import yaml
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from styleme3d_ns.core.atomic import atomic_path, new_folders, write_text_atomic
from styleme3d_ns.core.errors import exit_on_user_error
from styleme3d_ns.engine.preflight import check_run_inputs, resume_checkpoint

INTERRUPTED_STATUS = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report an interrupted command."""


@dataclass
class StyleTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, training with :class:`StyleTrainer` and checking inputs before config.yml."""

    _target: type = field(default_factory=lambda: StyleTrainer)

    def save_config(self) -> None:
        """Check the run's inputs, then write config.yml atomically; on any failure remove the folders made here."""
        with exit_on_user_error():
            check_run_inputs(self)
            base_dir = self.get_base_dir()
            with new_folders(base_dir):
                CONSOLE.log(f"Saving config to: {base_dir / 'config.yml'}")
                write_text_atomic(base_dir / "config.yml", yaml.dump(self), hint="choose another --output-dir")


class StyleTrainer(Trainer):
    """nerfstudio's Trainer with atomic checkpoints, a one-line Ctrl-C that saves, and resumes that keep the plan."""

    config: StyleTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        self._interrupted = False
        self._completed = False
        self._last_started: int | None = None
        self._planned = config.max_num_iterations

    # ---------------------------------------------------------------- set-up and resume
    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            super().setup(test_mode)
        except KeyboardInterrupt:
            _stop("interrupted while setting up: nothing was trained or saved")

    def _load_checkpoint(self) -> None:
        if self.config.load_dir is not None:
            with exit_on_user_error():
                self._pick_resume_checkpoint()
        super()._load_checkpoint()

    def _pick_resume_checkpoint(self) -> None:
        """Point nerfstudio at the checkpoint to resume (newest complete one, or --load-step) after checking it.

        Accepts the run folder as well as its nerfstudio_models/.
        """
        path = resume_checkpoint(self.config.load_dir, self.config.load_step)
        self.config.load_step = int(path.stem.removeprefix("step-"))
        self.config.load_dir = path.parent

    # ---------------------------------------------------------------- training
    def train(self) -> None:
        """Train to step `max_num_iterations` (counted from the run's start, also after --load-dir)."""
        planned = self._planned = self.config.max_num_iterations
        if self._start_step >= planned:
            CONSOLE.print(
                f"Nothing to train: step {self._start_step - 1} is the last of the run's {planned}-step plan "
                "(--max-num-iterations); raise it to train longer"
            )
            return
        # nerfstudio runs range(start, start + max_num_iterations); the plan ends at `planned` in total
        self.config.max_num_iterations = planned - self._start_step
        previous = self._catch_sigint()
        try:
            super().train()
        except KeyboardInterrupt:
            if self._completed:  # Ctrl-C is how a user closes the viewer nerfstudio keeps open after training
                print("styleme3d: viewer closed; training had finished", file=sys.stderr, flush=True)
                return
            _stop(f"interrupted again during step {self.step}: {self._saved_note()}")
        finally:
            self.config.max_num_iterations = planned
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _catch_sigint(self) -> Any:
        """First Ctrl-C: finish the current step, then stop (nerfstudio's loop checks `stop_training` per step)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            self.stop_training = True

        return signal.signal(signal.SIGINT, on_sigint)

    def train_iteration(self, step: int):  # noqa: ANN201 - nerfstudio's return type
        self._last_started = step  # every step that starts runs to its end: Ctrl-C only stops the loop between steps
        result = super().train_iteration(step)
        if self.pipeline.model.lifecycle.plan_complete(step):  # e.g. after the offline teacher's solve
            CONSOLE.log(f"Step {step}: the model's plan is complete; saving and stopping")
            self.stop_training = True
        return result

    def _after_train(self) -> None:
        if self.stop_training and self._last_started is not None and not self._interrupted:
            self.step = self._last_started  # nerfstudio's loop has moved to the next step before it stops
        if not self._interrupted:
            self._completed = True
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C now closes the viewer at once
            super()._after_train()
            return
        last = self._last_started
        if last is None:
            _stop(f"interrupted before the first step: {self._saved_note()}")
        self.step = last
        self.save_checkpoint(last)
        writer.write_out_storage()
        self.shutdown()
        path = self.checkpoint_dir / f"step-{last:09d}.ckpt"
        _stop(
            f"interrupted after step {last}: saved {path}; resume with --load-dir {self.checkpoint_dir} "
            f"(continues to step {self._planned - 1})"
        )

    def _saved_note(self) -> str:
        from styleme3d_ns.models.checkpoint import newest_checkpoint

        newest = newest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir.is_dir() else None
        return f"the newest checkpoint is {newest}" if newest is not None else "no checkpoint was saved"

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint (same keys and name), written whole or not at all; then older ones go."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        with exit_on_user_error():
            # the temporary file lives in the run folder: nerfstudio_models/ must only ever hold step-*.ckpt names
            hint = f"training stopped; {self._saved_note()}"
            with atomic_path(ckpt_path, temp_dir=self.base_dir, hint=hint) as tmp, tmp.open("wb") as handle:
                torch.save(state, handle)  # through a Python file, so a failed write keeps its errno (disk full)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != ckpt_path:
                    old.unlink()


def _stop(message: str) -> None:
    """One line on stderr and exit status 130 (the checkpoint, if any, is already on disk)."""
    print(f"styleme3d: {message}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_STATUS)
