#!/usr/bin/env python
"""The paper's pipeline on the demo cohort in one command, stage by stage, resumable.

    python launch/paper.py [--work runs/paper] [--patients 200] [--folds 15] [--fit-steps 1000]
                           [--pretrain-steps 1000] [--epochs 15] [--cluster auto|local|slurm] [-v]

Stages, in order (each an existing command of the project; outputs under --work):

  cohort          pgo-shards demo --rna cells (the `make demo` cohort, with bulk RNA as a mixture
                  of cell types and a labelled single-cell atlas), then pgo-shards verify
  atlas-split     the atlas's cells split 70/30 per cell type (seeded): scGPT, MLP-A and the
                  training pseudo-bulks see only the 70%; the held-out pseudo-bulks use the 30%
  scgpt           pgo-shards fit-scgpt on the atlas's 70% (--threads 1)
  cells           pgo-shards cells, for the 70% (pretraining) and the 30% (held out)
  pretrain        python launch/pretrain.py: MLP-A with mix-up (cluster=slurm_cpu cluster.nodes=2
                  when `sinfo` answers with two nodes or more, else cluster=local)
  pretrain-nomix  the same with mix.enabled=false (the smoothing ablation; same steps and draws)
  embed-rna       pgo-shards embed-rna on the cohort with the scGPT and the mix-up MLP-A
  smoothing       held-out pseudo-bulks of known fractions: fraction error of MLP-A with mix-up,
                  without, and of the scGPT embedding alone (paired over the mixtures); the same
                  against the number of cells mixed (--mixed-cells), and a probe on the counts
  table3          python launch/submit.py sweep=table3 over the folds as ONE array (local)
  report          the Table 3 rows beside the paper's, paired against Exp. 1, Exp. 4 vs Exp. 2,
                  and the smoothing table: <work>/paper.md and paper.json

Skipping: a finished stage leaves <work>/stages/<stage>.json, its recipe (the options that shape
its outputs and the sha256 of its inputs, i.e. of the outputs of the stages it reads) and the
sha256 of every output file. A stage is skipped when its record's recipe equals the current one
and every recorded output is there with its digest; otherwise it is redone, and so are the stages
whose inputs then change. A stage that failed part way resumes where its command can (pretraining
from its checkpoints, the sweep's finished folds) when its recipe is unchanged, and starts clean
otherwise. Where a stage runs (local or the Slurm cluster) is not part of its recipe, as
`cluster.*` is not part of a fold's config digest; the record says where it ran.

Exit status: 0 every stage done; 1 a stage failed (its log's last lines are shown; the same
command continues from there); 2 bad input (`error: <one line>`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2

# The demo cohort of `make demo` (Makefile DEMO_COHORT) with --rna cells.
DEMO_COHORT = ["--seed", "0", "--rois", "1", "--genomic-strength", "1.5",
               "--genomic-saturation", "1.0", "--image-strength", "0.8"]  # fmt: skip
# The demo preset (Makefile DEMO_PRESET, fixed on development seeds: configs/README.md "The demo
# preset") carried over to model=path_gptomic: lcnet_050 instead of T2T-ViT-7, SNN dropout 0.1.
# Chosen in advance, never on this run's test folds.
TABLE3_PRESET = ["model.image.arch=lcnet_050", "train.num_workers=0",
                 "model.genomic.snn.dropout=0.1"]  # fmt: skip
HELDOUT_SHARE = 0.3  # of each cell type's atlas cells, for the held-out pseudo-bulks

# The paper's Table 3 (TCGA-GBMLGG, C-index mean ± CI as printed), by sweep entry.
PAPER_TABLE3 = {
    "exp1-snn-concat": "0.826 ± 0.010",
    "exp2-scgpt-concat": "0.831 ± 0.012",
    "exp3-scgpt-gradmod": "0.840 ± 0.013",
    "exp4-scgpt-smooth-concat": "0.838 ± 0.013",
    "exp5-scgpt-smooth-kronecker": "0.840 ± 0.013",
    "exp6-scgpt-smooth-gradmod": "0.848 ± 0.014",
}


class StageFailed(Exception):
    """A stage's command exited non-zero; the message names it and its log."""


# --------------------------------------------------------------------------- digests and records


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(root: Path, paths: Sequence[Path]) -> dict[str, str]:
    """{path relative to root: sha256} of the files given (directories: every file below them)."""
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


