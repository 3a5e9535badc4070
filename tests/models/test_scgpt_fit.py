"""Fitting a tiny scGPT on the demo's atlas (real scgpt package), its checkpoint, and embed-rna with it."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from hpc_pgo.data import cli
from hpc_pgo.data.demo import ATLAS_FILE, write_demo_cohort
from hpc_pgo.errors import PgoError
from hpc_pgo.models.scgpt import ARGS_KEYS, checkpoint_digest, load_scgpt
from hpc_pgo.models.scgpt_fit import FIT_RECORD, Atlas, fit_scgpt, masked_loss, read_atlas

TINY = {"d_model": 32, "nlayers": 2, "nheads": 2, "batch_size": 16}
COHORT = {
    "n_patients": 24,
    "rois_per_patient": 1,
    "image_size": 16,
    "n_cnv": 6,
    "n_mut": 4,
    "n_rna": 60,
    "rna_model": "cells",
    "atlas_cells_per_type": 30,
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: much faster on a shared CPU, and the weights depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_demo_cohort(out, **COHORT)
    return out


@pytest.fixture(scope="module")
def split(cohort) -> tuple[Atlas, list]:
    """The atlas's cells: every 5th held out (60 cells), the rest to fit on (240)."""
    atlas = read_atlas(cohort / ATLAS_FILE)
    held = np.arange(len(atlas.cells)) % 5 == 0
    fit = Atlas(
        atlas.path,
        atlas.genes,
        [c for c, h in zip(atlas.cells, held, strict=True) if not h],
        atlas.rows[~held],
        atlas.dropped,
        atlas.n_rows,
    )
    return fit, [c for c, h in zip(atlas.cells, held, strict=True) if h]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, split) -> tuple[Path, Path]:
    """(step-0 checkpoint, 80-step checkpoint) of the same seed, on the fitting cells."""
    root = tmp_path_factory.mktemp("fit")
    torch.set_num_threads(1)
    start = fit_scgpt(split[0], root / "step0", steps=0, seed=3, **TINY)
    end = fit_scgpt(split[0], root / "step80", steps=80, seed=3, **TINY)
    assert start.losses == [] and len(end.losses) == 80
    return start.model_dir, end.model_dir


def test_read_atlas_gives_the_genes_and_every_cell(cohort, split):
    atlas = read_atlas(cohort / ATLAS_FILE)
    assert atlas.genes == [f"G{j:04d}" for j in range(1, 61)]
    assert len(atlas.cells) == atlas.n_rows == 300 and atlas.dropped == 0
    x = ad.read_h5ad(cohort / ATLAS_FILE).X.toarray()
    ids, values = atlas.cells[7]
    np.testing.assert_array_equal(ids - 3, np.flatnonzero(x[7]))  # after <pad>, <cls>, <eoc>
    np.testing.assert_array_equal(values, x[7][x[7] > 0])


def test_fit_lowers_the_masked_expression_loss_on_held_out_cells(fitted, split):
    start, end = (load_scgpt(d) for d in fitted)
    held = split[1]
    before, after = masked_loss(start, held, seed=5), masked_loss(end, held, seed=5)
    assert after < 0.6 * before, (before, after)
    record = json.loads((fitted[1] / FIT_RECORD).read_text())
    assert record["steps"] == 80 and len(record["losses"]) == 80
    assert np.mean(record["losses"][-10:]) < 0.6 * np.mean(record["losses"][:10])


def test_checkpoint_is_the_official_layout_and_reloads_strictly(fitted):
    start_dir, end_dir = fitted
    assert sorted(p.name for p in end_dir.iterdir()) == sorted(
        ["args.json", "vocab.json", "best_model.pt", FIT_RECORD]
    )
    args = json.loads((end_dir / "args.json").read_text())
    assert set(ARGS_KEYS) <= set(args) and args["embsize"] == 32 and args["nlayers"] == 2
    vocab = json.loads((end_dir / "vocab.json").read_text())
    assert list(vocab)[:3] == ["<pad>", "<cls>", "<eoc>"] and len(vocab) == 63
    saved = torch.load(end_dir / "best_model.pt", weights_only=True)
    loaded = load_scgpt(end_dir).model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # trained: the weights moved from the initialisation of the same seed
    initial = torch.load(start_dir / "best_model.pt", weights_only=True)
    assert initial.keys() == saved.keys()
    assert not torch.equal(initial["encoder.embedding.weight"], saved["encoder.embedding.weight"])
    assert not any(p.name.startswith(".") for p in end_dir.parent.iterdir())  # no temporary left


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, split):
    a = fit_scgpt(split[0], tmp_path / "a", steps=4, seed=1, **TINY)
    b = fit_scgpt(split[0], tmp_path / "b", steps=4, seed=1, **TINY)
    c = fit_scgpt(split[0], tmp_path / "c", steps=4, seed=2, **TINY)
    sa, sb, sc = (torch.load(r.model_dir / "best_model.pt", weights_only=True) for r in (a, b, c))
    assert a.losses == b.losses and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoder.embedding.weight"], sc["encoder.embedding.weight"])
    assert checkpoint_digest(a.model_dir) == checkpoint_digest(b.model_dir)


