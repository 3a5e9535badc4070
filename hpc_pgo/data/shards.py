"""A shard set on disk: manifest.json read/write, shard records, `verify` and `info`.

The format (shards/README.md) in short: a directory with `manifest.json` and tar shards
`shard-000000.tar`, ... written by webdataset.ShardWriter; one sample per image unit (or per
patient without images) keyed `<patient>__<unit>`, carrying `png`/`jpg`, `<group>.npy`
(float32, 1-D, no pickle), `surv.json` and, with missing: mask, `mask.json`.

`verified.json` beside the manifest records a passed verification (by `build`, which hashes each
shard as it writes it, or by `pgo-shards verify`): per shard its name, bytes, mtime_ns and sha256.
The fold loader trusts a shard whose size, mtime and manifest entry still match that record
without hashing it again (read_verified, trusted); see shards/README.md for the trade-off.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from hpc_pgo import atomic
from hpc_pgo.data.members import MANIFEST, load_npy, patient_of_key, sha256_file
from hpc_pgo.data.sidecar import AVAILABLE, OMICS_TABLE, read_patient_table
from hpc_pgo.errors import PgoError

SCHEMA_VERSION = 1
# sha256 of the manifest's canonical text without this key (manifest_digest); written by
# write_manifest, checked by read_manifest (the loader, embed-rna, cells) and by verify
DIGEST_KEY = "manifest_sha256"
SHARD_PATTERN = "shard-%06d.tar"
SHARD_GLOB = "shard-*.tar"
# the record of a passed verification (write_verified); never part of the shard set's content
VERIFIED = "verified.json"
VERIFIED_KIND = "hpc_pgo.verified"


# --------------------------------------------------------------------------- manifest


def manifest_text(manifest: dict) -> str:
    """The manifest as written: JSON, keys sorted, indent 1, no NaN; same dict, same text."""
    return json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"


def manifest_digest(manifest: Mapping) -> str:
    """Hex sha256 of the manifest's canonical text (manifest_text) without its DIGEST_KEY:
    any change of content (a count, a split list, a shard record) changes it; whitespace does not."""
    body = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    return hashlib.sha256(manifest_text(body).encode()).hexdigest()


def write_manifest(directory: Path | str, manifest: dict) -> Path:
    """Seal the manifest (set manifest[DIGEST_KEY] = manifest_digest, in place) and write it
    atomically (a temporary name in the same directory, then rename)."""
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    return atomic.write_text(Path(directory) / MANIFEST, manifest_text(manifest))


def digest_problem(manifest: Mapping, directory: Path | str) -> str | None:
    """Why the manifest's recorded digest does not vouch for its content (a phrase to follow
    the manifest's path), or None when it does."""
    recorded = manifest.get(DIGEST_KEY)
    if recorded is None:
        return (
            f"no {DIGEST_KEY} (written before hpc_pgo sealed its manifests, or "
            f"by hand); rebuild the shard set, or check and seal it: pgo-shards seal {directory}"
        )
    if recorded != manifest_digest(manifest):
        return (
            f"its content differs from its {DIGEST_KEY} (edited after it was "
            "written); rebuild the shard set (pgo-shards build --force); "
            f"pgo-shards verify {directory} names the entries that disagree with the shards"
        )
    return None


