"""cluster.folds_per_process on the local executor: several folds trained in turn by one process
(hpc_pgo.launch.task.FoldChain), on real submitit LocalExecutor processes and real training (the
tiny config of conftest.tiny_args).

What must hold: each fold's outputs are those of the fold trained alone; a failing fold does not
stop the folds after it in its process; the warning signal requeues the folds of the process that
have not finished, and the signalled one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hpc_pgo import hold
from hpc_pgo.launch.submission import submit, wait
from tests.launch.conftest import tiny_args
from tests.launch.test_submit_cli import _tensorboard_steps

pytestmark = pytest.mark.usefixtures("job_env")


@pytest.mark.slow
def test_chained_folds_match_folds_alone_and_a_failure_stops_only_its_fold(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("PGO_TEST_FAIL_FOLD", "1")
    fail_fn = "launch.fold_fn=tests.launch.folds.failing_fold"
    chained = submit(
        tiny_args(
            demo_shards, tmp_path / "chained", "folds=0-5", "cluster.parallel=2",
            "cluster.folds_per_process=3", fail_fn,
        )
    )  # fmt: skip
    # two processes of three folds each: folds 0-2 in one, 3-5 in the other
    jobs = chained.array.jobs
    assert jobs[0] is jobs[1] is jobs[2] and jobs[3] is jobs[4] is jobs[5]
    assert len(chained.array.job_ids()) == 2
    assert wait(chained, progress=False, poll_s=0.2, timeout_s=600) == {"done": 5, "failed": 1}

    failed = chained.run_dir / "fold_1"
    assert not (failed / "metrics.json").exists()
    first = (failed / "error.txt").read_text().splitlines()[0]
    assert first == "RuntimeError: fold 1 made to fail by PGO_TEST_FAIL_FOLD"
    # the fold after the failed one, in the same process, trained
    assert json.loads((chained.run_dir / "fold_2" / "metrics.json").read_text())["calls"] == 1
    # the folds' files say finished before their process has ended: wait for it, then read
    # what it logged last
    jobs[0].wait()
    stderr = jobs[0].stderr() or ""
    assert "1 of the 3 folds of this process failed" in stderr
    assert "fold 1 made to fail" in stderr

    # each fold alone in its own process (the default) writes the same predictions
    alone = submit(tiny_args(demo_shards, tmp_path / "alone", "folds=2-3", "cluster.parallel=2"))
    assert len(alone.array.job_ids()) == 2
    assert wait(alone, progress=False, poll_s=0.2, timeout_s=600) == {"done": 2, "failed": 0}
    for k in (2, 3):
        ours = (chained.run_dir / f"fold_{k}" / "predictions.csv").read_bytes()
        assert ours == (alone.run_dir / f"fold_{k}" / "predictions.csv").read_bytes(), k


@pytest.mark.slow
def test_signal_to_a_chain_requeues_its_unfinished_folds_and_the_held_one_resumes(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    held = tmp_path / "held"
    # every fresh fold holds after step 4 (a checkpoint step); fold 0 is signalled there
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 4, held))
    sub = submit(
        tiny_args(
            demo_shards, tmp_path / "run", "folds=0-1", "cluster.parallel=1",
            "cluster.folds_per_process=2",
        )
    )  # fmt: skip
    job = sub.array.jobs[0]
    assert sub.array.jobs[1] is job
    try:
        (marker,) = hold.wait_held(held, timeout_s=180, running=lambda: not job.done())
        assert marker["step"] == 4
        os.kill(marker["pid"], signal.SIGUSR2)
        released = hold.released_marker(held)
        deadline = time.monotonic() + 180
        while not released.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(released.read_text())["by"] == "stop"
        hold.release(held)  # fold 1, fresh in the requeued process, goes past its own hold
        assert wait(sub, progress=False, poll_s=0.2, timeout_s=300) == {"done": 2, "failed": 0}
    finally:
        hold.release(held)

    assert "requeued: folds [0, 1] resume from their last checkpoints" in (job.stderr() or "")
    fold0, fold1 = sub.run_dir / "fold_0", sub.run_dir / "fold_1"
    assert _tensorboard_steps(fold0)[:2] == [list(range(1, 5)), list(range(5, 15))]
    assert json.loads((fold0 / "metrics.json").read_text())["calls"] == 2
    # one training call (the other event file holds the test C-index alone)
    assert [steps for steps in _tensorboard_steps(fold1) if steps] == [list(range(1, 15))]
    assert json.loads((fold1 / "metrics.json").read_text())["calls"] == 1
