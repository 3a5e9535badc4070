"""Does mix-up smoothing help? MLP-A pretrained with mix-up vs without, on pseudo-bulk samples.

    python benchmarks/smoothing.py [--steps 300] [--seeds 0,1,2] [--cells-per-bulk 20] [--bulks 200]
                                   [--scgpt-steps 600] [--work DIR]   (DIR keeps the fitted scGPT)

Data: scanpy's pbmc68k_reduced (700 cells, 10 types in obs["bulk_labels"]), counts rebuilt as
round(expm1(raw.X) * n_counts / 1e4); cells split 70/30 per type into pretraining and held-out
cells (seeded). Model: a tiny scGPT (d_model 64, 4 heads, 2 layers) over its 765 genes, first
fitted for --scgpt-steps on the pretraining cells with scGPT's own self-supervised objectives
(masked gene-expression prediction from the gene tokens, GEP, and from the cell embedding, GEPC,
on 40% masked bins: hpc_pgo.models.scgpt_fit.fit_scgpt, as `pgo-shards fit-scgpt`), written in
the official layout and loaded strictly like any checkpoint, frozen. A random model's
cell embeddings are nearly identical (mean cosine 0.9994 over pbmc cells): an MLP-A head on them
stays at the majority class, mix-up or not, and the comparison says nothing; --scgpt-steps 0
shows that.
For each seed, MLP-A + classifier are pretrained twice with the same steps, batch, lr and pair
draws: mix.enabled=true and mix.enabled=false (the ablation; hpc_pgo.train.pretrain.pretrain, one
process).

Pseudo-bulk sample: type fractions f ~ Dirichlet(1, ..., 1) over the 10 types, k cells drawn
from the held-out cells with counts multinomial(k, f) per type, their counts summed over the union
of their genes; true fractions t = counts / k. Predicted fractions p = softmax(classifier(MLP-A(
scGPT(sample)))). Error per sample: L1 = sum_c |p_c - t_c| (0 .. 2), and RMSE over classes; the
script prints the means over samples for both models, the ratio mix / no-mix (< 1: mix-up
helps) and, as a reference, the error of always predicting the mean training fractions; and,
as context, each head's accuracy on single held-out cells.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pbmc_split(root: Path, seed: int) -> tuple[Path, Path, list[str]]:
    """counts h5ad files of the pretraining and held-out cells (70/30 per type); the type names."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    pbmc = sc.datasets.pbmc68k_reduced()
    counts = np.rint(
        np.expm1(pbmc.raw.X.toarray()) * pbmc.obs["n_counts"].to_numpy()[:, None] / 1e4
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pbmc.obs[["bulk_labels"]].astype(str),
        var=pbmc.raw.var[[]].copy(),
    )
    rng = np.random.default_rng(seed)
    test = np.zeros(adata.n_obs, bool)
    types = sorted(adata.obs["bulk_labels"].unique())
    for t in types:
        rows = np.flatnonzero(adata.obs["bulk_labels"].to_numpy() == t)
        test[rng.choice(rows, max(1, round(0.3 * len(rows))), replace=False)] = True
    adata[~test].copy().write_h5ad(root / "train.h5ad")
    adata[test].copy().write_h5ad(root / "test.h5ad")
    return root / "train.h5ad", root / "test.h5ad", types


def pseudo_bulks(cells, n_bulks: int, k: int, seed: int):
    """[(genes, summed values)], true fractions (n_bulks, C): Dirichlet fractions, multinomial counts."""
    from hpc_pgo.train.pretrain import mix_cells

    rng = np.random.default_rng(seed)
    n_classes = len(cells.classes)
    by_class = [np.flatnonzero(cells.labels == c) for c in range(n_classes)]
    samples, truth = [], np.zeros((n_bulks, n_classes))
    for b in range(n_bulks):
        per_class = rng.multinomial(k, rng.dirichlet(np.ones(n_classes)))
        genes, values = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for c, n in enumerate(per_class):
            for cell in rng.choice(by_class[c], n, replace=True):
                # a + b over the union of genes = 2 * mix(a, b, 1/2) (scaling by 2 is exact)
                genes, values = mix_cells(genes, values, *cells.cell(cell), 0.5)
                values = values * 2.0
        samples.append((genes, values))
        truth[b] = per_class / k
    return samples, truth


