"""Inner cross-validation inside one outer fold: the partition of its TRAIN patients.

Nested selection (a sweep entry's ``select:``, hpc_pgo.launch.selection) scores each candidate
configuration by K-fold CV on the outer fold's train patients only, so that nothing is chosen on
the outer test patients. An inner training of part j trains on the outer train patients outside
part j and is scored on part j; the outer test patients are in no inner split, neither side.

``InnerFold`` is the fold index such a training is given: an ``int`` equal to the outer fold
(so seeds, directory names and log lines stay those of the outer fold) that also carries
(parts, part, seed). ``open_fold`` (hpc_pgo.data.folds) turns it into the inner split, so every
reader that opens the fold (the loader, the standardizer, the CoxPH reference) sees the same
patients without being told.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.errors import PgoError

__all__ = ["InnerFold", "fold_of", "inner_parts"]


class InnerFold(int):
    """Outer fold `int(self)`, inner part `part` of `parts` (partition seeded by `seed`)."""

    parts: int
    part: int
    seed: int

    def __new__(cls, fold: int, parts: int, part: int, seed: int = 0) -> InnerFold:
        if not (isinstance(parts, int) and parts >= 2 and 0 <= part < parts):
            raise PgoError(f"inner part {part!r} of {parts!r}; valid: parts >= 2, 0 <= part < parts")
        self = super().__new__(cls, fold)
        self.parts, self.part, self.seed = int(parts), int(part), int(seed)
        return self

    def __getnewargs__(self) -> tuple[int, int, int, int]:  # pickled into loader workers
        return int(self), self.parts, self.part, self.seed

    def __str__(self) -> str:  # "3", as the outer fold: fold_<k> directories, log lines
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"InnerFold({int(self)}, parts={self.parts}, part={self.part}, seed={self.seed})"


def fold_of(cfg: DictConfig, fold: int) -> int:
    """The fold index a fold entry opens: InnerFold when cfg.inner.fold is set, else `fold`."""
    part = OmegaConf.select(cfg, "inner.fold")
    if part is None:
        return fold
    return InnerFold(int(fold), int(cfg.inner.folds), int(part), int(cfg.inner.seed))


def inner_parts(
    train: Sequence[str], events: Mapping[str, int], parts: int, *, seed: int, fold: int
) -> list[tuple[str, ...]]:
    """The K = `parts` inner parts of an outer fold's train patients (each sorted), disjoint and
    covering `train`: per stratum of event (0, then 1) its sorted patients are permuted by numpy's
    PCG64 seeded with (seed, fold, stratum) and dealt to the parts in turn, so every part holds
    its share of deaths (within one). PgoError when a part would hold no death (an inner C-index
    needs one) or fewer than 2 patients.
    """
    missing = [p for p in train if p not in events]
    if missing:
        raise PgoError(
            f"fold {fold}: train patient {missing[0]!r} has no event record ({len(missing)} such)"
        )
    out: list[list[str]] = [[] for _ in range(parts)]
    offset = 0
    for stratum in (0, 1):
        members = sorted(p for p in train if int(events[p]) == stratum)
        order = np.random.default_rng([seed, fold, stratum]).permutation(len(members))
        for i, j in enumerate(order):
            out[(offset + i) % parts].append(members[j])
        offset += len(members)  # the next stratum starts where this one left off
    deaths = sum(int(events[p]) == 1 for p in train)
    for j, part in enumerate(out):
        dead = sum(int(events[p]) == 1 for p in part)
        if len(part) < 2 or not dead:
            raise PgoError(
                f"fold {fold}: inner part {j} of {parts} holds {len(part)} patient(s), {dead} "
                f"death(s) ({deaths} death(s) among {len(train)} train patients); an inner "
                "C-index needs two patients and a death; valid: a smaller inner.folds"
            )
    return [tuple(sorted(part)) for part in out]
