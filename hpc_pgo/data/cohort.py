"""The cohort spec (what `pgo-shards build` reads) and the import of survival and omics tables.

A cohort spec is a small dict (YAML on disk; format in shards/README.md) with the sections
`cohort`, `survival`, `omics`, `images`, `splits` and `missing` (and `data_dir`: where its
relative paths start). `resolve_spec` validates it, fills the defaults and makes every path
absolute, so that the build and the manifest see one explicit form. The specs of the public
releases (PORPOISE, Pathomic Fusion) ship in configs/cohorts/. Tables are CSV or TSV, plain or
compressed (gzip, zip, bz2, xz, zstd: told by the file's first bytes, so PORPOISE's plain
`.csv.zip` files read as they are); conventions:

- time: survival or follow-up time in the table's unit (months in TCGA and Pathomic Fusion);
  finite and >= 0.
- event: 1 = death observed, 0 = censored. A censorship column (1 = censored) is flipped
  explicitly: event = 1 - censorship.
- omics: float features per group (e.g. cnv, mut, rna), columns selected by suffix, prefix,
  regex or an explicit list, in table order.

Several rows of one patient (one row per slide or per ROI in the real layouts) are collapsed
when they agree; rows that disagree are an error naming both lines.
"""

from __future__ import annotations

import difflib
import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hpc_pgo.data.layouts import DEFAULT_KIND, LAYOUTS, get_layout, sections
from hpc_pgo.data.layouts.checks import check_keys as _check_keys
from hpc_pgo.data.layouts.checks import integer as _integer
from hpc_pgo.data.layouts.checks import mapping as _mapping
from hpc_pgo.data.layouts.checks import number as _number
from hpc_pgo.data.layouts.checks import string as _string
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

SPEC_KEYS = ("cohort", "survival", "omics", "images", "splits", "missing", "data_dir")
MISSING_POLICIES = ("drop", "mask")
SPLIT_KINDS = ("file", "random", "kfold")
SAME_TABLE = "same"  # omics path meaning "the survival table"


# --------------------------------------------------------------------------- spec validation


# _check_keys, _mapping, _string, _integer, _number: hpc_pgo.data.layouts.checks (the layouts'
# option sections use them too)


def _path(value: Any, base: Path, where: str) -> str:
    """Absolute path of `value`, relative paths taken from `base` (the spec file's directory)."""
    p = Path(_string(value, where)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_survival(raw: Any, base: Path) -> dict:
    s = _mapping(raw, "survival")
    _check_keys(s, ("path", "patient", "time", "event", "censorship"), "survival")
    for key in ("path", "patient", "time"):
        if key not in s:
            raise PgoError(f"survival: missing key {key!r} (path, patient, time, event|censorship)")
    has_event, has_cens = s.get("event") is not None, s.get("censorship") is not None
    if has_event == has_cens:
        raise PgoError(
            "survival: give exactly one of 'event' (1 = death observed) or "
            "'censorship' (1 = censored, flipped to event = 1 - censorship)"
        )
    return {
        "path": _path(s["path"], base, "survival.path"),
        "patient": _string(s["patient"], "survival.patient"),
        "time": _string(s["time"], "survival.time"),
        "event": _string(s["event"], "survival.event") if has_event else None,
        "censorship": _string(s["censorship"], "survival.censorship") if has_cens else None,
    }


SELECTOR_KINDS = ("suffix", "prefix", "regex", "columns")


def _resolve_selector(raw: Any, where: str) -> dict:
    sel = _mapping(raw, where)
    if len(sel) != 1 or next(iter(sel)) not in SELECTOR_KINDS:
        raise PgoError(
            f"{where}: expected exactly one selector of {', '.join(SELECTOR_KINDS)}, got {sel!r}"
        )
    kind, value = next(iter(sel.items()))
    if kind == "columns":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise PgoError(f"{where}.columns: expected a non-empty list of column names")
        return {"columns": list(value)}
    if kind == "regex":
        try:
            re.compile(_string(value, f"{where}.regex"))
        except re.error as exc:
            raise PgoError(f"{where}.regex: invalid regular expression {value!r}: {exc}") from None
    return {kind: _string(value, f"{where}.{kind}")}


def _resolve_omics(raw: Any, base: Path, survival: dict) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):  # one table written without the list
        raw = [raw]
    if not isinstance(raw, list):
        raise PgoError(f"omics: expected a list of tables, got {raw!r}")
    tables, seen = [], set()
    for i, entry in enumerate(raw):
        where = f"omics[{i}]"
        t = _mapping(entry, where)
        _check_keys(t, ("path", "patient", "groups"), where)
        if "path" not in t or "groups" not in t:
            raise PgoError(f"{where}: needs 'path' (a table or {SAME_TABLE!r}) and 'groups'")
        path = (
            survival["path"] if t["path"] == SAME_TABLE else _path(t["path"], base, f"{where}.path")
        )
        groups = _mapping(t["groups"], f"{where}.groups")
        if not groups:
            raise PgoError(f"{where}.groups: empty; give e.g. cnv: {{suffix: _cnv}}")
        resolved = {}
        for name, sel in groups.items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise PgoError(f"{where}.groups: group name {name!r} must match [a-z][a-z0-9_]*")
            if name in seen or name in ("image", "surv", "mask"):
                raise PgoError(f"{where}.groups: group name {name!r} is used twice or reserved")
            seen.add(name)
            resolved[name] = _resolve_selector(sel, f"{where}.groups.{name}")
        patient = t.get("patient", survival["patient"])
        tables.append(
            {"path": path, "patient": _string(patient, f"{where}.patient"), "groups": resolved}
        )
    return tables