def test_replacing_needs_force_and_refuses_other_folders(tmp_path, split):
    out = tmp_path / "ckpt"
    fit_scgpt(split[0], out, steps=0, **TINY)
    with pytest.raises(PgoError, match="already holds an scGPT checkpoint; pass --force"):
        fit_scgpt(split[0], out, steps=0, **TINY)
    first = checkpoint_digest(out)
    fit_scgpt(split[0], out, steps=2, force=True, **TINY)
    assert checkpoint_digest(out) != first
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(PgoError, match="holds no scGPT checkpoint"):
        fit_scgpt(split[0], tmp_path / "notes", steps=0, force=True, **TINY)
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": -1}, "steps=-1 is invalid"),
        ({"mask_ratio": 1.0}, "mask_ratio=1.0 is invalid"),
        ({"d_model": 30, "nheads": 4}, "d_model 30 is not a multiple of nheads 4"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, split, options, message):
    with pytest.raises(PgoError, match=message) as err:
        fit_scgpt(split[0], tmp_path / "out", **{**TINY, **options})
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_bad_atlas_leaves_nothing(tmp_path):
    x = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, -3.0, 1.0]], dtype=np.float32))
    ad.AnnData(X=x, var=pd.DataFrame(index=["A", "B", "C"])).write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(PgoError, match=r"neg.h5ad: X row 1 holds a negative value"):
        fit_scgpt(tmp_path / "neg.h5ad", tmp_path / "out", steps=1, **TINY)
    with pytest.raises(PgoError, match="no such file"):
        fit_scgpt(tmp_path / "none.h5ad", tmp_path / "out", steps=1, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.h5ad"]


def test_cli_fits_then_embed_rna_runs_on_the_demo_shards(tmp_path, capsys):
    shards, cohort, ckpt = tmp_path / "shards", tmp_path / "cohort", tmp_path / "scgpt"
    argv = ["demo", "--out", str(shards), "--cohort-dir", str(cohort), "--rna", "cells"]
    argv += ["--patients", "16", "--rois", "1", "--image-size", "16", "--n-rna", "50"]
    argv += ["--atlas-cells-per-type", "12", "--workers", "1", "--no-progress"]
    assert cli.main(argv) == 0
    assert f"single-cell atlas: {cohort / ATLAS_FILE}" in capsys.readouterr().out

    argv = ["fit-scgpt", "--h5ad", str(cohort / ATLAS_FILE), "--out", str(ckpt), "--steps", "6"]
    argv += ["--d-model", "32", "--heads", "2", "--batch-size", "8", "--threads", "1"]
    assert cli.main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"fitted scGPT {ckpt}: d_model 32, 2 layers, 50 genes, 120 cells")

    assert cli.main(["embed-rna", str(shards), "--scgpt", str(ckpt), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert "50 of 50 genes in the scGPT vocab" in capsys.readouterr().out
    from hpc_pgo.data.shards import read_manifest
    from hpc_pgo.data.sidecar import read_embeddings

    manifest = read_manifest(shards)
    record = manifest["embeddings"]
    assert record["scgpt"]["digest"] == checkpoint_digest(ckpt)
    emb = read_embeddings(shards, manifest).fields["rna_emb"]
    assert emb.shape == (16, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert np.ptp(emb, axis=0).max() > 1e-3  # the patients' bulks do not all embed alike

    # a bad flag value: one line, exit 2, nothing written
    assert cli.main([*argv[:4], str(tmp_path / "x"), "--steps", "1", "--heads", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fit-scgpt: d_model 64 is not a multiple of nheads 3")
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()