def recipe_digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def write_json(path: Path, value: dict) -> None:
    """Atomically: a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Pipeline:
    """Runs stages in order under one work directory, skipping those whose record still holds."""

    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.verbose = verbose
        self.records: dict[str, dict] = {}
        self.timeline: list[tuple[str, str, float, float]] = []  # stage, ran|skipped, now, made

    def stage(
        self,
        name: str,
        recipe: dict,
        outputs: Callable[[], Sequence[Path]],
        action: Callable[[bool], str | None],
    ) -> dict:
        """Skip `name` if done with this recipe, else run action(resume) and record its outputs.

        outputs(): the files or directories the stage made (after it ran), digested into the
        record. action(resume): resume is True when an unfinished attempt with the same recipe
        is there to continue; it returns where it ran (or None).
        """
        stages = self.work / "stages"
        record_path, started = stages / f"{name}.json", stages / f"{name}.started"
        digest = recipe_digest(recipe)
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        why = self._invalid(record, digest)
        if why is None:
            print(f"[{name}] skipped: done with this recipe ({record['seconds']:.0f} s when made)")
            self.records[name] = record
            self.timeline.append((name, "skipped", 0.0, record["seconds"]))
            return record
        resume = started.is_file() and started.read_text().strip() == digest
        print(f"[{name}] running ({why}{'; resuming' if resume else ''})", flush=True)
        record_path.unlink(missing_ok=True)
        stages.mkdir(parents=True, exist_ok=True)
        started.write_text(digest + "\n")
        t0 = time.perf_counter()
        ran_on = action(resume)
        seconds = time.perf_counter() - t0
        record = {
            "stage": name,
            "recipe": recipe,
            "recipe_digest": digest,
            "outputs": digest_files(self.work, outputs()),
            "seconds": round(seconds, 1),
            "ran_on": ran_on,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(record_path, record)
        started.unlink()
        print(f"[{name}] done in {seconds:.0f} s" + (f" ({ran_on})" if ran_on else ""), flush=True)
        self.records[name] = record
        self.timeline.append((name, "ran", seconds, seconds))
        return record

    def _invalid(self, record: dict | None, digest: str) -> str | None:
        """Why a record does not hold (None: it does)."""
        if record is None:
            return "no record"
        if record.get("recipe_digest") != digest:
            return "recipe changed"
        for rel, sha in record["outputs"].items():
            path = self.work / rel
            if not path.is_file():
                return f"output {rel} missing"
            if sha256_file(path) != sha:
                return f"output {rel} changed"
        return None

    def run(self, name: str, argv: Sequence[str]) -> None:
        """Run one command of the project (cwd: the repository), its output in <work>/logs."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shown = " ".join(str(a) for a in argv)
        with open(log, "a") as out:
            out.write(f"$ {shown}\n")
            out.flush()
            proc = subprocess.Popen(
                [str(a) for a in argv], cwd=REPO, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1,
            )  # fmt: skip
            for line in proc.stdout:
                out.write(line)
                if self.verbose:
                    sys.stdout.write(line)
            rc = proc.wait()
        if rc != 0:
            tail = [line for line in log.read_text().splitlines() if line.strip()][-15:]
            raise StageFailed(
                f"stage {name}: `{shown}` exited {rc}; log {log}:\n  " + "\n  ".join(tail)
            )

    def out(self, name: str) -> dict[str, str]:
        """The output digests of a finished stage (the inputs of the stages that read them)."""
        return self.records[name]["outputs"]