def read_manifest(directory: Path | str, *, check_digest: bool = True) -> dict:
    """The manifest of a shard set; PgoError when absent, not JSON, of another schema or (with
    check_digest) without its digest or edited since it was written (digest_problem)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PgoError(
            f"{directory}: no {MANIFEST}; not a shard set (build one with pgo-shards build)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PgoError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise PgoError(f"{path}: schema_version {version!r}; this hpc_pgo reads {SCHEMA_VERSION}")
    if check_digest and (problem := digest_problem(manifest, directory)):
        raise PgoError(f"{path}: {problem}")
    return manifest


# --------------------------------------------------------------------------- shard records


def count_samples(path: Path) -> int:
    """Samples in a tar shard: runs of members sharing a key (WebDataset's key rule)."""
    keys = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _ = base_plus_ext(member.name)
            if member.isreg() and key is not None and (not keys or keys[-1] != key):
                keys.append(key)
    return len(keys)


def shard_record(path: Path) -> dict:
    """The manifest entry of one shard: name, samples, bytes, sha256."""
    return {
        "name": path.name,
        "samples": count_samples(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def patient_runs(patients: list[str]) -> list[list]:
    """[[patient, units], ...] of a shard's samples in order (one entry per run of a patient):
    the manifest's per-shard `patients` field."""
    runs: list[list] = []
    for patient in patients:
        if runs and runs[-1][0] == patient:
            runs[-1][1] += 1
        else:
            runs.append([patient, 1])
    return runs


def iter_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Samples of one shard as WebDataset groups them: {"__key__", "<field>": bytes, ...}."""
    with open(path, "rb") as stream:
        files = ({**f, "__url__": path.name} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)


# --------------------------------------------------------------------------- verified record


def verified_entry(path: Path, sha256: str, stat: os.stat_result | None = None) -> dict:
    """One shard's line of verified.json: name, bytes and mtime_ns (of `stat`, else now), sha256."""
    stat = path.stat() if stat is None else stat
    return {
        "name": path.name,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
    }


def write_verified(directory: Path | str, manifest: Mapping, entries: list[dict]) -> Path:
    """Write verified.json (atomically): the manifest's digest and one verified_entry per shard.
    Only after every shard was checked against the manifest (build, `pgo-shards verify`)."""
    record = {
        "kind": VERIFIED_KIND,
        "version": 1,
        DIGEST_KEY: manifest.get(DIGEST_KEY),
        "shards": sorted(entries, key=lambda e: e["name"]),
    }
    text = json.dumps(record, sort_keys=True, indent=1) + "\n"
    return atomic.write_text(Path(directory) / VERIFIED, text)


def read_verified(directory: Path | str) -> tuple[dict[str, dict], str | None]:
    """The verified record's shard entries by name, and why it vouches for nothing (None when
    it was read): absent, unreadable or not a record. A missing record is not an error."""
    path = Path(directory) / VERIFIED
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("kind") != VERIFIED_KIND:
            return {}, f"{VERIFIED} is not a record of hpc_pgo's"
        entries = {str(e["name"]): e for e in record["shards"]}
    except FileNotFoundError:
        return {}, f"no {VERIFIED} (never verified, or verified before hpc_pgo recorded it)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return {}, f"{VERIFIED} is unreadable ({type(exc).__name__})"
    return entries, None


def trusted(record: Mapping[str, dict], entry: Mapping, stat: os.stat_result) -> bool:
    """Whether the verified record vouches for a shard: its manifest entry (bytes, sha256) is the
    one verified, and the file's size and mtime are those it had then. A rewrite that keeps both
    size and mtime is not seen (`pgo-shards verify` hashes everything again)."""
    seen = record.get(entry["name"])
    return (
        seen is not None
        and seen.get("sha256") == entry["sha256"]
        and seen.get("bytes") == entry["bytes"] == stat.st_size
        and seen.get("mtime_ns") == stat.st_mtime_ns
    )


# --------------------------------------------------------------------------- verify


def _decode_image(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


@dataclass
class VerifyReport:
    """Outcome of `verify`: shards and samples checked, and every problem found (one line each)."""

    directory: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks left out, and why (not problems)
    # verified_entry of every shard hashed and unchanged while it was read (for verified.json)
    verified: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"FAILED, {len(self.problems)} problems"
        return (
            f"verify {self.directory}: {self.shards} shards, {self.samples} samples, "
            f"{self.bytes} bytes: {state}"
        )


class _SampleChecker:
    """Checks that every field of a sample decodes and agrees with the manifest."""

    def __init__(self, manifest: dict):
        self.groups = {g: len(names) for g, names in manifest["groups"].items()}
        self.image = manifest.get("image")
        self.masked = manifest.get("missing") == "mask"
        self.patients = manifest["patients"]
        self.decoders: dict[str, Callable[[str, bytes], str | None]] = {
            "png": self._image,
            "jpg": self._image,
            "npy": self._npy,
            "json": self._json,
        }

    def _image(self, name: str, data: bytes) -> str | None:
        expected = self.image["format"] if self.image else None
        if name != expected:
            return f"field {name}: the manifest's image format is {expected}"
        _decode_image(data)
        return None

    def _npy(self, name: str, data: bytes) -> str | None:
        group = name[: -len(".npy")]
        if group not in self.groups:
            return f"field {name}: group {group!r} not in the manifest"
        arr = load_npy(data)
        if arr.dtype != np.float32 or arr.shape != (self.groups[group],):
            return (
                f"field {name}: {arr.dtype} {arr.shape}, manifest says float32 "
                f"({self.groups[group]},)"
            )
        return None

    def _json(self, name: str, data: bytes) -> str | None:
        value = json.loads(data)
        if name == "surv.json":
            if not isinstance(value, dict) or set(value) != {"patient", "unit", "time", "event"}:
                return "surv.json: keys must be patient, unit, time, event"
        elif name == "mask.json":
            if not isinstance(value, dict) or not set(value) <= {*self.groups, "image"}:
                return "mask.json: keys must be omics groups or image"
        else:
            return f"field {name}: not a field of this format"
        return None

    def check(self, sample: dict[str, Any]) -> list[str]:
        """Problems of one sample (empty when it is sound)."""
        problems = []
        fields = {k: v for k, v in sample.items() if not k.startswith("__")}
        for name, data in sorted(fields.items()):
            decoder = self.decoders.get(name.rsplit(".", 1)[-1])
            if decoder is None:
                problems.append(f"field {name}: unknown field")
                continue
            try:
                problem = decoder(name, data)
            except Exception as exc:  # any decoder failure is a finding, reported by name
                why = re.sub(r" ?<[^>]*>", "", " ".join(str(exc).split()))  # no object reprs
                problem = f"field {name}: does not decode ({why})"
            if problem:
                problems.append(problem)
        required = {"surv.json", *(f"{g}.npy" for g in self.groups)}
        if self.image is not None:
            required.add(self.image["format"])
        if self.masked:
            required.add("mask.json")
        problems += [f"field {r}: missing" for r in sorted(required - set(fields))]
        if "surv.json" in fields and not problems:
            problems += self._survival(sample["__key__"], json.loads(fields["surv.json"]), fields)
        return problems

    def _survival(self, key: str, surv: dict, fields: dict) -> list[str]:
        problems = []
        if key != f"{surv['patient']}__{surv['unit']}":
            problems.append(f"surv.json names {surv['patient']}__{surv['unit']}, not the key")
        record = self.patients.get(surv["patient"])
        if record is None:
            problems.append(f"patient {surv['patient']!r} not in the manifest")
        elif (surv["time"], surv["event"]) != (record["time"], record["event"]):
            problems.append(
                f"surv.json time/event {surv['time']}/{surv['event']} differ from "
                f"the manifest {record['time']}/{record['event']}"
            )
        return problems


# the keys of a cohort manifest that verify reads, with their JSON type
_MANIFEST_SHAPE = {"groups": dict, "patients": dict, "counts": dict, "shards": list, "splits": dict}


def shard_name_problem(name: Any, index: int) -> str | None:
    """Why a manifest's shard name is not a file of the set's own folder (None when it is).

    A name is a plain file name: a string without a path separator ('/' or '\\'), not '.' or
    '..', not absolute, no NUL; else `directory / name` would read (or vouch for) a file
    outside the set, e.g. '../other/shard-000000.tar' or '/etc/passwd'."""
    if isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name):
        return None
    return (
        f"{MANIFEST} shards entry {index}: name {name!r} is not a file of the shard set's "
        "folder; valid: a plain file name such as 'shard-000000.tar' (no '/' or '\\', not "
        "'..', not an absolute path)"
    )


def checked_shard_path(directory: Path, entry: Mapping[str, Any], index: int) -> Path:
    """directory / entry["name"], or a PgoError when the name points outside the set (readers)."""
    problem = shard_name_problem(entry.get("name"), index)
    if problem:
        raise PgoError(f"{directory}/{problem}; rebuild the shard set")
    return directory / entry["name"]


def listed_shards(
    directory: Path, manifest: Mapping[str, Any], report: VerifyReport
) -> Iterator[tuple[dict[str, Any], Path]]:
    """(entry, path) of each shard the manifest lists and the directory holds, in manifest order.

    Each listed shard counts in report.shards; a shard file the manifest does not list, a
    listed one that is missing and a listed name that is not a plain file name of the folder
    (shard_name_problem; never read) become report problems (the verifiers of both shard
    kinds)."""
    listed = {s.get("name") for s in manifest["shards"] if isinstance(s, Mapping)}
    for extra in sorted(p.name for p in directory.glob(SHARD_GLOB) if p.name not in listed):
        report.problems.append(f"shard {extra}: present but not in the manifest")
    for index, entry in enumerate(manifest["shards"]):
        report.shards += 1
        if not isinstance(entry, Mapping):
            report.problems.append(f"{MANIFEST} shards entry {index}: not an object")
            continue
        problem = shard_name_problem(entry.get("name"), index)
        if problem:
            report.problems.append(problem)
            continue
        path = directory / entry["name"]
        if not path.is_file():
            report.problems.append(f"shard {entry['name']}: missing")
            continue
        yield entry, path


def verify(directory: Path | str, *, decode: bool = True) -> VerifyReport:
    """Check every shard against the manifest: presence, bytes, sha256, sample counts, and
    (with `decode`) that every sample decodes and agrees with the manifest; then the manifest
    itself: its digest (edited since it was written?), its counts against its patients and the
    shards, its splits (sound, and equal to what its recipe gives: split_problems). Returns a
    report; it raises only when there is no readable manifest.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, check_digest=False)
    report = VerifyReport(str(directory))
    broken = [k for k, kind in _MANIFEST_SHAPE.items() if not isinstance(manifest.get(k), kind)]
    if broken:  # an edit that removed or retyped a key: nothing below could read it
        problem = digest_problem(manifest, directory)
        report.problems += [f"{MANIFEST}: {problem}"] if problem else []
        report.problems.append(
            f"{MANIFEST}: key(s) {', '.join(broken)} missing or not "
            f"{' / '.join(sorted({_MANIFEST_SHAPE[k].__name__ for k in broken}))}"
        )
        return report
    checker = _SampleChecker(manifest)
    table = _patient_table(directory, manifest, report)
    units: Counter[str] = Counter()
    seen: set[str] = set()
    keys_of: dict[str, list[str]] = {}  # each shard's sample keys in tar order (tile features)
    for entry, path in listed_shards(directory, manifest, report):
        before = path.stat()
        size = before.st_size
        report.bytes += size
        if size != entry["bytes"]:
            report.problems.append(
                f"shard {entry['name']}: {size} bytes, manifest says {entry['bytes']}"
            )
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            report.problems.append(f"shard {entry['name']}: sha256 differs from the manifest")
        count = 0
        order: list[str] = []  # the patient of each sample, for the shard's `patients` field
        keys = keys_of.setdefault(entry["name"], [])
        try:
            for sample in iter_samples(path):
                count += 1
                # the build's rule (patient ids may hold '__'); a key naming no patient of the
                # manifest counts under its text up to the first '__' (reported below)
                patient = (
                    patient_of_key(sample["__key__"], manifest["patients"])
                    or sample["__key__"].split("__", 1)[0]
                )
                order.append(patient)
                keys.append(sample["__key__"])
                if sample["__key__"] in seen:
                    report.problems.append(
                        f"shard {entry['name']} sample {sample['__key__']}: "
                        "key already seen (duplicate sample)"
                    )
                seen.add(sample["__key__"])
                if decode:
                    problems = checker.check(sample)
                    if table is not None and not problems:
                        problems = _table_problems(sample, table, manifest)
                    for problem in problems:
                        report.problems.append(
                            f"shard {entry['name']} sample {sample['__key__']}: {problem}"
                        )
                units[patient] += 1
        except Exception as exc:  # a damaged tar: report where reading stopped
            report.problems.append(
                f"shard {entry['name']}: unreadable after {count} samples "
                f"({' '.join(str(exc).split())})"
            )
        report.samples += count
        if count != entry["samples"]:
            report.problems.append(
                f"shard {entry['name']}: {count} samples, manifest says {entry['samples']}"
            )
        elif "patients" in entry and (problem := runs_problem(patient_runs(order), entry)):
            report.problems.append(f"shard {entry['name']}: {problem}")
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
            report.verified.append(verified_entry(path, digest, after))
    shards_ok = not report.problems  # else the counts below would only repeat those problems
    problem = digest_problem(manifest, directory)
    if problem:
        report.problems.append(f"{MANIFEST}: {problem}")
    report.problems += count_problems(manifest, units if shards_ok else None)
    problems, note = split_problems(manifest)
    report.problems += problems
    if note:
        report.notes.append(note)
    if manifest.get("tile_features"):  # the side-car of pgo-shards embed-tiles
        from hpc_pgo.data.tile_features import check_tile_features

        report.problems += check_tile_features(directory, manifest, keys_of)
    return report


def _patient_table(directory: Path, manifest: Mapping, report: VerifyReport) -> dict | None:
    """The patient table's rows by patient ({group: row, AVAILABLE + group: flag}), or None: a
    set built before the table (a note) or a table that does not read (a problem)."""
    try:
        table = read_patient_table(directory, manifest)
    except PgoError as exc:
        report.problems.append(str(exc))
        return None
    if table is None:
        report.notes.append(
            f"no patient table ({OMICS_TABLE}; built before it): the standardizer and embed-rna "
            "read each patient's first unit instead; rebuild to add it"
        )
        return None
    return {
        patient: {
            **{group: values[row] for group, values in table.values.items()},
            **{AVAILABLE + group: flags[row] for group, flags in table.available.items()},
        }
        for patient, row in table.row_of.items()
    }


def _table_problems(sample: Mapping, table: Mapping[str, dict], manifest: Mapping) -> list[str]:
    """Where a sample's omics differ from its patient's row of the patient table."""
    patient = patient_of_key(sample["__key__"], manifest["patients"])
    row = table.get(patient)
    if row is None:
        return [f"patient {patient!r}: no row in {OMICS_TABLE}"]
    problems = []
    mask = json.loads(sample["mask.json"]) if "mask.json" in sample else None
    for group in manifest["groups"]:
        if not np.array_equal(load_npy(sample[f"{group}.npy"]), row[group]):
            problems.append(f"{group}.npy differs from its patient's row of {OMICS_TABLE}")
        if mask is not None and bool(mask.get(group)) != bool(row[AVAILABLE + group]):
            problems.append(f"mask.json {group} differs from {OMICS_TABLE}")
    return problems


def runs_problem(runs: list[list], entry: Mapping) -> str | None:
    """Where a shard's patients (runs of samples, in order) differ from its manifest entry's
    `patients` field, or None."""
    listed = [list(run) for run in entry["patients"]] if isinstance(entry["patients"], list) else []
    if runs == listed:
        return None
    at = next((i for i, (a, b) in enumerate(zip(runs, listed, strict=False)) if a != b), None)
    at = min(len(runs), len(listed)) if at is None else at
    found = runs[at] if at < len(runs) else "nothing"
    said = listed[at] if at < len(listed) else "nothing"
    return f"patients entry {at}: the shard holds {found}, manifest says {said} ([patient, units])"


def count_problems(manifest: Mapping, units: Mapping[str, int] | None) -> list[str]:
    """Where the manifest's counts disagree with the shards (`units`: samples per patient
    found in them; None when some shard could not be read, then with its own patients)."""
    patients, counts = manifest["patients"], manifest["counts"]
    problems = []
    if units is None:
        truth = {"patients": len(patients), "units": sum(r["units"] for r in patients.values())}
        source = "its patients give"
    else:
        truth = {"patients": len(units), "units": sum(units.values())}
        source = "the shards hold"
        for patient in sorted(set(units) - set(patients)):
            problems.append(
                f"patient {patient}: {units[patient]} samples in the shards, not in the "
                "manifest's patients"
            )
        for patient, record in sorted(patients.items()):
            if units.get(patient, 0) != record["units"]:
                problems.append(
                    f"patient {patient}: {units.get(patient, 0)} samples, manifest says "
                    f"{record['units']}"
                )
    for key, value in truth.items():
        if counts.get(key) != value:
            problems.append(f"{MANIFEST} counts.{key}: {counts.get(key)}, {source} {value}")
    events = sum(r["event"] for r in patients.values())
    if counts.get("events") != events:
        problems.append(
            f"{MANIFEST} counts.events: {counts.get('events')}, its patients give {events}"
        )
    return problems


def split_problems(manifest: Mapping) -> tuple[list[str], str | None]:
    """Where the manifest's splits are unsound (a patient in both sides of a fold, or in
    neither, or unknown) or differ from the splits its build recipe gives (recomputed: seeded
    random or k-fold always; a split file while it is the build's file, by sha256); and a note
    when they could not be recomputed."""
    from hpc_pgo.data.splits import recompute_splits

    where = f"{MANIFEST} splits"
    patients = set(manifest["patients"])
    record = manifest["splits"]
    folds = record.get("folds") or []
    problems = []
    for k, fold in enumerate(folds):
        train, test = set(fold.get("train", [])), set(fold.get("test", []))
        odd = {
            "is in both train and test": train & test,
            "is not in the manifest's patients": (train | test) - patients,
            "is in neither train nor test": patients - train - test,
        }
        for what, ids in odd.items():
            if ids:
                problems.append(
                    f"{where} fold {k}: patient {sorted(ids)[0]!r} {what} ({len(ids)} such)"
                )
    if not folds:
        problems.append(f"{where}: no folds")
    spec = (manifest.get("spec") or {}).get("splits")
    if spec is None or spec.get("kind") != record.get("kind"):
        return problems, "splits: the manifest's spec has no matching splits recipe; not recomputed"
    try:
        expected, source = recompute_splits(record, spec, patients)
    except Exception as exc:  # the recipe no longer runs: a finding, named
        return [*problems, f"{where}: cannot recompute them ({' '.join(str(exc).split())})"], None
    if expected is None:
        return problems, f"splits: not recomputed ({source}); checked by the manifest digest"
    if len(expected) != len(folds):
        problems.append(f"{where}: {len(folds)} folds, {source} gives {len(expected)}")
    columns = record.get("columns") or []
    for k, (fold, want) in enumerate(zip(folds, expected, strict=False)):
        for side, other in (("train", "test"), ("test", "train")):
            moved = sorted(set(fold.get(side, [])) & set(want[other]))
            if moved:
                column = f" (column {columns[k]!r})" if k < len(columns) else ""
                problems.append(
                    f"{where} fold {k}: patient {moved[0]!r} is in {side}, {source}"
                    f"{column} puts it in {other} ({len(moved)} such)"
                )
    return problems, None


# --------------------------------------------------------------------------- info


def info(directory: Path | str) -> str:
    """A human summary of a shard set: patients, units, events, features per group, image,
    splits, shards and what the build dropped."""
    m = read_manifest(directory, check_digest=False)  # info describes even an edited one
    c = m["counts"]
    lines = [
        f"cohort {m['cohort']} ({directory}), built by {m.get('created_by', '?')}",
        f"patients {c['patients']}, units {c['units']}, events {c['events']} "
        f"({100.0 * c['events'] / max(c['patients'], 1):.1f}% of patients)",
    ]
    for group, names in m["groups"].items():
        lines.append(
            f"  {group}: {len(names)} features ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''})"
        )
    image = m.get("image")
    if image is None:
        lines.append("image: none (omics-only cohort)")
    else:
        size = "x".join(map(str, image["size"])) if image.get("size") else "varying size"
        lines.append(f"image: {image['kind']}, {image['format']}, {size}")
    s = m["splits"]
    folds = s["folds"]
    tests = [len(f["test"]) for f in folds]
    trains = [len(f["train"]) for f in folds]
    lines.append(
        f"splits: {s['kind']} ({s['source']}), {len(folds)} folds, train "
        f"{min(trains)}-{max(trains)} / test {min(tests)}-{max(tests)} patients"
    )
    total = sum(sh["bytes"] for sh in m["shards"])
    lines.append(
        f"shards: {len(m['shards'])}, {total / 2**20:.1f} MiB, missing modalities: {m['missing']}"
    )
    dropped = m.get("dropped", [])
    if dropped:
        reasons = Counter(d["reason"].split(":")[0] for d in dropped)
        top = ", ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        lines.append(f"dropped: {len(dropped)} ({top})")
    else:
        lines.append("dropped: none")
    tiles = m.get("tile_features")
    if tiles:
        b = tiles["backbone"]
        weights = (
            f"weights {b['weights']} (backbone digest {b['digest'][:12]})"
            if b.get("weights")
            else f"random init, no weights (backbone digest {b['digest'][:12]})"
        )
        lines.append(
            f"tile features: {b['arch']}, dim {tiles['dim']}, {tiles['units']} units, "
            f"input {b['input_size']} px, {weights} (pgo-shards embed-tiles)"
        )
    problem = digest_problem(m, directory)
    lines.append(f"manifest: {problem}" if problem else f"manifest: sealed ({DIGEST_KEY} matches)")
    return "\n".join(lines)
