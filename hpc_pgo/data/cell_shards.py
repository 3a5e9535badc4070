"""Cell shards on disk: one WebDataset sample per cell, read back for MLP-A pretraining.

A sample, keyed ``c<row index in the h5ad, 9 digits>``::

    genes.npy    int64 (n,)   vocabulary indices of the expressed genes, ascending, unique
    values.npy   float32 (n,) their expression (> 0), same order; genes of one symbol are summed
    label.cls    ASCII int    the class index into manifest["classes"]
    cell.json    {"obs_name": ..., "type": <source type>}

``manifest.json`` (schema_version 1, kind "cells"): classes, label_map, vocab_digest of the
scGPT checkpoint, the source (path, layer, columns, shape), gene matching counts, counts (cells,
per class), dropped (per source type and reason), and the shard records (name, samples, bytes,
sha256). ``load_cells`` reads a set into memory (CellTable), ``verify_cells`` checks one (what
`pgo-shards verify` runs on cell shards), ``info_cells`` summarises it. Written by `pgo-shards
cells` (hpc_pgo.data.cells).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo.data.members import json_bytes, load_npy, npy_bytes, sha256_file
from hpc_pgo.data.shards import (
    VerifyReport,
    checked_shard_path,
    digest_problem,
    iter_samples,
    listed_shards,
    read_manifest,
)
from hpc_pgo.errors import PgoError

KIND = "cells"  # the manifest's kind
FIELDS = ("genes.npy", "values.npy", "label.cls", "cell.json")


def cell_sample(row: int, obs_name: str, source_type: str, label: int, genes, values) -> dict:
    """The WebDataset sample of one cell (fields in FIELDS, bytes)."""
    return {
        "__key__": f"c{row:09d}",
        "genes.npy": npy_bytes(genes, np.int64),
        "values.npy": npy_bytes(values, np.float32),
        "label.cls": str(label).encode(),
        "cell.json": json_bytes({"obs_name": obs_name, "type": source_type}),
    }


def read_cells_manifest(directory: str | os.PathLike, *, check_digest: bool = True) -> dict:
    """The manifest of a cell shard set; PgoError when the directory holds another kind."""
    manifest = read_manifest(directory, check_digest=check_digest)
    if manifest.get("kind") != KIND:
        raise PgoError(
            f"{directory}: a shard set of kind {manifest.get('kind', 'cohort')!r}; valid: cell "
            "shards written by pgo-shards cells"
        )
    return manifest


@dataclass
class CellTable:
    """All cells of a shard set in memory, CSR-like: cell c has genes[offsets[c]:offsets[c+1]].

    genes: int64 (nnz,) vocabulary ids, ascending within a cell; values: float32 (nnz,);
    offsets: int64 (n_cells + 1,); labels: int64 (n_cells,) class indices; classes: names.
    Memory: 12 bytes per stored entry (a 1M-cell atlas at ~1,500 genes/cell: ~18 GB).
    """

    genes: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    vocab_digest: str

    def __len__(self) -> int:
        return len(self.labels)

    def cell(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(gene ids (n,), values (n,)) of cell c."""
        lo, hi = self.offsets[c], self.offsets[c + 1]
        return self.genes[lo:hi], self.values[lo:hi]


def load_cells(directory: str | os.PathLike, *, verify_sha: bool = True) -> CellTable:
    """Read every cell of a cell shard set into a CellTable (shards checked against the manifest's
    sha256 first unless verify_sha is False)."""
    directory = Path(directory)
    manifest = read_cells_manifest(directory)
    genes, values, lengths, labels = [], [], [], []
    for index, entry in enumerate(manifest["shards"]):
        path = checked_shard_path(directory, entry, index)
        if not path.is_file():
            raise PgoError(f"{directory}: shard {entry['name']} listed in the manifest is missing")
        if verify_sha and sha256_file(path) != entry["sha256"]:
            raise PgoError(f"{directory}: shard {entry['name']}: sha256 differs from the manifest")
        for sample in iter_samples(path):
            g, v = load_npy(sample["genes.npy"]), load_npy(sample["values.npy"])
            genes.append(g)
            values.append(v)
            lengths.append(len(g))
            labels.append(int(sample["label.cls"]))
    if len(labels) != manifest["counts"]["cells"]:
        raise PgoError(
            f"{directory}: {len(labels)} cells in the shards, manifest counts {manifest['counts']['cells']}"
        )
    return CellTable(
        genes=np.concatenate(genes).astype(np.int64),
        values=np.concatenate(values).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(manifest["classes"]),
        vocab_digest=manifest["vocab_digest"],
    )


