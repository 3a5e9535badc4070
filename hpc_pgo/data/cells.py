"""Cell shards: single-cell AnnData (.h5ad) into WebDataset shards for MLP-A pretraining.

    pgo-shards cells --h5ad pbmc.h5ad --scgpt CKPT_DIR --label-col bulk_labels \\
        --label-map cell_types.yaml [--layer counts] [--gene-col feature_name] --out shards/cells

Input: an .h5ad whose X (or ``--layer NAME``) holds non-negative expression (raw counts, or any
per-cell monotone transform of them: scGPT bins each cell by rank), genes as columns named by
HGNC symbol in ``var_names`` (or in the var column ``--gene-col``), and the cell type in the obs
column ``--label-col``. The matrix is read in blocks of rows straight from the HDF5 file: a sparse
(CSR) matrix stays sparse, only one block of rows is ever densified (a dense X is read block by
block).

The label map (YAML) names the classifier's categories and where each source type goes::

    classes: [B, Monocyte, NK, T]        # the classifier's categories; index = label
    map:                                 # source cell type (obs value) -> class
      "CD19+ B": B
      "CD14+ Monocyte": Monocyte
      "CD56+ NK": NK
      "CD4+/CD25 T Reg": T

The paper maps its atlas to 17 classes; any list works. A cell whose type is not a key of ``map``
(or has no type) is dropped and counted per type in the manifest; so is a cell with no expressed
gene of the checkpoint's vocabulary.

Output, one sample per kept cell, keyed ``c<row index in the h5ad, 9 digits>``:

    genes.npy    int64 (n,)   vocabulary indices of the expressed genes, ascending, unique
    values.npy   float32 (n,) their expression (> 0), same order; genes of one symbol are summed
    label.cls    ASCII int    the class index into manifest["classes"]
    cell.json    {"obs_name": ..., "type": <source type>}

``manifest.json`` (schema_version 1, kind "cells"): classes, label_map, vocab_digest of the
checkpoint, the source (path, layer, columns, shape), gene matching counts, counts (cells, per
class), dropped (per source type and reason), and the shard records (name, samples, bytes,
sha256). ``pgo-shards verify`` checks cell shards with ``verify_cells``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
import webdataset as wds
import yaml
from tqdm import tqdm

import hpc_pgo
from hpc_pgo.data.members import TAR_OPTIONS, json_bytes, load_npy, npy_bytes, sha256_file
from hpc_pgo.data.shards import (
    SCHEMA_VERSION,
    SHARD_GLOB,
    SHARD_PATTERN,
    VerifyReport,
    digest_problem,
    iter_samples,
    read_manifest,
    shard_record,
    write_manifest,
)
from hpc_pgo.data.staging import check_output_dir, staged_output
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

KIND = "cells"
ROWS_PER_BLOCK = 1024  # rows read from the HDF5 matrix at a time (the only part densified)
NO_TYPE = "<no type>"  # how a missing (NaN) obs label is counted among the dropped
NO_VOCAB_GENE = "no expressed gene in the vocabulary"
FIELDS = ("genes.npy", "values.npy", "label.cls", "cell.json")


# --------------------------------------------------------------------------- label map


@dataclass(frozen=True)
class LabelMap:
    """The classifier's categories and the source type -> class table (see the module text)."""

    classes: tuple[str, ...]
    mapping: dict[str, str]

    def index(self, source_type: str) -> int | None:
        """Class index of a source cell type, None when the type is not mapped (cell dropped)."""
        name = self.mapping.get(source_type)
        return None if name is None else self.classes.index(name)


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """Read and check a label map YAML: {classes: [names], map: {source type: class name}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PgoError(f"--label-map {path}: no such file") from None
    except yaml.YAMLError as err:
        raise PgoError(
            f"--label-map {path}: not valid YAML ({' '.join(str(err).split())})"
        ) from None
    if not isinstance(data, dict) or set(data) != {"classes", "map"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PgoError(
            f"--label-map {path}: has {keys}; valid: a mapping with exactly the keys "
            "classes (a list of class names) and map ({source type: class name})"
        )
    classes, mapping = data["classes"], data["map"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise PgoError(f"--label-map {path}: classes must be a non-empty list of names")
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if repeated:
        raise PgoError(f"--label-map {path}: class {repeated[0]!r} is listed twice in classes")
    if not isinstance(mapping, dict) or not mapping:
        raise PgoError(f"--label-map {path}: map must be a non-empty {{source type: class}} table")
    for source, name in mapping.items():
        if name not in classes:
            raise PgoError(
                f"--label-map {path}: map[{source!r}] = {name!r} is not in classes; "
                f"valid: {', '.join(classes)}"
            )
    return LabelMap(tuple(classes), {str(k): str(v) for k, v in mapping.items()})


# --------------------------------------------------------------------------- reading the h5ad


def open_h5ad(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise PgoError(f"--h5ad {path}: no such file") from None
    except OSError as err:
        raise PgoError(f"--h5ad {path}: not an HDF5 (.h5ad) file ({err})") from None


def expression_matrix(f: h5py.File, path: Path, layer: str | None) -> Any:
    """The expression matrix as a row-sliceable object (anndata's backed sparse dataset, or the
    h5py dataset of a dense matrix): X, or layers/<layer>. Nothing is read yet."""
    from anndata.io import sparse_dataset

    if layer is None:
        where, node = "X", f.get("X")
    else:
        layers = f.get("layers")
        available = sorted(layers) if layers is not None else []
        if layer not in available:
            raise PgoError(
                f"--h5ad {path}: no layer {layer!r}; valid: {', '.join(available) or 'none'} "
                "(or leave out --layer to read X)"
            )
        where, node = f"layers/{layer}", layers[layer]
    if node is None:
        raise PgoError(f"--h5ad {path}: has no {where} matrix")
    if isinstance(node, h5py.Group):
        encoding = node.attrs.get("encoding-type", "")
        if encoding != "csr_matrix":
            # CSC rows would be gathered across the whole file for every block of cells.
            raise PgoError(
                f"--h5ad {path}: {where} is {encoding or 'an unknown encoding'}; valid: "
                "csr_matrix or a dense array (convert with adata.X = adata.X.tocsr())"
            )
        return sparse_dataset(node)
    return node


def _frame(f: h5py.File, key: str):
    from anndata.io import read_elem

    return read_elem(f[key])


def read_cell_types(f: h5py.File, path: Path, label_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(obs[label_col] as an object array of str, None where missing; obs_names as str);
    PgoError listing the obs columns when label_col is absent."""
    obs = _frame(f, "obs")
    if label_col not in obs.columns:
        raise PgoError(
            f"--h5ad {path}: obs has no column {label_col!r} (--label-col); obs columns: "
            f"{', '.join(map(str, obs.columns)) or 'none'}"
        )
    column = obs[label_col]
    types = np.array([None if v is None or v != v else str(v) for v in column], dtype=object)
    return types, np.asarray(obs.index, dtype=str)


