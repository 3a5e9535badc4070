"""Does mix-up smoothing help? MLP-A pretrained with mix-up vs without, on pseudo-bulk samples.

    python benchmarks/smoothing.py [--steps 300] [--seeds 0,1,2] [--cells-per-bulk 20] [--bulks 200]

Data: scanpy's pbmc68k_reduced (700 cells, 10 types in obs["bulk_labels"]), counts rebuilt as
round(expm1(raw.X) * n_counts / 1e4); cells split 70/30 per type into pretraining and held-out
cells (seeded). Model: a tiny random scGPT (d_model 32, 2 layers) over its 765 genes, frozen.
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


def predict(head, embedder, samples, seed: int) -> np.ndarray:
    """Predicted fractions (n, C): softmax of the classifier over each sample's embedding."""
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), 32):
            chunk = samples[start : start + 32]
            emb = embedder(chunk, [seed + start + i for i in range(len(chunk))])
            out.append(torch.softmax(head(emb), dim=1).numpy())
    return np.concatenate(out)


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
    args = parser.parse_args()

    import hpc_pgo  # noqa: F401
    from hpc_pgo.data.cells import checkpoint_vocab, load_cells, read_label_map, write_cells
    from hpc_pgo.engine.distributed import teardown_distributed
    from hpc_pgo.models.scgpt import load_scgpt, write_random_checkpoint
    from hpc_pgo.train.pretrain import (
        HEAD_FILE,
        MixedCellEmbedder,
        compose_pretrain,
        head_from_cfg,
        pretrain,
    )

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pgo-smoothing-") as tmp:
        root = Path(tmp)
        train_h5ad, test_h5ad, types = pbmc_split(root, seed=0)
        import anndata as ad

        ckpt = write_random_checkpoint(
            root / "ckpt", list(ad.read_h5ad(train_h5ad).var_names), d_model=32, nlayers=2
        )
        (root / "map.yaml").write_text(
            yaml.safe_dump({"classes": types, "map": {t: t for t in types}})
        )
        vocab, digest = checkpoint_vocab(ckpt)
        for name, h5ad in (("train", train_h5ad), ("test", test_h5ad)):
            write_cells(h5ad, root / name, vocab=vocab, vocab_digest=digest, label_col="bulk_labels",
                        label_map=read_label_map(root / "map.yaml"), progress=False)  # fmt: skip
        test_cells, train_cells = load_cells(root / "test"), load_cells(root / "train")
        scgpt = load_scgpt(ckpt)
        embedder = MixedCellEmbedder(scgpt, max_length=args.max_length)
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
                run_dir = root / f"run-{seed}-{'mix' if mix else 'nomix'}"
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