def _resolve_images(raw: Any, base: Path) -> dict | None:
    """The images section: kind (a layout of hpc_pgo.data.layouts), dir, patient_regex, and
    one key per layout's option section (images.tile, images.slides), None but the kind's own,
    which its layout checks and fills."""
    if raw is None:
        return None
    im = _mapping(raw, "images")
    _check_keys(im, ("kind", "dir", "patient_regex", *sections()), "images")
    kind = im.get("kind", DEFAULT_KIND)
    layout = get_layout(kind)
    if layout is None:
        raise PgoError(f"images.kind: {kind!r} is not one of {', '.join(LAYOUTS)}")
    if "dir" not in im:
        raise PgoError("images: missing key 'dir' (the folder of ROI images or slides)")
    regex = im.get("patient_regex", r"^(?P<patient>.+?)_")
    try:
        compiled = re.compile(_string(regex, "images.patient_regex"))
    except re.error as exc:
        raise PgoError(
            f"images.patient_regex: invalid regular expression {regex!r}: {exc}"
        ) from None
    if "patient" not in compiled.groupindex:
        raise PgoError(f"images.patient_regex: {regex!r} needs a named group (?P<patient>...)")
    out: dict[str, Any] = {
        "kind": kind,
        "dir": _path(im["dir"], base, "images.dir"),
        "patient_regex": regex,
        **dict.fromkeys(sections()),
    }
    out[layout.section] = layout.resolve_section(im)
    for other in LAYOUTS.values():
        if other is not layout and im.get(other.section) is not None:
            raise PgoError(f"images.{other.section}: only valid with images.kind: {other.kind}")
    return out


def _resolve_splits(raw: Any, base: Path) -> dict:
    sp = _mapping(raw if raw is not None else {}, "splits")
    _check_keys(sp, ("kind", "n", "test_fraction", "seed", "file"), "splits")
    kind = sp.get("kind", "random")
    if kind not in SPLIT_KINDS:
        raise PgoError(f"splits.kind: {kind!r} is not one of {', '.join(SPLIT_KINDS)}")
    out: dict[str, Any] = {
        "kind": kind,
        "n": None,
        "test_fraction": None,
        "seed": None,
        "file": None,
    }
    if kind == "file":
        f = _mapping(sp.get("file"), "splits.file")
        _check_keys(f, ("path", "patient", "columns", "first", "train", "test"), "splits.file")
        if "path" not in f:
            raise PgoError("splits.file: missing key 'path' (the split table)")
        columns = _string(f.get("columns", "Randomization - {k}"), "splits.file.columns")
        if "{k}" not in columns:
            raise PgoError(f"splits.file.columns: {columns!r} must contain {{k}} (split 1, 2, ...)")
        first = f.get("first")
        if first is not None and (isinstance(first, bool) or first not in (0, 1)):
            raise PgoError(
                f"splits.file.first: {first!r} is not 0 or 1 (the number of the file's first "
                "split column; 1 for Pathomic Fusion's files; unset: either, recorded)"
            )
        out["file"] = {
            "path": _path(f["path"], base, "splits.file.path"),
            "patient": None
            if f.get("patient") is None
            else _string(f["patient"], "splits.file.patient"),
            "columns": columns,
            "first": None if first is None else int(first),
            "train": str(f.get("train", "Train")),
            "test": str(f.get("test", "Test")),
        }
        return out
    out["seed"] = _integer(sp.get("seed", 0), "splits.seed", 0)
    if kind == "random":
        out["n"] = _integer(sp.get("n", 15), "splits.n", 1)
        out["test_fraction"] = _number(sp.get("test_fraction", 0.2), "splits.test_fraction", 0, 1)
    else:
        out["n"] = _integer(sp.get("n", 5), "splits.n", 2)
    return out


