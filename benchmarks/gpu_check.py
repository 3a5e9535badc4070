"""GPU check for a lent CUDA machine (CI never runs it): one table, each row against a baseline run in the same process.

    python benchmarks/gpu_check.py [--out DIR] [--json FILE] [--rows a,b,d,e,g,c] [--budget-s 420]
    python benchmarks/gpu_check.py --device cpu --tiny      # the same code paths, tiny, on CPU

Rows (the project's benchmark rule: ratios against a baseline measured in the same run, never
absolute timings as a pass/fail):

a. T2T-ViT-14 at 224 px, image-only model (hpc_pgo.models.build_model), bf16, batch 64: training
   images/s through the project's engine (Engine.train_step: DeepSpeed bf16, ZeRO 0, torch Adam,
   balance none) AGAINST the baseline "plain": a timm-style loop over a copy of the same model
   (same build, same weights), torch.optim.AdamW, torch.autocast(device_type="cuda",
   dtype=torch.bfloat16), the same Cox loss (hpc_pgo.survival.cox_nll), the same batch (moved to
   the device every step, as the engine does). Rounds alternate 5 steps of each after 3 warm-up
   steps; the median round gives s/step. The engine reads its loss every step (one sync); the
   plain loop does not. Ratio project/plain, target >= 0.95.
b. the modulated step's overhead: fusion (T2T-ViT-14 at 224 px + SNN), bf16, batch 64, seconds per
   engine step with balance.mode=rho over the baseline balance.mode=none. Target <= 1.05.
c. a demo fold end to end (pgo-shards demo at 64 px, 150 patients x 2 ROIs; model=fusion:
   T2T-ViT-7 + SNN, concat + rho, 15 epochs, bf16, 4 loader workers) through train_fold: wall
   time and C-index; then the resume check: the same fold in another run_dir with
   train.stop_after_steps=N (N = half its steps + 1: it checkpoints mid-run and returns status
   "stopped"), called again to finish. predictions.csv must be byte-identical to the
   uninterrupted run's (identical yes/no; if not, the max abs hazard difference is printed and,
   when the time budget allows, a second uninterrupted run tells GPU nondeterminism from a resume
   fault). Baseline: the uninterrupted run's wall time (ratio: both calls / uninterrupted).
d. scGPT at whole-human size (12 layers, d_model 512, 8 heads, d_hid 512; random weights written
   as an official checkpoint folder by hpc_pgo.models.scgpt.write_random_checkpoint: args.json,
   vocab.json, best_model.pt; a 2,000-gene vocab), 512 bulk-like samples (each expresses 20-90%
   of the 2,000 genes, so most hit max_length 1,200 tokens), one AnnData: samples/s of the
   project's embedding path (load_scgpt + embed_expression, as `pgo-shards embed-rna` runs it:
   length buckets, SDPA, bf16) against the baseline scgpt.tasks.embed_data(adata, ckpt,
   max_length=1200, batch_size=64) (fp16 autocast, DataLoader binning workers), each end to end
   with checkpoint loading, best of 2 after a warm-up. Target >= 1.5.
e. the fold loader (hpc_pgo.data.loader.make_loader, fold 0 train, cnv/mut/rna standardised,
   224 px view, batch 64) on a demo cohort built at 224 px (400 patients x 4 ROIs), with 8 and
   16 workers, 2 rounds each (alternating): units/s after the first batch (steady) and with the
   start-up (epoch), against the baseline: the units/s the training step of row a consumes. The
   loader keeps up when its steady rate >= that.
f. peak GPU memory: torch.cuda.max_memory_allocated, reset before each row (and before each
   mode's block in a, b, d, g), printed in every row's last column.
g. frozen tile features + attention MIL, two lines, on row e's 224 px cohort when it was built
   (else a new demo, 200 patients x 4 ROIs), through a hard-linked copy of it (embed-tiles adds
   tile_features/ and rewrites the manifest; the cohort other rows read is not changed).
   (1) embed-tiles through the library call (hpc_pgo.data.embed_tiles.embed_tiles, TileOptions)
   with ResNet-50 (`resnet50`, CLAM's encoder; random weights saved to a file first, so the
   --weights path runs) at 224 px, batch 64, 8 DataLoader workers decoding (workers=8):
   bf16 autocast (precision="bf16") against the baseline fp32, each call with force=True, 2 calls
   of each alternating, the best tiles/s of each (the loop's time, TileResult.seconds: decode +
   forward + writing, worker start-up included; the model build is not counted).
   Target bf16/fp32 >= 1.5; and the agreement of the two stored feature sets (both float16 on
   disk): cosine similarity per tile, min and median, target median >= 0.99. The note also gives
   the backbone alone on a fixed device batch (decode excluded, 10 batches of each precision):
   a ratio well under the backbone's says decode (in 8 workers), not the GPU, bounds it. (2) the
   per-epoch cost of ABMIL (model=image_abmil, max_tiles = the most tiles of a patient: every
   tile every epoch, batch 32 patients, in-process) on the bf16 features just stored, against the
   baseline: end to end (model=fusion, model.modalities=[image], T2T-ViT-7 at 224 px, batch 32
   tiles, 8 loader workers) on the same tiles; each by difference of a 1- and a 3-epoch
   train_fold of fold 0 ((wall(3) - wall(1)) / 2, as benchmarks/mil_cost.py), bf16. Ratio end to
   end / ABMIL, target >= 50.

Each row is printed (flushed) as soon as it is measured, so a run cut by its timeout still leaves
the rows done; a row that raises prints its traceback and an ERROR line, and the others still run
(exit 1 then). The whole table is printed again at the end. Execution order: a, b, d, e, g, c
(g after e: it reuses e's cohort; c last: its optional control fold is decided by --budget-s).

Default sizes: as above (a, b: 3 warm-up + 4 rounds x 5 steps of each mode; d: 512 samples; e: 1,600
units, 2 rounds per worker count; g: 1,600 tiles embedded 4 times, then 4 folds of 1 or 3 epochs;
c: 15 epochs of ~9 steps, twice, a third time only when the predictions differ and --budget-s
allows). Expected duration on one H100, NOT measured yet (estimated from the step counts): imports
+ the two demo builds ~1 min, a + b ~1 min, d ~0.5 min, e ~0.5 min, g ~1-1.5 min (embedding ~0.5,
the four folds ~0.5-1), c ~1-3 min: about 4-6.5 minutes, under 8.

On a lent GPU machine (its image has python3 3.12 with torch 2.11 + CUDA but not DeepSpeed,
webdataset, omegaconf, lifelines, scgpt, scanpy, anndata, ...; it reaches no registry): first,
HERE, in the checkout the session started in, `bash benchmarks/gpu_wheels.sh` (50 wheels, ~43 MB,
into the ignored .whl/), then one device run with carry [".whl"], timeout_s 540:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
    export PYTHONUNBUFFERED=1; nvidia-smi -L;
    timeout 480 python3 benchmarks/gpu_check.py --out /tmp/gpu_check --budget-s 400 \
      --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

--tiny (with --device cpu, for tests/test_gpu_check.py): the same functions at tiny sizes: fp32,
rows a/b with lcnet_050 (the demo preset's 0.7 M-parameter CNN, through the same build_model) at
32 px, batch 4, 1 warm-up + 2 rounds of 1 step; row c on a 60-patient x 2-ROI demo at 32 px with
model=fusion_small, 2 epochs of batch 48 (4 steps, stopped after 3), in-process loading; scGPT
d 32, 2 layers, 2 heads, 200 genes, 24 samples; the loader with 2 workers on the same demo; row g
on that demo again (32 px) with resnet10t, batch 16, decoding in-process (workers=0), ONE call of
each, and the "bf16" call in fp32 too (bf16 autocast on CPU is not what the row checks: its speed
column reads "skipped", the agreement must then be identical), end to end with lcnet_050
(model=fusion_small), batch 48, in-process. On CPU the memory column is "n/a (cpu)".

Without CUDA and without --device cpu it refuses with one line and exits 2.
tests/test_gpu_check.py runs the tiny mode and checks every row, the byte-identical resume and
row g's identical fp32-vs-fp32 features.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import hpc_pgo  # noqa: F401  (before timm)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = "abdegc"  # execution order; every row by default

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; GPU (default) and TINY below."""

    dtype: str = "bf16"  # deepspeed.dtype of the engine rows and the fold; bf16 autocast in "plain"
    arch: str = "t2t_vit_14"  # rows a, b
    image_size: int = 224
    batch: int = 64
    warmup: int = 3
    rounds: int = 4
    steps_per_round: int = 5
    # row c
    demo_image_size: int = 64
    demo_patients: int = 150
    demo_rois: int = 2
    fold_epochs: int = 15
    fold_batch: int = 32
    fold_workers: int = 4
    fold_overrides: tuple[str, ...] = ()
    # row d
    scgpt_layers: int = 12
    scgpt_d_model: int = 512
    scgpt_heads: int = 8
    scgpt_genes: int = 2000
    scgpt_samples: int = 512
    scgpt_max_length: int = 1200
    scgpt_batch: int = 64
    scgpt_repeats: int = 2
    # row e
    loader_image_size: int = 224
    loader_patients: int = 400
    loader_rois: int = 4
    loader_workers: tuple[int, ...] = (8, 16)
    loader_rounds: int = 2
    build_workers: int = 8
    # row g (its cohort: row e's when built, else mil_patients x mil_rois at mil_image_size)
    mil_image_size: int = 224
    mil_patients: int = 200
    mil_rois: int = 4
    embed_arch: str = "resnet50"  # CLAM's encoder
    embed_precision: str = "bf16"  # against fp32; tiny: fp32 again (bf16 autocast on CPU skipped)
    embed_batch: int = 64
    embed_workers: int = 8  # embed-tiles' DataLoader workers: decode off the forward's process
    embed_rounds: int = 2  # embed-tiles calls of each precision, alternating; the best counts
    forward_batches: int = 10  # backbone-only forwards of each precision (decode excluded)
    e2e_model: str = "fusion"
    e2e_arch: str = "t2t_vit_7"
    mil_batch: int = 32  # units (end to end) or patients (ABMIL) per step
    mil_workers: int = 8  # end to end; ABMIL reads memory-mapped features in-process