def wipe(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------- cluster choice


def slurm_nodes() -> int:
    """Idle or mixed nodes `sinfo` reports (0 when there is no sinfo or it does not answer)."""
    if shutil.which("sinfo") is None:
        return 0
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True,
                              timeout=15, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if proc.returncode != 0:
        return 0
    nodes = 0
    for line in proc.stdout.splitlines():
        count, _, state = line.strip().partition(" ")
        if count.isdigit() and state.rstrip("*").startswith(("idle", "mix", "alloc", "compl")):
            nodes += int(count)
    return nodes


def pretrain_cluster(choice: str) -> tuple[list[str], str]:
    """(launch/pretrain.py cluster arguments, a line saying where it runs)."""
    if choice in ("auto", "slurm"):
        nodes = slurm_nodes()
        if nodes >= 2:
            return (["cluster=slurm_cpu", "cluster.nodes=2", "cluster.tasks_per_node=1", "--wait"],
                    f"Slurm (cluster=slurm_cpu cluster.nodes=2; sinfo: {nodes} nodes)")  # fmt: skip
        if choice == "slurm":
            raise StageFailed(
                f"--cluster slurm: sinfo reports {nodes} usable node(s), 2 needed; valid: start "
                "the dev cluster (bash slurm/dev-cluster.sh start --nodes 2) or --cluster local"
            )
    return ["cluster=local"], "local (cluster=local; no Slurm cluster with 2 nodes answered)"


# --------------------------------------------------------------------------- stages' own work


def split_atlas(atlas: Path, out: Path, heldout_share: float, seed: int) -> dict:
    """Write out/train.h5ad and out/heldout.h5ad: heldout_share of each cell type's cells held
    out (seeded); returns the counts."""
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(atlas)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    held = np.zeros(adata.n_obs, bool)
    for t in sorted(set(labels)):
        rows = np.flatnonzero(labels == t)
        held[rng.choice(rows, max(1, round(heldout_share * len(rows))), replace=False)] = True
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", ~held), ("heldout", held)):
        tmp = out / f"{name}.h5ad.tmp"
        adata[rows].copy().write_h5ad(tmp)
        os.replace(tmp, out / f"{name}.h5ad")
    return {"train": int((~held).sum()), "heldout": int(held.sum())}


def load_smoothing_benchmark():
    """benchmarks/smoothing.py as a module (its pseudo_bulks, embed_all, predict, errors)."""
    spec = importlib.util.spec_from_file_location("pgo_smoothing", REPO / "benchmarks/smoothing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_smoothing(
    work: Path, n_bulks: int, cells_per_bulk: int, max_length: int, mixed_cells: Sequence[int]
) -> dict:
    """Fraction recovery on held-out pseudo-bulks (benchmarks/smoothing.py's mixtures).

    Training mixtures come from the pretraining cells, held-out mixtures from the held-out cells;
    each mixture's fractions are known (k cells drawn multinomially from Dirichlet(1) fractions).
    Error per mixture: L1 = sum_c |p_c - t_c| (0..2). Two readouts: (a) MLP-A's own classifier
    head (softmax = predicted fractions), with and without mix-up; (b) a linear probe (ridge, alpha
    by 5-fold CV, on standardised features; predictions clipped at 0 and renormalised) fitted on
    the training mixtures, on the scGPT embedding alone, on MLP-A (mix-up) and MLP-A (no mix-up)
    features. Paired over the held-out mixtures (hpc_pgo.survival.paired on -L1, so Δ > 0 and a
    win mean the first model has the lower error).

    "by_cells", why the bulks come out as they do: the same draws with k cells per mixture for
    each k of mixed_cells (k = 1: single-cell typing; k = 2: an equal pair, inside mix-up's
    pretraining distribution; k = cells_per_bulk: the bulks above), n_bulks held-out mixtures and
    2 n_bulks training mixtures of the same k for the probes. Per k: the mean number of expressed
    genes, the mean L1 of the prior, both heads, the probe on the scGPT embedding and the same
    probe on the mixture's own log1p(counts per 10k) over the vocabulary (what the data hold
    before any embedding), and the paired head mix vs head no-mix.
    """
    import numpy as np
    import torch
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from hpc_pgo.config import load_config
    from hpc_pgo.data.cell_shards import load_cells
    from hpc_pgo.models.scgpt import load_scgpt
    from hpc_pgo.survival.paired import paired_difference
    from hpc_pgo.train.pretrain import HEAD_FILE, MixedCellEmbedder, head_from_cfg

    bench = load_smoothing_benchmark()
    torch.manual_seed(0)
    train_cells, held_cells = load_cells(work / "cells/train"), load_cells(work / "cells/heldout")
    scgpt = load_scgpt(work / "scgpt")
    embedder = MixedCellEmbedder(scgpt, max_length=max_length)
    train_bulks, train_truth = bench.pseudo_bulks(train_cells, 2 * n_bulks, cells_per_bulk, 101)
    held_bulks, held_truth = bench.pseudo_bulks(held_cells, n_bulks, cells_per_bulk, 202)
    emb_train = bench.embed_all(embedder, train_bulks, 7)
    emb_held = bench.embed_all(embedder, held_bulks, 7)

    def l1(pred: np.ndarray) -> np.ndarray:
        return np.abs(pred - held_truth).sum(1)

    def probe(x_train: np.ndarray, x_held: np.ndarray, y_train: np.ndarray | None = None):
        scaler = StandardScaler().fit(x_train)
        model = RidgeCV(alphas=np.logspace(-3, 3, 13), cv=5)
        with warnings.catch_warnings():  # small alphas on collinear features: CV rejects them
            warnings.simplefilter("ignore", category=LinAlgWarning)
            model.fit(scaler.transform(x_train), train_truth if y_train is None else y_train)
        pred = np.clip(model.predict(scaler.transform(x_held)), 0.0, None)
        return pred / np.maximum(pred.sum(1, keepdims=True), 1e-12)

    per_bulk = {
        "prior": l1(np.tile(train_truth.mean(0), (len(held_truth), 1))),
        "probe scGPT": probe(emb_train.numpy(), emb_held.numpy()),
    }
    per_bulk["probe scGPT"] = l1(per_bulk["probe scGPT"])
    accuracy, heads = {}, {}
    singles = [held_cells.cell(c) for c in range(len(held_cells))]
    for tag, run in (("mix", "pretrain/mix"), ("no-mix", "pretrain/nomix")):
        cfg = load_config(work / run)
        head = head_from_cfg(cfg, scgpt.d_model, len(train_cells.classes))
        head.load_state_dict(torch.load(work / run / HEAD_FILE, weights_only=True))
        heads[tag] = head.eval()
        per_bulk[f"head {tag}"] = l1(bench.predict(head, embedder, held_bulks, seed=7))
        with torch.no_grad():
            feats_train, feats_held = head.mlp_a(emb_train).numpy(), head.mlp_a(emb_held).numpy()
        per_bulk[f"probe MLP-A {tag}"] = l1(probe(feats_train, feats_held))
        typed = bench.predict(head, embedder, singles, seed=7).argmax(1)
        accuracy[tag] = float((typed == held_cells.labels).mean())

    def paired(a: str, b: str, errors: dict | None = None) -> dict:
        errors = per_bulk if errors is None else errors
        res = paired_difference(
            {i: -v for i, v in enumerate(errors[a])}, {i: -v for i, v in enumerate(errors[b])}
        )
        return plain(
            {k: res[k] for k in ("n", "mean", "ci95", "wins", "losses", "ties", "wilcoxon_p")}
        )

    n_genes = len(scgpt.vocab.get_itos())

    def log_counts(samples: list) -> np.ndarray:
        x = np.zeros((len(samples), n_genes))
        for row, (genes, values) in enumerate(samples):
            x[row, genes] = values
        return np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1e-12))

    prior = train_truth.mean(0)
    by_cells = []
    for k in mixed_cells:
        held_k, truth_k = bench.pseudo_bulks(held_cells, n_bulks, k, 303 + k)
        train_k, train_truth_k = bench.pseudo_bulks(train_cells, 2 * n_bulks, k, 404 + k)
        pred = {"prior": np.tile(prior, (len(truth_k), 1))}
        for tag, head in heads.items():
            pred[f"head {tag}"] = bench.predict(head, embedder, held_k, seed=7)
        emb_train_k = bench.embed_all(embedder, train_k, 7).numpy()
        emb_held_k = bench.embed_all(embedder, held_k, 7).numpy()
        pred["probe scGPT"] = probe(emb_train_k, emb_held_k, train_truth_k)
        pred["probe counts"] = probe(log_counts(train_k), log_counts(held_k), train_truth_k)
        err = {name: np.abs(p - truth_k).sum(1) for name, p in pred.items()}
        by_cells.append({
            "cells": k,
            "expressed_genes": float(np.mean([len(genes) for genes, _ in held_k])),
            "l1_mean": {name: float(np.mean(v)) for name, v in err.items()},
            "head mix vs head no-mix": paired("head mix", "head no-mix", err),
        })  # fmt: skip

    return {
        "train_cells": len(train_cells),
        "heldout_cells": len(held_cells),
        "classes": list(train_cells.classes),
        "bulks": {"train": 2 * n_bulks, "heldout": n_bulks, "cells_per_bulk": cells_per_bulk},
        "l1_mean": {k: float(np.mean(v)) for k, v in per_bulk.items()},
        "paired": {
            "head mix vs head no-mix": paired("head mix", "head no-mix"),
            "probe MLP-A mix vs probe MLP-A no-mix": paired(
                "probe MLP-A mix", "probe MLP-A no-mix"
            ),
            "probe MLP-A mix vs probe scGPT": paired("probe MLP-A mix", "probe scGPT"),
            "probe MLP-A no-mix vs probe scGPT": paired("probe MLP-A no-mix", "probe scGPT"),
        },
        "heldout_cell_accuracy": accuracy,
        "by_cells": by_cells,
    }


