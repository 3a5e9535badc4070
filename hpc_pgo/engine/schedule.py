"""Learning-rate schedules as multiplicative factors of the optimizer step, for torch's LambdaLR.

The engine passes ``LambdaLR(optimizer, LrSchedule(...))`` to ``deepspeed.initialize``, which
steps it once after every optimizer step, so the factor is a function of the optimizer step
s = 0, 1, 2, ... (s counts steps already taken). Epoch e = s // steps_per_epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hpc_pgo.errors import PgoError


def linear_factor(epoch: int, epochs: int) -> float:
    """Pathomic Fusion's linear decay, constant within an epoch: 1 - e / (epochs + 1).

    Epoch 0 trains at the full rate, the last epoch (e = epochs - 1) at 2 / (epochs + 1); the
    rate would reach 0 one epoch after the end.
    """
    return 1.0 - min(epoch, epochs) / (epochs + 1)


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine annealing to 0 over the run, per step: (1 + cos(pi * s / total)) / 2."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "linear": lambda step, epochs, spe: linear_factor(step // spe, epochs),
    "cosine": lambda step, epochs, spe: cosine_factor(step, epochs * spe),
    "constant": lambda step, epochs, spe: 1.0,
}


@dataclass(frozen=True)
class LrSchedule:
    """Callable step -> lr factor for LambdaLR; a dataclass so LambdaLR's state_dict can save it.

    name: one of SCHEDULES; epochs: number of training epochs; steps_per_epoch: optimizer steps
    in one epoch.
    """

    name: str
    epochs: int
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise PgoError(
                f"train.lr_schedule={self.name!r} is not a schedule; valid: {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1:
            raise PgoError(f"train.epochs={self.epochs} must be a positive integer")
        if self.steps_per_epoch < 1:
            raise PgoError(f"steps_per_epoch={self.steps_per_epoch} must be a positive integer")

    def __call__(self, step: int) -> float:
        return SCHEDULES[self.name](step, self.epochs, self.steps_per_epoch)
