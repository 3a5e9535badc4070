"""Train/test splits of patients (never of image units): a split file, seeded random, or k-fold.

A split is {"train": [patient ids, sorted], "test": [patient ids, sorted]}; a split set is the
list of them. Generated splits depend only on the sorted patient ids and the seed, so the same
cohort gives the same splits on every machine.

- random (Pathomic Fusion's protocol): n independent splits, each a uniform random test set of
  round(test_fraction * N) patients (at least 1, at most N - 1).
- kfold: one seeded permutation cut into k near-equal parts; part i is the test set of fold i.
- file: a table with one row per patient and one column per split (e.g. Pathomic Fusion's
  pnas_splits.csv, columns `Randomization - 1..15`, values Train/Test; or kirc_splits.csv,
  columns `1..15` beside an unnamed patient column). Columns numbered from 1 or from 0 are both
  read, in order (fold i = the i-th column), unless the spec says which (`first`: a file
  numbered otherwise is an error); a gap, a repeat or another start is an error: no split is
  ever left out or moved to another fold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SplitTable:
    """A split file as read: its split columns in fold order and each patient's side in each.

    columns[i] is the file's column of fold i (the loader's 0-based fold index), whether the
    file numbers its columns from 1 (Pathomic Fusion's `Randomization - 1..15`) or from 0.
    sides: patient -> ("train" | "test", ...), one entry per column.
    """

    path: str
    columns: list[str]
    sides: dict[str, tuple[str, ...]]

    def splits(self, patients: Iterable[str]) -> list[Split]:
        """The folds over `patients` (each must be in the file), patient ids sorted."""
        ids = sorted(set(patients))
        unknown = [p for p in ids if p not in self.sides]
        if unknown:
            raise PgoError(
                f"split table {self.path}: patient {unknown[0]!r} is not in it "
                f"({len(unknown)} such)"
            )
        return [
            {side: [p for p in ids if self.sides[p][j] == side] for side in ("train", "test")}
            for j in range(len(self.columns))
        ]


def _numbers(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:20]))
    return shown + (", ..." if len(values) > 20 else "")


def split_columns(
    path: str, template: str, header: list[str], first: int | None = None
) -> list[str]:
    """The split columns of a split table's `header`, in fold order: the columns that
    `template` (with {k}) names, numbered k = 1..n or k = 0..n-1 (`first`: 1 or 0 when the
    spec says which, None: either). A gap, a repeated number, another start, or a start other
    than `first` is an error naming the columns found and the numbering expected, so that no
    split is ever left out or shifted to another fold."""
    parts = template.split("{k}")
    pattern = re.compile(
        re.escape(parts[0]) + "(?P<k>[0-9]+)" + "(?P=k)".join(re.escape(part) for part in parts[1:])
    )
    numbered = sorted(
        (int(m["k"]), column) for column in header if (m := pattern.fullmatch(column))
    )
    if not numbered:
        shown = ", ".join(map(repr, header[:8])) + (", ..." if len(header) > 8 else "")
        raise PgoError(
            f"split table {path}: no column {template.format(k=1)!r} (template "
            f"{template!r}, k = 1, 2, ...); its columns: {shown}"
        )
    numbers = [k for k, _ in numbered]
    found = f"columns {numbered[0][1]!r} .. {numbered[-1][1]!r}"
    repeated = sorted({k for k in numbers if numbers.count(k) > 1})
    if repeated:
        names = [c for k, c in numbered if k == repeated[0]]
        raise PgoError(
            f"split table {path}: split number {repeated[0]} is given by {len(names)} columns "
            f"({', '.join(map(repr, names))}); valid: one column per split, numbered 1..n "
            "(or 0..n-1)"
        )
    start = numbers[0]
    gaps = sorted(set(range(start, numbers[-1] + 1)) - set(numbers))
    if start not in (0, 1) or gaps:
        why = f"missing {_numbers(gaps)}" if gaps else f"starting at {start}"
        raise PgoError(
            f"split table {path}: {found} are numbered {_numbers(numbers)} ({why}); valid: "
            f"{template!r} numbered 1..n (Pathomic Fusion's pnas_splits.csv: 1..15) or "
            "0..n-1, without gaps"
        )
    if first is not None and start != first:
        # e.g. a Pathomic Fusion file renumbered from 0: its fold k would silently be the
        # paper's split k + 1, so the spec's numbering is a rule, not a guess
        raise PgoError(
            f"split table {path}: {found} are numbered from {start} instead of {first} (the "
            f"spec's splits.file.first: {first}); valid: {template!r} numbered "
            f"{first}..{first + len(numbers) - 1}, or set splits.file.first: {start} "
            f"(--split-first {start}) if this file really numbers its splits from {start}"
        )
    return [column for _, column in numbered]


def read_split_table(section: Mapping, table_patients: Iterable[str] | None = None) -> SplitTable:
    """A split file: one row per patient (repeated rows must agree), one column per split
    (split_columns), each cell the train or the test value (an error names line and column);
    with `table_patients`, it must name exactly those (the survival table's, both directions).

    `section`: {"path", "patient" (None = first column), "columns" (a template with {k}),
    "train", "test" (the two cell values)}.
    """
    path = section["path"]
    header = table_columns(path, "split")
    # the first column by default; unnamed in a file written with pandas' index (Pathomic
    # Fusion's kirc_splits.csv: `,1,2,...,15`), which pandas then calls 'Unnamed: 0'
    pcol = section["patient"] or header[0] or "Unnamed: 0"
    columns = split_columns(path, section["columns"], header, section.get("first"))
    table = read_table(path, pcol, "split")
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
    if table_patients is not None:
        lines = {pid: i + 2 for pid, (_, i) in rows.items()}
        shown = repr(pcol) if header[0] or section["patient"] else "1 (unnamed)"
        _check_same_patients(lines, set(table_patients), path, shown)
    sides = {pid: tuple(labels[v] for v in values) for pid, (values, _) in rows.items()}
    return SplitTable(str(path), columns, sides)


def read_split_file(section: Mapping, table_patients: Iterable[str]) -> list[Split]:
    """Splits from a split file (read_split_table); it must name exactly the survival
    table's patients (both directions)."""
    table = read_split_table(section, table_patients)
    return table.splits(table.sides)


def _check_same_patients(
    in_file: Mapping[str, int], in_table: set[str], path: str, column: str
) -> None:
    """The split file (patient -> its line) and the survival table must name the same
    patients, both directions; an error names them (a patient of the file with its line and
    `column`, the patient column as shown to the user)."""
    only_file = sorted(set(in_file) - in_table, key=lambda p: in_file[p])
    only_table = sorted(in_table - set(in_file))
    valid = "valid: a split file naming exactly the survival table's patients"
    if only_file:
        shown = ", ".join(only_file[:5]) + (", ..." if len(only_file) > 5 else "")
        raise PgoError(
            f"split table {path}: {len(only_file)} patients in the split table are not in the "
            f"survival table: {shown} (the first at line {in_file[only_file[0]]}, column "
            f"{column}); {valid}"
        )
    if only_table:
        shown = ", ".join(only_table[:5]) + (", ..." if len(only_table) > 5 else "")
        raise PgoError(
            f"split table {path}: {len(only_table)} patients in the survival table are not in "
            f"the split table: {shown}; {valid}"
        )


def restrict(
    splits: list[Split], kept: set[str], source: str, columns: list[str] | None = None
) -> list[Split]:
    """Splits limited to the patients that are in the shards (dropped patients leave them).

    A split left without train or test patients is an error naming the fold (and the split
    file's column of it, `columns[k]`, when given).
    """
    out = []
    for k, split in enumerate(splits):
        cut = {side: [p for p in split[side] if p in kept] for side in ("train", "test")}
        for side, ids in cut.items():
            if not ids:
                column = f" (column {columns[k]!r})" if columns else ""
                raise PgoError(
                    f"splits from {source}: fold {k}{column} of {len(splits)} has no "
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


def recompute_splits(
    record: Mapping, section: Mapping, patients: Iterable[str]
) -> tuple[list[Split] | None, str]:
    """The folds that a build's splits `section` (the manifest's spec.splits) gives over
    `patients`, and a phrase naming where they come from; for a split file only while it is
    the file of the build (its sha256 equals record["sha256"], the manifest's splits record),
    else (None, why not). Generated splits depend only on the ids and the seed: always."""
    if section["kind"] != "file":
        recipe = f"the recipe ({split_source(section)})"
        return SPLITTERS[section["kind"]](section, sorted(patients)), recipe
    from hpc_pgo.data.members import sha256_file

    path = Path(section["file"]["path"])
    if record.get("sha256") is None:
        return None, f"the manifest records no sha256 of the split file {path}"
    if not path.is_file():
        return None, f"the split file {path} is not there any more"
    if sha256_file(path) != record["sha256"]:
        return None, f"the split file {path} changed since the build"
    table = read_split_table(section["file"])
    return table.splits(patients), f"the split file {path}"
