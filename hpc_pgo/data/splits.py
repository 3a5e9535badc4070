"""Train/test splits of patients (never of image units): a split file, seeded random, or k-fold.

A split is {"train": [patient ids, sorted], "test": [patient ids, sorted]}; a split set is the
list of them. Generated splits depend only on the sorted patient ids and the seed, so the same
cohort gives the same splits on every machine.

- random (Pathomic Fusion's protocol): n independent splits, each a uniform random test set of
  round(test_fraction * N) patients (at least 1, at most N - 1).
- kfold: one seeded permutation cut into k near-equal parts; part i is the test set of fold i.
- file: a table with one row per patient and one column per split (e.g. Pathomic Fusion's
  pnas_splits.csv, columns `Randomization - 1..15`, values Train/Test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from hpc_pgo.data.cohort import read_table, table_columns
from hpc_pgo.errors import PgoError

Split = dict[str, list[str]]


def random_splits(patients: Iterable[str], n: int, test_fraction: float, seed: int) -> list[Split]:
    """`n` seeded random train/test splits of `patients` with a test share of `test_fraction`."""
    ids = np.array(sorted(set(patients)), dtype=object)
    if len(ids) < 2:
        raise PgoError(f"random splits need at least 2 patients, the cohort has {len(ids)}")
    n_test = min(max(1, round(test_fraction * len(ids))), len(ids) - 1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        order = rng.permutation(len(ids))
        out.append({"train": sorted(ids[order[n_test:]]), "test": sorted(ids[order[:n_test]])})
    return out


def kfold_splits(patients: Iterable[str], k: int, seed: int) -> list[Split]:
    """k folds: a seeded permutation of the patients cut into k parts; fold i tests on part i."""
    ids = np.array(sorted(set(patients)), dtype=object)
    if k < 2 or len(ids) < k:
        raise PgoError(f"k-fold splits need 2 <= k <= patients, got k={k} for {len(ids)} patients")
    parts = np.array_split(np.random.default_rng(seed).permutation(len(ids)), k)
    out = []
    for i in range(k):
        test = set(parts[i].tolist())
        out.append(
            {
                "train": sorted(ids[j] for j in range(len(ids)) if j not in test),
                "test": sorted(ids[j] for j in test),
            }
        )
    return out


def read_split_file(section: Mapping, table_patients: Iterable[str]) -> list[Split]:
    """Splits from a table with one row per patient and one column per split.

    `section`: {"path", "patient" (None = first column), "columns" (a template with {k},
    k = 1, 2, ... until a column is absent), "train", "test" (the two cell values)}.
    Every patient of the split file must be in the survival table and the reverse; a cell
    that is neither value is an error naming line and column.
    """
    path = section["path"]
    pcol = section["patient"] or table_columns(path, "split")[0]
    table = read_table(path, pcol, "split")
    columns = []
    while section["columns"].format(k=len(columns) + 1) in table.columns:
        columns.append(section["columns"].format(k=len(columns) + 1))
    if not columns:
        raise PgoError(
            f"split table {path}: no column {section['columns'].format(k=1)!r} "
            f"(template {section['columns']!r})"
        )
    labels = {section["train"]: "train", section["test"]: "test"}
    cells = table[columns].astype(str).apply(lambda c: c.str.strip())
    bad = ~cells.isin(list(labels)).to_numpy()
    if bad.any():
        i, j = (int(a[0]) for a in np.nonzero(bad))
        raise PgoError(
            f"split table {path} line {i + 2} column {columns[j]!r}: value "
            f"{table[columns[j]].iloc[i]!r} is neither {section['train']!r} nor "
            f"{section['test']!r}"
        )
    rows: dict[str, tuple] = {}
    for i, (pid, values) in enumerate(zip(table[pcol], cells.itertuples(index=False), strict=True)):
        if pid in rows and rows[pid][0] != tuple(values):
            raise PgoError(
                f"split table {path}: patient {pid!r} has rows that disagree "
                f"(lines {rows[pid][1] + 2} and {i + 2})"
            )
        rows.setdefault(pid, (tuple(values), i))
    _check_same_patients(set(rows), set(table_patients), path)
    out = []
    for j in range(len(columns)):
        split: Split = {"train": [], "test": []}
        for pid in sorted(rows):
            split[labels[rows[pid][0][j]]].append(pid)
        out.append(split)
    return out


def _check_same_patients(in_file: set[str], in_table: set[str], path: str) -> None:
    """The split file and the survival table must name the same patients (both directions)."""
    only_file, only_table = sorted(in_file - in_table), sorted(in_table - in_file)
    for which, extra, other in (
        ("split table", only_file, "survival table"),
        ("survival table", only_table, "split table"),
    ):
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise PgoError(
                f"split table {path}: {len(extra)} patients in the {which} are not in "
                f"the {other}: {shown}"
            )


def restrict(splits: list[Split], kept: set[str], source: str) -> list[Split]:
    """Splits limited to the patients that are in the shards (dropped patients leave them).

    A split left without train or test patients is an error.
    """
    out = []
    for k, split in enumerate(splits):
        cut = {side: [p for p in split[side] if p in kept] for side in ("train", "test")}
        for side, ids in cut.items():
            if not ids:
                raise PgoError(
                    f"splits from {source}: split {k + 1} of {len(splits)} has no "
                    f"{side} patient left after dropping patients ({len(kept)} "
                    "kept)"
                )
        out.append(cut)
    return out


SPLITTERS: dict[str, Callable[[Mapping, list[str]], list[Split]]] = {
    "random": lambda s, ids: random_splits(ids, s["n"], s["test_fraction"], s["seed"]),
    "kfold": lambda s, ids: kfold_splits(ids, s["n"], s["seed"]),
    "file": lambda s, ids: read_split_file(s["file"], ids),
}


def split_source(section: Mapping) -> str:
    """A one-line description of where the splits come from (stored in the manifest)."""
    if section["kind"] == "file":
        return str(Path(section["file"]["path"]))
    if section["kind"] == "random":
        return (
            f"random: n={section['n']}, test_fraction={section['test_fraction']}, "
            f"seed={section['seed']}"
        )
    return f"kfold: k={section['n']}, seed={section['seed']}"
