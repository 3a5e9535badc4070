"""MLP-A mix-up pretraining on cell shards: frozen scGPT, MLP-A + a linear cell-type classifier.

One optimizer step, on every rank r of W (DeepSpeed data parallel, B = train.batch_size pairs
over all ranks, B/W per rank):

1. draw B/W pairs of cells (i, j) and lambda ~ U(0, 1) per pair from a generator seeded by
   (seed, step, r): every rank draws other pairs, and a resumed run draws the same ones again;
2. mix each pair's raw expression over the UNION of their genes,
       x = lambda * x_i + (1 - lambda) * x_j     (a gene absent from a cell counts 0 there),
   and its target the same way, t = lambda * onehot(y_i) + (1 - lambda) * onehot(y_j);
   with mix.enabled=false, lambda = 1: x = x_i, t = onehot(y_i) (the ablation);
   mix.cells = m > 2 (an extension, not the paper's; default 2) mixes m cells instead of a pair:
   cells c_1..c_m uniform with replacement, weights w ~ Dirichlet(1, ..., 1) (for m = 2 that is
   lambda ~ U(0, 1) again), x = sum_k w_k x_{c_k}, t = sum_k w_k onehot(y_{c_k}): what a bulk
   of many cells of many types looks like;
3. tokenise the mixed sample as scGPT does (per-sample binning of its non-zero values,
   hpc_pgo.models.scgpt.tokenize_sample, seeded per (seed, step, r, pair)) and embed it with the
   frozen scGPT (eval mode, no gradient): e (B/W, d_model), L2-normalised;
4. logits = classifier(MLP-A(e)) (B/W, C); loss = soft cross-entropy
   -mean_b sum_c t_bc log softmax(logits)_bc (train.loss=soft_ce), or the mean squared error
   between softmax(logits) and t (train.loss=mse);
5. engine.backward(loss), engine.step(): DeepSpeed averages the gradients over ranks; Adam.

Checkpoints (hpc_pgo.engine.engine.save_checkpoint: a complete tag, then `latest`) go to
<run_dir>/checkpoints every train.checkpoint_every steps and at the end; a run that finds one
resumes from it. train.stop_after ends a run early (with a checkpoint) after that many steps;
``request_stop()`` (called by launch/pretrain.py on submitit's warning signal: the time limit is
near, or the job is preempted) ends it after the current step, with a checkpoint, on every rank.
At the end rank 0 writes mlp_a.pt (hpc_pgo.models.scgpt.save_mlp_a: MLP-A's state dict + the
scGPT checkpoint digest, vocab digest and class names), head.pt (MLP-A + classifier state dict)
and metrics.json (losses per step, mix flag).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpc_pgo import atomic
from hpc_pgo.errors import PgoError
from hpc_pgo.hold import Hold
from hpc_pgo.models.genomic import MLP

log = logging.getLogger(__name__)

CONFIG_FILE = "pretrain.yaml"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
HEAD_FILE = "head.pt"
MLP_A_FILE = "mlp_a.pt"


_stop_requested = False


def request_stop() -> None:
    """Ask a running pretrain() to checkpoint after its current step and return (signal-safe)."""
    global _stop_requested
    _stop_requested = True


# --------------------------------------------------------------------------- mix-up (pure)


def mix_cells(
    genes_i: np.ndarray, values_i: np.ndarray, genes_j: np.ndarray, values_j: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mix two cells over the union of their genes: lam * x_i + (1 - lam) * x_j.

    genes_*: (n_*,) int64 vocabulary ids, unique; values_*: (n_*,) expression. A gene absent from
    a cell counts 0 there. Returns (genes (n,) ascending = union, values (n,) float32); genes whose
    mixed value is 0 (lam = 1 drops cell j's own genes) are left out, as a cell stores only
    expressed genes. lam = 1 gives cell i exactly.
    """
    return mix_many([(genes_i, values_i), (genes_j, values_j)], [lam, 1.0 - lam])


