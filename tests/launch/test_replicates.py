"""Seed repeats and nested (inner-CV) selection as ONE array: layout, no test patient in any
inner split, the choice as an independent computation makes it, seed averages and seed noise,
and exact-once resubmission (real submitit local executor, real folds on the demo shards)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from hpc_pgo.config import compose, load_config
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.inner import InnerFold, inner_parts
from hpc_pgo.errors import PgoError
from hpc_pgo.launch.report import report
from hpc_pgo.launch.selection import choose
from hpc_pgo.launch.submission import submit, wait
from tests.launch.conftest import REPO_ROOT, tiny_args

SWEEP = (
    "title: nested\n"
    "reference: snn\n"
    "runs:\n"
    "  - {name: snn, overrides: []}\n"
    "  - {name: cox, overrides: [launch.fold_fn=hpc_pgo.train.coxph.coxph_fold,"
    " 'coxph.groups=[cnv,mut]', coxph.pcs=8]}\n"
    "  - {name: chosen, labels: {}, select: [snn, cox]}\n"
)


def _c(pred: pd.DataFrame) -> float:
    """Harrell's C of a prediction table by lifelines, patients' mean hazard (higher = riskier)."""
    p = pred.groupby("patient").agg(hazard=("hazard", "mean"), time=("time", "first"),
                                    event=("event", "first"))  # fmt: skip
    return concordance_index(p["time"], -p["hazard"], p["event"])


def test_inner_parts_partition_the_train_patients_stratified_and_seeded(demo_shards: Path):
    data = open_fold(demo_shards, 4)
    events = {p: r["event"] for p, r in data.manifest["patients"].items()}
    parts = inner_parts(data.train, events, 3, seed=0, fold=4)
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(data.train) and len(flat) == len(set(flat))
    deaths = [sum(events[p] for p in part) for part in parts]
    assert max(deaths) - min(deaths) <= 1 and min(deaths) > 0
    assert parts == inner_parts(data.train, events, 3, seed=0, fold=4)
    assert parts != inner_parts(data.train, events, 3, seed=1, fold=4)
    for j in range(3):  # the inner split a training opens: outer test patients on neither side
        inner = open_fold(demo_shards, InnerFold(4, 3, j))
        assert inner.test == parts[j] and not set(inner.test) & set(data.test)
        assert set(inner.train) == set(data.train) - set(parts[j])
        assert int(inner.fold) == 4 and str(inner.fold) == "4"
    with pytest.raises(PgoError, match="inner part .* a smaller inner.folds"):
        inner_parts(data.train, events, len(data.train), seed=0, fold=4)


def test_choose_takes_the_best_mean_and_the_first_on_a_tie():
    assert choose({"a": [0.6, 0.7], "b": [0.7, 0.7]}) == "b"
    assert choose({"a": [0.7, 0.7], "b": [0.7, 0.7]}) == "a"
    assert choose({"a": [float("nan"), 0.9], "b": [0.5, 0.5]}) == "b"


def test_seed_and_inner_keys_are_checked(demo_shards: Path):
    base = [f"data.shards={demo_shards}", "model=genomic"]
    with pytest.raises(PgoError, match="seeds=.* distinct integers"):
        compose([*base, "seeds=[0,0]"])
    with pytest.raises(PgoError, match="inner.fold=3 is not valid"):
        compose([*base, "inner.folds=3", "inner.fold=3"])
    cfg = compose([*base, "seeds=[2,0]"])
    assert list(cfg.seeds) == [2, 0]


def test_a_select_entry_must_name_entries_that_train(tmp_path: Path, demo_shards: Path):
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    (configs / "sweep" / "bad.yaml").write_text(
        "runs:\n  - {name: a, overrides: []}\n  - {name: s, select: [a, nope]}\n"
    )
    with pytest.raises(PgoError, match="selects 'nope'"):
        submit(tiny_args(demo_shards, tmp_path / "r", "sweep=bad"), config_dir=configs)
    assert not (tmp_path / "r").exists()


def test_seeds_and_nested_selection_run_as_one_array_and_resume_exactly(
    demo_shards: Path, tmp_path: Path
):
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    (configs / "sweep" / "nested.yaml").write_text(SWEEP)
    run_dir = tmp_path / "run"
    args = tiny_args(
        demo_shards, run_dir, "sweep=nested", "folds=1", "train.epochs=1", "seeds=[0,1]",
        "inner.folds=3", "cluster.folds_per_process=4",
    )  # fmt: skip

    sub = submit(args, config_dir=configs)
    # 2 candidates x 2 seeds x (1 refit + 3 inner trainings) of fold 1, one submission
    assert len(sub.array.tasks) == 16
    assert wait(sub, progress=False, poll_s=0.2, timeout_s=600) == {"done": 16, "failed": 0}
    text = report(run_dir)

    outer = open_fold(demo_shards, 1)
    events = {p: r["event"] for p, r in outer.manifest["patients"].items()}
    parts = inner_parts(outer.train, events, 3, seed=0, fold=1)
    result = json.loads((run_dir / "sweep_summary.json").read_text())
    for seed in (0, 1):
        inner_c = {}
        for cand in ("snn", "cox"):
            cand_dir = run_dir / cand / f"seed_{seed}"
            assert load_config(cand_dir).seed == seed
            scores = []
            for j in range(3):
                pred = pd.read_csv(cand_dir / f"inner_{j}" / "fold_1" / "predictions.csv")
                seen = set(pred["patient"])
                assert seen == set(parts[j])  # scored on its part only
                assert not seen & set(outer.test)  # no outer test patient in any inner split
                scores.append(_c(pred))
            inner_c[cand] = float(np.mean(scores))
        want = max(("snn", "cox"), key=lambda c: (inner_c[c], c == "snn"))
        metrics = json.loads((run_dir / "chosen" / f"seed_{seed}" / "fold_1" / "metrics.json")
                             .read_text())  # fmt: skip
        assert metrics["selected"] == want
        assert metrics["inner_cindex"] == pytest.approx(inner_c)
        chosen = (run_dir / "chosen" / f"seed_{seed}" / "fold_1" / "predictions.csv").read_bytes()
        refit = run_dir / want / f"seed_{seed}" / "fold_1" / "predictions.csv"
        assert chosen == refit.read_bytes()
        assert result["selection"]["chosen"]["choices"][str(seed)] == {"1": want}

    # seed averages and the seed noise of the paired difference, recomputed here
    per_seed = {
        (cand, s): json.loads((run_dir / cand / f"seed_{s}" / "fold_1" / "metrics.json")
                              .read_text())["cindex"]
        for cand in ("snn", "cox") for s in (0, 1)
    }  # fmt: skip
    snn = result["runs"]["snn"]
    assert snn["c_index"]["per_fold"]["1"] == pytest.approx(
        (per_seed["snn", 0] + per_seed["snn", 1]) / 2
    )
    assert per_seed["snn", 0] != per_seed["snn", 1]  # the seeds train different models
    deltas = [per_seed["cox", s] - per_seed["snn", s] for s in (0, 1)]
    paired = result["paired"]["cox"]
    assert paired["mean"] == pytest.approx(np.mean(deltas))
    assert paired["seed_sd"] == pytest.approx(np.std(deltas, ddof=1))
    assert paired["below_seed_noise"] == (abs(np.mean(deltas)) < np.std(deltas, ddof=1))
    assert "seed SD (row / per fold)" in text and "chosen per outer fold" in text

    # exact-once: the same command trains nothing; an inner training whose outputs are lost
    # (a task killed before it finished) is the only one trained again, to the same bytes
    again = submit(args, config_dir=configs)
    assert len(again.array.tasks) == 0
    wait(again, progress=False, poll_s=0.2, timeout_s=60)
    lost = run_dir / "snn" / "seed_1" / "inner_2" / "fold_1"
    before = (lost / "predictions.csv").read_bytes()
    (lost / "metrics.json").unlink()
    (lost / "predictions.csv").unlink()
    third = submit(args, config_dir=configs)
    assert [(Path(t.run_dir), t.fold) for t in third.array.tasks] == [(lost.parent, 1)]
    assert wait(third, progress=False, poll_s=0.2, timeout_s=300) == {"done": 1, "failed": 0}
    assert (lost / "predictions.csv").read_bytes() == before


@pytest.mark.slow
def test_seeded_inner_trainings_signalled_mid_fold_resume_to_the_uninterrupted_bytes(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    import os
    import signal
    import time

    from hpc_pgo import hold

    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    (configs / "sweep" / "one.yaml").write_text(
        "runs:\n  - {name: a, overrides: []}\n  - {name: sel, select: [a]}\n"
    )

    def args(run: str) -> list[str]:
        return tiny_args(
            demo_shards, tmp_path / run, "sweep=one", "folds=1", "seeds=[0,1]", "inner.folds=2",
            "cluster.parallel=1", "cluster.folds_per_process=6",
        )  # fmt: skip

    alone = submit(args("alone"), config_dir=configs)
    assert wait(alone, progress=False, poll_s=0.2, timeout_s=600) == {"done": 6, "failed": 0}

    held = tmp_path / "held"
    # every fresh training holds after step 4 (a checkpoint step); the first is signalled there
    monkeypatch.setenv(hold.ENV, hold.spec("fold", 4, held))
    sub = submit(args("run"), config_dir=configs)
    job = sub.array.jobs[0]
    try:
        (marker,) = hold.wait_held(held, timeout_s=180, running=lambda: not job.done())
        os.kill(marker["pid"], signal.SIGUSR2)  # submitit's warning signal: checkpoint, requeue
        released = hold.released_marker(held)
        deadline = time.monotonic() + 180
        while not released.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(released.read_text())["by"] == "stop"
        hold.release(held)
        assert wait(sub, progress=False, poll_s=0.2, timeout_s=600) == {"done": 6, "failed": 0}
    finally:
        hold.release(held)
    assert "resume from their last checkpoints" in (job.stderr() or "")
    report(tmp_path / "alone")
    report(tmp_path / "run")
    files = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob(
        "predictions.csv"))  # fmt: skip
    assert len(files) == 8  # 2 seeds x (refit + 2 inner) + the select entry's fold per seed
    for rel in files:
        assert (tmp_path / "run" / rel).read_bytes() == (tmp_path / "alone" / rel).read_bytes(), rel
    calls = [json.loads((tmp_path / "run" / rel).with_name("metrics.json").read_text())
             .get("calls") for rel in files if "sel" not in rel.parts]  # fmt: skip
    assert sorted(calls) == [1, 1, 1, 1, 1, 2]  # exactly one training was interrupted


def test_a_seeded_run_reports_seed_means_the_ensemble_and_the_noise(
    demo_shards: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = tiny_args(demo_shards, run_dir, "folds=1-2", "train.epochs=1", "seeds=[3,5]",
                     "cluster.folds_per_process=2")  # fmt: skip
    sub = submit(args)
    assert sorted((Path(t.run_dir).name, t.fold) for t in sub.array.tasks) == [
        ("seed_3", 1), ("seed_3", 2), ("seed_5", 1), ("seed_5", 2)
    ]
    assert wait(sub, progress=False, poll_s=0.2, timeout_s=300) == {"done": 4, "failed": 0}
    text = report(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((run_dir / "seeds.json").read_text()) == {"seeds": [3, 5]}
    c = {(s, k): _c(pd.read_csv(run_dir / f"seed_{s}" / f"fold_{k}" / "predictions.csv"))
         for s in (3, 5) for k in (1, 2)}  # fmt: skip
    for k in (1, 2):
        assert summary["c_index"]["per_fold"][str(k)] == pytest.approx((c[3, k] + c[5, k]) / 2)
        both = pd.concat(
            pd.read_csv(run_dir / f"seed_{s}" / f"fold_{k}" / "predictions.csv") for s in (3, 5)
        )
        assert summary["ensemble"]["per_fold"][str(k)] == pytest.approx(_c(both))
    means = [np.mean([c[s, 1], c[s, 2]]) for s in (3, 5)]
    assert summary["seeds"]["sd_of_mean"] == pytest.approx(np.std(means, ddof=1))
    per_fold_sd = np.sqrt(np.mean([np.var([c[3, k], c[5, k]], ddof=1) for k in (1, 2)]))
    assert summary["seeds"]["per_fold_seed_sd"] == pytest.approx(per_fold_sd)
    assert "Seed noise" in text and "seed 5" in text
    # a seed sub-run's fold lost: the seeded row lists the fold missing, exit-3 material
    (run_dir / "seed_5" / "fold_2" / "predictions.csv").unlink()
    (run_dir / "seed_5" / "fold_2" / "metrics.json").unlink()
    report(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["missing_folds"] == [2] and list(summary["c_index"]["per_fold"]) == ["1"]


def test_the_report_checks_an_inner_trainings_rows_against_its_inner_part(
    demo_shards: Path, tmp_path: Path
):
    from hpc_pgo.data.shards import read_manifest
    from hpc_pgo.launch.report import stray_rows

    manifest = read_manifest(demo_shards)
    part = open_fold(demo_shards, InnerFold(2, 3, 1)).test
    rows = pd.DataFrame({"patient": list(part)})
    stray_rows(rows, tmp_path / "p.csv", 2, demo_shards, manifest, (3, 1, 0))  # its part: fine
    with pytest.raises(PgoError, match="not a test patient of fold 2"):
        stray_rows(rows, tmp_path / "p.csv", 2, demo_shards, manifest)  # outer test: refused
    other = open_fold(demo_shards, InnerFold(2, 3, 0)).test
    with pytest.raises(PgoError, match="not a test patient of fold 2"):
        stray_rows(pd.DataFrame({"patient": list(other)}), tmp_path / "p.csv", 2, demo_shards,
                   manifest, (3, 1, 0))  # fmt: skip
