"""Fit a small scGPT on a single-cell atlas with scGPT's own objectives, saved in the official layout.

    pgo-shards fit-scgpt --h5ad cells.h5ad --out MODEL_DIR [--steps 300] [--seed 0]
                         [--d-model 64 --layers 2 --heads 4] [--layer counts] [--gene-col NAME]

For gene sets no public checkpoint knows (the demo's synthetic genes G0001..), and for tests
and benchmarks, where a whole-human checkpoint cannot be downloaded. The vocabulary is the
atlas's genes (sorted, after <pad>, <cls>, <eoc>); the weights start as scgpt's
TransformerModel initialises them under torch.manual_seed(seed) (write_random_checkpoint) and
are trained with scGPT's self-supervised pretraining objectives:

- GEP, masked gene-expression prediction: each cell tokenised as for embedding
  (hpc_pgo.models.scgpt.tokenize_sample: expressed genes, per-cell value bins 1..50, <cls>
  first), mask_ratio of the gene values (never <cls>, never padding) replaced by scGPT's mask
  value -1; the gene-token decoder predicts the masked bins;
- GEPC, the same prediction from the cell embedding (TransformerModel(..., MVC=True));

loss = masked MSE (scgpt.loss.masked_mse_loss) of the two on the masked bins, Adam. The cell
type labels are not used.

Output, written into ``.<name>.tmp-<pid>`` beside `out_dir` and renamed into place (an
existing checkpoint folder is replaced only with force):

    args.json      embsize, nheads, d_hid, nlayers, n_layers_cls, dropout, pad_token, pad_value
    vocab.json     token -> index
    best_model.pt  the state dict (torch's key names), loaded back strictly (load_scgpt) before
                   the rename: a folder that is there loads, every key
    fit.json       the recipe (atlas path and sha256, sizes, steps, seed, lr, batch, mask ratio)
                   and the training loss of every step

Deterministic: the same atlas, options and seed give the same weights (on the same machine
and torch thread count: CPU reductions are summed in an order that depends on them). The
caller's global torch random state is left as it was.

Cost (2 shared CPU cores): see the numbers in hpc_pgo/data/demo.py ("Cells behind the bulk").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpc_pgo import atomic
from hpc_pgo.data.staging import check_output_dir, staged_output
from hpc_pgo.errors import PgoError, check_options
from hpc_pgo.models.scgpt import (
    CHECKPOINT_FILES,
    SPECIAL_TOKENS,
    ScGPT,
    collate,
    load_scgpt,
    write_random_checkpoint,
)

log = logging.getLogger(__name__)

FIT_RECORD = "fit.json"
MASK_VALUE = -1.0  # scGPT's mask_value for masked input bins (pad_value is -2)


@dataclass(frozen=True)
class Atlas:
    """An atlas's cells in a vocabulary built from its genes.

    genes: the vocabulary's gene symbols (sorted, unique); cells[c] = (token ids (n,) int64
    ascending, values (n,) float32 > 0) of row rows[c]; dropped: rows with no expressed gene.
    """

    path: Path
    genes: list[str]
    cells: list[tuple[np.ndarray, np.ndarray]]
    rows: np.ndarray
    dropped: int
    n_rows: int


def read_atlas(
    path: str | os.PathLike, *, layer: str | None = None, gene_col: str | None = None
) -> Atlas:
    """Read an .h5ad's expression (X or layers/<layer>, non-negative) into cells over its own genes.

    Token ids are those of the vocabulary write_random_checkpoint builds from the genes
    (SPECIAL_TOKENS first, then the sorted unique symbols); columns of one symbol are summed.
    PgoError (naming the file, row or column) for a missing file, layer or gene column, a
    negative or non-finite value, or an atlas without an expressed cell.
    """
    from hpc_pgo.data import h5ad as cell_io

    path = Path(path)
    with cell_io.open_h5ad(path) as f:
        genes = cell_io.read_gene_names(f, path, gene_col)
        vocab_genes = sorted(set(genes) - set(SPECIAL_TOKENS))
        stoi = {g: i + len(SPECIAL_TOKENS) for i, g in enumerate(vocab_genes)}
        col_vocab = cell_io.column_to_vocab(genes, stoi)
        matrix = cell_io.expression_matrix(f, path, layer)
        n_rows = int(matrix.shape[0])
        where = "X" if layer is None else f"layers/{layer}"
        cells, rows = [], []
        for start, block in cell_io.iter_rows(matrix, n_rows):
            cell_io.check_values(block, start, path, where)
            for r in range(block.shape[0]):
                lo, hi = block.indptr[r], block.indptr[r + 1]
                ids, values = cell_io.cell_tokens(
                    block.indices[lo:hi], block.data[lo:hi], col_vocab
                )
                if len(ids):
                    cells.append((ids, values))
                    rows.append(start + r)
    if not cells:
        raise PgoError(f"--h5ad {path}: no cell expresses any gene ({n_rows} rows); nothing to fit")
    return Atlas(path, vocab_genes, cells, np.asarray(rows, np.int64), n_rows - len(cells), n_rows)


@dataclass
class FitResult:
    """What fit_scgpt did: the checkpoint folder, the loss per step, wall seconds, the atlas sizes."""

    model_dir: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_cells: int = 0
    n_genes: int = 0


def cell_seed(seed: int, step: int, index: int) -> int:
    """The tokeniser's seed (bin tie-breaks) of cell `index` of a step's batch: 32-bit."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