def mix_targets(
    labels_i: torch.Tensor, labels_j: torch.Tensor, lam: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Soft targets lam * onehot(y_i) + (1 - lam) * onehot(y_j): (B, n_classes) float32, rows sum to 1."""
    lam = lam.float().unsqueeze(1)
    return (
        lam * F.one_hot(labels_i, n_classes).float()
        + (1 - lam) * F.one_hot(labels_j, n_classes).float()
    )


def draw_pairs(
    n_cells: int, n_pairs: int, *, seed: int, step: int, rank: int, mix: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i (P,), j (P,), lam (P,)) for one rank's step: cells uniform with replacement, lam ~ U(0, 1).

    Seeded by (seed, step, rank) only: deterministic, different on every rank and every step, and
    the same after a resume. mix=False: lam = 1 (j is drawn anyway, so that i is the same stream).
    """
    rng = np.random.default_rng([seed, step, rank])
    i = rng.integers(0, n_cells, n_pairs)
    j = rng.integers(0, n_cells, n_pairs)
    lam = rng.uniform(0.0, 1.0, n_pairs) if mix else np.ones(n_pairs)
    return i, j, lam


def draw_mixtures(
    n_cells: int, n_samples: int, n_mix: int, *, seed: int, step: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """(cells (P, m), weights (P, m)) for one rank's step with mix.cells = m > 2: cells uniform
    with replacement, weights ~ Dirichlet(1, ..., 1) per sample (rows sum to 1). Seeded by
    (seed, step, rank) as draw_pairs (m = 2 keeps draw_pairs' own stream)."""
    rng = np.random.default_rng([seed, step, rank])
    cells = rng.integers(0, n_cells, (n_samples, n_mix))
    return cells, rng.dirichlet(np.ones(n_mix), n_samples)


def mix_many(
    cells: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """sum_k weights[k] * x_k over the union of the cells' genes (absent = 0, accumulated in
    float64 in the order given): (genes ascending, values float32), zero-valued genes left out.
    mix_cells is its two-cell case."""
    genes = np.unique(np.concatenate([g for g, _ in cells]))
    mixed = np.zeros(len(genes), dtype=np.float64)
    for (g, v), w in zip(cells, weights, strict=True):
        mixed[np.searchsorted(genes, g)] += float(w) * np.asarray(v, dtype=np.float64)
    keep = mixed != 0
    return genes[keep], mixed[keep].astype(np.float32)


def mixture_targets(labels: torch.Tensor, weights: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Soft targets sum_k weights[:, k] onehot(labels[:, k]): labels, weights (B, m) -> (B, C)."""
    return (weights.float().unsqueeze(2) * F.one_hot(labels, n_classes).float()).sum(dim=1)


def sample_seed(seed: int, step: int, rank: int, index: int) -> int:
    """The tokeniser's seed for pair `index` of a step on a rank (bin tie-breaks): 32-bit."""
    return int(np.random.SeedSequence([seed, step, rank, index]).generate_state(1)[0])


# --------------------------------------------------------------------------- losses


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean_b sum_c target_bc log softmax(logits)_bc; logits, target (B, C)."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def soft_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over (b, c) of (softmax(logits)_bc - target_bc)^2; logits, target (B, C)."""
    return F.mse_loss(F.softmax(logits.float(), dim=1), target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "soft_ce": soft_cross_entropy,
    "mse": soft_mse,
}


# --------------------------------------------------------------------------- model


class CellTypeHead(nn.Module):
    """MLP-A (in_dim -> hidden ... -> out) then a linear classifier to the cell types: (B, d) -> (B, C)."""

    def __init__(
        self, in_dim: int, n_classes: int, *, hidden: int, out: int, layers: int, dropout: float
    ):
        super().__init__()
        self.mlp_a = MLP(in_dim, hidden, out, layers, dropout)
        self.classifier = nn.Linear(out, n_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp_a(embedding))


def head_from_cfg(cfg: DictConfig, in_dim: int, n_classes: int) -> CellTypeHead:
    """CellTypeHead with cfg.mlp_a's sizes."""
    m = cfg.mlp_a
    return CellTypeHead(
        in_dim,
        n_classes,
        hidden=int(m.hidden),
        out=int(m.out),
        layers=int(m.layers),
        dropout=float(m.dropout),
    )


# --------------------------------------------------------------------------- embedding


class MixedCellEmbedder:
    """Frozen scGPT over mixed cells: tokenise each (genes, values) as scGPT does, embed, L2-normalise."""

    def __init__(self, scgpt: Any, *, max_length: int):
        self.scgpt = scgpt
        self.max_length = int(max_length)
        # names break ties of "top" gene selection (more than max_length - 1 expressed genes)
        self.names = np.asarray(scgpt.vocab.get_itos(), dtype=object)

    def __call__(
        self, cells: Sequence[tuple[np.ndarray, np.ndarray]], seeds: Sequence[int]
    ) -> torch.Tensor:
        """(B, d_model) float32 embeddings of cells [(gene ids, values)], no gradient."""
        from hpc_pgo.models.scgpt import collate, encode, tokenize_sample

        s = self.scgpt
        tokens = [
            tokenize_sample(
                values, genes, self.names[genes], cls_id=s.cls_id, pad_value=s.pad_value,
                max_length=self.max_length, selection="top", seed=seed,
            )
            for (genes, values), seed in zip(cells, seeds, strict=True)
        ]  # fmt: skip
        ids, vals, mask = collate(tokens, s.pad_id, s.pad_value)
        # torch's "fast path" for eval-mode encoder layers packs padded batches into nested
        # tensors, 5-8x slower on CPU than the plain path here (measured: 3.3 s vs 0.45 s for
        # 32 pbmc cells); the result is the same.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return encode(s, ids, vals, mask, precision="fp32")
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def check_cells_vocab(cells_digest: str, scgpt_vocab_digest: str, cells_dir: str) -> None:
    """PgoError when the cell shards were written for another vocabulary than the checkpoint's."""
    if cells_digest != scgpt_vocab_digest:
        raise PgoError(
            f"cells={cells_dir}: written for vocab {cells_digest[:12]}..., the scGPT checkpoint's "
            f"vocab is {scgpt_vocab_digest[:12]}...; valid: cell shards made with pgo-shards cells "
            "--scgpt <this checkpoint>"
        )


# --------------------------------------------------------------------------- config


def compose_pretrain(
    args: Sequence[str] = (), config_dir: str | os.PathLike | None = None
) -> DictConfig:
    """The pretraining config: configs/pretrain.yaml, its groups (cluster, deepspeed) from the
    same configs folder, then key=value overrides; checked, struct mode, derived keys filled.

    Same rules as hpc_pgo.config.compose (unknown keys and wrong types refused with the closest
    valid keys); required: cells and scgpt.
    """
    from hpc_pgo.config import rules
    from hpc_pgo.config.compose import compose_file

    def finish(cfg: DictConfig) -> None:
        _check_pretrain(cfg)
        rules.finish_launch(cfg)

    return compose_file(CONFIG_FILE, args, config_dir, finish=finish)


def _check_pretrain(cfg: DictConfig) -> None:
    for key in ("cells", "scgpt"):
        if cfg[key] is None:
            raise PgoError(f"{key} is required; give {key}=PATH (see configs/{CONFIG_FILE})")
    if cfg.train.loss not in LOSSES:
        raise PgoError(f"train.loss={cfg.train.loss!r} is not valid; valid: {', '.join(LOSSES)}")
    if not isinstance(cfg.mix.enabled, bool):
        raise PgoError(f"mix.enabled={cfg.mix.enabled!r} is not valid; valid: true, false")
    n_mix = cfg.mix.cells
    if not isinstance(n_mix, int) or isinstance(n_mix, bool) or n_mix < 2:
        raise PgoError(f"mix.cells={n_mix!r} is not valid; valid: an integer >= 2 (2: pairs)")
    for key in (
        "train.steps",
        "train.log_every",
        "max_length",
        "mlp_a.hidden",
        "mlp_a.out",
        "mlp_a.layers",
    ):
        if int(OmegaConf.select(cfg, key)) < 1:
            raise PgoError(
                f"{key}={OmegaConf.select(cfg, key)} is not valid; valid: an integer >= 1"
            )
    stop = cfg.train.stop_after
    if stop is not None and (not isinstance(stop, int) or isinstance(stop, bool) or stop < 1):
        raise PgoError(f"train.stop_after={cfg.train.stop_after} is not valid; valid: null or >= 1")


# --------------------------------------------------------------------------- files


def _write_json(path: Path, value: dict) -> None:
    atomic.write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def _save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic.save_torch(path, {k: v.detach().cpu() for k, v in state.items()})


# --------------------------------------------------------------------------- the loop


def pretrain(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) MLP-A pretraining on this rank; collective over the ranks of the job.

    cfg: compose_pretrain's config. run_dir: shared by all ranks (checkpoints/, metrics.json,
    mlp_a.pt, head.pt). The process group is started here (setup_distributed) and left up: the
    caller ends it with hpc_pgo.engine.distributed.teardown_distributed() once done (DeepSpeed
    caches its groups, so a second run in the same process must reuse the same group). Returns {"step": steps done, "done": bool, "losses": [global mean loss
    per step, all steps so far], "mlp_a": path or None, "stopped": None, "stop_after" (its
    budget) or "signal" (request_stop() on some rank)}.
    """
    global _stop_requested
    import deepspeed

    from hpc_pgo.data.cell_shards import load_cells
    from hpc_pgo.engine.distributed import any_rank, setup_distributed
    from hpc_pgo.engine.engine import deepspeed_config, load_checkpoint, save_checkpoint
    from hpc_pgo.models.scgpt import load_scgpt, save_mlp_a

    run_dir = Path(run_dir)
    # bad inputs (a checkpoint folder missing a file, shards of another vocab) fail here,
    # before any process group starts
    scgpt = load_scgpt(cfg.scgpt)
    cells = load_cells(cfg.cells)
    check_cells_vocab(cells.vocab_digest, scgpt.vocab_sha, str(cfg.cells))
    dist_env = setup_distributed()
    scgpt.to(dist_env.device)
    torch.manual_seed(int(cfg.seed))
    embed = MixedCellEmbedder(scgpt, max_length=cfg.max_length)
    n_classes = len(cells.classes)
    head = head_from_cfg(cfg, scgpt.d_model, n_classes)
    optimizer = torch.optim.Adam(
        head.parameters(), lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay)
    )
    ds_conf = deepspeed_config(
        OmegaConf.to_container(cfg.deepspeed, resolve=True),
        batch_size=int(cfg.train.batch_size),
        world_size=dist_env.world_size,
        device_type=dist_env.device.type,
    )
    ds_engine, *_ = deepspeed.initialize(model=head, optimizer=optimizer, config=ds_conf)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    losses: list[float] = []
    if (ckpt_dir / "latest").is_file():
        losses = list(load_checkpoint(ds_engine, ckpt_dir).get("losses", []))
        log.info("resumed from %s at step %d", ckpt_dir, ds_engine.global_steps)
    loss_fn = LOSSES[str(cfg.train.loss)]
    total, micro = int(cfg.train.steps), int(cfg.deepspeed.train_micro_batch_size_per_gpu)
    stop_at = (
        total
        if cfg.train.stop_after is None
        else min(total, ds_engine.global_steps + int(cfg.train.stop_after))
    )
    labels = torch.from_numpy(cells.labels)
    seed, rank, mix = int(cfg.seed), dist_env.rank, bool(cfg.mix.enabled)
    n_mix = int(cfg.mix.cells) if mix else 2
    ds_engine.train()
    signalled = periodic = False
    hold = Hold.from_env("pretrain", rank=rank)  # HPC_PGO_HOLD, set by tests only (hpc_pgo.hold)
    while ds_engine.global_steps < stop_at and not signalled:
        step = ds_engine.global_steps
        if n_mix == 2:
            i, j, lam = draw_pairs(len(cells), micro, seed=seed, step=step, rank=rank, mix=mix)
            mixed = [
                mix_cells(*cells.cell(a), *cells.cell(b), float(w))
                for a, b, w in zip(i, j, lam, strict=True)
            ]
            target = mix_targets(labels[i], labels[j], torch.from_numpy(lam), n_classes)
        else:
            picks, weights = draw_mixtures(
                len(cells), micro, n_mix, seed=seed, step=step, rank=rank
            )
            mixed = [
                mix_many([cells.cell(c) for c in row], w)
                for row, w in zip(picks, weights, strict=True)
            ]
            target = mixture_targets(labels[picks], torch.from_numpy(weights), n_classes)
        emb = embed(mixed, [sample_seed(seed, step, rank, k) for k in range(micro)])
        target = target.to(dist_env.device)
        loss = loss_fn(ds_engine(emb.to(dist_env.device)), target)
        if not math.isfinite(float(loss.detach())):
            raise PgoError(
                f"pretraining loss is {float(loss)} at step {step} (rank {rank}); lower train.lr"
            )
        ds_engine.backward(loss)
        ds_engine.step()
        losses.append(_global_mean(loss.detach(), dist_env.world_size))
        if dist_env.is_main and (step + 1) % int(cfg.train.log_every) == 0:
            log.info("step %d/%d loss %.4f", step + 1, total, losses[-1])
        periodic = (
            ds_engine.global_steps % int(cfg.train.checkpoint_every) == 0
            and ds_engine.global_steps < stop_at
        )
        if periodic:
            save_checkpoint(ds_engine, ckpt_dir, {"losses": losses}, is_main=dist_env.is_main)
        if hold is not None:  # tests only: step k done and saved, its stop check to come
            hold.at(ds_engine.global_steps, lambda: _stop_requested)
        signalled = any_rank(_stop_requested) and ds_engine.global_steps < stop_at
    if not (signalled and periodic):  # a signal at a checkpoint step: that checkpoint is the last
        save_checkpoint(ds_engine, ckpt_dir, {"losses": losses}, is_main=dist_env.is_main)
    _stop_requested = False
    done = ds_engine.global_steps >= total
    if signalled:
        log.info("stopped at step %d by a signal; checkpoint saved", ds_engine.global_steps)
    export = None
    if dist_env.is_main:
        _write_json(
            run_dir / METRICS_FILE,
            {
                "step": ds_engine.global_steps,
                "done": done,
                "mix": mix,
                "mix_cells": n_mix,
                "loss": str(cfg.train.loss),
                "losses": losses,
            },
        )
        if done:
            _save_tensors(run_dir / HEAD_FILE, head.state_dict())
            export = Path(cfg.export) if cfg.export is not None else run_dir / MLP_A_FILE
            m = cfg.mlp_a
            save_mlp_a(
                export, head.mlp_a, scgpt_digest=scgpt.digest, vocab_digest=scgpt.vocab_sha,
                class_names=cells.classes, mix=bool(cfg.mix.enabled),
                dims={"in": scgpt.d_model, "hidden": m.hidden, "out": m.out, "layers": m.layers, "dropout": m.dropout},
            )  # fmt: skip
    return {
        "step": ds_engine.global_steps,
        "done": done,
        "losses": losses,
        "mlp_a": None if export is None else str(export),
        "stopped": "signal" if signalled else (None if done else "stop_after"),
    }


def _global_mean(value: torch.Tensor, world_size: int) -> float:
    """The mean of a scalar over the ranks (all-reduce; identical on every rank)."""
    import torch.distributed as dist

    if world_size > 1:
        value = value.clone().float()
        dist.all_reduce(value)
        value /= world_size
    return float(value)