def resolve_spec(raw: Mapping, base_dir: Path | str = ".") -> dict:
    """Validate a cohort spec, fill its defaults and make its paths absolute.

    Relative paths start at the spec's `data_dir` when it has one (itself relative to
    `base_dir`), else at `base_dir` (the spec file's directory). Returns a new dict with every
    key present (absent options are None; `data_dir` is spent: the paths are absolute).
    Raises PgoError naming the key.
    """
    base = Path(base_dir).expanduser().resolve()
    spec = _mapping(raw, "cohort spec")
    _check_keys(spec, SPEC_KEYS, "cohort spec")
    if "data_dir" in spec:
        base = Path(_path(spec["data_dir"], base, "data_dir"))
    if "survival" not in spec:
        raise PgoError("cohort spec: missing section 'survival' (path, patient, time, event)")
    survival = _resolve_survival(spec["survival"], base)
    omics = _resolve_omics(spec.get("omics"), base, survival)
    images = _resolve_images(spec.get("images"), base)
    if not omics and images is None:
        raise PgoError("cohort spec: no modality; give 'omics' tables and/or 'images'")
    missing = spec.get("missing", "drop")
    if missing not in MISSING_POLICIES:
        raise PgoError(f"missing: {missing!r} is not one of {', '.join(MISSING_POLICIES)}")
    cohort = spec.get("cohort")
    if cohort is not None:
        cohort = _string(cohort, "cohort")
    return {
        "cohort": cohort,
        "survival": survival,
        "omics": omics,
        "images": images,
        "splits": _resolve_splits(spec.get("splits"), base),
        "missing": missing,
    }


def load_spec(path: Path | str, data_dir: Path | str | None = None) -> dict:
    """Read a YAML cohort spec and resolve it: relative paths from `data_dir` when given (the
    folder of the downloaded files; it wins over the spec's own `data_dir`), else from the
    spec's `data_dir`, else from the spec file's directory."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise PgoError(f"cohort spec {path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        why = " ".join(str(exc).split())
        raise PgoError(f"cohort spec {path}: not valid YAML: {why}") from None
    raw = raw if raw is not None else {}
    if data_dir is not None and isinstance(raw, Mapping):
        raw = {**raw, "data_dir": str(Path(data_dir).expanduser().resolve())}
    try:
        return resolve_spec(raw, path.parent)
    except PgoError as exc:
        raise PgoError(f"cohort spec {path}: {exc}") from None


# --------------------------------------------------------------------------- tables


def _shown(value: Any) -> str:
    """repr of a table cell as the user wrote it (numpy scalars as plain Python numbers)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _line(index: int) -> int:
    """File line of data row `index` (0-based) in a table with one header line."""
    return index + 2


