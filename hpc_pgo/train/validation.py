"""Validation inside a fold's training patients: the held-out patients and the epoch they choose.

With ``train.val_fraction = f > 0`` a fold holds out about f of its TRAIN patients (never test
patients): they are not trained on, do not enter the omics z-score statistics, and are scored
after every epoch. The fold's test predictions come from the weights of the epoch with the best
validation C-index (``choose_epoch``), not from the final weights. f = 0 is no validation.

The split (``validation_patients``) is by patient, so every unit of a patient is on one side,
stratified by event (deaths and censored patients are held out in the same proportion), and a
fixed function of (train patients, their events, f, seed, fold): the same on every rank, on
every resume, and for every configuration of a sweep that shares seed and splits.

``EpochSelection`` is the fold loop's record of it (hpc_pgo.train.fold): the curve so far, the
chosen epoch and its weights, carried in every checkpoint so that a resumed fold chooses as an
uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc_pgo.errors import PgoError

if TYPE_CHECKING:
    import torch

    from hpc_pgo.data.folds import FoldData
    from hpc_pgo.engine.engine import Engine

__all__ = ["EpochSelection", "choose_epoch", "validation_patients"]


def validation_patients(
    train: Sequence[str], events: Mapping[str, int], fraction: float, *, seed: int, fold: int
) -> tuple[str, ...]:
    """The train patients held out for validation (sorted ids); () when fraction is 0.

    train: the fold's train patient ids; events: patient -> 1 (death observed) or 0 (censored),
    for every train patient (the manifest's record). Per stratum s of event (0, then 1), its
    sorted patients are permuted by numpy's PCG64 seeded with (seed, fold, s) and the first
    n_val(s) = round(fraction * n_s) are held out, but at least one patient of each stratum
    stays on each side (a stratum of one patient stays in training). Raises PgoError when
    fraction is outside [0, 1) or when no death would be held out (a validation C-index needs
    one), naming what was found.
    """
    if not 0.0 <= fraction < 1.0:
        raise PgoError(f"train.val_fraction={fraction!r} is not valid; valid: a number in [0, 1)")
    if fraction == 0.0:
        return ()
    missing = [p for p in train if p not in events]
    if missing:
        raise PgoError(
            f"fold {fold}: train patient {missing[0]!r} has no event record ({len(missing)} such)"
        )
    held: list[str] = []
    for stratum in (0, 1):
        members = sorted(p for p in train if int(events[p]) == stratum)
        if len(members) < 2:
            continue
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        order = np.random.default_rng([seed, fold, stratum]).permutation(len(members))
        held += [members[i] for i in order[:count]]
    if not any(int(events[p]) == 1 for p in held):
        deaths = sum(int(events[p]) == 1 for p in train)
        raise PgoError(
            f"fold {fold}: train.val_fraction={fraction} holds out no death ({deaths} death(s) "
            f"among {len(train)} train patients); the validation C-index needs one; valid: a "
            "cohort with at least 2 deaths per fold's train split, or train.val_fraction=0"
        )
    return tuple(sorted(held))


def choose_epoch(curve: Sequence[float | None]) -> int:
    """The epoch (0-based index into curve) with the highest validation C-index; the earliest of
    equal ones (fewer epochs: the simpler model). None or NaN entries (no comparable pair) never
    win; when every entry is such, the last epoch (the final weights). Raises PgoError on an
    empty curve."""
    if not curve:
        raise PgoError("no validation score recorded; valid: at least one finished epoch")
    best, best_value = len(curve) - 1, -math.inf
    for epoch, value in enumerate(curve):
        if value is not None and math.isfinite(value) and value > best_value:
            best, best_value = epoch, float(value)
    return best


class EpochSelection:
    """The validation curve and the weights of the epoch it chooses.

    record(epoch, value, engine) after each epoch: appends value to the curve and, when
    choose_epoch picks this epoch, keeps a CPU copy of the module's weights. state() is what a
    checkpoint carries (the curve, the chosen epoch and step, those weights), restore() reads it
    back, so a resumed fold continues the same curve and chooses the same epoch. Disabled
    (enabled=False, no validation patients), state() is {} and restore() does nothing.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.curve: list[float | None] = []
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def record(self, epoch: int, value: float | None, engine: Engine) -> None:
        if epoch != len(self.curve):
            raise PgoError(f"validation of epoch {epoch} after {len(self.curve)} recorded epochs")
        self.curve.append(value)
        if choose_epoch(self.curve) == epoch:
            self.best_epoch, self.best_step = epoch, engine.global_step
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in engine.ds.module.state_dict().items()
            }

    def state(self) -> dict:
        if not self.enabled:
            return {}
        return {
            "val_cindex": list(self.curve),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_state": self.best_state,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.curve = list(state.get("val_cindex", []))
        self.best_epoch, self.best_step = state.get("best_epoch"), state.get("best_step")
        self.best_state = state.get("best_state")

    def metrics(self, data: FoldData) -> dict:
        """metrics.json's validation keys."""
        manifest = data.manifest["patients"]
        return {
            "chosen_epoch": self.best_epoch,
            "chosen_step": self.best_step,
            "val_cindex": self.curve[self.best_epoch],
            "val_cindex_per_epoch": list(self.curve),
            "n_val_patients": len(data.val),
            "n_val_units": sum(int(manifest[p]["units"]) for p in data.val),
            "n_val_events": sum(int(manifest[p]["event"]) for p in data.val),
        }