def read_gene_names(f: h5py.File, path: Path, gene_col: str | None) -> list[str]:
    """Gene names of the matrix columns: var_names, or var[gene_col]."""
    var = _frame(f, "var")
    if gene_col is None:
        return [str(g) for g in var.index]
    if gene_col not in var.columns:
        raise PgoError(
            f"--h5ad {path}: var has no column {gene_col!r} (--gene-col); var columns: "
            f"{', '.join(map(str, var.columns)) or 'none'} (leave it out to use var_names)"
        )
    return [str(g) for g in var[gene_col]]


def column_to_vocab(genes: list[str], vocab: Mapping[str, int]) -> np.ndarray:
    """Vocabulary index of each matrix column (int64, -1 where the gene is not in the vocab)."""
    return np.array([vocab.get(g, -1) for g in genes], dtype=np.int64)


def iter_rows(
    matrix: Any, n_rows: int, block: int = ROWS_PER_BLOCK
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """(first row index, CSR block of up to `block` rows) over the matrix, in row order."""
    for start in range(0, n_rows, block):
        chunk = matrix[start : min(start + block, n_rows)]
        yield start, chunk.tocsr() if sp.issparse(chunk) else sp.csr_matrix(np.asarray(chunk))


def cell_tokens(
    columns: np.ndarray, values: np.ndarray, col_vocab: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One cell's (gene ids, values) in the vocabulary: columns outside the vocab and zeros dropped,
    columns of the same gene summed, ids ascending. columns: (k,) matrix columns of the stored
    entries; values: (k,) their expression. Returns int64 (n,), float32 (n,)."""
    ids = col_vocab[columns]
    keep = (ids >= 0) & (values != 0)
    ids, vals = ids[keep], values[keep].astype(np.float64)
    unique, inverse = np.unique(ids, return_inverse=True)
    summed = np.bincount(inverse, weights=vals, minlength=len(unique))
    return unique.astype(np.int64), summed.astype(np.float32)


# --------------------------------------------------------------------------- writing


def cell_sample(row: int, obs_name: str, source_type: str, label: int, genes, values) -> dict:
    """The WebDataset sample of one cell (fields in FIELDS, bytes)."""
    return {
        "__key__": f"c{row:09d}",
        "genes.npy": npy_bytes(genes, np.int64),
        "values.npy": npy_bytes(values, np.float32),
        "label.cls": str(label).encode(),
        "cell.json": json_bytes({"obs_name": obs_name, "type": source_type}),
    }


def check_values(block: sp.csr_matrix, start: int, path: Path, where: str) -> None:
    if block.nnz and not np.all(np.isfinite(block.data)):
        row = start + int(
            np.searchsorted(block.indptr, np.flatnonzero(~np.isfinite(block.data))[0], "right") - 1
        )
        raise PgoError(
            f"--h5ad {path}: {where} row {row} holds NaN or inf; valid: finite expression"
        )
    if block.nnz and block.data.min() < 0:
        row = start + int(
            np.searchsorted(block.indptr, np.flatnonzero(block.data < 0)[0], "right") - 1
        )
        raise PgoError(
            f"--h5ad {path}: {where} row {row} holds a negative value; valid: non-negative "
            "expression (counts or log1p counts, not z-scores; pick one with --layer)"
        )


def write_cells(
    h5ad: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab: Mapping[str, int],
    vocab_digest: str,
    label_col: str,
    label_map: LabelMap,
    layer: str | None = None,
    gene_col: str | None = None,
    force: bool = False,
    progress: bool = True,
    shard_size_mb: float = 256,
    shard_max_count: int = 10000,
) -> dict:
    """Convert an .h5ad into cell shards at `out_dir` (see the module text); returns the manifest.

    vocab: gene symbol -> vocabulary index of the scGPT checkpoint; vocab_digest: its digest
    (recorded so that pretraining refuses shards made for another vocabulary). Deterministic:
    the same inputs give byte-identical shards. Bad input raises PgoError before anything is
    written; on any error nothing is left at `out_dir`.
    """
    path = Path(h5ad)
    out = Path(out_dir).expanduser().resolve()
    if shard_size_mb <= 0 or shard_max_count < 1:
        raise PgoError(
            f"shard limits: size {shard_size_mb} MB and count {shard_max_count} must be positive"
        )
    check_output_dir(out, force)
    with open_h5ad(path) as f:
        types, obs_names = read_cell_types(f, path, label_col)
        genes = read_gene_names(f, path, gene_col)
        matrix = expression_matrix(f, path, layer)
        n_rows, n_cols = matrix.shape
        if n_cols != len(genes) or n_rows != len(types):
            raise PgoError(
                f"--h5ad {path}: matrix {n_rows} x {n_cols} but obs {len(types)} x var {len(genes)}"
            )
        col_vocab = column_to_vocab(genes, vocab)
        matched = int((col_vocab >= 0).sum())
        if matched == 0:
            raise PgoError(
                f"--h5ad {path}: none of the {n_cols} genes ({', '.join(genes[:3])}, ...) is in the "
                "checkpoint's vocabulary; valid: HGNC symbols (pick the var column with --gene-col)"
            )
        with staged_output(out) as tmp:
            counts, dropped = _write_samples(
                matrix, n_rows, types, obs_names, col_vocab, label_map, tmp,
                where=f"layers/{layer}" if layer else "X", path=path, progress=progress,
                shard_size_mb=shard_size_mb, shard_max_count=shard_max_count,
            )  # fmt: skip
            if not sum(counts.values()):
                raise PgoError(
                    f"--h5ad {path}: every cell was dropped ({dict(dropped)}); check --label-col "
                    f"{label_col!r} and the label map's source types"
                )
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "kind": KIND,
                "created_by": f"hpc_pgo {hpc_pgo.__version__}",
                "source": {
                    "h5ad": str(path.resolve()),
                    "matrix": f"layers/{layer}" if layer else "X",
                    "label_col": label_col,
                    "gene_col": gene_col,
                    "shape": [int(n_rows), int(n_cols)],
                },
                "vocab_digest": vocab_digest,
                "genes": {
                    "columns": int(n_cols),
                    "in_vocab": matched,
                    "vocab_ids": len(set(col_vocab[col_vocab >= 0].tolist())),
                },
                "classes": list(label_map.classes),
                "label_map": dict(sorted(label_map.mapping.items())),
                "counts": {
                    "cells": int(sum(counts.values())),
                    "per_class": {c: int(counts.get(c, 0)) for c in label_map.classes},
                },
                "dropped": {k: int(v) for k, v in sorted(dropped.items())},
                "shards": [shard_record(p) for p in sorted(tmp.glob(SHARD_GLOB))],
            }
            write_manifest(tmp, manifest)
    log.info(
        "wrote %s: %d cells, %d dropped", out, manifest["counts"]["cells"], sum(dropped.values())
    )
    return manifest


def _write_samples(
    matrix, n_rows, types, obs_names, col_vocab, label_map, directory, *, where, path, progress,
    shard_size_mb, shard_max_count,
) -> tuple[Counter, Counter]:  # fmt: skip
    """Stream the rows into ShardWriter; returns (kept cells per class, dropped per reason)."""
    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    pattern = str(directory).replace("%", "%%") + "/" + SHARD_PATTERN
    bar = tqdm(total=n_rows, unit="cell", disable=not progress, desc="pgo-shards cells")
    with bar, wds.ShardWriter(
        pattern, maxcount=shard_max_count, maxsize=shard_size_mb * 2**20, verbose=0,
        encoder=False, **TAR_OPTIONS,
    ) as sink:  # fmt: skip
        for start, block in iter_rows(matrix, n_rows):
            check_values(block, start, path, where)
            for offset in range(block.shape[0]):
                row = start + offset
                source = types[row]
                label = None if source is None else label_map.index(source)
                if label is None:
                    dropped[f"unmapped type: {source if source is not None else NO_TYPE}"] += 1
                    continue
                lo, hi = block.indptr[offset], block.indptr[offset + 1]
                ids, vals = cell_tokens(block.indices[lo:hi], block.data[lo:hi], col_vocab)
                if len(ids) == 0:
                    dropped[NO_VOCAB_GENE] += 1
                    continue
                sink.write(cell_sample(row, str(obs_names[row]), source, label, ids, vals))
                counts[label_map.classes[label]] += 1
            bar.update(block.shape[0])
    return counts, dropped


# --------------------------------------------------------------------------- reading back


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
    for entry in manifest["shards"]:
        path = directory / entry["name"]
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
    listed = {s["name"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in directory.glob(SHARD_GLOB) if p.name not in listed):
        report.problems.append(f"shard {extra}: present but not in the manifest")
    for entry in manifest["shards"]:
        path = directory / entry["name"]
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"shard {entry['name']}: missing")
            continue
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


# --------------------------------------------------------------------------- command line


def checkpoint_vocab(model_dir: str | os.PathLike) -> tuple[dict[str, int], str]:
    """(gene symbol -> index, vocab digest) of an scGPT checkpoint folder's vocab.json (special
    tokens left out: they are not genes). The digest is hpc_pgo.models.scgpt.vocab_digest."""
    from hpc_pgo.models.scgpt import SPECIAL_TOKENS, read_vocab, vocab_digest

    path = Path(model_dir) / "vocab.json"
    if not path.is_file():
        raise PgoError(
            f"--scgpt {model_dir}: no vocab.json there; valid: an scGPT checkpoint folder "
            "(args.json, vocab.json, best_model.pt)"
        )
    vocab = read_vocab(path)
    stoi = {g: int(i) for g, i in vocab.get_stoi().items() if g not in SPECIAL_TOKENS}
    return stoi, vocab_digest(vocab)


def cmd_cells(args) -> int:
    """`pgo-shards cells`: write cell shards and print a one-line summary."""
    vocab, digest = checkpoint_vocab(args.scgpt)
    manifest = write_cells(
        args.h5ad,
        args.out,
        vocab=vocab,
        vocab_digest=digest,
        label_col=args.label_col,
        label_map=read_label_map(args.label_map),
        layer=args.layer,
        gene_col=args.gene_col,
        force=args.force,
        progress=not args.no_progress,
        shard_size_mb=args.shard_size_mb,
        shard_max_count=args.shard_max_count,
    )
    dropped = sum(manifest["dropped"].values())
    print(
        f"wrote {args.out}: {manifest['counts']['cells']} cells in {len(manifest['classes'])} classes, "
        f"{len(manifest['shards'])} shards, {dropped} cells dropped"
        + (f" ({', '.join(f'{n} {k}' for k, n in manifest['dropped'].items())})" if dropped else "")
    )
    return 0


def add_cells_parser(sub) -> None:
    """Register `pgo-shards cells` on the subcommand parsers of hpc_pgo.data.cli."""
    p = sub.add_parser(
        "cells",
        help="single-cell AnnData (.h5ad) into cell shards for MLP-A pretraining",
        description="Convert an .h5ad (X or a layer of non-negative expression; sparse kept "
        "sparse) into cell shards: gene ids in the scGPT checkpoint's vocab, values, and the "
        "cell type mapped to the classifier's classes by --label-map (format: "
        "hpc_pgo/data/cells.py). Unmapped types are dropped and counted in the manifest.",
    )
    p.add_argument("--h5ad", required=True, help="the AnnData file")
    p.add_argument(
        "--scgpt", required=True, metavar="DIR", help="scGPT checkpoint folder (its vocab.json)"
    )
    p.add_argument("--label-col", required=True, help="obs column holding the cell type")
    p.add_argument(
        "--label-map", required=True, metavar="YAML", help="{classes: [...], map: {type: class}}"
    )
    p.add_argument("--layer", help="read layers/LAYER instead of X (e.g. counts)")
    p.add_argument("--gene-col", help="var column with gene symbols (default: var_names)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing shard set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--shard-size-mb", type=float, default=256, help="close a shard past this")
    p.add_argument("--shard-max-count", type=int, default=10000, help="cells per shard")
    p.set_defaults(func=cmd_cells)


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