def tokenize_cells(
    scgpt: ScGPT,
    cells: Sequence[tuple[np.ndarray, np.ndarray]],
    seeds: Sequence[int],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch (ids, bins, padding mask) of cells [(token ids, values)], as embedding tokenises them."""
    from hpc_pgo.models.scgpt import tokenize_sample

    names = np.asarray(scgpt.vocab.get_itos(), dtype=object)
    tokens = [
        tokenize_sample(
            values,
            ids,
            names[ids],
            cls_id=scgpt.cls_id,
            pad_value=scgpt.pad_value,
            max_length=max_length,
            seed=s,
        )
        for (ids, values), s in zip(cells, seeds, strict=True)
    ]
    return collate(tokens, scgpt.pad_id, scgpt.pad_value)


def draw_mask(padding: torch.Tensor, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, L) bool: each gene position masked with probability mask_ratio; never <cls> (column 0) or padding."""
    masked = (torch.rand(padding.shape, generator=generator) < mask_ratio) & ~padding
    masked[:, 0] = False
    return masked


def objective(
    model: torch.nn.Module,
    ids: torch.Tensor,
    bins: torch.Tensor,
    padding: torch.Tensor,
    masked: torch.Tensor,
) -> torch.Tensor:
    """GEP + GEPC: masked MSE of the gene decoder's and of the cell-embedding decoder's bins."""
    from scgpt.loss import masked_mse_loss

    out = model(ids, bins.masked_fill(masked, MASK_VALUE), padding, MVC=True)
    return masked_mse_loss(out["mlm_output"], bins, masked) + masked_mse_loss(
        out["mvc_output"], bins, masked
    )


def masked_loss(
    scgpt: ScGPT,
    cells: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    mask_ratio: float = 0.4,
    max_length: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """The fit's objective (GEP + GEPC) on `cells` in eval mode (no dropout): the mean over
    batches of batch_size cells, masks and bin tie-breaks drawn from `seed` (the same cells and
    seed give the same masks, whatever the model: two checkpoints compare on the same task)."""
    model = scgpt.model
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(cells), batch_size):
                batch = cells[start : start + batch_size]
                ids, bins, padding = tokenize_cells(
                    scgpt,
                    batch,
                    [cell_seed(seed, 0, start + k) for k in range(len(batch))],
                    max_length,
                )
                masked = draw_mask(padding, mask_ratio, generator)
                loss = objective(model, ids, bins, padding, masked)
                total += float(loss) * len(batch)
                count += len(batch)
    finally:
        model.train(was_training)
    return total / count


def _check_fit_options(**options) -> None:
    rules = {
        "steps": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        "d_model": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
        "nlayers": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "nheads": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "lr": (lambda v: np.isfinite(v) and v > 0, "a number > 0"),
        "batch_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "mask_ratio": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
        "max_length": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2 (<cls> + a gene)"),
    }
    check_options(options, rules, "fit-scgpt")
    if options["d_model"] % options["nheads"]:
        raise PgoError(
            f"fit-scgpt: d_model {options['d_model']} is not a multiple of nheads {options['nheads']}"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fit_scgpt(
    atlas: str | os.PathLike | Atlas,
    out_dir: str | os.PathLike,
    *,
    steps: int = 300,
    seed: int = 0,
    d_model: int = 64,
    nlayers: int = 2,
    nheads: int = 4,
    d_hid: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 32,
    mask_ratio: float = 0.4,
    max_length: int = 1200,
    layer: str | None = None,
    gene_col: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> FitResult:
    """Fit an scGPT of the given sizes on the atlas (.h5ad path, or read_atlas's Atlas) and write
    it to out_dir in the official layout (see the module docstring); steps=0 writes the random
    initialisation. Each step: batch_size cells drawn without replacement (numpy, seeded),
    GEP + GEPC on mask_ratio of their bins, one Adam step at lr. Returns a FitResult.
    """
    _check_fit_options(
        steps=steps,
        seed=seed,
        d_model=d_model,
        nlayers=nlayers,
        nheads=nheads,
        lr=lr,
        batch_size=batch_size,
        mask_ratio=mask_ratio,
        max_length=max_length,
    )
    out = Path(out_dir).expanduser().resolve()
    check_output_dir(out, force, marker="args.json", what="an scGPT checkpoint", name="--out")
    if not isinstance(atlas, Atlas):
        atlas = read_atlas(atlas, layer=layer, gene_col=gene_col)
    record = {
        "atlas": str(atlas.path),
        "atlas_sha256": _sha256(atlas.path) if atlas.path.is_file() else None,
        "cells": len(atlas.cells),
        "genes": len(atlas.genes),
        "layer": layer,
        "gene_col": gene_col,
        "d_model": d_model,
        "nlayers": nlayers,
        "nheads": nheads,
        "d_hid": d_hid or d_model,
        "steps": steps,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "mask_ratio": mask_ratio,
        "max_length": max_length,
        "objectives": ["GEP", "GEPC"],
    }
    start = time.perf_counter()
    with staged_output(out) as tmp, torch.random.fork_rng(devices=[]):
        write_random_checkpoint(
            tmp,
            atlas.genes,
            d_model=d_model,
            nlayers=nlayers,
            nheads=nheads,
            d_hid=d_hid,
            seed=seed,
        )
        scgpt = load_scgpt(tmp)
        torch.manual_seed(seed)  # dropout
        losses = _train(scgpt, atlas.cells, record, progress=progress)
        state = {k: v.detach().cpu().contiguous() for k, v in scgpt.model.state_dict().items()}
        atomic.save_torch(tmp / "best_model.pt", state)
        atomic.write_text(tmp / FIT_RECORD, json.dumps({**record, "losses": losses}, indent=1))
        load_scgpt(tmp)  # strict: every key of the written file fits the model args.json describes
    seconds = time.perf_counter() - start
    log.info(
        "fitted scGPT %s (d %d, %d layers, %d genes) on %d cells: %d steps in %.0f s",
        out,
        d_model,
        nlayers,
        len(atlas.genes),
        len(atlas.cells),
        steps,
        seconds,
    )
    return FitResult(out, losses, seconds, len(atlas.cells), len(atlas.genes))


def _train(
    scgpt: ScGPT, cells: Sequence[tuple[np.ndarray, np.ndarray]], record: dict, *, progress: bool
) -> list[float]:
    """record["steps"] Adam steps of GEP + GEPC on the cells; returns the loss per step."""
    from tqdm.auto import tqdm

    model = scgpt.model.requires_grad_(True).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=record["lr"])
    seed = record["seed"]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(record["batch_size"], len(cells))
    losses = []
    for step in tqdm(range(record["steps"]), desc="fit scGPT", unit="step", disable=not progress):
        batch = rng.choice(len(cells), batch_size, replace=False)
        ids, bins, padding = tokenize_cells(
            scgpt,
            [cells[c] for c in batch],
            [cell_seed(seed, step + 1, k) for k in range(batch_size)],
            record["max_length"],
        )
        masked = draw_mask(padding, record["mask_ratio"], generator)
        loss = objective(model, ids, bins, padding, masked)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.requires_grad_(False).eval()
    return losses


__all__ = [
    "CHECKPOINT_FILES",
    "FIT_RECORD",
    "Atlas",
    "FitResult",
    "cell_seed",
    "draw_mask",
    "fit_scgpt",
    "masked_loss",
    "objective",
    "read_atlas",
    "tokenize_cells",
]
