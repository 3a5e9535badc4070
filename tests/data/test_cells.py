"""Cell shards from real single-cell data: scanpy's pbmc68k_reduced (700 cells, 765 genes, 10
types in obs["bulk_labels"]; shipped inside the scanpy wheel), counts rebuilt from .raw as
round(expm1(raw.X) * n_counts / 1e4), a tiny random scGPT checkpoint over its 765 genes."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from hpc_pgo.data.cell_shards import load_cells, verify_cells
from hpc_pgo.data.cells import NO_VOCAB_GENE, checkpoint_vocab, read_label_map, write_cells
from hpc_pgo.data.cli import main as pgo_shards
from hpc_pgo.data.h5ad import cell_tokens
from hpc_pgo.data.members import load_npy
from hpc_pgo.data.shards import iter_samples, read_manifest
from hpc_pgo.errors import PgoError

# 6 of the 10 pbmc types mapped onto 5 classes; the other 4 types are dropped and counted
LABEL_MAP = {
    "classes": ["B", "Monocyte", "Dendritic", "T", "NK"],
    "map": {
        "CD19+ B": "B",
        "CD14+ Monocyte": "Monocyte",
        "Dendritic": "Dendritic",
        "CD4+/CD25 T Reg": "T",
        "CD8+ Cytotoxic T": "T",
        "CD56+ NK": "NK",
    },
}


def pbmc_counts() -> ad.AnnData:
    """pbmc68k_reduced with X = the rebuilt counts (CSR float32), obs bulk_labels and n_counts."""
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    counts = np.rint(
        np.expm1(pbmc.raw.X.toarray()) * pbmc.obs["n_counts"].to_numpy()[:, None] / 1e4
    )
    return ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pbmc.obs[["bulk_labels", "n_counts"]].copy(),
        var=pbmc.raw.var[[]].copy(),
    )


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory) -> dict:
    """Files: counts.h5ad, the tiny checkpoint, label_map.yaml; and the AnnData itself."""
    from hpc_pgo.models.scgpt import write_random_checkpoint

    root = tmp_path_factory.mktemp("pbmc")
    adata = pbmc_counts()
    adata.write_h5ad(root / "counts.h5ad")
    ckpt = write_random_checkpoint(
        root / "ckpt", list(adata.var_names), d_model=16, nlayers=1, nheads=2
    )
    (root / "label_map.yaml").write_text(yaml.safe_dump(LABEL_MAP))
    return {"root": root, "adata": adata, "h5ad": root / "counts.h5ad", "ckpt": ckpt,
            "label_map": root / "label_map.yaml"}  # fmt: skip


def _write(pbmc, out: Path, h5ad=None, **kw) -> dict:
    vocab, digest = checkpoint_vocab(pbmc["ckpt"])
    return write_cells(
        h5ad or pbmc["h5ad"], out, vocab=vocab, vocab_digest=digest, label_col="bulk_labels",
        label_map=read_label_map(pbmc["label_map"]), progress=False, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def shards(pbmc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cells") / "pbmc"
    code = pgo_shards([
        "cells", "--h5ad", str(pbmc["h5ad"]), "--scgpt", str(pbmc["ckpt"]), "--label-col",
        "bulk_labels", "--label-map", str(pbmc["label_map"]), "--out", str(out), "--no-progress",
        "--shard-max-count", "250",
    ])  # fmt: skip
    assert code == 0
    return out


def test_counts_and_dropped_types_match_the_obs_table(pbmc, shards):
    manifest = read_manifest(shards)
    types = pbmc["adata"].obs["bulk_labels"].astype(str)
    expected = {c: 0 for c in LABEL_MAP["classes"]}
    for source, name in LABEL_MAP["map"].items():
        expected[name] += int((types == source).sum())
    assert manifest["counts"]["per_class"] == expected
    unmapped = sorted(set(types) - set(LABEL_MAP["map"]))
    assert len(unmapped) == 4
    assert manifest["dropped"] == {f"unmapped type: {t}": int((types == t).sum()) for t in unmapped}
    assert manifest["counts"]["cells"] + sum(manifest["dropped"].values()) == pbmc["adata"].n_obs
    assert manifest["classes"] == LABEL_MAP["classes"]
    assert manifest["label_map"] == LABEL_MAP["map"]
    assert len(manifest["shards"]) == 3  # 617 cells at 250 per shard


def test_each_cell_holds_its_counts_in_vocab_ids(pbmc, shards):
    from hpc_pgo.models.scgpt import read_vocab, vocab_digest

    vocab = read_vocab(pbmc["ckpt"] / "vocab.json")
    manifest = read_manifest(shards)
    assert manifest["vocab_digest"] == vocab_digest(vocab)
    adata = pbmc["adata"]
    names = list(adata.obs_names)
    classes = LABEL_MAP["classes"]
    seen = 0
    for entry in manifest["shards"]:
        for sample in iter_samples(shards / entry["name"]):
            row = int(sample["__key__"][1:])
            genes, values = load_npy(sample["genes.npy"]), load_npy(sample["values.npy"])
            dense = adata.X[row].toarray().ravel()
            cols = np.flatnonzero(dense)
            order = np.argsort([vocab[adata.var_names[c]] for c in cols])
            assert genes.dtype == np.int64 and values.dtype == np.float32
            np.testing.assert_array_equal(genes, [vocab[adata.var_names[c]] for c in cols[order]])
            np.testing.assert_array_equal(values, dense[cols[order]])
            source = adata.obs["bulk_labels"].iloc[row]
            assert classes[int(sample["label.cls"])] == LABEL_MAP["map"][source]
            assert f'"obs_name":"{names[row]}"' in sample["cell.json"].decode()
            seen += 1
    assert seen == manifest["counts"]["cells"]


def test_verify_passes_and_catches_a_damaged_shard(shards, tmp_path, capsys):
    assert verify_cells(shards).ok
    assert pgo_shards(["verify", str(shards)]) == 0
    assert pgo_shards(["info", str(shards)]) == 0
    cells = read_manifest(shards)["counts"]["cells"]
    assert f"cells {cells} in 5 classes: B 95" in capsys.readouterr().out
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    first = sorted(copy.glob("shard-*.tar"))[0]
    data = bytearray(first.read_bytes())
    data[2000] ^= 0xFF
    first.chmod(0o644)
    first.write_bytes(bytes(data))
    report = verify_cells(copy)
    assert not report.ok and any("sha256" in p for p in report.problems)
    assert pgo_shards(["verify", str(copy)]) == 1


def test_load_cells_reads_every_cell(shards):
    table = load_cells(shards)
    manifest = read_manifest(shards)
    assert len(table) == manifest["counts"]["cells"]
    per_class = manifest["counts"]["per_class"]
    assert np.bincount(table.labels).tolist() == [per_class[c] for c in manifest["classes"]]
    genes, values = table.cell(0)
    assert np.all(np.diff(genes) > 0) and np.all(values > 0)


def test_sparse_dense_and_layer_inputs_give_identical_shards(pbmc, shards, tmp_path):
    adata = pbmc["adata"]
    dense = ad.AnnData(X=adata.X.toarray(), obs=adata.obs.copy(), var=adata.var.copy())
    dense.write_h5ad(tmp_path / "dense.h5ad")
    layered = ad.AnnData(X=sp.csr_matrix(np.log1p(adata.X.toarray())), obs=adata.obs.copy(),
                         var=adata.var.copy(), layers={"counts": adata.X.copy()})  # fmt: skip
    layered.write_h5ad(tmp_path / "layered.h5ad")
    a = _write(pbmc, tmp_path / "a", h5ad=tmp_path / "dense.h5ad", shard_max_count=250)
    b = _write(
        pbmc, tmp_path / "b", h5ad=tmp_path / "layered.h5ad", layer="counts", shard_max_count=250
    )
    reference = [s["sha256"] for s in read_manifest(shards)["shards"]]
    assert [s["sha256"] for s in a["shards"]] == reference
    assert [s["sha256"] for s in b["shards"]] == reference
    assert b["source"]["matrix"] == "layers/counts"


def test_missing_label_column_lists_the_columns(pbmc, tmp_path, capsys):
    out = tmp_path / "out"
    code = pgo_shards([
        "cells", "--h5ad", str(pbmc["h5ad"]), "--scgpt", str(pbmc["ckpt"]), "--label-col",
        "cell_type", "--label-map", str(pbmc["label_map"]), "--out", str(out),
    ])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert "'cell_type'" in err and "bulk_labels" in err and "n_counts" in err
    assert not out.exists()


def test_missing_layer_negative_values_and_bad_label_maps(pbmc, tmp_path):
    with pytest.raises(PgoError, match=r"no layer 'counts'; valid: none"):
        _write(pbmc, tmp_path / "x", layer="counts")
    adata = pbmc["adata"]
    z = ad.AnnData(
        X=sp.csr_matrix(adata.X.toarray() - 1.0), obs=adata.obs.copy(), var=adata.var.copy()
    )
    z.write_h5ad(tmp_path / "z.h5ad")
    with pytest.raises(PgoError, match=r"X row 0 holds a negative value"):
        _write(pbmc, tmp_path / "x", h5ad=tmp_path / "z.h5ad")
    assert not (tmp_path / "x").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"classes": ["B"], "map": {"CD19+ B": "Bcell"}}))
    with pytest.raises(PgoError, match=r"map\['CD19\+ B'\] = 'Bcell' is not in classes; valid: B"):
        read_label_map(bad)
    bad.write_text(yaml.safe_dump({"classes": ["B"]}))
    with pytest.raises(PgoError, match="exactly the keys classes"):
        read_label_map(bad)


def test_checkpoint_folder_without_vocab(pbmc, tmp_path):
    with pytest.raises(PgoError, match="no vocab.json there"):
        checkpoint_vocab(tmp_path)


def test_cell_tokens_drops_unknown_genes_and_zeros_and_sums_repeated_symbols():
    col_vocab = np.array([7, -1, 3, 7, 5])  # columns 0 and 3 are the same gene (id 7)
    ids, vals = cell_tokens(
        np.array([0, 1, 2, 3, 4]), np.array([1.0, 9.0, 2.0, 4.0, 0.0]), col_vocab
    )
    np.testing.assert_array_equal(ids, [3, 7])
    np.testing.assert_array_equal(vals, [2.0, 5.0])


def test_cells_without_vocab_genes_are_counted(pbmc, tmp_path):
    adata = pbmc["adata"][:20].copy()
    X = adata.X.toarray()
    mapped = np.flatnonzero(adata.obs["bulk_labels"].astype(str).isin(list(LABEL_MAP["map"])))
    X[mapped[0]] = 0.0  # a mapped cell with no expressed gene
    adata.X = sp.csr_matrix(X)
    adata.write_h5ad(tmp_path / "few.h5ad")
    manifest = _write(pbmc, tmp_path / "few", h5ad=tmp_path / "few.h5ad")
    assert manifest["dropped"][NO_VOCAB_GENE] == 1
    assert manifest["counts"]["cells"] == len(mapped) - 1