TINY = Sizes(
    dtype="fp32",
    arch="lcnet_050",  # the demo preset's 0.7 M-parameter CNN: the same build_model path, cheap
    image_size=32,
    batch=4,
    warmup=1,
    rounds=2,
    steps_per_round=1,
    demo_image_size=32,
    demo_patients=60,
    demo_rois=2,
    fold_epochs=2,
    fold_batch=48,
    fold_workers=0,
    fold_overrides=("model=fusion_small",),
    scgpt_layers=2,
    scgpt_d_model=32,
    scgpt_heads=2,
    scgpt_genes=200,
    scgpt_samples=24,
    scgpt_batch=16,
    scgpt_repeats=1,
    loader_image_size=32,
    loader_patients=60,
    loader_rois=2,
    loader_workers=(2,),
    loader_rounds=1,
    build_workers=1,
    mil_image_size=32,
    mil_patients=60,
    mil_rois=2,
    embed_arch="resnet10t",
    embed_precision="fp32",
    embed_batch=16,
    embed_workers=0,
    embed_rounds=1,
    forward_batches=2,
    e2e_model="fusion_small",
    e2e_arch="lcnet_050",
    mil_batch=48,
    mil_workers=0,
)

DIMS = {"cnv": 60, "mut": 20, "rna": 120}  # the demo cohort's omics widths


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the table: what was measured against which baseline."""

    key: str
    name: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    verdict: str
    memory: str
    note: str = ""
    data: dict = field(default_factory=dict)


def print_row(row: Row) -> None:
    ratio = "-" if row.ratio is None else f"{row.ratio:.3f}"
    print(
        f"[{row.key}] {row.name} | ours {row.ours} | baseline {row.baseline} | ratio {ratio} "
        f"(target {row.target}: {row.verdict}) | peak GPU mem {row.memory}"
        + (f" | {row.note}" if row.note else ""),
        flush=True,
    )


def print_table(device_name: str, rows: list[Row]) -> None:
    print(f"\ndevice: {device_name}", flush=True)
    header = ("row", "measured (ours)", "baseline", "ratio", "target", "met", "peak GPU mem")
    lines = [
        (
            f"{r.key}. {r.name}",
            r.ours,
            r.baseline,
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            r.target,
            r.verdict,
            r.memory,
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(line, widths, strict=True)), flush=True)


# --------------------------------------------------------------------------- device helpers


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def fmt_mem(*values: float | None, labels: tuple[str, ...] = ()) -> str:
    if all(v is None for v in values):
        return "n/a (cpu)"
    parts = [f"{v:.2f} GiB" for v in values]
    if labels:
        parts = [f"{p} {lab}" for p, lab in zip(parts, labels, strict=True)]
    return " / ".join(parts)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


# --------------------------------------------------------------------------- rows a and b


def synthetic_batch(batch: int, size: int, dims: dict[str, int]) -> dict:
    gen = torch.Generator().manual_seed(0)
    out = {g: torch.randn(batch, d, generator=gen) for g, d in dims.items()}
    out["image"] = torch.randn(batch, 3, size, size, generator=gen)
    out["time"] = torch.rand(batch, generator=gen) * 100
    out["event"] = (torch.rand(batch, generator=gen) < 0.6).float()
    return out


def build_survival_model(modalities: list[str], sz: Sizes):
    from hpc_pgo.models import build_model

    torch.manual_seed(0)
    return build_model(
        {"modalities": modalities, "image": {"arch": sz.arch}},
        feature_dims=DIMS,
        image_size=sz.image_size,
    )


def engine_for(model, balance: str, sz: Sizes):
    from hpc_pgo.engine import build_engine, setup_distributed

    cfg = {
        "train": {"lr": 1e-4, "epochs": 1, "batch_size": sz.batch, "weight_decay": 4e-4},
        "balance": {"mode": balance},
        "deepspeed": {"zero_optimization": {"stage": 0}, "dtype": sz.dtype},
    }
    steps = sz.warmup + sz.rounds * sz.steps_per_round
    return build_engine(model, cfg, steps_per_epoch=steps, dist_env=setup_distributed())


def plain_loop(model, sz: Sizes, device: str):
    """The baseline of row a: a timm-style step over `model` (a copy of the engine's)."""
    from hpc_pgo.survival import cox_nll

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=4e-4)
    bf16 = sz.dtype == "bf16" and device == "cuda"

    def step(batch: dict) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device_type="cuda" if device == "cuda" else "cpu",
                            dtype=torch.bfloat16, enabled=bf16):  # fmt: skip
            out = model(batch)
        loss = cox_nll(out["theta"].float(), batch["time"], batch["event"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def alternate(modes: dict, sz: Sizes, device: str, batch: dict) -> tuple[dict, dict]:
    """Median s/step of each mode over rounds that alternate them; peak GiB of each mode's blocks."""
    for step in modes.values():
        for _ in range(sz.warmup):
            step(batch)
    sync(device)
    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, float | None] = {m: None for m in modes}
    for _ in range(sz.rounds):
        for name, step in modes.items():
            reset_peak(device)
            start = time.perf_counter()
            for _ in range(sz.steps_per_round):
                step(batch)
            sync(device)
            times[name].append((time.perf_counter() - start) / sz.steps_per_round)
            peak = peak_gib(device)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0.0, peak)
    return {m: statistics.median(t) for m, t in times.items()}, peaks


