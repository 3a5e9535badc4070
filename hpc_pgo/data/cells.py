"""`pgo-shards cells`: single-cell AnnData (.h5ad) into WebDataset cell shards for MLP-A pretraining.

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

``manifest.json`` (kind "cells") and reading the set back: hpc_pgo.data.cell_shards; reading the
h5ad: hpc_pgo.data.h5ad.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
import yaml
from tqdm import tqdm

import hpc_pgo
from hpc_pgo.data.cell_shards import KIND, cell_sample
from hpc_pgo.data.h5ad import (
    cell_tokens,
    check_values,
    column_to_vocab,
    expression_matrix,
    iter_rows,
    open_h5ad,
    read_cell_types,
    read_gene_names,
)
from hpc_pgo.data.members import TAR_OPTIONS
from hpc_pgo.data.shards import (
    SCHEMA_VERSION,
    SHARD_GLOB,
    SHARD_PATTERN,
    shard_record,
    write_manifest,
)
from hpc_pgo.data.staging import check_output_dir, staged_output
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

NO_TYPE = "<no type>"  # how a missing (NaN) obs label is counted among the dropped


NO_VOCAB_GENE = "no expressed gene in the vocabulary"


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
