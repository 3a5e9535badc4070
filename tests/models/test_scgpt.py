"""scGPT loading, tokenising and embedding against the real scgpt package, on tiny random checkpoints.

Checkpoints are written in the official layout (args.json, vocab.json, best_model.pt) with the
package's own TransformerModel and a vocab of the pbmc68k genes shipped in scanpy's wheel;
nothing is downloaded. The reference embedding is scgpt.tasks.embed_data's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.models import scgpt as S
from hpc_pgo.models.genomic import MLP


@pytest.fixture(scope="module")
def pbmc():
    """pbmc68k_reduced as expression: genes (765,), values (700, 765) = expm1(raw.X) >= 0 (CP10k)."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X
    raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    return list(adata.raw.var_names), np.expm1(raw.astype(np.float64))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, pbmc):
    """A tiny random checkpoint (d 32, 2 layers, 2 heads) with flash-attn key names, as official ones."""
    return S.write_random_checkpoint(tmp_path_factory.mktemp("ckpt"), pbmc[0], flash_keys=True)


@pytest.fixture(scope="module")
def model(ckpt):
    return S.load_scgpt(ckpt)


def tie_free(values: np.ndarray, seed: int = 1) -> np.ndarray:
    """Expressed values made distinct within each sample, so that scGPT's binning has no random tie-break."""
    rng = np.random.default_rng(seed)
    return np.where(values > 0, values + rng.random(values.shape) * 1e-3, 0.0)


# --------------------------------------------------------------------------- compat


def test_stand_in_vocab_only_when_torchtext_fails():
    import torchtext.vocab

    from hpc_pgo import compat

    # torchtext 0.18 cannot load on torch 2.13 (and is not installed here): the stand-in is used
    assert getattr(torchtext.vocab, "__pgo_stand_in__", False)
    assert compat.ensure_torchtext_vocab() is True  # idempotent
    assert sys.modules["torchtext.vocab"].Vocab is compat.StandInVocab


