"""`pgo-shards embed-rna` on real shard sets (built by build_cohort) with tiny random scGPT checkpoints.

The RNA of the cohort is pseudo-bulk of pbmc68k cells (real gene symbols, non-negative), so the
embedding the loader serves can be checked against hpc_pgo.models.scgpt.embed_expression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hpc_pgo.data import embed_rna as E
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.loader import make_loader
from hpc_pgo.data.shards import read_manifest, verify
from hpc_pgo.data.sidecar import SIDE_CAR, read_embeddings, write_side_car
from hpc_pgo.errors import PgoError
from hpc_pgo.models import scgpt as S
from hpc_pgo.models.genomic import MLP

N_PATIENTS = 14
N_GENES = 120


@pytest.fixture(scope="module")
def pbmc_genes_values():
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X
    raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    return list(adata.raw.var_names), np.expm1(raw.astype(np.float64))


def write_cohort(
    root: Path, genes: list[str], rna: np.ndarray, seed: int = 0, missing: str = "drop"
) -> Path:
    """An omics-only cohort: survival table + omics table (cnv, rna groups), random:2 splits."""
    rng = np.random.default_rng(seed)
    patients = [f"P{i:03d}" for i in range(len(rna))]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "patient": patients,
            "time": rng.uniform(1, 100, len(rna)).round(2),
            "event": rng.integers(0, 2, len(rna)),
        }
    ).to_csv(root / "clinical.csv", index=False)
    columns = {"patient": patients}
    columns.update({f"C{j}_cnv": rng.integers(-2, 3, len(rna)) for j in range(3)})
    columns.update({f"{gene}_rnaseq": rna[:, j].round(4) for j, gene in enumerate(genes)})
    pd.DataFrame(columns).to_csv(root / "omics.csv", index=False)
    spec = {
        "cohort": "bulk",
        "survival": {
            "path": "clinical.csv",
            "patient": "patient",
            "time": "time",
            "event": "event",
        },
        "omics": [
            {
                "path": "omics.csv",
                "groups": {"cnv": {"suffix": "_cnv"}, "rna": {"suffix": "_rnaseq"}},
            }
        ],
        "splits": {"kind": "random", "n": 2, "seed": 0},
        "missing": missing,
    }
    (root / "cohort.yaml").write_text(yaml.safe_dump(spec))
    return root / "cohort.yaml"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, pbmc_genes_values):
    """(shard dir, genes, bulk values (N, G)) with pseudo-bulk RNA: sums of pbmc cells per patient."""
    genes, values = pbmc_genes_values
    bulk = np.stack([values[i::N_PATIENTS, :N_GENES].sum(axis=0) for i in range(N_PATIENTS)])
    root = tmp_path_factory.mktemp("bulk")
    spec = write_cohort(root / "files", genes[:N_GENES], bulk)
    build_cohort(spec, root / "shards", workers=0, progress=False)
    return root / "shards", genes[:N_GENES], bulk.round(4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, pbmc_genes_values):
    return S.write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt"), pbmc_genes_values[0], flash_keys=True
    )


@pytest.fixture
def shards(tmp_path, cohort):
    """A fresh copy of the cohort's shard set (embed-rna rewrites its manifest)."""
    out = tmp_path / "shards"
    out.mkdir()
    for path in cohort[0].iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    return out


def run(*argv: str) -> int:
    return main(["embed-rna", *argv, "--no-progress"])


