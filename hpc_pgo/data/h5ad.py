"""Reading a single-cell AnnData file (.h5ad) straight from its HDF5 groups, block by block.

The expression matrix (X, or layers/<name>) is read in blocks of ROWS_PER_BLOCK rows: a sparse
(CSR) matrix stays sparse, only one block is ever densified (a dense X is read block by block).
Gene names come from var_names or a var column, cell types from an obs column; each error names
the file and the row, column or key. Readers: `pgo-shards cells` (hpc_pgo.data.cells) and
`pgo-shards fit-scgpt` (hpc_pgo.models.scgpt_fit).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from hpc_pgo.errors import PgoError

ROWS_PER_BLOCK = 1024  # rows read from the HDF5 matrix at a time (the only part densified)


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
