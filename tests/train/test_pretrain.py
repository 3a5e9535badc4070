"""MLP-A mix-up pretraining: the mix-up math, the config, 2 gloo ranks (real DeepSpeed) with a
resume that ends on the same weights, and the 2-node run on the dev Slurm cluster through
launch/pretrain.py. Data: pbmc68k_reduced cell shards (tests/data/test_cells.py) and a tiny
random scGPT over its 765 genes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from hpc_pgo import hold
from hpc_pgo.errors import PgoError
from hpc_pgo.train.pretrain import (
    LOSSES,
    compose_pretrain,
    draw_mixtures,
    draw_pairs,
    mix_cells,
    mix_many,
    mix_targets,
    mixture_targets,
)
from tests.data.test_cells import LABEL_MAP, pbmc_counts
from tests.launch.conftest import slurm_cluster  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- mix-up math


def test_lambda_one_gives_cell_i_exactly():
    gi, vi = np.array([2, 5, 9]), np.array([1.0, 3.0, 7.0], dtype=np.float32)
    gj, vj = np.array([1, 5, 11, 12]), np.array([4.0, 2.0, 8.0, 1.0], dtype=np.float32)
    genes, values = mix_cells(gi, vi, gj, vj, 1.0)
    np.testing.assert_array_equal(genes, gi)
    np.testing.assert_array_equal(values, vi)
    genes, values = mix_cells(gi, vi, gj, vj, 0.0)
    np.testing.assert_array_equal(genes, gj)
    np.testing.assert_array_equal(values, vj)


def test_mix_is_over_the_union_with_absent_genes_as_zero():
    gi, vi = np.array([2, 5, 9]), np.array([1.0, 3.0, 7.0])
    gj, vj = np.array([1, 5, 11]), np.array([4.0, 2.0, 8.0])
    lam = 0.25
    genes, values = mix_cells(gi, vi, gj, vj, lam)
    # dense reference over 12 gene ids
    xi, xj = np.zeros(12), np.zeros(12)
    xi[gi], xj[gj] = vi, vj
    ref = lam * xi + (1 - lam) * xj
    np.testing.assert_array_equal(genes, [1, 2, 5, 9, 11])
    np.testing.assert_allclose(values, ref[genes], rtol=1e-6)
    assert values[genes.tolist().index(5)] == pytest.approx(0.25 * 3 + 0.75 * 2)


def test_targets_mix_the_one_hot_labels():
    t = mix_targets(torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.3, 0.6]), 3)
    torch.testing.assert_close(t, torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]))


def test_pair_draws_are_seeded_per_seed_step_and_rank():
    a = draw_pairs(700, 8, seed=1, step=3, rank=0, mix=True)
    b = draw_pairs(700, 8, seed=1, step=3, rank=0, mix=True)
    other_rank = draw_pairs(700, 8, seed=1, step=3, rank=1, mix=True)
    other_step = draw_pairs(700, 8, seed=1, step=4, rank=0, mix=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], other_rank[0]) and not np.array_equal(a[0], other_step[0])
    assert np.all((a[2] >= 0) & (a[2] < 1))
    no_mix = draw_pairs(700, 8, seed=1, step=3, rank=0, mix=False)
    np.testing.assert_array_equal(no_mix[0], a[0])
    assert np.all(no_mix[2] == 1.0)


def test_many_cells_mix_as_the_dense_weighted_sum_and_two_as_mix_cells():
    cells = [
        (np.array([2, 5, 9]), np.array([1.0, 3.0, 7.0], dtype=np.float32)),
        (np.array([1, 5, 11]), np.array([4.0, 2.0, 8.0], dtype=np.float32)),
        (np.array([0, 9]), np.array([5.0, 1.0], dtype=np.float32)),
    ]
    weights = [0.5, 0.2, 0.3]
    genes, values = mix_many(cells, weights)
    dense = np.zeros(12)
    for (g, v), w in zip(cells, weights, strict=True):
        dense[g] += w * v
    np.testing.assert_array_equal(genes, np.flatnonzero(dense))
    np.testing.assert_allclose(values, dense[genes], rtol=1e-6)
    # two cells: exactly the pair mix of the paper
    for got, want in zip(mix_many(cells[:2], [0.3, 0.7]), mix_cells(*cells[0], *cells[1], 0.3),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)
    assert mix_many(cells, [0.0, 1.0, 0.0])[0].tolist() == [1, 5, 11]  # zero weights drop genes


def test_mixture_draws_and_targets():
    cells, w = draw_mixtures(700, 8, 5, seed=1, step=3, rank=0)
    again = draw_mixtures(700, 8, 5, seed=1, step=3, rank=0)
    np.testing.assert_array_equal(cells, again[0])
    np.testing.assert_array_equal(w, again[1])
    assert cells.shape == w.shape == (8, 5) and cells.min() >= 0 and cells.max() < 700
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert not np.array_equal(cells, draw_mixtures(700, 8, 5, seed=1, step=3, rank=1)[0])
    t = mixture_targets(torch.tensor([[0, 2, 0], [1, 1, 1]]), torch.tensor([[0.2, 0.3, 0.5],
                        [0.1, 0.6, 0.3]]), 3)  # fmt: skip
    torch.testing.assert_close(t, torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0]]))


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(
        LOSSES["soft_ce"](logits, F.one_hot(y, 4).float()), F.cross_entropy(logits, y)
    )
    target = F.softmax(logits, dim=1)
    assert float(LOSSES["mse"](logits, target)) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_bad_overrides():
    cfg = compose_pretrain(["cells=c", "scgpt=s"])
    assert cfg.mix.enabled is True and cfg.train.loss == "soft_ce"
    assert (cfg.mlp_a.layers, cfg.mlp_a.hidden) == (3, 128)
    assert cfg.deepspeed.train_micro_batch_size_per_gpu == cfg.train.batch_size
    with pytest.raises(PgoError, match="cells is required"):
        compose_pretrain(["scgpt=s"])
    with pytest.raises(PgoError, match=r"did you mean 'train.loss'"):
        compose_pretrain(["cells=c", "scgpt=s", "train.los=mse"])
    with pytest.raises(PgoError, match=r"train.loss='l1' is not valid; valid: soft_ce, mse"):
        compose_pretrain(["cells=c", "scgpt=s", "train.loss=l1"])
    assert cfg.mix.cells == 2  # the paper's pairs
    with pytest.raises(PgoError, match=r"mix.cells=1 is not valid; valid: an integer >= 2"):
        compose_pretrain(["cells=c", "scgpt=s", "mix.cells=1"])
    with pytest.raises(PgoError, match="a multiple of 2"):
        compose_pretrain(
            ["cells=c", "scgpt=s", "cluster=slurm_cpu", "cluster.nodes=2", "train.batch_size=7"]
        )


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Cell shards of pbmc68k (counts rebuilt) and a tiny scGPT (d 16, 1 layer) over its genes."""
    from hpc_pgo.data.cells import checkpoint_vocab, read_label_map, write_cells
    from hpc_pgo.models.scgpt import write_random_checkpoint

    root = tmp_path_factory.mktemp("pretrain")
    adata = pbmc_counts()
    adata.write_h5ad(root / "counts.h5ad")
    ckpt = write_random_checkpoint(
        root / "ckpt", list(adata.var_names), d_model=16, nlayers=1, nheads=2
    )
    (root / "map.yaml").write_text(yaml.safe_dump(LABEL_MAP))
    vocab, digest = checkpoint_vocab(ckpt)
    write_cells(root / "counts.h5ad", root / "cells", vocab=vocab, vocab_digest=digest,
                label_col="bulk_labels", label_map=read_label_map(root / "map.yaml"), progress=False)  # fmt: skip
    return {"root": root, "ckpt": ckpt, "cells": root / "cells"}


