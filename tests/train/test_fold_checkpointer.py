"""hpc_pgo.train.fold.FoldCheckpointer: the periodic rule, the budget, and save / resume through a
real DeepSpeed engine (the refusals, the restored position, wall time, calls, validation state
and modulation.csv)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.train.fold import MODULATION_COLUMNS, Budget, FoldCheckpointer
from hpc_pgo.train.validation import EpochSelection
from tests.engine.toy import TwoBranch, make_batch
from tests.engine.workers import base_config


def real_engine(steps: int = 0, seed: int = 0):
    """A real DeepSpeed engine (1 gloo rank, this process) on the engine tests' toy model, after
    `steps` training steps of the toy batches."""
    from hpc_pgo.engine import build_engine, setup_distributed

    engine = build_engine(
        TwoBranch(seed=seed), base_config(), steps_per_epoch=2, dist_env=setup_distributed()
    )
    for step in range(steps):
        engine.train_step(make_batch(16, seed=step), epoch=step // 2)
    return engine


def checkpointer(out: Path, **kw) -> FoldCheckpointer:
    args = {
        "fold": 0, "world_size": 1, "is_main": True, "epochs": 5, "every_epochs": 2,
        "every_steps": None, "digest": "d" * 64, "selection": EpochSelection(enabled=False),
        "started": 0.0,
    }  # fmt: skip
    return FoldCheckpointer(out, **{**args, **kw})


def test_due_at_epoch_ends_every_checkpoint_every_epochs_and_at_the_last(tmp_path):
    ckpt = checkpointer(tmp_path)  # 5 epochs, every 2
    # at = (epoch, batch) to continue from: batch 0 is the end of epoch at[0] - 1
    assert [e for e in range(1, 6) if ckpt.due((e, 0), step=10 * e)] == [2, 4, 5]
    assert not any(ckpt.due((e, b), step=10 * e + b) for e in range(5) for b in (1, 3))


def test_due_every_steps_per_checkpoint_steps_also_mid_epoch(tmp_path):
    ckpt = checkpointer(tmp_path, every_epochs=1, every_steps=3)
    assert [s for s in range(1, 10) if ckpt.due((0, s), step=s)] == [3, 6, 9]
    assert ckpt.due((1, 0), step=4)  # an epoch end is due whatever the step


def test_budget_counts_steps_and_seconds():
    assert not Budget(steps=None, seconds=None, started=0.0).spent(10**6)
    assert Budget(steps=3, seconds=None, started=0.0).spent(3)
    assert not Budget(steps=3, seconds=None, started=0.0).spent(2)
    assert Budget(steps=None, seconds=1.0, started=-(10.0**9)).spent(0)


def test_no_checkpoint_or_force_starts_at_the_beginning(tmp_path):
    fresh = checkpointer(tmp_path)
    assert not fresh.found and fresh.resume(real_engine()) is None and fresh.calls == 1
    fresh.save(0, 0)
    assert checkpointer(tmp_path).found
    forced = checkpointer(tmp_path, may_resume=False)
    assert not forced.found and forced.resume(real_engine()) is None


def test_save_then_resume_restores_position_calls_selection_and_modulation(tmp_path):
    selection = EpochSelection(enabled=True)
    engine = real_engine(steps=3)
    first = checkpointer(tmp_path, selection=selection)
    assert first.resume(engine) is None
    rows = [",".join(MODULATION_COLUMNS)] + [f"{s},0,1,1,1,1,0.5,0.5,0.5" for s in range(1, 8)]
    (tmp_path / "modulation.csv").write_text("\n".join(rows) + "\n")
    first.save(0, 3)
    for step in (3, 4):
        engine.train_step(make_batch(16, seed=step), epoch=step // 2)
    selection.record(0, 0.7, engine)
    first.save(1, 0)
    weights = {k: v.clone() for k, v in engine.ds.module.state_dict().items()}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step00000005",
    ]  # older step tags pruned

    restored = EpochSelection(enabled=True)
    again = checkpointer(tmp_path, selection=restored)
    assert again.found and again.resume(engine2 := real_engine(seed=1)) == (1, 0)
    assert engine2.global_step == 5 and again.calls == 2 and again.wall_before > 0
    for key, value in engine2.ds.module.state_dict().items():  # the saved weights, not seed 1's
        assert torch.equal(value, weights[key]), key
    assert restored.curve == [0.7] and (restored.best_epoch, restored.best_step) == (0, 5)
    steps = [line.split(",")[0] for line in (tmp_path / "modulation.csv").read_text().split()]
    assert steps == ["step", "1", "2", "3", "4", "5"]


def test_resume_refuses_another_config_and_another_world_size(tmp_path):
    engine = real_engine(steps=2)
    ckpt = checkpointer(tmp_path)
    ckpt.resume(engine)
    ckpt.save(0, 2)
    with pytest.raises(PgoError, match=r"checkpoint of another config \(config digest d{12}\.\.\."):
        checkpointer(tmp_path, digest="e" * 64).resume(real_engine())
    with pytest.raises(PgoError, match=r"checkpoint written by 1 rank\(s\), this run has 2"):
        checkpointer(tmp_path, world_size=2).resume(real_engine())