def row_a(sz: Sizes, device: str) -> Row:
    model = build_survival_model(["image"], sz)
    plain_model = copy.deepcopy(model)  # before DeepSpeed casts the engine's copy to bf16
    engine = engine_for(model, "none", sz)
    batch = synthetic_batch(sz.batch, sz.image_size, DIMS)
    modes = {
        "project": functools.partial(engine.train_step, epoch=0),
        "plain": plain_loop(plain_model, sz, device),
    }
    sec, peaks = alternate(modes, sz, device, batch)
    del engine, modes, model, plain_model
    free_memory(device)
    ours, base = sz.batch / sec["project"], sz.batch / sec["plain"]
    ratio = ours / base
    precision = "bf16" if sz.dtype == "bf16" else "fp32"
    return Row(
        key="a",
        name=f"{sz.arch} {sz.image_size} px train {precision} b{sz.batch}: engine vs plain AdamW+autocast",
        ours=f"{ours:.1f} img/s",
        baseline=f"{base:.1f} img/s (plain)",
        ratio=ratio,
        target=">= 0.95",
        verdict=verdict(ratio >= 0.95),
        memory=fmt_mem(peaks["project"], peaks["plain"], labels=("engine", "plain")),
        note=f"{sec['project'] * 1e3:.1f} vs {sec['plain'] * 1e3:.1f} ms/step; both models resident",
        data={"project_img_s": ours, "plain_img_s": base, "seconds": sec, "peak_gib": peaks},
    )