def embed_all(embedder, samples, seed: int) -> torch.Tensor:
    """(n, d) embeddings of samples [(genes, values)], 32 at a time; sample i seeded seed + i."""
    return torch.cat([
        embedder(samples[start : start + 32], [seed + i for i in range(start, min(start + 32, len(samples)))])
        for start in range(0, len(samples), 32)
    ])  # fmt: skip


def predict(head, embedder, samples, seed: int) -> np.ndarray:
    """Predicted fractions (n, C): softmax of the classifier over each sample's embedding."""
    with torch.no_grad():
        return torch.softmax(head(embed_all(embedder, samples, seed)), dim=1).numpy()


def errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(mean L1 = sum_c |p - t|, mean RMSE over classes) over samples."""
    diff = pred - truth
    return float(np.abs(diff).sum(1).mean()), float(np.sqrt((diff**2).mean(1)).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells-per-bulk", type=int, default=20)
    parser.add_argument("--bulks", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=1200)
    parser.add_argument(
        "--scgpt-steps",
        type=int,
        default=600,
        help="GEP + GEPC steps fitting the tiny scGPT first (0: keep it random)",
    )
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--work", help="keep the work here (a fitted scGPT found there is reused)")
    args = parser.parse_args()

    import hpc_pgo  # noqa: F401
    from hpc_pgo.data.cell_shards import load_cells
    from hpc_pgo.data.cells import checkpoint_vocab, read_label_map, write_cells
    from hpc_pgo.engine.distributed import teardown_distributed
    from hpc_pgo.models.scgpt import load_scgpt
    from hpc_pgo.models.scgpt_fit import FIT_RECORD, fit_scgpt
    from hpc_pgo.train.pretrain import (
        HEAD_FILE,
        MixedCellEmbedder,
        compose_pretrain,
        head_from_cfg,
        pretrain,
    )

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with contextlib.ExitStack() as stack:
        if args.work:
            root = Path(args.work)
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgo-smoothing-")))
        train_h5ad, test_h5ad, types = pbmc_split(root, seed=0)
        ckpt = root / f"scgpt-d{args.d_model}-fit{args.scgpt_steps}"
        if not (ckpt / FIT_RECORD).is_file():  # --work: fitted by an earlier run otherwise
            result = fit_scgpt(train_h5ad, ckpt, steps=args.scgpt_steps, seed=0, d_model=args.d_model,
                               nheads=4, nlayers=2, max_length=args.max_length, force=True)  # fmt: skip
            if result.losses:
                print(f"scGPT (d {args.d_model}) fitted with GEP + GEPC: {args.scgpt_steps} steps "
                      f"in {result.seconds:.0f} s, loss {np.mean(result.losses[:20]):.1f} (first 20 "
                      f"steps) -> {np.mean(result.losses[-20:]):.1f} (last 20)")  # fmt: skip
        (root / "map.yaml").write_text(
            yaml.safe_dump({"classes": types, "map": {t: t for t in types}})
        )
        vocab, digest = checkpoint_vocab(ckpt)
        for name, h5ad in (("train", train_h5ad), ("test", test_h5ad)):
            if (root / name).is_dir():
                continue  # --work: written by an earlier run (the split is seeded)
            write_cells(h5ad, root / name, vocab=vocab, vocab_digest=digest, label_col="bulk_labels",
                        label_map=read_label_map(root / "map.yaml"), progress=False)  # fmt: skip
        test_cells, train_cells = load_cells(root / "test"), load_cells(root / "train")
        scgpt = load_scgpt(ckpt)
        embedder = MixedCellEmbedder(scgpt, max_length=args.max_length)
        emb = embed_all(embedder, [train_cells.cell(c) for c in range(len(train_cells))], 7).numpy()
        cos = emb @ emb.T
        print(f"scGPT cell embeddings of the pretraining cells: mean pairwise cosine "
              f"{cos[np.triu_indices(len(emb), 1)].mean():.4f}")  # fmt: skip
        prior = np.bincount(train_cells.labels, minlength=len(types)) / len(train_cells)
        print(f"pbmc68k: {len(train_cells)} pretraining cells, {len(test_cells)} held-out cells, "
              f"{len(types)} types; {args.bulks} pseudo-bulks of {args.cells_per_bulk} cells; "
              f"{args.steps} steps x {args.batch_size} pairs, lr {args.lr}")  # fmt: skip
        for seed in seeds:
            bulks, truth = pseudo_bulks(
                test_cells, args.bulks, args.cells_per_bulk, seed=1000 + seed
            )
            result = {"seed": seed, "prior": errors(np.tile(prior, (len(truth), 1)), truth)}
            for mix in (True, False):
                tokens = [f"cells={root / 'train'}", f"scgpt={ckpt}", f"seed={seed}",
                          f"mix.enabled={str(mix).lower()}", f"train.steps={args.steps}",
                          f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
                          f"max_length={args.max_length}", f"train.checkpoint_every={args.steps}",
                          f"train.log_every={args.steps}"]  # fmt: skip
                cfg = compose_pretrain(tokens)
                run_dir = (
                    root / f"{ckpt.name}-run{seed}-{'mix' if mix else 'nomix'}-{args.steps}steps"
                )
                start = time.perf_counter()
                pretrain(cfg, run_dir)
                head = head_from_cfg(cfg, scgpt.d_model, len(types))
                head.load_state_dict(torch.load(run_dir / HEAD_FILE, weights_only=True))
                head.eval()
                pred = predict(head, embedder, bulks, seed=7)
                result["mix" if mix else "nomix"] = errors(pred, truth)
                # context: how well the same head types single held-out cells
                singles = [test_cells.cell(c) for c in range(len(test_cells))]
                typed = predict(head, embedder, singles, seed=7).argmax(1)
                result[f"acc_{'mix' if mix else 'nomix'}"] = float(
                    (typed == test_cells.labels).mean()
                )
                result[f"time_{'mix' if mix else 'nomix'}"] = time.perf_counter() - start
            rows.append(result)
            print(f"seed {seed}: L1 mix {result['mix'][0]:.4f}  no-mix {result['nomix'][0]:.4f}  "
                  f"ratio {result['mix'][0] / result['nomix'][0]:.3f}  (prior {result['prior'][0]:.4f}); "
                  f"RMSE mix {result['mix'][1]:.4f}  no-mix {result['nomix'][1]:.4f}  "
                  f"ratio {result['mix'][1] / result['nomix'][1]:.3f}; held-out cell accuracy "
                  f"mix {result['acc_mix']:.3f} no-mix {result['acc_nomix']:.3f} "
                  f"(majority class {np.bincount(test_cells.labels).max() / len(test_cells):.3f})")  # fmt: skip
        teardown_distributed()
    l1 = {k: np.mean([r[k][0] for r in rows]) for k in ("mix", "nomix", "prior")}
    rmse = {k: np.mean([r[k][1] for r in rows]) for k in ("mix", "nomix", "prior")}
    print(f"mean over {len(rows)} seeds: L1 mix {l1['mix']:.4f}, no-mix {l1['nomix']:.4f}, "
          f"ratio mix/no-mix {l1['mix'] / l1['nomix']:.3f}, prior {l1['prior']:.4f}; RMSE mix "
          f"{rmse['mix']:.4f}, no-mix {rmse['nomix']:.4f}, ratio {rmse['mix'] / rmse['nomix']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
