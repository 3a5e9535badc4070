"""Cells/s of hpc_pgo's scGPT embedding against scgpt.tasks.embed_data, and bulk samples/s at whole-human size.

Part 1 (always): the same tiny random checkpoint (d 32, 2 layers, the pbmc68k vocab) and the
same pbmc68k cells (scanpy's shipped copy, expression = expm1(raw.X)) through
  baseline: scgpt.tasks.embed_data(adata, model_dir, device=...)    (loads, bins in DataLoader
            workers, pads every batch to its longest cell, fp16 autocast on CUDA)
  ours:     load_scgpt + embed_expression (length buckets, inference_mode, SDPA, bf16 on CUDA)
each end to end (checkpoint loading included), best of --repeats; prints cells/s of each and
the ratio ours / embed_data (target >= 1.5).

Part 2 (on a GPU, or with --whole-human on any device): a random model of whole-human size
(12 layers, d 512, 8 heads, d_hid 512, a 60,000-gene vocab) over bulk-sized samples (18,000
expressed genes each, max_length 1200 tokens) in bf16 and in fp32; prints samples/s of each.

    python benchmarks/scgpt_embed.py [--device auto|cpu|cuda] [--repeats 3] [--cells 700]
                                     [--whole-human] [--bulk-samples 256] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_pgo.models import scgpt as S  # noqa: E402 (installs the torchtext stand-in first)


def pbmc_cells(n: int) -> tuple[list[str], np.ndarray]:
    """(genes (765,), expression (n, 765) >= 0) from scanpy's shipped pbmc68k_reduced."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X
    raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    reps = -(-n // raw.shape[0])
    return list(adata.raw.var_names), np.expm1(np.tile(raw, (reps, 1))[:n].astype(np.float32))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_of(repeats: int, fn, device: str) -> float:
    """Shortest wall time (s) of `repeats` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def cells_benchmark(args, device: str, work: Path) -> dict:
    import anndata
    from scgpt.tasks import embed_data

    genes, values = pbmc_cells(args.cells)
    ckpt = S.write_random_checkpoint(work / "tiny", genes, flash_keys=True)
    adata = anndata.AnnData(X=values)
    adata.var_names = genes

    def baseline():
        embed_data(adata.copy(), ckpt, gene_col="index", device=device, batch_size=args.batch_size)

    def ours():
        model = S.load_scgpt(ckpt, device=device)
        S.embed_expression(model, values, genes, batch_size=args.batch_size)

    t_base = best_of(args.repeats, baseline, device)
    t_ours = best_of(args.repeats, ours, device)
    if args.attribution:
        # how much of the gap is torch's inference fast path (nested tensors), which embed_data
        # takes and we do not: embed_data again with that path switched off
        torch.backends.mha.set_fastpath_enabled(False)
        t_sdpa = best_of(args.repeats, baseline, device)
        torch.backends.mha.set_fastpath_enabled(True)
        print(
            f"[cells, {device}] embed_data without torch's fast path {args.cells / t_sdpa:.0f} "
            f"cells/s; ratio ours/that {t_sdpa / t_ours:.2f}"
        )
    result = {
        "cells": args.cells,
        "embed_data_cells_per_s": args.cells / t_base,
        "ours_cells_per_s": args.cells / t_ours,
        "ratio": t_base / t_ours,
    }
    print(
        f"[cells, {device}] embed_data {result['embed_data_cells_per_s']:.0f} cells/s, "
        f"ours {result['ours_cells_per_s']:.0f} cells/s, ratio ours/embed_data "
        f"{result['ratio']:.2f} (target >= 1.5)"
    )
    return result


def bulk_benchmark(args, device: str, work: Path) -> dict:
    rng = np.random.default_rng(0)
    genes = [f"GENE{i:05d}" for i in range(60000)]
    t0 = time.perf_counter()
    ckpt = S.write_random_checkpoint(
        work / "human", genes, d_model=512, nlayers=12, nheads=8, d_hid=512, flash_keys=True
    )
    model = S.load_scgpt(ckpt, device=device)
    print(
        f"[bulk] whole-human-size random model written and loaded in {time.perf_counter() - t0:.1f} s"
    )
    # bulk-like: 18,000 of 20,000 measured genes expressed, log-normal TPM-like values
    measured = list(rng.choice(genes, 20000, replace=False))
    values = rng.lognormal(1.0, 2.0, (args.bulk_samples, 20000)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = 0.0
    result = {"samples": args.bulk_samples}
    for precision in ("bf16", "fp32"):
        if precision == "bf16" and device == "cpu" and not args.cpu_bf16:
            continue

        def run(precision=precision):
            S.embed_expression(
                model, values, measured, batch_size=args.batch_size, precision=precision
            )

        seconds = best_of(args.repeats, run, device)
        result[f"{precision}_samples_per_s"] = args.bulk_samples / seconds
        print(
            f"[bulk, {device}, {precision}] {args.bulk_samples / seconds:.3g} samples/s (1200 tokens each)"
        )
    if device == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    a = S.embed_expression(model, values[:8], measured, precision="fp32")
    if device == "cuda":
        b = S.embed_expression(model, values[:8], measured, precision="bf16")
        result["bf16_vs_fp32_cosine_min"] = float((a * b).sum(1).min())
        print(f"[bulk] cosine(bf16, fp32) >= {result['bf16_vs_fp32_cosine_min']:.4f}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cells", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--whole-human", action="store_true", help="part 2 also without a GPU")
    p.add_argument("--bulk-samples", type=int, default=256)
    p.add_argument("--cpu-bf16", action="store_true", help="part 2 on CPU: also bf16 autocast")
    p.add_argument(
        "--attribution",
        action="store_true",
        help="also time embed_data with torch's Transformer fast path off",
    )
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    print(
        f"device {device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if device == "cuda"
            else f" ({torch.get_num_threads()} threads)"
        )
    )
    results = {"device": device}
    with tempfile.TemporaryDirectory() as tmp:
        results["cells"] = cells_benchmark(args, device, Path(tmp))
        if device == "cuda" or args.whole_human:
            results["bulk"] = bulk_benchmark(args, device, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