def row_b(sz: Sizes, device: str) -> Row:
    batch = synthetic_batch(sz.batch, sz.image_size, DIMS)
    engines = {}
    for mode in ("none", "rho"):
        engines[mode] = engine_for(build_survival_model(["genomic", "image"], sz), mode, sz)
    modes = {m: functools.partial(e.train_step, epoch=0) for m, e in engines.items()}
    sec, peaks = alternate(modes, sz, device, batch)
    del engines, modes
    free_memory(device)
    ratio = sec["rho"] / sec["none"]
    return Row(
        key="b",
        name=f"fusion ({sz.arch} {sz.image_size} px + SNN) step: balance rho vs none",
        ours=f"{sec['rho'] * 1e3:.1f} ms/step (rho)",
        baseline=f"{sec['none'] * 1e3:.1f} ms/step (none)",
        ratio=ratio,
        target="<= 1.05",
        verdict=verdict(ratio <= 1.05),
        memory=fmt_mem(peaks["rho"], peaks["none"], labels=("rho", "none")),
        note="both engines resident",
        data={"seconds": sec, "peak_gib": peaks},
    )


# --------------------------------------------------------------------------- row c


def build_demo(out: Path, *, size: int, patients: int, rois: int, workers: int) -> Path:
    from hpc_pgo.data.cli import main as pgo_shards

    if not (out / "manifest.json").is_file():
        code = pgo_shards(
            ["demo", "--out", str(out), "--image-size", str(size), "--patients", str(patients),
             "--rois", str(rois), "--workers", str(workers), "--no-progress", "--force"]
        )  # fmt: skip
        if code != 0:
            raise RuntimeError(f"pgo-shards demo --out {out} failed with exit code {code}")
    return out


def fold_cfg(sz: Sizes, shards: Path, *extra: str):
    from hpc_pgo.config import compose

    return compose(
        [f"data.shards={shards}", f"data.image_size={sz.demo_image_size}",
         f"deepspeed.dtype={sz.dtype}", f"train.epochs={sz.fold_epochs}",
         f"train.batch_size={sz.fold_batch}", f"train.num_workers={sz.fold_workers}",
         "cluster.gpus_per_node=1", *sz.fold_overrides, *extra]
    )  # fmt: skip


def predictions_diff(a: Path, b: Path) -> tuple[bool, float]:
    """(byte-identical, max abs difference of the hazard columns) of two predictions.csv."""
    import pandas as pd

    same = a.read_bytes() == b.read_bytes()
    pa, pb = pd.read_csv(a), pd.read_csv(b)
    if len(pa) != len(pb) or list(pa["unit"]) != list(pb["unit"]):
        return same, float("inf")
    cols = [c for c in pa.columns if c.startswith("hazard")]
    return same, float(np.max(np.abs(pa[cols].to_numpy() - pb[cols].to_numpy())))