def plain(value: dict) -> dict:
    """JSON-ready: numpy scalars as Python numbers, lists kept."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in value.items()}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p < 0.01 else f"{p:.2f}")


def paper_report(work: Path) -> tuple[str, dict]:
    """paper.md's text and paper.json's content from the sweep summary and smoothing.json."""
    from hpc_pgo.survival.paired import paired_difference

    summary = json.loads((work / "table3/sweep_summary.json").read_text())
    sweep = json.loads((work / "table3/sweep.json").read_text())
    smoothing = json.loads((work / "smoothing/smoothing.json").read_text())
    runs, paired = summary["runs"], summary["paired"]
    lines = ["# Table 3 on the demo cohort (--rna cells), beside the paper's (TCGA-GBMLGG)", "",
             "| Exp. | Encoding RNA-seq | Fusion | C-index demo (mean ± 95% CI) | Δ vs Exp. 1 "
             "[95% CI] | wins | Wilcoxon p | folds | paper C-index |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sweep["runs"]:
        name, labels = run["name"], run["labels"]
        c = runs[name]["c_index"]
        p = paired.get(name)
        if p and "mean" in p:
            delta = f"{p['mean']:+.3f} [{p['mean'] - p['ci95']:+.3f}, {p['mean'] + p['ci95']:+.3f}]"
            wins, pval = f"{p['wins']}/{p['n']}", _fmt_p(p["wilcoxon_p"])
        else:
            delta, wins, pval = ("reference" if name == summary["reference"] else "n/a"), "", ""
        lines.append(
            f"| {labels.get('Exp.', '')} | {labels.get('Encoding RNA-seq', '')} | "
            f"{labels.get('Fusion', '')} | {_fmt(c['mean'])} ± {_fmt(c['ci95'])} | {delta} | "
            f"{wins} | {pval} | {runs[name]['n_folds']} | {PAPER_TABLE3.get(name, '—')} |"
        )
    folds = {
        n: {int(k): v for k, v in runs[n]["c_index"]["per_fold"].items()}
        for n in ("exp2-scgpt-concat", "exp4-scgpt-smooth-concat")
    }
    smooth_survival = plain(
        paired_difference(folds["exp4-scgpt-smooth-concat"], folds["exp2-scgpt-concat"])
    )
    s = smooth_survival
    lines += [
        "",
        "Δ: per-fold paired difference in C-index against Exp. 1 over the same splits (mean, 95% t "
        "interval); wins: folds where the entry is higher; p: Wilcoxon signed-rank, two-sided. "
        "The paper prints mean ± its own interval and no paired statistics.",
        "",
        "## Smoothing (mix-up) on survival: Exp. 4 (scGPT w/ smooth) vs Exp. 2 (scGPT w/o smooth)",
        "",
        f"Δ C-index {s['mean']:+.3f} [{s['mean'] - s['ci95']:+.3f}, {s['mean'] + s['ci95']:+.3f}], "
        f"Exp. 4 higher on {s['wins']}/{s['n']} folds, Wilcoxon p {_fmt_p(s['wilcoxon_p'])} "
        "(paper: 0.838 vs 0.831).",
        "",
        "## Smoothing on held-out pseudo-bulks of known cell-type fractions",
        "",
        f"{smoothing['bulks']['heldout']} held-out mixtures of {smoothing['bulks']['cells_per_bulk']} "
        f"cells drawn from {smoothing['heldout_cells']} held-out atlas cells (probes fitted on "
        f"{smoothing['bulks']['train']} mixtures of the {smoothing['train_cells']} pretraining "
        "cells); error L1 = sum over types |predicted - true fraction| (0..2), mean over mixtures:",
        "",
        "| readout | L1 |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in smoothing["l1_mean"].items()]
    lines += ["", "| paired over held-out mixtures | Δ L1 (> 0: first lower) [95% CI] | wins | "
              "Wilcoxon p |", "|---|---|---|---|"]  # fmt: skip
    for k, p in smoothing["paired"].items():
        lines.append(
            f"| {k} | {p['mean']:+.3f} [{p['mean'] - p['ci95']:+.3f}, {p['mean'] + p['ci95']:+.3f}] "
            f"| {p['wins']}/{p['n']} | {_fmt_p(p['wilcoxon_p'])} |"
        )
    acc = smoothing["heldout_cell_accuracy"]
    lines += ["", f"Held-out single cells typed by the head: mix-up {acc['mix']:.3f}, no mix-up "
              f"{acc['no-mix']:.3f}."]  # fmt: skip
    lines += [
        "",
        "## Fraction error against the number of cells mixed",
        "",
        f"The same draws with k held-out cells per mixture ({smoothing['bulks']['heldout']} per k; "
        "the probes fitted on training mixtures of the same k): k = 1 is single-cell typing, "
        "k = 2 an equal pair (inside mix-up's pretraining distribution), "
        f"k = {smoothing['bulks']['cells_per_bulk']} the bulks above. Probe counts: the same "
        "ridge on the mixture's own log1p(counts per 10k), before any embedding. Mean L1; "
        "Δ head: head mix vs head no-mix (> 0: mix-up lower), wins, Wilcoxon p.",
        "",
        "| cells mixed k | expressed genes | prior | head mix | head no-mix | probe scGPT | "
        "probe counts | Δ head [95% CI] | wins | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in smoothing["by_cells"]:
        e, p = row["l1_mean"], row["head mix vs head no-mix"]
        lines.append(
            f"| {row['cells']} | {row['expressed_genes']:.0f} | {e['prior']:.3f} | "
            f"{e['head mix']:.3f} | {e['head no-mix']:.3f} | {e['probe scGPT']:.3f} | "
            f"{e['probe counts']:.3f} | {p['mean']:+.3f} [{p['mean'] - p['ci95']:+.3f}, "
            f"{p['mean'] + p['ci95']:+.3f}] | {p['wins']}/{p['n']} | {_fmt_p(p['wilcoxon_p'])} |"
        )
    return "\n".join(lines) + "\n", {
        "table3": summary,
        "exp4_vs_exp2": smooth_survival,
        "smoothing": smoothing,
    }


# --------------------------------------------------------------------------- the pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paper.py",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--work", default="runs/paper", help="where every stage writes (default runs/paper)")
    add("--patients", type=int, default=200, help="demo cohort patients (default 200)")
    add("--atlas-cells-per-type", type=int, default=200, help="atlas cells per type (200)")
    add("--folds", type=int, default=15, help="folds 0..N-1 of the 15 splits (default 15)")
    add("--fit-steps", type=int, default=1000, help="scGPT GEP + GEPC steps (default 1000)")
    add("--pretrain-steps", type=int, default=1000, help="MLP-A steps, each run (default 1000)")
    add("--pretrain-batch", type=int, default=32, help="cell pairs per MLP-A step (default 32)")
    add("--epochs", type=int, default=15, help="epochs per fold of the sweep (default 15)")
    add("--bulks", type=int, default=200, help="held-out pseudo-bulks (default 200)")
    add("--cells-per-bulk", type=int, default=40, help="cells per pseudo-bulk (default 40)")
    add("--mixed-cells", default="1,2,5,10,20,40",
        help="cells per mixture of the smoothing stage's k table (default 1,2,5,10,20,40)")  # fmt: skip
    add("--cluster", choices=("auto", "local", "slurm"), default="auto",
        help="where pretraining runs: auto = Slurm (2 nodes) when sinfo answers, else local")  # fmt: skip
    add("-v", "--verbose", action="store_true", help="show each command's output, not only logs")
    return parser


def mixed_cells(text: str) -> list[int] | None:
    """--mixed-cells as a list of positive integers, or None when it is not one."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        return None
    return values if values and all(v >= 1 for v in values) else None


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as one line, or None."""
    rules = [
        (args.patients >= 40, f"--patients {args.patients}: at least 40 (15 splits of 80/20)"),
        (args.atlas_cells_per_type >= 10, "--atlas-cells-per-type: at least 10"),
        (1 <= args.folds <= 15, f"--folds {args.folds}: valid 1..15 (the demo has 15 splits)"),
        (args.fit_steps >= 0, "--fit-steps: >= 0"),
        (args.pretrain_steps >= 1, "--pretrain-steps: >= 1"),
        (args.pretrain_batch >= 2 and args.pretrain_batch % 2 == 0,
         f"--pretrain-batch {args.pretrain_batch}: an even number >= 2 (two ranks on Slurm)"),
        (args.epochs >= 1, "--epochs: >= 1"),
        (args.bulks >= 10, "--bulks: at least 10"),
        (args.cells_per_bulk >= 1, "--cells-per-bulk: >= 1"),
        (mixed_cells(args.mixed_cells) is not None,
         f"--mixed-cells {args.mixed_cells}: a comma-separated list of positive integers"),
    ]  # fmt: skip
    return next((msg for ok, msg in rules if not ok), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = check_args(args)
    if bad is not None:
        print(f"error: {bad}", file=sys.stderr)
        return EXIT_BAD_INPUT
    work = Path(args.work).expanduser().resolve()
    if work.exists() and not work.is_dir():
        print(
            f"error: --work {work} is a file; valid: a directory (made if missing)", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    shards_cli = [py, "-m", "hpc_pgo.data"]
    pipe = Pipeline(work, args.verbose)
    shards, cohort, atlas = work / "shards", work / "cohort", work / "atlas"
    t_start = time.perf_counter()
    try:
        # 1. the demo cohort with cells behind the bulk, and its atlas
        def cohort_action(resume: bool) -> None:
            wipe(shards, cohort)
            pipe.run("cohort", [*shards_cli, "demo", "--out", shards, "--cohort-dir", cohort,
                                "--rna", "cells", "--patients", args.patients,
                                "--atlas-cells-per-type", args.atlas_cells_per_type, *DEMO_COHORT,
                                "--no-progress"])  # fmt: skip
            pipe.run("cohort", [*shards_cli, "verify", shards])

        # manifest.json and verified.json change when embed-rna adds its record: not digested
        pipe.stage(
            "cohort",
            {
                "patients": args.patients,
                "atlas_cells_per_type": args.atlas_cells_per_type,
                "options": DEMO_COHORT + ["--rna", "cells"],
            },  # fmt: skip
            lambda: [
                *sorted(shards.glob("*.tar")),
                cohort / "cells.h5ad",
                cohort / "cell_types.yaml",
                cohort / "truth.csv",
            ],  # fmt: skip
            cohort_action,
        )

        # 2. the atlas's cells: 70% for scGPT, MLP-A and the training mixtures, 30% held out
        atlas_in = {k: v for k, v in pipe.out("cohort").items() if k.startswith("cohort/cells")}

        def split_action(resume: bool) -> None:
            wipe(atlas)
            counts = split_atlas(cohort / "cells.h5ad", atlas, HELDOUT_SHARE, seed=0)
            print(f"  atlas cells: {counts['train']} pretraining, {counts['heldout']} held out")

        pipe.stage(
            "atlas-split",
            {"inputs": atlas_in, "heldout_share": HELDOUT_SHARE, "seed": 0},
            lambda: [atlas / "train.h5ad", atlas / "heldout.h5ad"],
            split_action,
        )

        # 3. a tiny scGPT fitted on the pretraining cells
        scgpt = work / "scgpt"
        pipe.stage(
            "scgpt",
            {"inputs": pipe.out("atlas-split"), "steps": args.fit_steps, "seed": 0, "threads": 1},
            lambda: [scgpt],
            lambda resume: pipe.run(
                "scgpt",
                [
                    *shards_cli,
                    "fit-scgpt",
                    "--h5ad",
                    atlas / "train.h5ad",
                    "--out",
                    scgpt,
                    "--steps",
                    args.fit_steps,
                    "--seed",
                    "0",
                    "--threads",
                    "1",
                    "--force",
                    "--no-progress",
                ],
            ),  # fmt: skip
        )

        # 4. cell shards in the checkpoint's vocabulary
        cells = work / "cells"

        def cells_action(resume: bool) -> None:
            wipe(cells)
            for part in ("train", "heldout"):
                pipe.run("cells", [*shards_cli, "cells", "--h5ad", atlas / f"{part}.h5ad",
                                   "--scgpt", scgpt, "--label-col", "cell_type", "--label-map",
                                   cohort / "cell_types.yaml", "--out", cells / part,
                                   "--no-progress"])  # fmt: skip

        cells_in = pipe.out("atlas-split") | pipe.out("scgpt")
        cells_in |= {k: v for k, v in pipe.out("cohort").items() if k.endswith("cell_types.yaml")}
        pipe.stage(
            "cells",
            {"inputs": cells_in},
            lambda: [
                p
                for part in ("train", "heldout")
                for p in sorted((cells / part).glob("*"))
                if p.name != "verified.json"
            ],  # fmt: skip
            cells_action,
        )

        # 5. MLP-A pretraining through launch/pretrain.py, with mix-up and without
        cluster_args, where = pretrain_cluster(args.cluster)
        train_cells = {k: v for k, v in pipe.out("cells").items() if k.startswith("cells/train/")}
        for stage, tag, mix in (("pretrain", "mix", "true"), ("pretrain-nomix", "nomix", "false")):
            run_dir = work / "pretrain" / tag

            def pretrain_action(
                resume: bool, run_dir=run_dir, stage=stage, mix=mix, tag=tag
            ) -> str:
                if not resume:  # a fresh run_dir: launch/pretrain.py resumes whatever is there
                    wipe(run_dir)
                pipe.run(stage, [py, "launch/pretrain.py", f"cells={cells / 'train'}",
                                 f"scgpt={scgpt}", f"run_dir={run_dir}", f"mix.enabled={mix}",
                                 f"train.steps={args.pretrain_steps}",
                                 f"train.batch_size={args.pretrain_batch}",
                                 f"train.checkpoint_every={max(1, args.pretrain_steps // 4)}",
                                 f"name=paper-mlp-a-{tag}", *cluster_args])  # fmt: skip
                return where

            pipe.stage(
                stage,
                {
                    "inputs": train_cells | pipe.out("scgpt"),
                    "mix": mix,
                    "seed": 0,
                    "steps": args.pretrain_steps,
                    "batch_size": args.pretrain_batch,
                },  # fmt: skip
                lambda run_dir=run_dir: [run_dir / "mlp_a.pt", run_dir / "head.pt"],
                pretrain_action,
            )
        print(f"  pretraining ran on: {pipe.records['pretrain'].get('ran_on')}")

        # 6. the cohort's bulk RNA through the frozen scGPT and MLP-A, once
        mlp_a = work / "pretrain/mix/mlp_a.pt"
        embed_in = pipe.out("cohort") | pipe.out("scgpt")
        embed_in |= {k: v for k, v in pipe.out("pretrain").items() if k.endswith("mlp_a.pt")}
        pipe.stage(
            "embed-rna",
            {"inputs": embed_in},
            lambda: [shards / "rna_emb.npz"],
            lambda resume: pipe.run(
                "embed-rna",
                [
                    *shards_cli,
                    "embed-rna",
                    shards,
                    "--scgpt",
                    scgpt,
                    "--mlp-a",
                    mlp_a,
                    "--device",
                    "cpu",
                    "--force",
                    "--no-progress",
                ],
            ),  # fmt: skip
        )

        # 7. the smoothing measurement on held-out pseudo-bulks
        smooth_dir = work / "smoothing"

        def smoothing_action(resume: bool) -> None:
            result = measure_smoothing(
                work, args.bulks, args.cells_per_bulk, 1200, mixed_cells(args.mixed_cells)
            )
            write_json(smooth_dir / "smoothing.json", result)

        pipe.stage(
            "smoothing",
            {
                "inputs": pipe.out("cells")
                | pipe.out("scgpt")
                | pipe.out("pretrain")
                | pipe.out("pretrain-nomix"),
                "bulks": args.bulks,
                "cells_per_bulk": args.cells_per_bulk,
                "mixed_cells": mixed_cells(args.mixed_cells),
            },  # fmt: skip
            lambda: [smooth_dir / "smoothing.json"],
            smoothing_action,
        )

        # 8. Table 3 as one array of entries x folds on this machine
        table3 = work / "table3"
        sweep_args = [
            "sweep=table3", f"folds=0-{args.folds - 1}", f"data.shards={shards}",
            f"run_dir={table3}", f"model.genomic.mlp_a_weights={mlp_a}",
            f"train.epochs={args.epochs}", *TABLE3_PRESET, "cluster=local",
            "cluster.folds_per_process=5", f"train.checkpoint_every={args.epochs}",
        ]  # fmt: skip

        def table3_action(resume: bool) -> str:
            if not resume:
                wipe(table3)
            pipe.run("table3", [py, "launch/submit.py", *sweep_args])
            return "local (submitit LocalExecutor)"

        pipe.stage(
            "table3",
            {"inputs": pipe.out("embed-rna") | pipe.out("pretrain") | pipe.out("cohort"),
             "args": [a for a in sweep_args if not a.startswith(("run_dir=", "data.shards=",
                                                                 "model.genomic.mlp_a"))]},
            lambda: [table3 / "sweep.json",
                     *sorted(table3.glob("*/fold_*/predictions.csv")),
                     *sorted(table3.glob("*/fold_*/metrics.json"))],
            table3_action,
        )  # fmt: skip

        # 9. the report: Table 3 beside the paper's, Exp. 4 vs Exp. 2, the smoothing table
        def report_action(resume: bool) -> None:
            pipe.run("report", [py, "launch/report.py", table3])
            text, content = paper_report(work)
            (work / "paper.md").write_text(text)
            write_json(work / "paper.json", content)

        pipe.stage(
            "report",
            {"inputs": pipe.out("table3") | pipe.out("smoothing")},
            lambda: [work / "paper.md", work / "paper.json"],
            report_action,
        )
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        print("the same command continues from the stage that failed", file=sys.stderr)
        return EXIT_FAILED

    total = time.perf_counter() - t_start
    print()
    print((work / "paper.md").read_text(), end="")
    print(
        "\n## Stages\n\n| stage | this run | s (this run) | s (when made) | where |\n|---|---|---|---|---|"
    )
    for name, status, now, made in pipe.timeline:
        ran_on = pipe.records[name].get("ran_on") or ""
        print(f"| {name} | {status} | {now:.0f} | {made:.0f} | {ran_on} |")
    print(f"\ntotal this run: {total:.0f} s ({total / 60:.1f} min); outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