def test_embed_serve_and_idempotent(shards, cohort, ckpt, capsys):
    shard_bytes = {p.name: p.read_bytes() for p in shards.glob("shard-*.tar")}
    assert run(str(shards), "--scgpt", str(ckpt), "--max-length", "64") == 0
    assert f"{N_GENES} of {N_GENES} genes" in capsys.readouterr().out
    manifest = read_manifest(shards)
    record = manifest["embeddings"]
    assert record["fields"] == {"rna_emb": {"dim": 32}}
    assert record["scgpt"]["digest"] == S.checkpoint_digest(ckpt)
    assert record["recipe"]["scgpt_digest"] == record["scgpt"]["digest"] and record["mlp_a"] is None
    # the shards are untouched, so verify still passes
    assert {p.name: p.read_bytes() for p in shards.glob("shard-*.tar")} == shard_bytes
    assert verify(shards).ok

    # the loader serves the embedding of each unit's patient, as embed_expression computes it
    data = open_fold(shards, 0)
    assert data.embeddings == {"rna_emb": 32}
    loader = make_loader(
        shards,
        0,
        "test",
        batch_size=4,
        groups=["cnv"],
        image_size=None,
        standardizer=None,
        embeddings=["rna_emb"],
    )
    batches = list(loader)
    served = torch.cat([b["rna_emb"] for b in batches]).numpy()
    patients = [p for b in batches for p in b["patient"]]
    assert served.dtype == np.float32 and served.shape == (len(data.test), 32)
    _, genes, bulk = cohort
    rows = [int(p[1:]) for p in patients]
    expected = S.embed_expression(S.load_scgpt(ckpt), bulk[rows], genes, max_length=64)
    assert np.allclose(served, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)

    # same inputs: nothing to do, nothing rewritten
    side_car = shards / SIDE_CAR
    stamp = side_car.stat().st_mtime_ns, (shards / "manifest.json").read_bytes()
    assert run(str(shards), "--scgpt", str(ckpt), "--max-length", "64") == 0
    assert "up to date" in capsys.readouterr().out
    assert (side_car.stat().st_mtime_ns, (shards / "manifest.json").read_bytes()) == stamp
    # forced: recomputed, byte-identical (deterministic embedding, fixed zip timestamps)
    before = side_car.read_bytes()
    assert run(str(shards), "--scgpt", str(ckpt), "--max-length", "64", "--force") == 0
    assert side_car.read_bytes() == before
    # another option: recomputed, another recipe
    assert run(str(shards), "--scgpt", str(ckpt), "--max-length", "32") == 0
    assert read_manifest(shards)["embeddings"]["recipe"]["max_length"] == 32


MLP_A_DIMS = {"in": 32, "hidden": 16, "out": 8, "layers": 3, "dropout": 0.0}


def mlp_a_file(path: Path, ckpt: Path, mlp: MLP | None = None) -> Path:
    """An MLP-A weights file (S.save_mlp_a) for the tiny checkpoint: `mlp`, or a fresh one."""
    model = S.load_scgpt(ckpt)
    return S.save_mlp_a(
        path, mlp if mlp is not None else MLP(32, 16, 8, 3), scgpt_digest=model.digest,
        vocab_digest=model.vocab_sha, class_names=["a"], dims=MLP_A_DIMS,
    )  # fmt: skip


def test_mlp_a_applied_and_checked(shards, ckpt, tmp_path, capsys):
    model = S.load_scgpt(ckpt)
    mlp = MLP(32, 16, 8, 3)
    dims = MLP_A_DIMS
    good = mlp_a_file(tmp_path / "mlp_a.pt", ckpt, mlp)
    assert run(str(shards), "--scgpt", str(ckpt), "--mlp-a", str(good)) == 0
    manifest = read_manifest(shards)
    assert manifest["embeddings"]["fields"] == {"rna_emb": {"dim": 32}, "rna_mlpa": {"dim": 8}}
    table = read_embeddings(shards, manifest)
    with torch.no_grad():
        assert np.allclose(
            table.fields["rna_mlpa"],
            mlp.eval()(torch.from_numpy(table.fields["rna_emb"])).numpy(),
            atol=1e-6,
        )
    # a MLP-A trained on another scGPT checkpoint is refused
    other = S.save_mlp_a(
        tmp_path / "other.pt",
        mlp,
        scgpt_digest="f" * 64,
        vocab_digest=model.vocab_sha,
        class_names=["a"],
        dims=dims,
    )
    capsys.readouterr()
    assert run(str(shards), "--scgpt", str(ckpt), "--mlp-a", str(other)) == 2
    assert "trained on scGPT checkpoint ffffffffffff" in capsys.readouterr().err