def row_c(sz: Sizes, device: str, work: Path, deadline: float) -> Row:
    from hpc_pgo.fold_outputs import PREDICTIONS, fold_dir
    from hpc_pgo.train.fold import train_fold

    shards = build_demo(
        work / f"demo{sz.demo_image_size}px_{sz.demo_patients}x{sz.demo_rois}",
        size=sz.demo_image_size, patients=sz.demo_patients, rois=sz.demo_rois,
        workers=sz.build_workers,
    )  # fmt: skip
    runs = work / "fold_runs"
    shutil.rmtree(runs, ignore_errors=True)
    reset_peak(device)
    start = time.perf_counter()
    whole = train_fold(fold_cfg(sz, shards), 0, runs / "whole")
    whole_s = time.perf_counter() - start
    peak_whole = peak_gib(device)
    print(
        f"[c] uninterrupted fold: {whole_s:.1f} s, {whole['steps']} steps, "
        f"C-index {whole['cindex']:.3f}",
        flush=True,
    )
    stop_at = whole["steps"] // 2 + 1
    start = time.perf_counter()
    first = train_fold(fold_cfg(sz, shards, f"train.stop_after_steps={stop_at}"), 0, runs / "parts")
    second = train_fold(fold_cfg(sz, shards), 0, runs / "parts")
    parts_s = time.perf_counter() - start
    stopped_ok = first.get("status") == "stopped" and first.get("step") == stop_at
    same, max_diff = predictions_diff(
        fold_dir(runs / "whole", 0) / PREDICTIONS, fold_dir(runs / "parts", 0) / PREDICTIONS
    )
    note = (
        f"first call {first.get('status')} at step {first.get('step')}, then "
        f"{second.get('status')} (calls {second.get('calls')}); predictions.csv byte-identical: "
        f"{'yes' if same else 'no'}; max |hazard diff| {max_diff:.3g}"
    )
    control = None
    if not same:
        if time.perf_counter() + 1.3 * whole_s < deadline:
            train_fold(fold_cfg(sz, shards), 0, runs / "whole2")
            control_same, control_diff = predictions_diff(
                fold_dir(runs / "whole", 0) / PREDICTIONS,
                fold_dir(runs / "whole2", 0) / PREDICTIONS,
            )
            control = {"identical": control_same, "max_abs_diff": control_diff}
            note += (
                f"; a 2nd uninterrupted run vs the 1st: identical "
                f"{'yes' if control_same else 'no'}, max |diff| {control_diff:.3g} ("
                + (
                    "so the difference comes from resuming"
                    if control_same
                    else "GPU nondeterminism, not only resuming"
                )  # fmt: skip
                + ")"
            )
        else:
            note += "; no time left for a 2nd uninterrupted run (nondeterminism control)"
    precision = "bf16" if sz.dtype == "bf16" else "fp32"
    return Row(
        key="c",
        name=(
            f"demo fold 0 {precision} ({sz.demo_image_size} px, {sz.fold_epochs} epochs) + resume "
            f"(stop_after_steps={stop_at}): predictions identical"
        ),
        ours=f"{parts_s:.1f} s (2 calls), identical {'yes' if same else 'no'}",
        baseline=f"{whole_s:.1f} s uninterrupted, C-index {whole['cindex']:.3f}",
        ratio=parts_s / whole_s,
        target="identical",
        verdict=verdict(same and stopped_ok),
        memory=fmt_mem(peak_whole),
        note=note,
        data={
            "whole_s": whole_s,
            "parts_s": parts_s,
            "cindex": whole["cindex"],
            "steps": whole["steps"],
            "stop_after_steps": stop_at,
            "first_call": first,
            "identical": same,
            "max_abs_hazard_diff": max_diff,
            "control": control,
        },
    )


# --------------------------------------------------------------------------- row d


def row_d(sz: Sizes, device: str, work: Path) -> Row:
    import logging
    import warnings

    import anndata
    from scgpt_embed import best_of

    from hpc_pgo.models import scgpt as S

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scgpt.tasks import embed_data
    logging.getLogger("scGPT").setLevel(logging.WARNING)

    rng = np.random.default_rng(0)
    genes = [f"GENE{i:05d}" for i in range(sz.scgpt_genes)]
    ckpt = S.write_random_checkpoint(
        work / "scgpt_human", genes, d_model=sz.scgpt_d_model, nlayers=sz.scgpt_layers,
        nheads=sz.scgpt_heads, d_hid=sz.scgpt_d_model, flash_keys=True,
    )  # fmt: skip
    n = sz.scgpt_samples
    values = rng.lognormal(1.0, 2.0, (n, len(genes))).astype(np.float32)
    expressed = rng.uniform(0.2, 0.9, n)  # share of the genes each sample expresses
    values[rng.random(values.shape) > expressed[:, None]] = 0.0
    adata = anndata.AnnData(X=values)
    adata.var_names = genes

    def baseline():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embed_data(
                adata.copy(), ckpt, gene_col="index", max_length=sz.scgpt_max_length,
                batch_size=sz.scgpt_batch, device=device,
            )  # fmt: skip

    def ours():
        model = S.load_scgpt(ckpt, device=device)
        S.embed_expression(
            model, values, genes, max_length=sz.scgpt_max_length, batch_size=sz.scgpt_batch
        )

    peaks = {}
    seconds = {}
    for name, fn in (("embed_data", baseline), ("ours", ours)):
        reset_peak(device)
        seconds[name] = best_of(sz.scgpt_repeats, fn, device)
        peaks[name] = peak_gib(device)
        free_memory(device)
    ratio = seconds["embed_data"] / seconds["ours"]
    return Row(
        key="d",
        name=(
            f"scGPT {sz.scgpt_layers} layers d{sz.scgpt_d_model} {sz.scgpt_heads} heads, "
            f"{sz.scgpt_genes} genes, {n} samples, max_length {sz.scgpt_max_length}: embed"
        ),
        ours=f"{n / seconds['ours']:.1f} samples/s (load_scgpt+embed_expression)",
        baseline=f"{n / seconds['embed_data']:.1f} samples/s (scgpt embed_data)",
        ratio=ratio,
        target=">= 1.5",
        verdict=verdict(ratio >= 1.5),
        memory=fmt_mem(peaks["ours"], peaks["embed_data"], labels=("ours", "embed_data")),
        note=f"end to end with checkpoint loading, best of {sz.scgpt_repeats} after a warm-up",
        data={"seconds": seconds, "samples": n, "peak_gib": peaks},
    )


# --------------------------------------------------------------------------- row e


