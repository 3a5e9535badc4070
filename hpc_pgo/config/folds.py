"""Fold selections: `folds=all`, `folds=0-14`, `folds=0,3,7`, `folds=3`, or a list, as a sorted list.

Folds are 0-based split indices of the shard set's manifest: with n_splits splits the valid
folds are 0 .. n_splits - 1. A text selection is comma-separated items, each a fold `k` or an
inclusive ascending range `a-b`; items may overlap (each fold is kept once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hpc_pgo.errors import PgoError

_ITEM = re.compile(r"(\d+)(?:-(\d+))?")
_EXAMPLES = "use e.g. folds=0-14, folds=0,3,7, folds=3 or folds=all"


def parse_folds(spec: str | int | Sequence[int] | None, n_splits: int) -> list[int]:
    """The folds a selection names, sorted ascending without repeats, each checked against n_splits.

    spec: "all" | "a-b" (inclusive) | "i,j,k" | mixtures like "0-3,7" | an int | a sequence of ints.
    n_splits: number of splits in the cohort (>= 1); valid folds are 0 .. n_splits - 1.
    Raises PgoError naming the selection and the valid range when the selection is malformed,
    a range is descending, or a fold is out of range.
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise PgoError(f"n_splits={n_splits!r} is invalid; valid: an integer >= 1")
    if isinstance(spec, str) and "".join(spec.split()).lower() == "all":
        return list(range(n_splits))
    folds = fold_selection(spec)
    outside = [k for k in folds if k >= n_splits]
    if outside:
        noun = "fold" if len(outside) == 1 else "folds"
        raise PgoError(
            f"folds={_shown(spec)}: {noun} {format_folds(outside)} out of range for {n_splits} "
            f"splits (valid {format_folds(range(n_splits))})"
        )
    return folds


def fold_selection(spec: str | int | Sequence[int] | None) -> list[int]:
    """The folds a selection names ("a-b", "i,j", mixtures, an int, a sequence; not "all"),
    sorted without repeats, NOT checked against a number of splits (a run directory's folds are
    checked where they are read). PgoError as parse_folds for a malformed selection."""
    return sorted(set(_fold_items(spec)))


def format_folds(folds: Iterable[int]) -> str:
    """Compact text of a fold set, the inverse of parse_folds: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    runs: list[list[int]] = []
    for k in sorted(set(folds)):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _fold_items(spec: str | int | Sequence[int] | None) -> list[int]:
    """Every fold a selection names, unchecked against n_splits (repeats and order kept)."""
    if spec is None:
        raise PgoError(f"folds= is empty; {_EXAMPLES}")
    if isinstance(spec, bool):
        raise PgoError(f"folds={spec!r} is not a fold selection; {_EXAMPLES}")
    if isinstance(spec, int):
        if spec < 0:
            raise PgoError(f"folds={spec}: folds are numbered from 0; {_EXAMPLES}")
        return [spec]
    if isinstance(spec, str):
        return _text_items(spec)
    if isinstance(spec, Sequence):
        items = list(spec)
        if not items:
            raise PgoError(f"folds=[] selects no fold; {_EXAMPLES}")
        bad = [k for k in items if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad:
            raise PgoError(
                f"folds={_shown(spec)}: {bad[0]!r} is not a fold number (an integer >= 0)"
            )
        return items
    raise PgoError(f"folds={spec!r} is not a fold selection; {_EXAMPLES}")


def _text_items(text: str) -> list[int]:
    """Folds of a text selection of ints and ranges ("all" is expanded by parse_folds)."""
    cleaned = "".join(text.split())
    if not cleaned:
        raise PgoError(f"folds={text!r} selects no fold; {_EXAMPLES}")
    folds: list[int] = []
    for item in cleaned.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise PgoError(f"folds={text}: {item!r} is not a fold or a range a-b; {_EXAMPLES}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise PgoError(
                f"folds={text}: range {item} is descending; use e.g. folds={last}-{first}"
            )
        folds.extend(range(first, last + 1))
    return folds


def _shown(spec: object) -> str:
    """A selection as the user wrote it on the command line."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int):
        return str(spec)
    return "[" + ",".join(str(k) for k in spec) + "]"  # type: ignore[union-attr]
