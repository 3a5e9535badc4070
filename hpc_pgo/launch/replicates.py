"""Seed repeats and inner trainings: the sub-runs one configuration becomes, and the seed report.

One configuration (the run, or one sweep entry) is trained, per fold, once per seed of
``seeds=[s0, s1, ...]`` (each a sub-run ``<config dir>/seed_<s>/`` whose config has seed=s; the
configuration directory records the list in ``seeds.json``), and, when it is a candidate of a
sweep entry's ``select:``, also once per inner part j of the inner K-fold CV on each outer fold's
train patients (``<seed dir or config dir>/inner_<j>/``, config inner.fold=j;
hpc_pgo.data.inner). Every sub-run is an ordinary run directory (config.yaml, fold_<k>/), so
every element is claimed, resumed, skipped when finished and reported exactly as a fold is, and
all of them go out as ONE array.

``seed_summary`` aggregates a seeded configuration: per fold the C-index averaged over the
seeds (what paired comparisons use), the C-index of the seed-ensembled hazard (each test
patient's hazard averaged over the seeds' models, then scored by the same protocol), and the
noise floor: the SD across seeds of the row's mean C-index, and the per-fold seed SD
sqrt(mean over folds of the variance over seeds of that fold's C-index).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.errors import PgoError

SEEDS_FILE = "seeds.json"
SEED_DIR = "seed_{seed}"
INNER_DIR = "inner_{part}"

Run = tuple[str | None, Path, DictConfig]  # (label or None, run directory, composed config)

__all__ = [
    "INNER_DIR", "SEEDS_FILE", "expand", "paired_seed_noise", "read_seeds", "seed_contexts",
    "seed_dir", "seed_summary",
]  # fmt: skip


def seed_dir(config_dir: Path, seed: int) -> Path:
    """The sub-run of one seed of a seeded configuration: <config dir>/seed_<s>."""
    return config_dir / SEED_DIR.format(seed=seed)


def seed_contexts(label: str | None, config_dir: Path, cfg: DictConfig) -> list[Run]:
    """The per-seed sub-runs of one configuration: itself when cfg.seeds is null, else one
    (label/seed_<s>, config_dir/seed_<s>, cfg with seed=s) per seed, in the given order."""
    seeds = OmegaConf.select(cfg, "seeds")
    if seeds is None:
        return [(label, config_dir, cfg)]
    out = []
    for seed in seeds:
        directory = seed_dir(config_dir, seed)
        sub = copy.deepcopy(cfg)
        sub.seed = int(seed)
        sub.run_dir = str(directory)
        out.append((f"{label}/{directory.name}" if label else directory.name, directory, sub))
    return out


def expand(label: str | None, config_dir: Path, cfg: DictConfig, inner: bool) -> list[Run]:
    """Every sub-run that trains for one configuration: its seed contexts and, when `inner`
    (a candidate of a select entry), inner.folds inner trainings under each."""
    out = []
    for name, directory, sub in seed_contexts(label, config_dir, cfg):
        out.append((name, directory, sub))
        if inner:
            for part in range(int(cfg.inner.folds)):
                inner_name = INNER_DIR.format(part=part)
                trained = copy.deepcopy(sub)
                trained.inner.fold = part
                trained.run_dir = str(directory / inner_name)
                out.append((f"{name}/{inner_name}" if name else inner_name,
                            directory / inner_name, trained))  # fmt: skip
    return out


def read_seeds(config_dir: Path) -> list[int] | None:
    """The seeds of a seeded configuration directory (its seeds.json), else None."""
    path = config_dir / SEEDS_FILE
    if not path.is_file():
        return None
    try:
        seeds = json.loads(path.read_text(encoding="utf-8"))["seeds"]
    except (ValueError, KeyError, TypeError) as err:
        raise PgoError(f"{path}: not a seeds record ({err}); valid: {{\"seeds\": [0, 1]}}") from err
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise PgoError(f"{path}: 'seeds' must be a non-empty list of integers, not {seeds!r}")
    return seeds


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def seed_summary(
    seeds: Sequence[int],
    per_seed: Mapping[int, Mapping],
    ensemble: Mapping[int, float],
    failed: Mapping[int, str],
    missing: Sequence[int],
) -> dict:
    """The summary.json of a seeded configuration (the keys write_report's have, plus "seeds"
    and "ensemble"). per_seed: seed -> that seed's sub-run summary; ensemble: fold -> C-index of
    the seed-ensembled hazard; failed / missing: folds not finished in every seed."""
    from hpc_pgo.survival import cindex_summary

    folds = sorted(int(k) for k in ensemble)
    fold_c = {s: {int(k): v for k, v in per_seed[s]["c_index"]["per_fold"].items()} for s in seeds}
    averaged = {k: float(np.mean([fold_c[s][k] for s in seeds])) for k in folds}
    variances = [np.var([fold_c[s][k] for s in seeds], ddof=1) for k in folds]
    seed_means = {s: float(np.mean([fold_c[s][k] for k in folds])) for s in seeds if folds}
    branches: dict = {}
    parts = [per_seed[s].get("branches") or {} for s in seeds]
    if parts and all("note" not in p and p for p in parts):
        for part in parts[0]:
            branches[part] = cindex_summary({
                k: float(np.mean([float(p[part]["per_fold"][str(k)]) for p in parts]))
                for k in folds
            })  # fmt: skip
    else:
        branches = {"note": next((p["note"] for p in parts if "note" in p), "no branch parts")}
    first = per_seed[seeds[0]]
    return {
        "c_index": cindex_summary(averaged),
        "n_folds": len(folds),
        "failed_folds": {str(k): failed[k] for k in sorted(failed)},
        "missing_folds": sorted(missing),
        "config_digest": None,
        "folds": {str(k): first["folds"][str(k)] for k in folds if str(k) in first["folds"]},
        "branches": branches,
        "seeds": {
            "seeds": list(seeds),
            "mean_per_seed": {str(s): seed_means.get(s) for s in seeds},
            "per_fold_per_seed": {str(s): {str(k): fold_c[s][k] for k in folds} for s in seeds},
            "sd_of_mean": _sd(list(seed_means.values())) if len(seeds) >= 2 else None,
            "per_fold_seed_sd": (
                float(math.sqrt(np.mean(variances))) if folds and len(seeds) >= 2 else None
            ),
        },
        "ensemble": cindex_summary(dict(ensemble)),
    }


def paired_seed_noise(
    candidate: Mapping, reference: Mapping, folds: Sequence[int]
) -> dict[str, float | bool | None]:
    """The seed noise of a paired difference: per common seed s, Δ_s = mean over `folds` of
    C(candidate, s, k) - C(reference, s, k); {"seed_sd": SD of Δ_s over the seeds,
    "deltas": {s: Δ_s}}; seed_sd None with fewer than two common seeds."""
    a = (candidate.get("seeds") or {}).get("per_fold_per_seed") or {}
    b = (reference.get("seeds") or {}).get("per_fold_per_seed") or {}
    common = [s for s in a if s in b]
    deltas = {}
    for s in common:
        shared = [str(k) for k in folds if str(k) in a[s] and str(k) in b[s]]
        if shared:
            deltas[s] = float(np.mean([a[s][k] - b[s][k] for k in shared]))
    return {"seed_sd": _sd(list(deltas.values())), "deltas": deltas}