def loader_pass(shard_dir: Path, standardizer, *, workers: int, sz: Sizes, epoch: int) -> dict:
    """One train epoch of fold 0 through make_loader: units, seconds with start-up, steady seconds."""
    from loader import FOLD, GROUPS

    from hpc_pgo.data.loader import make_loader

    start = time.perf_counter()
    loader = make_loader(
        shard_dir, FOLD, "train", batch_size=sz.batch, groups=GROUPS,
        image_size=sz.loader_image_size, standardizer=standardizer, epoch=epoch,
        num_workers=workers,
    )  # fmt: skip
    units = first_units = 0
    first_at = None
    for batch in loader:
        units += len(batch["key"])
        if first_at is None:
            first_at, first_units = time.perf_counter(), units
    end = time.perf_counter()
    steady = (units - first_units) / (end - first_at) if units > first_units else float("nan")
    return {"units": units, "epoch_units_s": units / (end - start), "steady_units_s": steady,
            "first_batch_s": first_at - start}  # fmt: skip


def row_e(sz: Sizes, device: str, work: Path, consumption: float | None) -> list[Row]:
    from loader import FOLD, GROUPS

    from hpc_pgo.data.folds import open_fold
    from hpc_pgo.data.standardizer import Standardizer

    shards = build_demo(
        work / f"demo{sz.loader_image_size}px_{sz.loader_patients}x{sz.loader_rois}",
        size=sz.loader_image_size, patients=sz.loader_patients, rois=sz.loader_rois,
        workers=sz.build_workers,
    )  # fmt: skip
    data = open_fold(shards, FOLD)
    standardizer = Standardizer.fit(shards, data.train, GROUPS)
    results: dict[int, list[dict]] = {w: [] for w in sz.loader_workers}
    for epoch in range(sz.loader_rounds):
        for workers in sz.loader_workers:
            results[workers].append(
                loader_pass(shards, standardizer, workers=workers, sz=sz, epoch=epoch)
            )
    rows = []
    for workers, passes in results.items():
        steady = statistics.median(p["steady_units_s"] for p in passes)
        whole = statistics.median(p["epoch_units_s"] for p in passes)
        first = statistics.median(p["first_batch_s"] for p in passes)
        ratio = steady / consumption if consumption else None
        rows.append(
            Row(
                key="e",
                name=(
                    f"loader {workers} workers, fold 0 train ({passes[0]['units']} units, "
                    f"{sz.loader_image_size} px, b{sz.batch}) vs row a's consumption"
                ),
                ours=f"{steady:.0f} units/s steady ({whole:.0f} with start-up)",
                baseline=(
                    f"{consumption:.0f} units/s (row a engine)" if consumption else "row a not run"
                ),
                ratio=ratio,
                target=">= 1.0 (keeps up)",
                verdict="-" if ratio is None else verdict(ratio >= 1.0),
                memory=fmt_mem(None) if device != "cuda" else "0 (CPU loader)",
                note=f"first batch after {first:.2f} s; {os.cpu_count()} CPUs",
                data={"workers": workers, "passes": passes, "consumption_units_s": consumption},
            )
        )
    return rows


# --------------------------------------------------------------------------- row g


def mil_cohort(sz: Sizes, work: Path) -> Path:
    """Row e's cohort when it is built at row g's size, else a new demo; then a copy of it whose
    tars are hard links (embed-tiles rewrites only the manifest, atomically, and adds
    tile_features/), so row g never changes the cohort other rows read."""
    source = work / f"demo{sz.loader_image_size}px_{sz.loader_patients}x{sz.loader_rois}"
    if sz.loader_image_size != sz.mil_image_size or not (source / "manifest.json").is_file():
        source = build_demo(
            work / f"demo{sz.mil_image_size}px_{sz.mil_patients}x{sz.mil_rois}",
            size=sz.mil_image_size, patients=sz.mil_patients, rois=sz.mil_rois,
            workers=sz.build_workers,
        )  # fmt: skip
    copy = work / "mil_shards"
    shutil.rmtree(copy, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(
        source, copy, copy_function=link, ignore=shutil.ignore_patterns("tile_features")
    )
    return copy


def stored_features(shards: Path) -> tuple[list[str], np.ndarray]:
    """(keys, float32 (n, D)) of the side-car the manifest records, in manifest order."""
    from hpc_pgo.data.shards import read_manifest
    from hpc_pgo.data.tile_features import RECORD_KEY

    record = read_manifest(shards)[RECORD_KEY]
    keys = [str(k) for e in record["shards"] for k in np.load(shards / e["keys"]["file"])]
    feats = [np.load(shards / e["features"]["file"]).astype(np.float32) for e in record["shards"]]
    return keys, np.concatenate(feats)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) cosine similarity of the rows of a and b (n, D), in float64; 1 where both are equal."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.where((a == b).all(1), 1.0, cos)  # identical rows: exactly 1 (no rounding of sqrt)


