"""Learning-rate schedules whose state holds plain Python floats.

nerfstudio 1.1.5's ExponentialDecayScheduler computes its factor with numpy, so every checkpoint it
touches stores `numpy.float64` learning rates, and torch >= 2.6 (`weights_only=True` by default) then
refuses to load it in `ns-render`, `ns-export`, `ns-eval` and `--load-dir`. Same schedule, plain floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from torch.optim import Optimizer, lr_scheduler


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """nerfstudio's exponential decay with warm-up, computed in Python floats (checkpoints load with weights_only)."""

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """Ramps to `lr_init` over `warmup_steps`, then decays exponentially to `lr_final` at `max_steps`."""

    config: FloatExponentialDecaySchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        cfg = self.config
        lr_final = lr_init if cfg.lr_final is None else cfg.lr_final

        def factor(step: int) -> float:
            if step < cfg.warmup_steps:
                ramp = min(max(step / cfg.warmup_steps, 0.0), 1.0)
                shape = math.sin(0.5 * math.pi * ramp) if cfg.ramp == "cosine" else ramp
                lr = cfg.lr_pre_warmup + (lr_init - cfg.lr_pre_warmup) * shape
            else:
                t = min(max((step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps), 0.0), 1.0)
                lr = math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)
            return float(lr / lr_init)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
