"""The per-patient files beside a shard set's tars, each recorded (file, bytes, sha256) in the
manifest, whose digest seals the record.

- ``omics.npz``, the patient table (``manifest["omics_table"]``), written by `pgo-shards build`:
  ``patients`` <U (N,) sorted ids; ``<group>`` float32 (N, F_group), the vector every unit of
  the patient carries; with --missing mask, ``available__<group>`` bool (N,). Readers that need
  one row per patient (the fold's Standardizer, embed-rna, the CoxPH baselines) read it instead
  of indexing the shards (hpc_pgo.data.patients). A shard set built before it has no record;
  those readers then read each patient's first unit. `pgo-shards verify` checks the table
  against the units.
- ``rna_emb.npz``, the embedding side-car (``manifest["embeddings"]``), written by `pgo-shards
  embed-rna` (hpc_pgo.data.embed_rna): ``patients``, ``rna_emb`` float32 (N, d) and, with
  --mlp-a, ``rna_mlpa`` float32 (N, out). The fold loader serves the fields by patient.

Both are written atomically (hpc_pgo.atomic) with members.npz_bytes: same arrays, same bytes.
A file absent, of other bytes than recorded, or whose arrays disagree with the manifest raises
PgoError naming it and what to run.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo import atomic
from hpc_pgo.data.members import MANIFEST, load_npz, npz_bytes, sha256_file
from hpc_pgo.errors import PgoError

SIDE_CAR = "rna_emb.npz"  # the embedding side-car
OMICS_TABLE = "omics.npz"  # the patient table
OMICS_TABLE_KEY = "omics_table"
AVAILABLE = "available__"  # prefix of the patient table's availability arrays


def write_side_car(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as a side-car (members.npz_bytes), atomically."""
    atomic.write_bytes(path, npz_bytes(arrays))


