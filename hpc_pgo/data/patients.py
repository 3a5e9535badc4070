"""One row per patient: the omics vectors a shard set's patients carry, read once each.

``patient_vectors`` is the one reader of per-patient omics, used by the fold's Standardizer,
`pgo-shards embed-rna` and the CoxPH baselines. It reads the patient table (omics.npz,
hpc_pgo.data.sidecar), so its cost grows with the patients asked for, not with the shards; for
a shard set built before the table it reads each patient's first unit by offset, indexing only
the shards where those patients start. Both give the same float64 values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo.data.epochs import EpochPlan
from hpc_pgo.data.shards import MANIFEST
from hpc_pgo.data.sidecar import read_patient_table
from hpc_pgo.data.stages import UnitSpec, decode_unit, read_batches
from hpc_pgo.data.tarindex import index_shards
from hpc_pgo.errors import PgoError


@dataclass(frozen=True)
class PatientVectors:
    """patients (sorted); values[group] float64 (N, F); available[group] bool (N,)."""

    patients: list[str]
    values: dict[str, np.ndarray]
    available: dict[str, np.ndarray]


def check_groups(manifest: Mapping, groups: Sequence[str], shard_dir: Path) -> None:
    """Every requested omics group must be one the shard set has."""
    for group in groups:
        if group not in manifest["groups"]:
            have = ", ".join(manifest["groups"]) or "none"
            raise PgoError(
                f"{shard_dir / MANIFEST}: no omics group '{group}' in this shard set; "
                f"it has: {have}"
            )


def patient_vectors(
    shard_dir: Path | str,
    manifest: Mapping,
    groups: Sequence[str],
    patients: Iterable[str] | None = None,
    *,
    verify: bool = True,
) -> PatientVectors:
    """The omics `groups` of `patients` (default: every patient of the manifest), one row each,
    sorted by patient id. PgoError for a group or a patient the shard set does not have."""
    shard_dir = Path(shard_dir)
    check_groups(manifest, groups, shard_dir)
    wanted = sorted(set(manifest["patients"] if patients is None else patients))
    unknown = [p for p in wanted if p not in manifest["patients"]]
    if unknown:
        raise PgoError(
            f"{shard_dir / MANIFEST}: patient {unknown[0]!r} is not in the manifest "
            f"({len(unknown)} such)"
        )
    table = read_patient_table(shard_dir, manifest, verify=verify)
    if table is not None:
        rows = np.array([table.row_of[p] for p in wanted], dtype=np.int64)
        return PatientVectors(
            patients=wanted,
            values={g: table.values[g][rows].astype(np.float64) for g in groups},
            available={g: table.available[g][rows] for g in groups},
        )
    return _first_units(shard_dir, manifest, groups, wanted, verify=verify)


def _first_units(
    shard_dir: Path, manifest: Mapping, groups: Sequence[str], wanted: list[str], *, verify: bool
) -> PatientVectors:
    """patient_vectors without a patient table: each patient's first unit, read by offset from
    the shards where the patients start (all shards when the manifest lists no shard patients)."""
    entries = manifest["shards"]
    names = None
    if entries and all("patients" in entry for entry in entries):
        start_of: dict[str, str] = {}
        for entry in entries:
            for patient, _ in entry["patients"]:
                start_of.setdefault(patient, entry["name"])
        names = {start_of[p] for p in wanted if p in start_of}
    index = index_shards(shard_dir, manifest, verify=verify, names=names)
    first: dict[str, str] = {}
    for key, patient in index.patient_of.items():
        first.setdefault(patient, key)
    absent = [p for p in wanted if p not in first]
    if absent:
        raise PgoError(
            f"{shard_dir}: patient {absent[0]!r} has no sample in the shards ({len(absent)} such)"
        )
    spec = UnitSpec(
        split="test",
        image_size=None,
        image_format=None,
        groups={g: len(manifest["groups"][g]) for g in groups},
        masked=manifest.get("missing") == "mask",
        seed=0,
        epoch=0,
    )
    plan = EpochPlan(shard_order=(), batches=(tuple(first[p] for p in wanted),))
    (samples,) = read_batches(
        [0], plan=plan, index=index, shard_dir=shard_dir, suffixes=spec.suffixes
    )
    units = [decode_unit(sample, spec) for sample in samples]
    values, available = {}, {}
    for group in groups:
        width = len(manifest["groups"][group])
        values[group] = (
            np.stack([u[group] for u in units]).astype(np.float64)
            if units
            else np.zeros((0, width))
        )
        available[group] = np.array(
            [not spec.masked or bool(u["mask"][group]) for u in units], dtype=bool
        )
    return PatientVectors(patients=wanted, values=values, available=available)