@pytest.mark.slow
def test_real_torchtext_is_used_when_it_imports(tmp_path):
    """A torchtext that imports is left alone; one whose import fails (as 0.18's compiled library
    does on torch 2.13) is replaced by the stand-in. Run in a fresh interpreter."""
    good, bad = tmp_path / "good" / "torchtext", tmp_path / "bad" / "torchtext"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "__init__.py").write_text("")
    (good / "vocab.py").write_text("class Vocab: pass\ndef vocab(d): return Vocab()\n")
    (bad / "__init__.py").write_text("raise OSError('undefined symbol: _ZN3c10...')\n")
    script = f"""
import sys
sys.path.insert(0, {str(good.parent)!r})
from hpc_pgo import compat
assert compat.ensure_torchtext_vocab() is False
import torchtext.vocab
assert torchtext.vocab.Vocab is not compat.StandInVocab
for name in ("torchtext", "torchtext.vocab"):
    del sys.modules[name]
sys.path[0] = {str(bad.parent)!r}
assert compat.ensure_torchtext_vocab() is True
import torchtext.vocab
assert torchtext.vocab.Vocab is compat.StandInVocab
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_gene_vocab_on_the_stand_in_behaves_like_torchtext():
    from scgpt.tokenizer import GeneVocab

    vocab = GeneVocab(["TP53", "BRCA1", "ACTB"], specials=["<pad>", "<cls>"])
    # GeneVocab sorts genes by name after the specials; lookups by name
    assert vocab.get_itos() == ["<pad>", "<cls>", "ACTB", "BRCA1", "TP53"]
    assert vocab["TP53"] == 4 and "BRCA1" in vocab and "MYC" not in vocab
    assert vocab["MYC"] == 0  # default token <pad>
    from_dict = GeneVocab.from_dict({"b": 1, "a": 0, "<pad>": 2})
    assert from_dict.get_stoi() == {"a": 0, "b": 1, "<pad>": 2}
    with pytest.raises(RuntimeError, match="already exists"):
        from_dict.append_token("a")
    from_dict.insert_token("c", 1)
    assert from_dict.get_itos() == ["a", "c", "b", "<pad>"] and from_dict(["b", "<pad>"]) == [2, 3]


# --------------------------------------------------------------------------- loading


def test_load_is_strict_and_exact(ckpt, model):
    saved = torch.load(ckpt / "best_model.pt", weights_only=True)
    assert any(".self_attn.Wqkv.weight" in k for k in saved)  # the official (flash-attn) names
    loaded = model.model.state_dict()
    renamed = S.rename_flash_keys(saved)
    assert set(renamed) == set(loaded)
    for key, value in renamed.items():
        assert torch.equal(value, loaded[key]), key
    assert not model.model.training and not any(p.requires_grad for p in model.model.parameters())
    assert model.d_model == 32 and model.vocab["<cls>"] == model.cls_id
    assert model.digest == S.checkpoint_digest(ckpt) and len(model.digest) == 64


def test_official_pretraining_flag_embedding_is_not_an_error(tmp_path, ckpt, model, pbmc):
    """Official checkpoints carry flag_encoder.weight, which TransformerModel lacks: left out, logged."""
    d = _copy_ckpt(ckpt, tmp_path / "official")
    state = torch.load(d / "best_model.pt", weights_only=True)
    state["flag_encoder.weight"] = torch.randn(3, 32)
    torch.save(state, d / "best_model.pt")
    genes, values = pbmc
    a = S.embed_expression(S.load_scgpt(d), values[:3], genes)
    assert np.array_equal(a, S.embed_expression(model, values[:3], genes))


def test_load_torch_key_names_too(tmp_path, pbmc):
    d = S.write_random_checkpoint(tmp_path, pbmc[0][:50], flash_keys=False, seed=3)
    assert S.load_scgpt(d).d_model == 32


def _copy_ckpt(src, dst):
    dst.mkdir()
    for name in S.CHECKPOINT_FILES:
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("encoder.enc_norm.weight"), r"missing 1: encoder\.enc_norm\.weight"),
        (
            lambda s: s.__setitem__("extra.head.weight", torch.zeros(2)),
            r"unexpected 1: extra\.head\.weight",
        ),
        (
            lambda s: s.__setitem__("value_encoder.linear1.weight", torch.zeros(16, 1)),
            r"mis-shaped 1: value_encoder\.linear1\.weight \(16, 1\) \(model \(32, 1\)\)",
        ),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_bad_state_dict_lists_keys(tmp_path, ckpt, edit, message):
    d = _copy_ckpt(ckpt, tmp_path / "bad")
    state = torch.load(d / "best_model.pt", weights_only=True)
    edit(state)
    torch.save(state, d / "best_model.pt")
    with pytest.raises(PgoError, match=message):
        S.load_scgpt(d)


@pytest.mark.parametrize("name", S.CHECKPOINT_FILES)
def test_missing_file(tmp_path, ckpt, name):
    d = _copy_ckpt(ckpt, tmp_path / "bad")
    (d / name).unlink()
    with pytest.raises(PgoError, match=f"lacks {name}"):
        S.load_scgpt(d)


def test_args_json_without_a_key(tmp_path, ckpt):
    d = _copy_ckpt(ckpt, tmp_path / "bad")
    args = json.loads((d / "args.json").read_text())
    del args["nlayers"]
    (d / "args.json").write_text(json.dumps(args))
    with pytest.raises(PgoError, match="lacks nlayers"):
        S.load_scgpt(d)


def test_vocab_larger_than_the_weights_is_a_shape_error(tmp_path, ckpt):
    d = _copy_ckpt(ckpt, tmp_path / "bad")
    vocab = json.loads((d / "vocab.json").read_text())
    vocab["NEWGENE"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(PgoError, match=r"mis-shaped .*encoder\.embedding\.weight"):
        S.load_scgpt(d)


def test_digests_follow_content(tmp_path, ckpt, model):
    d = _copy_ckpt(ckpt, tmp_path / "copy")
    assert S.checkpoint_digest(d) == model.digest  # a copy: same digest
    assert S.vocab_digest(d / "vocab.json") == model.vocab_sha
    args = json.loads((d / "args.json").read_text())
    args["note"] = "changed"
    (d / "args.json").write_text(json.dumps(args))
    assert S.checkpoint_digest(d) != model.digest


# --------------------------------------------------------------------------- genes and values


def test_match_genes_counts_and_refusal(model, pbmc):
    genes = pbmc[0][:40] + [f"NOTAGENE{i}" for i in range(10)]
    match = S.match_genes(genes, model.vocab)
    assert match.n_matched == 40 and len(match.unmatched) == 10 and match.fraction == 0.8
    assert list(match.columns) == list(range(40))
    assert [model.vocab[g] for g in match.names] == list(match.token_ids)
    synthetic = [f"G{i:04d}" for i in range(1, 101)]
    with pytest.raises(PgoError, match=r"only 0 of 100 genes .* G0001"):
        S.match_genes(synthetic, model.vocab)
    with pytest.raises(PgoError, match="only 40 of 50"):
        S.match_genes(genes, model.vocab, min_fraction=0.9)
    with pytest.raises(PgoError, match="repeat"):
        S.match_genes(genes[:3] + genes[:1], model.vocab)


def test_negative_values_refused_unless_transformed():
    z = np.array([[-1.5, 0.2, 3.0], [0.0, 1.0, -0.1]])
    with pytest.raises(PgoError, match="2 negative values .*z-scores"):
        S.check_expression(z)
    ranked = S.check_expression(z, transform="rank")
    assert (ranked > 0).all() and (np.argsort(ranked, 1) == np.argsort(z, 1)).all()
    assert np.allclose(S.check_expression(z, transform="exp2"), 2.0**z)
    with pytest.raises(PgoError, match="valid: none, exp2, rank"):
        S.check_expression(z, transform="log")


def test_binning_matches_scgpt(pbmc):
    from scgpt.preprocess import binning

    for i in range(5):
        row = pbmc[1][i]
        row = row[row > 0]  # ties included: the tie-break draws must be the same ones
        np.random.seed(i)
        theirs = binning(row.copy(), n_bins=51)
        ours = S.bin_values(row, np.random.RandomState(i))
        assert np.array_equal(ours, theirs.astype(np.int64))
        assert ours.min() >= 1 and ours.max() == 50


def test_top_selection_is_deterministic_by_value_then_name():
    names = np.array(["E", "D", "C", "B", "A"], dtype=object)
    values = np.array([5.0, 1.0, 3.0, 3.0, 0.0])
    ids, vals = S.tokenize_sample(
        values, np.arange(10, 15), names, cls_id=1, pad_value=-2, max_length=3, selection="top"
    )
    # the top 2 expressed: E (5), then B before C (tie at 3, by name); input order kept; <cls> first
    assert list(ids) == [1, 10, 13] and vals[0] == -2


# --------------------------------------------------------------------------- embedding


@pytest.mark.slow
def test_equals_embed_data(ckpt, model, pbmc):
    """Our embedding of pbmc cells == scgpt.tasks.embed_data's (same genes, tie-free values)."""
    import anndata
    from scgpt.tasks import embed_data

    genes, values = pbmc
    cells = tie_free(values[:24])
    adata = anndata.AnnData(X=cells.astype(np.float32))
    adata.var_names = genes
    np.random.seed(0)
    torch.manual_seed(0)
    theirs = embed_data(
        adata, ckpt, gene_col="index", device="cpu", batch_size=8, return_new_adata=True
    ).X
    ours = S.embed_expression(model, cells.astype(np.float32), genes, batch_size=5)
    assert ours.shape == (24, 32) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # float rounding only (different padding/batching); distinct cells differ by ~0.1-1
    assert np.abs(ours - theirs).max() < 2e-4
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