def _tokens(data: dict, *extra: str) -> list[str]:
    return [f"cells={data['cells']}", f"scgpt={data['ckpt']}", "max_length=64", "train.batch_size=16",
            "train.lr=3e-3", "train.checkpoint_every=4", "train.log_every=4", *extra]  # fmt: skip


def _worker(rank: int, world: int, port: int, runs: list[tuple[list[str], str]], out: str) -> None:
    """One gloo rank: the pretraining runs in order, in one process group."""
    from hpc_pgo.engine.distributed import teardown_distributed
    from hpc_pgo.train.pretrain import compose_pretrain, pretrain

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
    results = []
    for tokens, run_dir in runs:  # one process group for all (DeepSpeed caches its groups)
        r = pretrain(compose_pretrain(tokens), run_dir)
        results.append({"step": r["step"], "done": r["done"], "losses": r["losses"]})
    teardown_distributed()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_two_ranks_loss_decreases_and_a_resumed_run_ends_on_the_same_weights(data, tmp_path):
    from hpc_pgo.engine.distributed import find_free_port
    from hpc_pgo.models.scgpt import checkpoint_digest, load_mlp_a, vocab_digest

    steps = 16
    full, split = tmp_path / "full", tmp_path / "split"
    runs = [
        (_tokens(data, f"train.steps={steps}"), str(full)),
        (_tokens(data, f"train.steps={steps}", "train.stop_after=7"), str(split)),
        (_tokens(data, f"train.steps={steps}"), str(split)),  # resumes from step 7 (saved at stop)
        (_tokens(data, "train.steps=4", "mix.cells=4"), str(tmp_path / "many")),  # 4-cell mixes
    ]
    torch.multiprocessing.spawn(_worker, args=(2, find_free_port(), runs, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # every rank reports the all-reduced losses
    uninterrupted, stopped, resumed, many = r0
    assert (stopped["step"], stopped["done"]) == (7, False)
    assert (resumed["step"], resumed["done"]) == (steps, True)
    losses = uninterrupted["losses"]
    assert len(losses) == steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
    # the resumed run draws the same pairs from step 7 on and restores Adam: same weights
    assert resumed["losses"] == pytest.approx(losses, rel=1e-5)
    a = torch.load(full / "head.pt", weights_only=True)
    b = torch.load(split / "head.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    blob = torch.load(full / "mlp_a.pt", weights_only=True)
    assert blob["meta"]["scgpt_digest"] == checkpoint_digest(data["ckpt"])
    assert blob["meta"]["vocab_digest"] == vocab_digest(data["ckpt"] / "vocab.json")
    assert blob["meta"]["class_names"] == LABEL_MAP["classes"]
    assert blob["meta"]["mix"] is True
    mlp, _ = load_mlp_a(full / "mlp_a.pt", checkpoint_digest(data["ckpt"]))
    with pytest.raises(PgoError, match="was trained on scGPT checkpoint"):
        load_mlp_a(full / "mlp_a.pt", "0" * 64)  # an mlp_a.pt made for another checkpoint
    for key, value in mlp.state_dict().items():
        torch.testing.assert_close(value, a[f"mlp_a.{key}"])
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["mix"] is True and metrics["done"] is True and metrics["mix_cells"] == 2
    assert (many["step"], many["done"]) == (4, True) and all(np.isfinite(many["losses"]))
    assert json.loads((tmp_path / "many" / "metrics.json").read_text())["mix_cells"] == 4


def test_bad_checkpoint_folder_and_cells_of_another_vocab_fail_before_training(data, tmp_path):
    import shutil

    from hpc_pgo.models.scgpt import write_random_checkpoint
    from hpc_pgo.train.pretrain import pretrain

    # Other tests in this process may have left a process group up (train_fold keeps it until
    # exit): what must hold is that these failures start none.
    group_before = torch.distributed.is_initialized()
    broken = tmp_path / "broken"
    shutil.copytree(data["ckpt"], broken)
    (broken / "best_model.pt").unlink()
    with pytest.raises(PgoError, match="lacks best_model.pt"):
        pretrain(compose_pretrain(_tokens(data) + [f"scgpt={broken}"]), tmp_path / "run")
    other = write_random_checkpoint(
        tmp_path / "other", ["CD3E", "MS4A1"], d_model=8, nlayers=1, nheads=2
    )
    with pytest.raises(PgoError, match=r"written for vocab .* valid: cell shards made with"):
        pretrain(compose_pretrain(_tokens(data) + [f"scgpt={other}"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert torch.distributed.is_initialized() == group_before  # no process group was started


@pytest.mark.slow
def test_a_planted_mlp_a_pretraining_checkpoint_is_refused_unrun(data, tmp_path):
    """Issue 21: MLP-A pretraining resumes through the fold's load_checkpoint, so a planted
    checkpoint file is refused there too, naming it, without running its code
    (tests/train/test_adversarial_faults.py has the engine's cases)."""
    from hpc_pgo.train.pretrain import CHECKPOINT_DIR, pretrain
    from tests.train.test_adversarial_faults import _Planted

    run_dir = tmp_path / "run"
    stopped = pretrain(compose_pretrain(_tokens(data, "train.steps=8", "train.stop_after=4")),
                       run_dir)  # fmt: skip
    assert (stopped["step"], stopped["done"]) == (4, False)
    ckpt = run_dir / CHECKPOINT_DIR
    tag = (ckpt / "latest").read_text()
    planted = ckpt / tag / "mp_rank_00_model_states.pt"
    state = torch.load(planted, weights_only=True)
    marker = tmp_path / "ran"
    state["payload"] = _Planted(str(marker))
    torch.save(state, planted)
    with pytest.raises(PgoError) as caught:
        pretrain(compose_pretrain(_tokens(data, "train.steps=8")), run_dir)
    assert not marker.exists(), "resuming MLP-A pretraining ran the code pickled in its checkpoint"
    assert str(caught.value).startswith(f"{planted}: a file of checkpoint {tag!r} in {ckpt} pickles")


SLURM_STEPS = 24
HELD_STEP = 12  # a checkpoint step (train.checkpoint_every=4): both runs are held after it
SLURM_GUARD_S = 240


def _launch(data: dict, run_dir: Path, partition: str, held: Path) -> subprocess.Popen:
    """launch/pretrain.py --wait on the dev cluster: 2 nodes x 1 rank, in the background; the
    job holds after step HELD_STEP until released or signalled, its files in `held`
    (hpc_pgo.hold; sbatch passes the variable on, a requeued job keeps it)."""
    args = [sys.executable, str(REPO / "launch" / "pretrain.py"),
            *_tokens(data, f"train.steps={SLURM_STEPS}"),
            "cluster=slurm_cpu", "cluster.nodes=2", "cluster.tasks_per_node=1", "cluster.time=10",
            f"cluster.partition={partition}", f"run_dir={run_dir}", "--wait"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           hold.ENV: hold.spec("pretrain", HELD_STEP, held)}  # fmt: skip
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _job_id(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert "submitted pretraining job " in line, line + proc.stderr.read()[-3000:]
    return line.split("submitted pretraining job ")[1].split()[0]


def _job_logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").rglob("*.err")))


def _steps_logged(run_dir: Path, pattern: str) -> list[int]:
    """The steps in the job logs' lines matching pattern, one per rank and occurrence."""
    return sorted(int(m) for m in re.findall(pattern, _job_logs(run_dir)))


@pytest.mark.slow
@pytest.mark.slurm
def test_two_node_pretraining_on_the_dev_cluster_resumes_after_a_kill_and_a_signal(
    data,
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    from tests.launch.conftest import (
        _scancel,
        release_when_requeued,
        slurm_job_alive,
        wait_until_requeued,
    )

    # 1. killed (scancel) while both ranks are held after step 12 and its checkpoint: the job
    #    fails; the same command again resumes from that checkpoint and finishes
    killed = tmp_path / "killed"
    proc = _launch(data, killed, slurm_cluster.partition, tmp_path / "held-killed")
    job_id = _job_id(proc)
    try:
        hold.wait_held(tmp_path / "held-killed", ranks=2, timeout_s=SLURM_GUARD_S,
                       running=slurm_job_alive(job_id))  # fmt: skip
        assert (killed / "checkpoints" / "latest").read_text() == f"step{HELD_STEP:08d}"
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        out, err = proc.communicate(timeout=120)
    except BaseException:
        _scancel([job_id])  # nothing left held on the shared cluster
        raise
    assert proc.returncode == 1, out + err[-3000:]
    assert f"pretraining job {job_id} failed" in err
    assert not (killed / "mlp_a.pt").exists() and not (killed / "metrics.json").exists()
    again = _launch(data, killed, slurm_cluster.partition, tmp_path / "held-killed")
    out, err = again.communicate(timeout=SLURM_GUARD_S)
    assert again.returncode == 0, err[-3000:]
    assert f"pretraining done: step {SLURM_STEPS}" in out
    # every rank resumed from the held step's checkpoint (and was not held again)
    assert _steps_logged(killed, r"resumed from \S+ at step (\d+)") == [HELD_STEP] * 2
    assert not hold.released_marker(tmp_path / "held-killed").exists()
    losses = json.loads((killed / "metrics.json").read_text())["losses"]
    assert len(losses) == SLURM_STEPS
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, (losses[:5], losses[-5:])
    # the job spanned both nodes (one rank each)
    job_id = out.split("submitted pretraining job ")[1].split()[0]
    nodes = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-o", "NNodes,NodeList%40"],
                           capture_output=True, text=True, timeout=30).stdout.split()  # fmt: skip
    assert nodes[:2] == ["2", "node[1-2]"], nodes

    # 2. submitit's warning signal (time limit near, or preemption) while both ranks are held
    #    after step 12: every rank stops there with a checkpoint, the job requeues itself and
    #    resumes; one command, no work lost
    signalled, held = tmp_path / "signalled", tmp_path / "held-signalled"
    deadline = time.monotonic() + SLURM_GUARD_S
    proc = _launch(data, signalled, slurm_cluster.partition, held)
    job_id = _job_id(proc)
    try:
        hold.wait_held(held, ranks=2, timeout_s=SLURM_GUARD_S, running=slurm_job_alive(job_id))
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        wait_until_requeued(job_id, deadline)
        # the first run has ended, the requeued one waits: both ranks stopped at the held step
        for rank in (0, 1):
            assert json.loads(hold.released_marker(held, rank).read_text())["by"] == "stop"
        assert (signalled / "checkpoints" / "latest").read_text() == f"step{HELD_STEP:08d}"
        release_when_requeued(job_id, deadline)  # Slurm holds a requeued job ~2 min otherwise
        out, err = proc.communicate(timeout=SLURM_GUARD_S)
    except BaseException:
        _scancel([job_id])
        raise
    assert proc.returncode == 0, err[-3000:]
    assert f"pretraining done: step {SLURM_STEPS}" in out
    assert _steps_logged(signalled, r"stopped at step (\d+) by a signal") == [HELD_STEP] * 2
    assert _steps_logged(signalled, r"resumed from \S+ at step (\d+)") == [HELD_STEP] * 2
    # pairs are drawn per (seed, step, rank) and Adam's state is restored: whatever stopped the
    # runs, both end with the losses of one uninterrupted run
    assert json.loads((signalled / "metrics.json").read_text())["losses"] == pytest.approx(
        losses, rel=1e-5
    )


def test_launcher_refuses_bad_input_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "launch" / "pretrain.py"), "cells=x", "scgpt=y", "train.lrr=1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: unknown config key 'train.lrr' in 'train.lrr=1'; did you mean 'train.lr'?"
    )
    assert not (tmp_path / "runs").exists()