def _record(path: Path, data: bytes) -> dict:
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _read_recorded(
    shard_dir: Path, record: Mapping, *, verify: bool, remedy: str
) -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays of a recorded side-car, after checking its bytes (and sha256 with verify)."""
    path = shard_dir / record["file"]
    if not path.is_file():
        raise PgoError(f"{path}: missing, but {MANIFEST} records it; {remedy}")
    if path.stat().st_size != record["bytes"] or (verify and sha256_file(path) != record["sha256"]):
        raise PgoError(
            f"{path}: differs from the sha256 in {MANIFEST} (replaced or damaged); {remedy}"
        )
    try:
        return path, load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise PgoError(f"{path}: not a readable .npz ({err}); {remedy}") from err


# --------------------------------------------------------------------------- the patient table


@dataclass(frozen=True)
class PatientTable:
    """The patient table's arrays: values[group] float32 (N, F), available[group] bool (N,)
    (all True without --missing mask), row_of[patient] -> row; patients sorted."""

    patients: tuple[str, ...]
    values: dict[str, np.ndarray]
    available: dict[str, np.ndarray]

    @property
    def row_of(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.patients)}


def write_patient_table(
    directory: Path,
    patients: Sequence[str],
    values: Mapping[str, np.ndarray],
    available: Mapping[str, np.ndarray] | None,
) -> dict:
    """Write omics.npz into `directory` (patients sorted; values[group] (N, F) as float32;
    available[group] (N,) bool, only for --missing mask) and return its manifest record."""
    order = np.argsort(np.asarray(patients, dtype=str), kind="stable")
    arrays = {"patients": np.asarray(patients, dtype=str)[order]}
    for group, table in values.items():
        arrays[group] = np.asarray(table, dtype=np.float32)[order]
    for group, flags in (available or {}).items():
        arrays[AVAILABLE + group] = np.asarray(flags, dtype=bool)[order]
    data = npz_bytes(arrays)
    path = directory / OMICS_TABLE
    atomic.write_bytes(path, data)
    return _record(path, data)


def read_patient_table(
    shard_dir: Path | str, manifest: Mapping, *, verify: bool = True
) -> PatientTable | None:
    """The patient table recorded in `manifest`, checked (bytes, sha256 with verify, patients,
    group shapes, finite values); None when the manifest records none (built before it)."""
    record = manifest.get(OMICS_TABLE_KEY)
    if not record:
        return None
    shard_dir = Path(shard_dir)
    path, arrays = _read_recorded(
        shard_dir, record, verify=verify, remedy="rebuild the shard set (pgo-shards build)"
    )
    patients = tuple(str(p) for p in arrays.pop("patients", np.zeros(0, str)))
    if list(patients) != sorted(manifest["patients"]):
        raise PgoError(
            f"{path}: its patients are not the {len(manifest['patients'])} of {MANIFEST}; "
            "rebuild the shard set (pgo-shards build)"
        )
    masked = manifest.get("missing") == "mask"
    values, available = {}, {}
    for group, features in manifest["groups"].items():
        table = arrays.get(group)
        if (
            table is None
            or table.dtype != np.float32
            or table.shape != (len(patients), len(features))
        ):
            raise PgoError(
                f"{path}: group {group!r} absent or not float32 ({len(patients)}, {len(features)}) "
                f"as {MANIFEST} says; rebuild the shard set (pgo-shards build)"
            )
        if not np.isfinite(table).all():
            raise PgoError(f"{path}: group {group!r} has non-finite values")
        values[group] = table
        flags = arrays.get(AVAILABLE + group)
        if masked and (flags is None or flags.dtype != bool or flags.shape != (len(patients),)):
            raise PgoError(f"{path}: no availability of group {group!r} for --missing mask")
        available[group] = flags if masked else np.ones(len(patients), dtype=bool)
    return PatientTable(patients=patients, values=values, available=available)


# --------------------------------------------------------------------------- the embeddings


@dataclass(frozen=True)
class EmbeddingTable:
    """The side-car's arrays: fields[name] float32 (N, d), row_of[patient] -> row."""

    fields: dict[str, np.ndarray]
    row_of: dict[str, int]

    def rows(self, field: str, patients: list[str]) -> np.ndarray:
        """float32 (B, d) of `field` for `patients` (B,)."""
        table = self.fields[field]
        if not patients:
            return np.zeros((0, table.shape[1]), dtype=np.float32)
        return table[[self.row_of[p] for p in patients]]


def read_embeddings(
    shard_dir: Path | str, manifest: Mapping, *, verify: bool = True
) -> EmbeddingTable:
    """The embedding side-car recorded in `manifest`, checked (sha256 with verify, fields, patients).

    PgoError naming the file when it is absent, altered, or lacks a field or a patient.
    """
    shard_dir = Path(shard_dir)
    record = manifest.get("embeddings")
    if not record:
        raise PgoError(
            f"{shard_dir / MANIFEST}: no embeddings recorded; run `pgo-shards embed-rna` first"
        )
    path, arrays = _read_recorded(
        shard_dir, record, verify=verify, remedy="re-run `pgo-shards embed-rna`"
    )
    patients = [str(p) for p in arrays.pop("patients", np.zeros(0, str))]
    missing = [p for p in manifest["patients"] if p not in set(patients)]
    if missing:
        raise PgoError(
            f"{path}: no embedding for patient {missing[0]!r} ({len(missing)} such); re-run `pgo-shards embed-rna`"
        )
    fields = {}
    for name, spec in record["fields"].items():
        table = arrays.get(name)
        if table is None or table.shape != (len(patients), spec["dim"]):
            raise PgoError(
                f"{path}: field {name!r} absent or not ({len(patients)}, {spec['dim']}) as {MANIFEST} says"
            )
        fields[name] = table.astype(np.float32, copy=False)
    return EmbeddingTable(fields=fields, row_of={p: i for i, p in enumerate(patients)})
