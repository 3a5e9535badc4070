#!/usr/bin/env python
"""Image-only C-index on the demo: frozen tile features + MIL (mean, ABMIL) against end-to-end.

    .venv/bin/python benchmarks/mil_demo.py prepare   # cohorts, the frozen encoder, features
    .venv/bin/python benchmarks/mil_demo.py dev       # the MIL settings, chosen on cohort seed 1
    .venv/bin/python benchmarks/mil_demo.py eval      # sweep=mil_demo on cohort seed 0, 3 seeds

Three demo cohorts (`pgo-shards demo`, the `make demo` cohort's options but 8 ROIs per patient,
so that a patient's bag has something to attend over), differing only in --seed:
- seed 2, the ENCODER'S cohort: the image branch of the demo preset (lcnet_050, end to end) is
  trained on fold 0's train patients and its backbone exported as a timm state dict. It plays the
  part a pathology foundation model plays for a lab: weights learnt on other patients, frozen.
  No patient of cohorts 0 and 1 is in it (each cohort is drawn from its own seed).
- seed 1, the DEVELOPMENT cohort: `embed-tiles` with that encoder, then every MIL setting of
  DEV_GRID over its 15 folds; the setting with the best mean C is kept per bag encoder.
- seed 0, the EVALUATION cohort: the same encoder's features; configs/sweep/mil_demo.yaml (whose
  MIL settings are the ones `dev` chose, written in by hand) runs end to end, mean, ABMIL, and
  ABMIL over a randomly initialised frozen ResNet-18's features (shard copy `mil-s0-rand`;
  RANDOM_ARCH says why not lcnet_050), each over seeds 0, 1, 2: the report pairs them fold by fold against the end-to-end row.
Nothing is chosen on cohort 0. Every run is `launch/submit.py` on the local executor; the run
directories are under --root (default runs/mil-demo).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PY = sys.executable
COHORT = ["--patients", "200", "--rois", "8", "--genomic-strength", "1.5",
          "--genomic-saturation", "1.0", "--image-strength", "0.8"]  # fmt: skip
PRESET = [
    "model=fusion_small",
    "train.num_workers=0",
]  # the demo's (its genomic dropout unused here)
E2E = ["model.modalities=[image]", "train.epochs=15"]
ARCH = "lcnet_050"
# The random-weights row's backbone: a randomly initialised lcnet_050 gives the same (all-zero)
# feature for every tile (its activations shrink ~5x per block in eval mode and reach 0 at the
# head), so that row uses ResNet-18, whose random init keeps a per-tile signal.
RANDOM_ARCH = "resnet18"
# (bag encoder, epochs, lr): the settings `dev` compares on cohort seed 1
DEV_GRID = [(enc, epochs, lr) for enc in ("mean", "abmil") for epochs in (20, 60)
            for lr in (2e-4, 2e-3)]  # fmt: skip


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), check=True, cwd=REPO)


def cohort(seed: int) -> Path:
    """The shard set of cohort `seed`, built when absent (relative to the repository)."""
    out = Path("shards") / f"mil-s{seed}"
    if not (REPO / out / "manifest.json").is_file():
        run(PY, "-m", "hpc_pgo.data", "demo", "--out", str(out), "--seed", str(seed), *COHORT,
            "--no-progress")  # fmt: skip
    return out


def export_backbone(fold_dir: Path, out: Path) -> Path:
    """The image backbone of a trained fold's last checkpoint as a timm state dict file."""
    import torch

    from hpc_pgo.atomic import save_torch
    from hpc_pgo.engine.engine import _safe_globals

    ckpt = fold_dir / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    with torch.serialization.safe_globals(_safe_globals()):
        state = torch.load(ckpt / tag / "mp_rank_00_model_states.pt", weights_only=True)
    prefix = "image.backbone."
    backbone = {k[len(prefix) :]: v for k, v in state["module"].items() if k.startswith(prefix)}
    if not backbone:
        raise SystemExit(f"{ckpt / tag}: no {prefix}* tensors")
    save_torch(out, backbone)
    return out


def prepare(root: Path) -> None:
    s0, s1, s2 = cohort(0), cohort(1), cohort(2)
    enc_run = root / "encoder-s2"
    run(PY, "launch/submit.py", "folds=0", f"data.shards={s2}", *PRESET, *E2E,
        "train.checkpoint_every=15", f"run_dir={enc_run}", "name=mil-encoder-s2")  # fmt: skip
    weights = export_backbone(enc_run / "fold_0", root / "encoder-s2.pt")
    for shards in (s0, s1):
        run(PY, "-m", "hpc_pgo.data", "embed-tiles", str(shards), "--arch", ARCH, "--weights",
            str(weights), "--no-progress")  # fmt: skip
    rand = Path("shards") / "mil-s0-rand"
    if not (REPO / rand / "manifest.json").is_file():
        tmp = REPO / rand.with_name(rand.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(REPO / s0, tmp, ignore=shutil.ignore_patterns("tile_features"))
        manifest = json.loads((tmp / "manifest.json").read_text())
        manifest.pop("tile_features", None)
        from hpc_pgo.data.shards import write_manifest

        write_manifest(tmp, manifest)
        tmp.rename(REPO / rand)
    run(PY, "-m", "hpc_pgo.data", "embed-tiles", str(rand), "--arch", RANDOM_ARCH, "--no-progress")


def fold_cindex(run_dir: Path) -> list[float]:
    return [
        json.loads((run_dir / f"fold_{k}" / "metrics.json").read_text())["cindex"]
        for k in range(15)
    ]


def dev(root: Path) -> None:
    s1 = cohort(1)
    results = {}
    for enc, epochs, lr in DEV_GRID:
        name = f"{enc}-e{epochs}-lr{lr:g}"
        run_dir = root / "dev" / name
        run(PY, "launch/submit.py", "folds=0-14", f"data.shards={s1}", *PRESET,
            f"model=image_{enc}", f"train.epochs={epochs}", f"train.lr={lr}",
            f"train.checkpoint_every={epochs}", "cluster.folds_per_process=15",
            f"run_dir={run_dir}", f"name=mil-dev-{name}")  # fmt: skip
        results[name] = statistics.mean(fold_cindex(run_dir))
    chosen = {}
    for enc in ("mean", "abmil"):
        mine = {n: c for n, c in results.items() if n.startswith(enc + "-")}
        chosen[enc] = max(mine, key=mine.get)
    for name, c in results.items():
        print(f"{name:24s} mean C {c:.4f}{'  <- chosen' if name in chosen.values() else ''}")
    (root / "dev.json").write_text(json.dumps({"results": results, "chosen": chosen}, indent=1))


def evaluate(root: Path) -> None:
    s0 = cohort(0)
    run(PY, "launch/submit.py", "sweep=mil_demo", "folds=0-14", f"data.shards={s0}", *PRESET,
        "train.epochs=15", "cluster.folds_per_process=15", "train.checkpoint_every=15",
        f"run_dir={root / 'eval'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "dev", "eval"))
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "mil-demo")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    {"prepare": prepare, "dev": dev, "eval": evaluate}[args.step](args.root.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