def test_bulk_path_is_deterministic_and_batch_independent(model, pbmc):
    """Pseudo-bulk (sums of cells, ties included) with more expressed genes than max_length."""
    genes, values = pbmc
    bulk = np.stack([values[i::7].sum(axis=0) for i in range(7)])
    report = S.EmbedReport(match=None)
    first = S.embed_expression(model, bulk, genes, max_length=64, batch_size=3, report=report)
    assert (report.tokens == 64).all()  # truncated to the 63 most expressed + <cls>
    again = S.embed_expression(model, bulk, genes, max_length=64, batch_size=2)
    alone = S.embed_expression(model, bulk[4:5], genes, max_length=64)
    assert np.array_equal(first, again)
    assert np.allclose(first[4], alone[0], atol=1e-6)
    randomly = S.embed_expression(model, bulk, genes, max_length=64, selection="random", seed=5)
    assert np.abs(randomly - first).max() > 1e-3  # a random gene subset is another embedding


def test_transforms_give_the_same_tokens(model, pbmc):
    """Binning is by per-sample rank: exp2 and rank of the same z-scores embed identically."""
    genes, values = pbmc
    z = np.log2(values[:4, :200] + 1) - 1.0
    a = S.embed_expression(model, z, genes[:200], transform="exp2")
    b = S.embed_expression(model, z, genes[:200], transform="rank")
    assert np.allclose(a, b, atol=1e-6)
    with pytest.raises(PgoError, match="negative"):
        S.embed_expression(model, z, genes[:200])


def test_sample_without_expressed_genes(model, pbmc):
    genes, values = pbmc
    x = values[:3].copy()
    x[1] = 0
    with pytest.raises(PgoError, match=r"sample\(s\) 1 express none"):
        S.embed_expression(model, x, genes)


# --------------------------------------------------------------------------- MLP-A file


def test_mlp_a_round_trip_and_digest_mismatch(tmp_path, model):
    mlp = MLP(32, 16, 8, 3)
    dims = {"in": 32, "hidden": 16, "out": 8, "layers": 3, "dropout": 0.0}
    path = S.save_mlp_a(
        tmp_path / "mlp_a.pt",
        mlp,
        scgpt_digest=model.digest,
        vocab_digest=model.vocab_sha,
        class_names=["B", "T"],
        dims=dims,
    )
    loaded, meta = S.load_mlp_a(path, model.digest)
    x = torch.randn(4, 32)
    assert torch.equal(loaded(x), mlp.eval()(x)) and meta["class_names"] == ["B", "T"]
    with pytest.raises(PgoError, match="trained on scGPT checkpoint .* not on this one"):
        S.load_mlp_a(path, "0" * 64)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["dims"]["hidden"] = 32
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(PgoError, match="mis-shaped"):
        S.load_mlp_a(tmp_path / "bad.pt", model.digest)
    with pytest.raises(PgoError, match="no such file"):
        S.load_mlp_a(tmp_path / "none.pt", model.digest)
