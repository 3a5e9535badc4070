"""The fold's omics z-scores: statistics of its TRAIN patients, one vector per patient.

Fitted once per fold by rank 0 from ``patient_vectors`` (the shard set's patient table, read
without indexing a shard), saved as JSON beside the fold's outputs, loaded by every rank; the
loader refuses one fitted on other patients than the fold's train set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo.atomic import write_bytes
from hpc_pgo.data.folds import FoldData, require_keys
from hpc_pgo.data.patients import check_groups, patient_vectors
from hpc_pgo.data.shards import MANIFEST, read_manifest
from hpc_pgo.errors import PgoError

_MIN_STD = 1e-8  # a feature this flat over the train patients is constant: divide by 1


def patients_digest(patients: Iterable[str]) -> str:
    """sha256 of the sorted patient ids joined by newlines: names a train set without listing it."""
    return hashlib.sha256("\n".join(sorted(patients)).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature z-scores of omics groups with the statistics of one fold's TRAIN patients.

    z = (x - mean) / std per feature, mean and std (population, ddof = 0) over the train patients,
    ONE vector per patient (the one its units carry), so a patient with many ROIs counts once. A
    std below 1e-8 (a feature constant over the train patients) is replaced by 1. With a mask
    (--missing mask) only patients whose group is available count. Fit once per fold, save with
    the run's outputs; the loader refuses one fitted on other patients than the fold's train set.
    """

    cohort: str
    patients_sha256: str
    n_patients: dict[str, int]
    features: dict[str, tuple[str, ...]]
    mean: dict[str, np.ndarray]  # float64 (F,)
    std: dict[str, np.ndarray]  # float64 (F,)

    @classmethod
    def fit(
        cls,
        shard_dir: Path | str,
        train_patients: Iterable[str],
        groups: Sequence[str],
        *,
        verify: bool = True,
    ) -> Standardizer:
        """Statistics of `groups` over `train_patients`, one row per patient from
        hpc_pgo.data.patients.patient_vectors (the patient table; no shard is indexed)."""
        shard_dir = Path(shard_dir)
        manifest = require_keys(read_manifest(shard_dir), shard_dir)
        train = sorted(set(train_patients))
        check_groups(manifest, groups, shard_dir)
        unknown = [p for p in train if p not in manifest["patients"]]
        if unknown:
            raise PgoError(
                f"{shard_dir / MANIFEST}: train patient {unknown[0]!r} is not in the "
                f"manifest ({len(unknown)} such)"
            )
        vectors = patient_vectors(shard_dir, manifest, groups, train, verify=verify)
        mean, std, counts = {}, {}, {}
        for group in groups:
            values = vectors.values[group][vectors.available[group]]
            if not len(values):
                raise PgoError(
                    f"{shard_dir}: omics group '{group}' is available for none of the "
                    f"{len(train)} train patients"
                )
            mean[group] = values.mean(axis=0)
            spread = values.std(axis=0)
            std[group] = np.where(spread < _MIN_STD, 1.0, spread)
            counts[group] = len(values)
        return cls(
            cohort=str(manifest["cohort"]),
            patients_sha256=patients_digest(train),
            n_patients=counts,
            features={g: tuple(manifest["groups"][g]) for g in groups},
            mean=mean,
            std=std,
        )

    def apply(self, group: str, values: np.ndarray) -> np.ndarray:
        """(..., F) raw values -> float32 (..., F) z-scores (x - mean) / std."""
        return ((values - self.mean[group]) / self.std[group]).astype(np.float32)

    def save(self, path: Path | str) -> None:
        """Write as JSON (exact float64 round trip), atomically."""
        record = {
            "kind": "hpc_pgo.standardizer",
            "version": 1,
            "cohort": self.cohort,
            "patients_sha256": self.patients_sha256,
            "groups": {
                g: {
                    "features": list(self.features[g]),
                    "n_patients": self.n_patients[g],
                    "mean": self.mean[g].tolist(),
                    "std": self.std[g].tolist(),
                }
                for g in self.features
            },
        }
        write_bytes(Path(path), json.dumps(record, indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, path: Path | str) -> Standardizer:
        """Read what save wrote; a malformed file raises PgoError naming it."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("kind") != "hpc_pgo.standardizer" or record.get("version") != 1:
                raise ValueError("not an hpc_pgo standardizer version 1")
            groups = record["groups"]
            features = {g: tuple(map(str, v["features"])) for g, v in groups.items()}
            mean = {g: np.asarray(v["mean"], dtype=np.float64) for g, v in groups.items()}
            std = {g: np.asarray(v["std"], dtype=np.float64) for g, v in groups.items()}
            for g in groups:
                if not mean[g].shape == std[g].shape == (len(features[g]),) or (std[g] <= 0).any():
                    raise ValueError(f"group {g!r}: mean/std do not match its features")
            return cls(
                cohort=str(record["cohort"]),
                patients_sha256=str(record["patients_sha256"]),
                n_patients={g: int(v["n_patients"]) for g, v in groups.items()},
                features=features,
                mean=mean,
                std=std,
            )
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
        ) as exn:
            raise PgoError(f"{path}: not a readable standardizer ({exn})") from exn


def check_standardizer(standardizer: Standardizer, data: FoldData, groups: Sequence[str]) -> None:
    """The standardizer must come from this fold's train patients and cover the requested groups."""
    if standardizer.patients_sha256 != patients_digest(data.train):
        raise PgoError(
            f"standardizer was fitted on other patients than fold {data.fold}'s "
            f"{len(data.train)} train patients of {data.shard_dir}; fit it with "
            f"Standardizer.fit(shard_dir, open_fold(shard_dir, {data.fold}).train, groups)"
        )
    for group in groups:
        if group not in standardizer.features:
            raise PgoError(
                f"standardizer has no statistics for omics group '{group}'; it has: "
                f"{', '.join(standardizer.features) or 'none'}"
            )
        if list(standardizer.features[group]) != list(data.groups[group]):
            raise PgoError(
                f"standardizer's '{group}' features differ from {data.shard_dir / MANIFEST}"
                f"'s (another cohort or build)"
            )