# The first bytes of each compressed format pandas reads, and its name for it. A table is
# decompressed by what it holds, not by its suffix: PORPOISE's `tcga_<x>_all_clean.csv.zip` is a
# plain CSV despite its name, which pandas' suffix-based guess would refuse as a bad zip.
COMPRESSION_MAGIC = {
    b"PK\x03\x04": "zip",
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
COMPRESSED_SUFFIXES = (".gz", ".zip", ".bz2", ".xz", ".zst")


def _compression(path: Path) -> str | None:
    """pandas' name of the compression `path` holds (by its first bytes), None for plain text."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _separator(path: Path) -> str:
    """Tab for .tsv/.tab/.txt (optionally compressed, e.g. .tsv.gz), comma otherwise."""
    name = path.name
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return "\t" if name.endswith((".tsv", ".tab", ".txt")) else ","


# What reading a table can raise on a bad file (BadZipFile: a corrupt zip; ValueError: pandas'
# own, e.g. a zip that holds several files): each becomes one error line naming the file.
_UNREADABLE = (
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    ValueError,
    OSError,
    EOFError,
)


def _read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    """pandas.read_csv of a CSV/TSV table, compressed or not; a file it cannot read is a PgoError."""
    if not path.is_file():
        raise PgoError(f"{what} table {path}: file not found")
    try:
        return pd.read_csv(path, sep=_separator(path), compression=_compression(path), **kwargs)
    except _UNREADABLE as exc:
        raise PgoError(f"{what} table {path}: cannot parse: {' '.join(str(exc).split())}") from None


def table_columns(path: Path | str, what: str) -> list[str]:
    """The header of a CSV/TSV table as written: a repeated name stays repeated (pandas would
    rename the second 'X' to 'X.1'), an empty one is ''."""
    header = _read_csv(Path(path), what, header=None, nrows=1, dtype=str, keep_default_na=False)
    return [str(c) for c in header.iloc[0].tolist()]


def read_table(path: Path | str, patient: str, what: str) -> pd.DataFrame:
    """Read a CSV/TSV table (plain, or compressed: gzip, zip, bz2, xz, zstd, told apart by the
    file's first bytes) with its patient-id column as strings.

    TSV is chosen by the extension (.tsv, .tab, .txt, each optionally compressed); otherwise CSV.
    The index is 0..n-1 (data row order), which `_line` maps to file lines.
    """
    path = Path(path)
    table = _read_csv(path, what, dtype={patient: str}, keep_default_na=True, low_memory=False)
    if patient not in table.columns:
        cols = ", ".join(map(repr, list(table.columns[:8])))
        raise PgoError(f"{what} table {path}: no patient column {patient!r}; columns start {cols}")
    ids = table[patient]
    bad = ids.isna() | (ids.astype(str).str.strip() == "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PgoError(
            f"{what} table {path} line {_line(i)}: missing patient id in column "
            f"{patient!r} ({int(bad.sum())} rows lack one)"
        )
    table[patient] = ids.astype(str).str.strip()
    table = table.reset_index(drop=True)
    # pandas renames a repeated header name ('X', 'X' -> 'X', 'X.1'): the header as written
    # tells which names are repeated, so that a column the spec uses is never read silently
    # from one copy only (_refuse_repeated)
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(table_columns(path, what), 1):
        positions.setdefault(name, []).append(number)
    table.attrs[REPEATED] = {name: at for name, at in positions.items() if len(at) > 1 and name}
    _refuse_repeated(table, patient, path, what, "the patient ids")
    return table


REPEATED = "hpc_pgo.repeated_columns"  # table.attrs key: {name: its 1-based header positions}


def _refuse_repeated(table: pd.DataFrame, column: str, path: Path | str, what: str, use: str):
    """A column the spec uses (for `use`) whose name the header repeats is an error naming the
    file, the column and where it occurs: pandas keeps the first copy under the name and reads
    the others as 'name.1', ..., which no selector takes (silently dropped)."""
    at = table.attrs.get(REPEATED, {}).get(column)
    if at:
        renamed = ", ".join(repr(f"{column}.{k}") for k in range(1, len(at)))
        raise PgoError(
            f"{what} table {path} line 1: column {column!r} occurs {len(at)} times in the "
            f"header (columns {', '.join(map(str, at))}), used for {use}; only the first would "
            f"be read ({renamed} dropped); valid: each column name once in the header (rename "
            "or remove the repeats)"
        )


def _require_column(table: pd.DataFrame, column: str, path: str, what: str, role: str) -> pd.Series:
    """`table[column]`; a column the header lacks is an error naming the file, what the column
    was for (`role`, e.g. the spec key and its flag), close names and the header itself."""
    if column not in table.columns:
        header = [str(c) for c in table.columns]
        close = difflib.get_close_matches(column, header, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        shown = ", ".join(map(repr, header[:10])) + (", ..." if len(header) > 10 else "")
        raise PgoError(
            f"{what} table {path} line 1: no column {column!r}, the {role}{hint}; valid: a "
            f"column of its header ({len(header)} columns: {shown})"
        )
    return table[column]


def _as_numbers(col: pd.Series, path: str, what: str, valid: str) -> np.ndarray:
    """float64 values of `col`; a cell that is present but not a number is an error naming it."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(col, errors="coerce")
    bad = numbers.isna() & col.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PgoError(
            f"{what} table {path} line {_line(i)} column {col.name!r}: value "
            f"{_shown(col.iloc[i])} is not a number ({valid})"
        )
    return numbers.to_numpy(dtype=np.float64)


def _collapse(
    table: pd.DataFrame, patient: str, values: list[str], path: str, what: str
) -> pd.DataFrame:
    """One row per patient: rows of one patient must agree on `values` (NaN equals NaN).

    Returns the first row of each patient, indexed by patient id and sorted by it.
    """
    dup = table[patient].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = table.loc[dup, [patient, *values]]
        for pid, group in rows.groupby(patient, sort=True):
            arr = group[values].to_numpy(dtype=np.float64)
            same = (arr == arr[0]) | (np.isnan(arr) & np.isnan(arr[0]))
            if not same.all():
                j, c = (int(a[0]) for a in np.nonzero(~same))
                raise PgoError(
                    f"{what} table {path}: patient {pid!r} has rows that disagree (lines "
                    f"{_line(group.index[0])} and {_line(group.index[j])}, column "
                    f"{values[c]!r}: {_shown(arr[0, c])} vs {_shown(arr[j, c])}); rows of one "
                    "patient must agree"
                )
        log.info(
            "%s table %s: collapsed %d rows of %d patients with several rows",
            what,
            path,
            int(dup.sum()),
            rows[patient].nunique(),
        )
    out = table.drop_duplicates(patient, keep="first").set_index(patient)[values]
    return out.sort_index()


def load_survival(section: Mapping, tables: dict | None = None) -> pd.DataFrame:
    """Survival records, one per patient: DataFrame indexed by patient id (sorted) with
    `time` (float64, >= 0, table units) and `event` (int64, 1 = death observed, 0 = censored).

    `tables` caches read tables by (path, patient column) so a shared table is read once.
    """
    path, pcol = section["path"], section["patient"]
    table = _cached_table(tables, path, pcol, "survival")
    for column in (section["time"], section["event"] or section["censorship"]):
        _refuse_repeated(table, column, path, "survival", "the survival record")
    time = _as_numbers(
        _require_column(
            table, section["time"], path, "survival", "survival time (survival.time, --time-col)"
        ),
        path,
        "survival",
        "time must be a number >= 0",
    )
    bad = ~np.isfinite(time) | (time < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PgoError(
            f"survival table {path} line {_line(i)} column {section['time']!r}: time "
            f"{_shown(table[section['time']].iloc[i])} for patient "
            f"{_shown(table[pcol].iloc[i])} "
            f"is not a finite number >= 0 ({int(bad.sum())} such rows)"
        )
    flag_col = section["event"] or section["censorship"]
    meaning = (
        "event: 1 = death observed, 0 = censored"
        if section["event"]
        else "censorship: 1 = censored, 0 = death observed"
    )
    role = (
        "event flag (survival.event, --event-col)"
        if section["event"]
        else "censorship flag (survival.censorship, --censorship-col)"
    )
    flag = _as_numbers(
        _require_column(table, flag_col, path, "survival", role),
        path,
        "survival",
        f"valid: 0 or 1; {meaning}",
    )
    bad = ~np.isin(flag, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PgoError(
            f"survival table {path} line {_line(i)} column {flag_col!r}: value "
            f"{_shown(table[flag_col].iloc[i])} is not 0 or 1 ({meaning})"
        )
    event = flag.astype(np.int64) if section["event"] else 1 - flag.astype(np.int64)
    records = pd.DataFrame({pcol: table[pcol], "time": time, "event": event}, index=table.index)
    out = _collapse(records, pcol, ["time", "event"], path, "survival")
    out.index.name = "patient"
    return out


def _cached_table(tables: dict | None, path: str, patient: str, what: str) -> pd.DataFrame:
    if tables is None:
        return read_table(path, patient, what)
    key = (path, patient)
    if key not in tables:
        tables[key] = read_table(path, patient, what)
    return tables[key]


# Column selectors: name -> (selector value, column name) -> selected?
SELECTORS: dict[str, Callable[[Any, str], bool]] = {
    "suffix": lambda value, col: col.endswith(value) and col != value,
    "prefix": lambda value, col: col.startswith(value) and col != value,
    "regex": lambda value, col: re.search(value, col) is not None,
    "columns": lambda value, col: col in value,
}


def strip_selector(selector: Mapping, column: str) -> str:
    """Feature (gene) name of a column: the suffix or prefix that selected it stripped."""
    if "suffix" in selector:
        return column[: -len(selector["suffix"])]
    if "prefix" in selector:
        return column[len(selector["prefix"]) :]
    return column


def select_columns(columns: list[str], selector: Mapping, where: str) -> list[str]:
    """Columns picked by a group selector, in table order (explicit lists in their own order).

    An explicit column that is absent, or a selector matching nothing, is an error.
    """
    kind, value = next(iter(selector.items()))
    if kind == "columns":
        missing = [c for c in value if c not in columns]
        if missing:
            raise PgoError(
                f"{where}: {len(missing)} listed columns are not in the table, e.g. "
                f"{', '.join(map(repr, missing[:5]))}"
            )
        if len(set(value)) != len(value):
            raise PgoError(f"{where}: the column list names a column twice")
        return list(value)
    chosen = [c for c in columns if SELECTORS[kind](value, c)]
    if not chosen:
        raise PgoError(f"{where}: {kind} {value!r} selects no column; a group needs at least one")
    return chosen


@dataclass(frozen=True)
class OmicsGroup:
    """One omics group: `values` (patients x features, float64; NaN = not measured), its
    column names in order, the feature (gene) names, and the table it came from."""

    name: str
    values: pd.DataFrame
    columns: list[str]
    genes: list[str]
    path: str


def load_omics(
    tables_spec: list[Mapping], survival: Mapping, tables: dict | None = None
) -> dict[str, OmicsGroup]:
    """Every omics group of the spec, in spec order, one row per patient (sorted ids).

    Columns of the survival record (patient, time, event) never join a group. Non-numeric or
    infinite values are errors naming file, line and column; NaN means not measured.
    """
    groups: dict[str, OmicsGroup] = {}
    for t in tables_spec:
        path, pcol = t["path"], t["patient"]
        table = _cached_table(tables, path, pcol, "omics")
        reserved = {pcol}
        if path == survival["path"]:
            reserved |= {
                survival["patient"],
                survival["time"],
                survival["event"] or survival["censorship"],
            }
        candidates = [str(c) for c in table.columns if c not in reserved]
        owner: dict[str, str] = {}
        for name, selector in t["groups"].items():
            where = f"omics table {path} group {name!r}"
            kind, value = next(iter(selector.items()))
            for repeated in table.attrs.get(REPEATED, {}):
                if repeated not in reserved and SELECTORS[kind](value, repeated):
                    _refuse_repeated(table, repeated, path, "omics", f"omics group {name!r}")
            cols = select_columns(candidates, selector, where)
            for c in cols:
                if c in owner:
                    raise PgoError(
                        f"{where}: column {c!r} is also selected by group "
                        f"{owner[c]!r}; each column belongs to one group"
                    )
                owner[c] = name
            block = table[cols]
            # numbers straight through; only text columns are parsed cell by cell
            text = [
                c
                for c, dtype in block.dtypes.items()
                if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
            ]
            if text:
                block = block.assign(
                    **{
                        c: _as_numbers(
                            block[c], path, "omics", f"omics group {name!r} must be numeric"
                        )
                        for c in text
                    }
                )
            frame = pd.DataFrame(
                block.to_numpy(dtype=np.float64, na_value=np.nan), index=table.index, columns=cols
            )
            finite = np.isfinite(frame.to_numpy()) | frame.isna().to_numpy()
            if not finite.all():
                i, j = (int(a[0]) for a in np.nonzero(~finite))
                raise PgoError(
                    f"omics table {path} line {_line(i)} column {cols[j]!r}: value "
                    f"{_shown(frame.iat[i, j])} is not finite (group {name!r})"
                )
            frame.insert(0, pcol, table[pcol])
            values = _collapse(frame, pcol, cols, path, "omics")
            values.index.name = "patient"
            genes = [strip_selector(selector, c) for c in cols]
            groups[name] = OmicsGroup(name, values, cols, genes, path)
    return groups
