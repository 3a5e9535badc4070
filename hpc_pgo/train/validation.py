"""Validation inside a fold's training patients: the held-out patients and the epoch they choose.

With ``train.val_fraction = f > 0`` a fold holds out about f of its TRAIN patients (never test
patients): they are not trained on, do not enter the omics z-score statistics, and are scored
after every epoch. The fold's test predictions come from the weights of the epoch with the best
validation C-index (``choose_epoch``), not from the final weights. f = 0 is no validation.

The split (``validation_patients``) is by patient, so every unit of a patient is on one side,
stratified by event (deaths and censored patients are held out in the same proportion), and a
fixed function of (train patients, their events, f, seed, fold): the same on every rank, on
every resume, and for every configuration of a sweep that shares seed and splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hpc_pgo.errors import PgoError

__all__ = ["choose_epoch", "validation_patients"]


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