def _check_cell_sample(sample: dict, n_classes: int) -> list[str]:
    """Problems of one cell sample (empty when sound)."""
    fields = {k for k in sample if not k.startswith("__")}
    problems = [f"field {f}: missing" for f in FIELDS if f not in fields]
    problems += [f"field {f}: not a field of cell shards" for f in sorted(fields - set(FIELDS))]
    if problems:
        return problems
    try:
        genes, values = load_npy(sample["genes.npy"]), load_npy(sample["values.npy"])
        label = int(sample["label.cls"])
    except Exception as exc:  # any decoding failure is a finding
        return [f"does not decode ({' '.join(str(exc).split())})"]
    if genes.dtype != np.int64 or values.dtype != np.float32 or genes.shape != values.shape:
        problems.append(f"genes {genes.dtype} {genes.shape} / values {values.dtype} {values.shape}")
    elif genes.ndim != 1 or (len(genes) > 1 and np.any(np.diff(genes) <= 0)):
        problems.append("genes.npy: ids not ascending and unique")
    if not 0 <= label < n_classes:
        problems.append(f"label.cls {label}: outside 0..{n_classes - 1}")
    return problems


def verify_cells(directory: str | os.PathLike, *, decode: bool = True) -> VerifyReport:
    """Check every cell shard against the manifest (presence, bytes, sha256, sample counts and,
    with `decode`, every sample's fields and label), and the per-class counts."""
    directory = Path(directory)
    manifest = read_cells_manifest(directory, check_digest=False)
    report = VerifyReport(str(directory))
    if problem := digest_problem(manifest, directory):  # edited since written, or unsealed
        report.problems.append(f"manifest.json: {problem}")
    n_classes = len(manifest["classes"])
    per_class: Counter[int] = Counter()
    for entry, path in listed_shards(directory, manifest, report):
        report.bytes += path.stat().st_size
        if sha256_file(path) != entry["sha256"]:
            report.problems.append(f"shard {entry['name']}: sha256 differs from the manifest")
        count = 0
        try:
            for sample in iter_samples(path):
                count += 1
                if decode:
                    for problem in _check_cell_sample(sample, n_classes):
                        report.problems.append(
                            f"shard {entry['name']} sample {sample['__key__']}: {problem}"
                        )
                    if "label.cls" in sample:
                        per_class[int(sample["label.cls"])] += 1
        except Exception as exc:  # a damaged tar: report where reading stopped
            report.problems.append(
                f"shard {entry['name']}: unreadable after {count} samples ({' '.join(str(exc).split())})"
            )
        report.samples += count
        if count != entry["samples"]:
            report.problems.append(
                f"shard {entry['name']}: {count} samples, manifest says {entry['samples']}"
            )
    if decode and not report.problems:
        for i, name in enumerate(manifest["classes"]):
            if per_class[i] != manifest["counts"]["per_class"][name]:
                report.problems.append(
                    f"class {name}: {per_class[i]} cells, manifest says {manifest['counts']['per_class'][name]}"
                )
    return report


def info_cells(directory: str | os.PathLike) -> str:
    """A human summary of a cell shard set: cells per class, dropped cells, genes, shards."""
    m = read_cells_manifest(directory)
    c = m["counts"]
    lines = [
        f"cell shards {directory}, built by {m.get('created_by', '?')} from {m['source']['h5ad']} "
        f"({m['source']['matrix']}, label column {m['source']['label_col']})",
        f"cells {c['cells']} in {len(m['classes'])} classes: "
        + ", ".join(f"{name} {c['per_class'][name]}" for name in m["classes"]),
        f"genes: {m['genes']['in_vocab']} of {m['genes']['columns']} columns in the vocab "
        f"{m['vocab_digest'][:12]}...",
        f"shards: {len(m['shards'])}, {sum(s['bytes'] for s in m['shards']) / 2**20:.1f} MiB",
        "dropped: " + (", ".join(f"{n} x {why}" for why, n in m["dropped"].items()) or "none"),
    ]
    return "\n".join(lines)