def forward_rate(options, sz: Sizes, device: str, precision: str) -> float:
    """Tiles/s of the backbone alone (a fixed batch on the device, decode excluded)."""
    import contextlib

    from hpc_pgo.data.embed_tiles import load_backbone

    model, record = load_backbone(options, sz.mil_image_size, device)
    size = record["input_size"]
    batch = torch.randn(sz.embed_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        model(batch)
        sync(device)
        start = time.perf_counter()
        for _ in range(sz.forward_batches):
            model(batch).float()
        sync(device)
    del model
    return sz.forward_batches * sz.embed_batch / (time.perf_counter() - start)


def epoch_cost(tokens: list[str], runs: Path, name: str) -> tuple[float, dict]:
    """Seconds per training epoch of fold 0 of `tokens`, by difference of a 3- and a 1-epoch
    train_fold (wall_time_s of each metrics.json: set-up and the test pass cancel), as
    benchmarks/mil_cost.py; and the wall time of each."""
    from hpc_pgo.config import compose
    from hpc_pgo.train.fold import train_fold

    walls = {}
    for epochs in (1, 3):
        cfg = compose([*tokens, f"train.epochs={epochs}", "train.checkpoint_every=100"])
        walls[epochs] = float(train_fold(cfg, 0, runs / f"{name}-e{epochs}")["wall_time_s"])
    return (walls[3] - walls[1]) / 2, walls


def row_g(sz: Sizes, device: str, work: Path) -> list[Row]:
    from hpc_pgo.data.embed_tiles import TileOptions, embed_tiles
    from hpc_pgo.models.image import create_backbone

    shards = mil_cohort(sz, work)
    # (1) embed-tiles, fp32 against embed_precision (bf16 on CUDA), from a weights FILE
    torch.manual_seed(0)
    weights = work / f"{sz.embed_arch}_random.pth"
    torch.save(create_backbone(sz.embed_arch).state_dict(), weights)
    fast = sz.embed_precision
    skipped = fast != "bf16"  # tiny: fp32 again (bf16 autocast on CPU is not what is checked)
    modes = {"fp32": "fp32", "fast": fast}
    options = {
        m: TileOptions(arch=sz.embed_arch, weights=weights, input_size=sz.mil_image_size,
                       batch_size=sz.embed_batch, precision=p, device=device,
                       workers=sz.embed_workers)
        for m, p in modes.items()
    }  # fmt: skip
    rates: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, float | None] = {m: None for m in modes}
    feats: dict[str, tuple[list[str], np.ndarray]] = {}
    units = 0
    for _ in range(sz.embed_rounds):
        for mode in modes:
            reset_peak(device)
            result = embed_tiles(shards, options[mode], progress=False, force=True)
            peak = peak_gib(device)
            if peak is not None:
                peaks[mode] = max(peaks[mode] or 0.0, peak)
            units = result.units_computed
            rates[mode].append(units / result.seconds)
            feats[mode] = stored_features(shards)
            free_memory(device)
    rate = {m: max(r) for m, r in rates.items()}
    forward = {m: forward_rate(options[m], sz, device, p) for m, p in modes.items()}
    free_memory(device)
    (keys32, f32), (keys_fast, f_fast) = feats["fp32"], feats["fast"]
    if keys32 != keys_fast:
        raise RuntimeError(f"{shards}: the two embed-tiles runs stored the tiles in another order")
    cos = cosine_rows(f32, f_fast)
    identical = bool(np.array_equal(f32, f_fast))
    agreement = {"cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                 "identical": identical, "tiles": len(keys32), "dim": int(f32.shape[1])}  # fmt: skip
    agree_ok = agreement["cos_median"] >= 0.99
    speed = rate["fast"] / rate["fp32"]
    label = "fp32 again (tiny: bf16 skipped)" if skipped else fast
    embed_row = Row(
        key="g",
        name=(
            f"embed-tiles {sz.embed_arch} {sz.mil_image_size} px, {units} tiles, b{sz.embed_batch} "
            f"(weights file): {fast} vs fp32, cos min/median"
        ),
        ours=(
            f"skipped (tiny: fp32 again, {rate['fast']:.1f} tiles/s)"
            if skipped
            else f"{rate['fast']:.1f} tiles/s ({fast})"
        ),
        baseline=f"{rate['fp32']:.1f} tiles/s (fp32)",
        ratio=None if skipped else speed,
        target=">= 1.5; cos median >= 0.99",
        verdict=(
            f"skipped; agreement {verdict(agree_ok)}"
            if skipped
            else f"{verdict(speed >= 1.5)}; agreement {verdict(agree_ok)}"
        ),
        memory=fmt_mem(peaks["fast"], peaks["fp32"], labels=(fast, "fp32")),
        note=(
            f"cos {label} vs fp32 over {agreement['tiles']} tiles: min {agreement['cos_min']:.5f}, "
            f"median {agreement['cos_median']:.5f}, identical {'yes' if identical else 'no'} "
            f"(both stored float16); backbone alone (decode excluded): {forward['fast']:.1f} vs "
            f"{forward['fp32']:.1f} tiles/s ({forward['fast'] / forward['fp32']:.2f}x); best of "
            f"{sz.embed_rounds} embed-tiles calls each"
        ),
        data={
            "precision": fast,
            "skipped": skipped,
            "tiles_s": rate,
            "rounds": rates,
            "forward_tiles_s": forward,
            "agreement": agreement,
            "peak_gib": peaks,
            "weights": str(weights),
        },
    )
    print_row(embed_row)  # at once: part (2) takes longer
    embed_row.data["printed"] = True
    try:
        return [embed_row, mil_cost_row(sz, device, work, shards)]
    except Exception as err:  # keep part (1)'s line when part (2) fails
        traceback.print_exc()
        return [embed_row, failed_row("g", err)]


def mil_cost_row(sz: Sizes, device: str, work: Path, shards: Path) -> Row:
    """Row g (2): per-epoch cost of ABMIL on the stored features against end to end."""
    from hpc_pgo.data.shards import read_manifest
    from hpc_pgo.data.tile_features import read_tile_features

    # (2) per-epoch cost: ABMIL on the features just stored (fast precision) vs end to end
    bags = read_tile_features(shards, read_manifest(shards), verify=False)
    max_tiles = max(bags.units(p) for p in bags.patients)
    common = [f"data.shards={shards}", f"deepspeed.dtype={sz.dtype}", "cluster.gpus_per_node=1",
              f"train.batch_size={sz.mil_batch}", "model.modalities=[image]"]  # fmt: skip
    e2e_tokens = [*common, f"model={sz.e2e_model}", f"model.image.arch={sz.e2e_arch}",
                  f"data.image_size={sz.mil_image_size}", f"train.num_workers={sz.mil_workers}"]  # fmt: skip
    mil_tokens = [*common, "model=image_abmil", f"model.image.bag.max_tiles={max_tiles}",
                  "train.num_workers=0"]  # fmt: skip
    runs = work / "mil_runs"
    shutil.rmtree(runs, ignore_errors=True)
    cost, walls, fold_peaks = {}, {}, {}
    for name, tokens in (("e2e", e2e_tokens), ("abmil", mil_tokens)):
        reset_peak(device)
        cost[name], walls[name] = epoch_cost(tokens, runs, name)
        fold_peaks[name] = peak_gib(device)
        free_memory(device)
    ratio = cost["e2e"] / cost["abmil"] if cost["abmil"] > 0 else float("inf")
    return Row(
        key="g",
        name=(
            f"per-epoch cost, fold 0 ({max_tiles} tiles/patient): ABMIL on {sz.embed_arch} "
            f"features vs end to end {sz.e2e_arch} {sz.mil_image_size} px"
        ),
        ours=f"{cost['abmil']:.3f} s/epoch (ABMIL, b{sz.mil_batch} patients)",
        baseline=f"{cost['e2e']:.3f} s/epoch (end to end, b{sz.mil_batch} tiles)",
        ratio=ratio,
        target=">= 50 (end to end / ABMIL)",
        verdict=verdict(ratio >= 50),
        memory=fmt_mem(fold_peaks["abmil"], fold_peaks["e2e"], labels=("abmil", "e2e")),
        note=(
            f"(wall(3 epochs) - wall(1)) / 2 of train_fold, {sz.dtype}; walls e2e "
            f"{walls['e2e'][1]:.1f}/{walls['e2e'][3]:.1f} s, ABMIL {walls['abmil'][1]:.1f}/"
            f"{walls['abmil'][3]:.1f} s; end to end {sz.mil_workers} loader workers, ABMIL "
            "in-process"
            + ("" if cost["abmil"] > 0 else "; ABMIL's epoch below the timing resolution")
        ),
        data={
            "seconds_per_epoch": cost,
            "walls": walls,
            "max_tiles": max_tiles,
            "peak_gib": fold_peaks,
        },
    )


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (for the CPU test)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--rows", default=ROWS, help=f"which rows, in this order (default {ROWS})")
    parser.add_argument(
        "--budget-s", type=float, default=420.0,
        help="seconds the run should stay under (decides the optional control fold of row c)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: benchmarks/gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a lent GPU machine, or use --device cpu --tiny",
            file=sys.stderr,
        )
        return 2
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        print(f"error: --rows: unknown row(s) {','.join(unknown)}; valid: {ROWS}", file=sys.stderr)
        return 2
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sz = TINY if args.tiny else Sizes()
    began = time.perf_counter()
    deadline = began + args.budget_s
    device = args.device
    device_name = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {device_name}; torch {torch.__version__}; sizes: "
        f"{'tiny' if args.tiny else 'default'}",
        flush=True,
    )
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    consumption = None
    failed = []
    for key in args.rows.replace(",", ""):
        t0 = time.perf_counter()
        try:
            new = run_row(key, sz, device, work, deadline, consumption)
        except Exception as err:  # one row's failure must not cost the others (one GPU run)
            traceback.print_exc()
            failed.append(key)
            new = [failed_row(key, err)]
        if key == "a" and "a" not in failed:
            consumption = new[0].data["project_img_s"]
        if key not in failed and any(r.verdict == "ERROR" for r in new):
            failed.append(key)  # a row of several lines whose later part failed (row g)
        for row in new:
            row.data["row_s"] = time.perf_counter() - t0
            if not row.data.pop("printed", False):
                print_row(row)
        print(f"    (row {key}: {time.perf_counter() - t0:.1f} s; elapsed "
              f"{time.perf_counter() - began:.1f} s)", flush=True)  # fmt: skip
        rows.extend(new)
        if args.json:
            dump = {"device": device_name, "sizes": asdict(sz), "rows": [asdict(r) for r in rows]}
            args.json.write_text(json.dumps(dump, indent=1, default=str))
        free_memory(device)
    print_table(device_name, sorted(rows, key=lambda r: r.key))
    print(f"total {time.perf_counter() - began:.1f} s", flush=True)
    if failed:
        print(f"error: row(s) {','.join(failed)} failed (tracebacks above)", file=sys.stderr)
        return 1
    return 0


def run_row(key: str, sz: Sizes, device: str, work: Path, deadline: float, consumption) -> list:
    if key == "a":
        return [row_a(sz, device)]
    if key == "b":
        return [row_b(sz, device)]
    if key == "c":
        return [row_c(sz, device, work, deadline)]
    if key == "d":
        return [row_d(sz, device, work)]
    if key == "g":
        return row_g(sz, device, work)
    return row_e(sz, device, work, consumption)


def failed_row(key: str, err: BaseException) -> Row:
    message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return Row(key=key, name="FAILED", ours="-", baseline="-", ratio=None, target="-",
               verdict="ERROR", memory="-", note=message)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