def test_z_scores_refused_unless_transformed(tmp_path, pbmc_genes_values, ckpt, capsys):
    genes, values = pbmc_genes_values
    bulk = np.stack([values[i::10, :80].sum(axis=0) for i in range(10)])
    z = (np.log1p(bulk) - np.log1p(bulk).mean(0)) / (np.log1p(bulk).std(0) + 1e-6)
    spec = write_cohort(tmp_path / "files", genes[:80], z)
    build_cohort(spec, tmp_path / "z", workers=0, progress=False)
    assert run(str(tmp_path / "z"), "--scgpt", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "negative values" in err and "z-scores" in err
    assert (
        "choose a transform (exp2, rank; pgo-shards embed-rna --transform)" in err
        and len(err.strip().splitlines()) == 1
    )
    assert run(str(tmp_path / "z"), "--scgpt", str(ckpt), "--transform", "rank") == 0
    assert read_manifest(tmp_path / "z")["embeddings"]["recipe"]["transform"] == "rank"


def test_demo_gene_names_refused_by_a_real_vocab(tmp_path, ckpt, capsys):
    """The demo cohort's RNA is non-negative but its genes are synthetic (G0001...)."""
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--patients",
        "12",
        "--rois",
        "1",
        "--image-size",
        "32",
        "--n-rna",
        "20",
    ]
    assert main([*args, "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert run(str(out), "--scgpt", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert "only 0 of 20 genes" in err and "G0001" in err and "HGNC" in err
    # a vocab that has them: accepted
    demo_ckpt = S.write_random_checkpoint(
        tmp_path / "demo_ckpt", read_manifest(out)["genes"]["rna"]
    )
    assert run(str(out), "--scgpt", str(demo_ckpt)) == 0
    loader = make_loader(
        out,
        0,
        "train",
        batch_size=2,
        groups=[],
        image_size=32,
        standardizer=None,
        embeddings=["rna_emb"],
    )
    batch = next(iter(loader))
    assert batch["rna_emb"].shape == (2, 32) and batch["image"].shape == (2, 3, 32, 32)


def test_bad_checkpoint_and_loader_errors(shards, ckpt, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "args.json").write_text((ckpt / "args.json").read_text())
    assert run(str(shards), "--scgpt", str(broken)) == 2
    assert "lacks vocab.json, best_model.pt" in capsys.readouterr().err
    # no embeddings yet: the loader names the missing field and the command
    with pytest.raises(PgoError, match=r"no embedding field 'rna_emb'.*embed-rna"):
        make_loader(
            shards,
            0,
            "test",
            batch_size=2,
            groups=[],
            image_size=None,
            standardizer=None,
            embeddings=["rna_emb"],
        )
    assert run(str(shards), "--scgpt", str(ckpt)) == 0
    # a replaced side-car: refused against the manifest's sha256
    side_car = shards / SIDE_CAR
    table = dict(np.load(side_car))
    table["rna_emb"] = table["rna_emb"] * 2
    write_side_car(side_car, table)
    with pytest.raises(PgoError, match=r"rna_emb\.npz: differs from the sha256"):
        make_loader(
            shards,
            0,
            "test",
            batch_size=2,
            groups=[],
            image_size=None,
            standardizer=None,
            embeddings=["rna_emb"],
        )
    # ... and embed-rna notices it and recomputes
    assert run(str(shards), "--scgpt", str(ckpt)) == 0
    assert "embedded" in capsys.readouterr().out


def test_cli_choices_match_the_model_module():
    assert E.TRANSFORM_NAMES == tuple(S.TRANSFORMS) and E.PRECISION_NAMES == S.PRECISIONS


def test_side_car_is_deterministic(tmp_path):
    arrays = {"patients": np.array(["a", "b"]), "rna_emb": np.eye(2, dtype=np.float32)}
    write_side_car(tmp_path / "one.npz", arrays)
    write_side_car(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    loaded = np.load(tmp_path / "one.npz", allow_pickle=False)
    assert list(loaded["patients"]) == ["a", "b"] and json.dumps(loaded["rna_emb"].tolist())


def test_patients_without_rna_get_zeros(tmp_path, pbmc_genes_values, ckpt):
    """--missing mask: a patient whose RNA is not measured gets a zero embedding, listed in the manifest."""
    genes, values = pbmc_genes_values
    bulk = np.stack([values[i::8, :60].sum(axis=0) for i in range(8)])
    bulk[3] = np.nan
    spec = write_cohort(tmp_path / "files", genes[:60], bulk, missing="mask")
    build_cohort(spec, tmp_path / "masked", workers=0, progress=False)
    record, done = E.embed_rna(tmp_path / "masked", ckpt, progress=False)
    assert done and record["patients_without_rna"] == ["P003"]
    table = read_embeddings(tmp_path / "masked", read_manifest(tmp_path / "masked"))
    norms = np.linalg.norm(table.fields["rna_emb"], axis=1)
    assert norms[table.row_of["P003"]] == 0 and np.allclose(
        np.delete(norms, table.row_of["P003"]), 1, atol=1e-5
    )


def test_submit_names_the_command_for_each_missing_scgpt_input(shards, ckpt, tmp_path):
    """model=path_gptomic (scGPT + frozen MLP-A) is refused at submit, before anything is
    written, when the shard set has no stored embedding or MLP-A's weights are missing; each
    refusal names the command that produces the input."""
    from hpc_pgo.config import compose
    from hpc_pgo.launch.submission import check_shards

    def cfg(*extra: str):
        return compose(["model=path_gptomic", f"data.shards={shards}", "folds=0", *extra])

    with pytest.raises(PgoError, match=rf"does not hold \(stored: none\); produce it with: "
                       rf"pgo-shards embed-rna {shards} --scgpt SCGPT_MODEL_DIR"):  # fmt: skip
        check_shards(cfg())
    check_shards(cfg("model.genomic.rna_encoder=snn"))  # the SNN route reads the RNA values
    assert run(str(shards), "--scgpt", str(ckpt), "--max-length", "64") == 0
    with pytest.raises(PgoError, match=r"mlp_a_weights is null\); produce it with: python "
                       r"launch/pretrain.py cells=CELL_SHARDS scgpt=SCGPT_MODEL_DIR"):  # fmt: skip
        check_shards(cfg())
    check_shards(cfg("model.genomic.rna_encoder=scgpt"))  # scGPT alone needs no MLP-A
    missing = tmp_path / "nowhere" / "mlp_a.pt"
    with pytest.raises(PgoError, match=rf"mlp_a_weights={missing}: no such file; produce it"):
        check_shards(cfg(f"model.genomic.mlp_a_weights={missing}"))
    weights = tmp_path / "mlp_a.pt"
    weights.write_bytes(b"")
    check_shards(cfg(f"model.genomic.mlp_a_weights={weights}"))


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "tensor",
    ["transformer_encoder.layers.0.linear1.weight", "decoder.fc.0.weight"],
    ids=["used", "unused"],
)
def test_a_checkpoint_with_nan_weights_is_refused(
    shards, tmp_path, pbmc_genes_values, capsys, tensor
):
    """Issue 21 #4: a checkpoint holding NaN weights gave an all-NaN rna_emb and exit 0. Now
    non-finite embeddings are one error line naming the checkpoint (and the first such
    tensor), and nothing is written to the shard set. NaN in a tensor the embedding does not
    use (the expression decoder) leaves the embeddings finite: accepted."""
    ckpt = S.write_random_checkpoint(tmp_path / "nan", pbmc_genes_values[0], flash_keys=True)
    state = torch.load(ckpt / "best_model.pt", weights_only=True)
    state[tensor][0, 0] = float("nan")  # one weight, as a diverged step leaves them
    torch.save(state, ckpt / "best_model.pt")
    before = _tree(shards)
    code = run(str(shards), "--scgpt", str(ckpt), "--max-length", "64")
    err = capsys.readouterr().err
    if tensor.startswith("decoder"):
        assert (code, err) == (0, "")
        assert np.isfinite(read_embeddings(shards, read_manifest(shards)).fields["rna_emb"]).all()
        return
    assert code == 2, err
    assert err.strip() == (
        f"error: scGPT checkpoint {ckpt}: embeddings hold NaN or inf for {N_PATIENTS} of "
        f"{N_PATIENTS} patients (first 'P000'); its weights hold NaN or inf in 1 tensor(s), "
        f"first '{tensor}' (a diverged or damaged training run); nothing was written; valid: a "
        "checkpoint whose weights and embeddings are finite"
    )
    assert _tree(shards) == before and not (shards / SIDE_CAR).exists()
    assert "embeddings" not in read_manifest(shards)


def test_a_mlp_a_with_nan_weights_is_refused(shards, ckpt, tmp_path, capsys):
    mlp = MLP(32, 16, 8, 3)
    with torch.no_grad():
        next(mlp.parameters()).fill_(float("nan"))
    weights = mlp_a_file(tmp_path / "mlp_a.pt", ckpt, mlp)
    before = _tree(shards)
    assert run(str(shards), "--scgpt", str(ckpt), "--mlp-a", str(weights)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLP-A {weights}: embeddings hold NaN or inf for ")
    assert "its weights hold NaN or inf" in err and len(err.strip().splitlines()) == 1
    assert _tree(shards) == before
