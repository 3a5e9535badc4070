"""hpc_pgo.launch without a scheduler: rendezvous variables, run directories, sweeps, the report.

Real submitit JobEnvironment (from the variables submitit's local executor sets), real configs,
real prediction files and plots; no jobs are started here (see test_fold_array.py for those).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from hpc_pgo.config import compose, config_digest, save_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import config_changes
from hpc_pgo.launch.env import PORT_BASE, PORT_SPAN, export_rendezvous, master_port
from hpc_pgo.launch.executors import slurm_parameters
from hpc_pgo.launch.report import expected_folds, report, write_report
from hpc_pgo.launch.rundir import check_run_dir, prepare_run_dir
from hpc_pgo.launch.sweep import compose_sweep, load_sweep
from hpc_pgo.launch.task import FoldTask, resolve_fold_fn
from hpc_pgo.survival import fold_cindex, read_predictions


def test_master_port_differs_between_tasks_of_an_array_and_survives_requeue():
    ports = [master_port(f"4242_{k}") for k in range(15)]
    assert len(set(ports)) == 15
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    assert master_port("4242_3") == master_port("4242_3")  # a requeued task keeps its port
    assert master_port("4243_3") != master_port("4242_3")
    # local folds: the controller's pid; concurrent pids must not share a port (a bug seen:
    # pid * 1000 mod span left 40 ports), and no port in the kernel's ephemeral range 32768+
    local = [master_port(str(pid)) for pid in range(19000, 19400)]
    assert len(set(local)) == 400 and max(local) < 32768


def test_rendezvous_variables_come_from_submitits_job_environment(monkeypatch):
    # the variables submitit's local controller gives rank 1 of a 2-rank fold
    for key, value in {
        "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    environ: dict[str, str] = {}
    here = export_rendezvous(threads=3, environ=environ)
    assert environ == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port("777")),
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
    }  # fmt: skip
    assert here.rank == 1 and here.world_size == 2


def test_slurm_parameters_map_the_cluster_group_to_sbatch_options():
    cfg = compose(
        ["cluster=slurm", "cluster.partition=gpu", "cluster.account=lab", "cluster.nodes=2",
         "cluster.tasks_per_node=4", "cluster.time=90", "cluster.array_parallelism=5",
         "cluster.sbatch.mail-type=END", "cluster.qos=high", "cluster.mem_gb=100"]
    )  # fmt: skip
    params = slurm_parameters(cfg.cluster, "pgo-x")
    assert params == {
        "name": "pgo-x", "timeout_min": 90, "cpus_per_task": 8, "gpus_per_node": 1, "nodes": 2,
        "tasks_per_node": 4, "slurm_array_parallelism": 5, "slurm_signal_delay_s": 120,
        "slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high", "mem_gb": 100,
        "slurm_additional_parameters": {"mail_type": "END"},
    }  # fmt: skip
    cpu = slurm_parameters(compose(["cluster=slurm_cpu"]).cluster, "pgo-y")
    assert "gpus_per_node" not in cpu and "slurm_partition" not in cpu and "mem_gb" not in cpu


def test_fold_fn_must_name_an_importable_function():
    assert resolve_fold_fn("tests.launch.folds.trivial_fold").__name__ == "trivial_fold"
    with pytest.raises(PgoError, match="not a dotted path"):
        resolve_fold_fn("train_fold")
    with pytest.raises(PgoError, match="cannot be imported"):
        resolve_fold_fn("hpc_pgo.nope.train_fold")
    with pytest.raises(PgoError, match="has no function 'nope'"):
        resolve_fold_fn("hpc_pgo.launch.task.nope")


def test_fold_task_is_checkpointable_into_a_fresh_copy(tmp_path):
    task = FoldTask(tmp_path, 3)
    delayed = task.checkpoint()
    assert isinstance(delayed.function, FoldTask) and delayed.function is not task
    assert (delayed.function.run_dir, delayed.function.fold) == (str(tmp_path), 3)


def test_run_dir_with_another_config_is_refused_with_the_difference(tmp_path):
    cfg = compose(["folds=0-1", f"run_dir={tmp_path}"])
    assert prepare_run_dir(cfg, tmp_path) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "fold_0",
        "fold_1",
        "submitit",
    ]
    # execution keys (folds, wait, cluster.*) may change: same models
    check_run_dir(
        compose(["folds=0-5", "wait=false", "cluster.time=5", f"run_dir={tmp_path}"]), tmp_path
    )
    other = compose(["folds=0-1", "train.lr=0.001", "model=kronecker", f"run_dir={tmp_path}"])
    with pytest.raises(PgoError) as err:
        check_run_dir(other, tmp_path)
    message = str(err.value)
    assert message.startswith(f"run_dir {tmp_path} holds another config (")
    assert "train.lr: 0.002 -> 0.001" in message and "model.fusion: concat -> kronecker" in message
    assert message.endswith("or force=true to override") and "\n" not in message
    forced = compose(["folds=0-1", "train.lr=0.001", f"run_dir={tmp_path}", "force=true"])
    (tmp_path / "fold_1" / "checkpoints").mkdir()
    assert prepare_run_dir(forced, tmp_path) == [0, 1]
    assert not (tmp_path / "fold_1" / "checkpoints").exists()  # force starts the fold afresh
    assert "train.lr: 0.002 -> 0.001" in config_changes(cfg, forced)


def test_finished_folds_are_skipped_unless_forced(tmp_path):
    cfg = compose(["folds=0-2", f"run_dir={tmp_path}"])
    prepare_run_dir(cfg, tmp_path)
    (tmp_path / "fold_1" / "metrics.json").write_text(
        json.dumps({"config_digest": config_digest(cfg)})
    )
    (tmp_path / "fold_2" / "metrics.json").write_text(json.dumps({"config_digest": "another"}))
    (tmp_path / "fold_0" / "error.txt").write_text("RuntimeError: an earlier try\n")
    assert prepare_run_dir(cfg, tmp_path) == [0, 2]
    assert not (tmp_path / "fold_0" / "error.txt").exists()  # a rerun fold starts clean
    assert prepare_run_dir(
        compose(["folds=0-2", f"run_dir={tmp_path}", "force=true"]), tmp_path
    ) == [0, 1, 2]


def test_table3_sweep_lists_the_six_configurations_of_the_paper():
    sweep = load_sweep("table3")
    assert [r.labels["Exp."] for r in sweep.runs] == [1, 2, 3, 4, 5, 6, "CoxPH"]
    assert sweep.reference == "exp1-snn-concat"
    runs = compose_sweep(sweep, ["folds=0-14", "train.lr=0.001"])
    assert [r.name for r, _ in runs] == [r.name for r in sweep.runs]
    got = [
        (c.model.genomic.rna_encoder, c.model.fusion, c.balance.mode, c.train.lr, len(c.folds))
        for _, c in runs[:6]
    ]
    assert got == [
        ("snn", "concat", "none", 0.001, 15),
        ("scgpt", "concat", "none", 0.001, 15),
        ("scgpt", "concat", "rho", 0.001, 15),
        ("scgpt_mlpa", "concat", "none", 0.001, 15),
        ("scgpt_mlpa", "kronecker", "none", 0.001, 15),
        ("scgpt_mlpa", "concat", "rho", 0.001, 15),
    ]
    assert {c.launch.fold_fn for _, c in runs[:6]} == {"hpc_pgo.train.fold.train_fold"}
    # every entry is the paper's full model with what the ablation changes
    assert {c.groups.model for _, c in runs[:6]} == {"path_gptomic"}
    assert runs[6][1].launch.fold_fn == "hpc_pgo.train.coxph.coxph_fold"
    with pytest.raises(PgoError, match="unknown sweep 'table9'.*valid: .*table3"):
        load_sweep("table9")


def test_demo_sweep_is_the_ablation_make_demo_runs():
    sweep = load_sweep("demo")
    assert [r.name for r in sweep.runs] == ["genomic", "image", "concat", "concat-rho", "coxph"]
    assert sweep.reference == "concat"
    preset = [
        "folds=0-14",
        "model=fusion_small",
        "train.epochs=15",
        "model.genomic.snn.dropout=0.1",
    ]
    runs = compose_sweep(sweep, preset)
    got = {
        r.name: (list(c.model.modalities), c.balance.mode, c.launch.fold_fn.rsplit(".", 1)[1])
        for r, c in runs
    }
    assert got == {
        "genomic": (["genomic"], "none", "train_fold"),
        "image": (["image"], "none", "train_fold"),
        "concat": (["genomic", "image"], "none", "train_fold"),
        "concat-rho": (["genomic", "image"], "rho", "train_fold"),
        "coxph": (["genomic", "image"], "rho", "coxph_fold"),
    }
    # Every row has the same preset, budget and splits: only the sweep's own keys differ.
    for _, c in runs:
        assert (c.train.epochs, c.train.lr, c.model.image.arch, len(c.folds)) == (
            15,
            2e-3,
            "lcnet_050",
            15,
        )
        assert c.model.genomic.snn.dropout == 0.1
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert "launch/submit.py sweep=demo folds=0-14" in makefile


# --- the report ----------------------------------------------------------------------------


def write_fold(
    run_dir, fold: int, n_patients: int = 12, seed: int = 0, branches: bool = False
) -> pd.DataFrame:
    """A fold's predictions.csv in the documented format: 2 units per patient, hazards noisy;
    with branches, also hazard_genomic + hazard_image = hazard (the genomic part informative,
    the image part noise)."""
    rng = np.random.default_rng(seed + fold)
    patients = [f"P{fold:02d}-{i:03d}" for i in range(n_patients)]
    time = rng.uniform(1, 100, n_patients)
    event = (rng.uniform(size=n_patients) < 0.7).astype(int)
    event[0] = 1
    rows = [
        {
            "patient": p,
            "unit": f"{p}_{u}",
            "hazard": -t / 50 + rng.normal(0, 0.5),
            "time": t,
            "event": e,
        }
        for p, t, e in zip(patients, time, event, strict=True)
        for u in range(2)
    ]
    out = run_dir / f"fold_{fold}"
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if branches:
        image = rng.normal(0, 0.3, len(df))
        df = df.assign(hazard_genomic=df["hazard"] - image, hazard_image=image)
    df.to_csv(out / "predictions.csv", index=False)
    return df


def test_report_of_prediction_files_from_elsewhere(tmp_path):
    for k in range(4):
        write_fold(tmp_path, k)
    modulation = pd.DataFrame({"step": [0, 1, 2], "epoch": [0, 0, 1], "rho_g": [1.2, 1.1, 1.0],
                               "rho_p": [0.8, 0.9, 1.0], "k_g": [0.8, 0.9, 1.0], "k_p": [1.0, 1.0, 1.0]})  # fmt: skip
    modulation.to_csv(tmp_path / "fold_0" / "modulation.csv", index=False)

    summary = write_report(tmp_path)

    assert expected_folds(tmp_path) == [0, 1, 2, 3]
    expected = {
        str(k): fold_cindex(read_predictions(tmp_path / f"fold_{k}" / "predictions.csv"))
        for k in range(4)
    }
    assert summary["c_index"]["per_fold"] == pytest.approx(expected)
    values = np.array(list(expected.values()))
    assert summary["c_index"]["mean"] == pytest.approx(values.mean())
    assert summary["c_index"]["std"] == pytest.approx(values.std(ddof=1))
    assert (
        summary["n_folds"] == 4 and summary["failed_folds"] == {} and summary["missing_folds"] == []
    )
    assert summary["folds"]["0"]["patients"] == 12 and summary["folds"]["0"]["units"] == 24
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    md = (tmp_path / "summary.md").read_text()
    assert "| fold | C-index | patients | events |" in md
    assert f"| 2 | {expected['2']:.4f} | 12 |" in md
    assert f"{values.mean():.3f} ± " in md
    for png in ("km.png", "modulation.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_partial_run_lists_failed_and_missing_folds(tmp_path):
    cfg = compose(["folds=0-3", f"run_dir={tmp_path}"])
    save_config(cfg, tmp_path)
    write_fold(tmp_path, 0)
    write_fold(tmp_path, 1)
    (tmp_path / "fold_2").mkdir()
    (tmp_path / "fold_2" / "error.txt").write_text(
        "PgoError: loss is NaN at step 3\n\ntraceback ...\n"
    )

    text = report(tmp_path)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_folds"] == 2 and sorted(summary["c_index"]["per_fold"]) == ["0", "1"]
    assert summary["failed_folds"] == {"2": "PgoError: loss is NaN at step 3"}
    assert summary["missing_folds"] == [3]
    assert summary["config_digest"] == config_digest(cfg)
    assert "fold 2 FAILED: PgoError: loss is NaN at step 3" in text and "missing folds" in text
    assert not (tmp_path / "modulation.png").exists()  # no fold logged modulation


def test_one_fold_report_has_no_interval(tmp_path):
    write_fold(tmp_path, 5)
    summary = write_report(tmp_path)
    assert summary["n_folds"] == 1 and summary["c_index"]["ci95"] is None
    assert not math.isnan(summary["c_index"]["mean"])


def test_bad_prediction_file_fails_that_fold_only(tmp_path):
    write_fold(tmp_path, 0)
    df = write_fold(tmp_path, 1)
    df.assign(event=2).to_csv(tmp_path / "fold_1" / "predictions.csv", index=False)
    summary = write_report(tmp_path)
    assert list(summary["c_index"]["per_fold"]) == ["0"]
    assert "event 2 is invalid" in summary["failed_folds"]["1"]


def test_report_of_an_empty_directory_is_refused(tmp_path):
    with pytest.raises(PgoError, match="no config.yaml and no fold_<k> directory"):
        report(tmp_path)


def test_sweep_report_prints_the_configurations_side_by_side(tmp_path):
    sweep = load_sweep("table3")
    (tmp_path / "sweep.json").write_text(json.dumps(sweep.as_dict()))
    for i, run in enumerate(sweep.runs):
        for k in range(3):
            write_fold(tmp_path / run.name, k, seed=10 * i)

    text = report(tmp_path)

    lines = [line for line in text.splitlines() if line.startswith(("| exp", "| coxph"))]
    assert [line.split("|")[1].strip() for line in lines] == [r.name for r in sweep.runs]
    assert "| 1 | SNN | Concat |" in lines[0] and "| 5 | scGPT w/ smooth | Kro. Prod. |" in lines[4]
    table = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert table["runs"]["exp6-scgpt-smooth-gradmod"]["n_folds"] == 3
    mean = table["runs"]["exp1-snn-concat"]["c_index"]["mean"]
    assert f"{mean:.3f} ± " in lines[0]
    assert OmegaConf.create(table).runs  # JSON (no NaN tokens)


def test_sweep_report_pairs_every_entry_with_the_reference_fold_by_fold(tmp_path):
    from hpc_pgo.survival.paired import paired_difference

    sweep = {
        "name": "pairs", "title": "pairs", "columns": [], "reference": "base",
        "runs": [{"name": n, "labels": {}, "overrides": []} for n in ("base", "better", "part")],
    }  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    for k in range(6):
        write_fold(tmp_path / "base", k, seed=0, branches=True)
        # the same patients and noise as base, a little more signal: better on each fold
        df = write_fold(tmp_path / "better", k, seed=0)
        df.assign(hazard=df["hazard"] * 1.0 - df["time"] / 200).to_csv(
            tmp_path / "better" / f"fold_{k}" / "predictions.csv", index=False
        )
    for k in (0, 2, 4, 7):  # another fold set: compared on the 3 folds in common
        write_fold(tmp_path / "part", k, seed=5)

    text = report(tmp_path)
    result = json.loads((tmp_path / "sweep_summary.json").read_text())

    per_fold = {n: result["runs"][n]["c_index"]["per_fold"] for n in ("base", "better", "part")}
    as_int = {n: {int(k): v for k, v in f.items()} for n, f in per_fold.items()}
    for name in ("better", "part"):
        want = paired_difference(as_int[name], as_int["base"])
        got = result["paired"][name]
        assert got["mean"] == pytest.approx(want["mean"]) and got["n"] == want["n"]
        assert got["ci95"] == pytest.approx(want["ci95"])
        assert got["wilcoxon_p"] == pytest.approx(want["wilcoxon_p"])
    assert result["paired"]["part"]["n"] == 3 and result["paired"]["part"]["folds"] == [0, 2, 4]
    assert "base" not in result["paired"]  # the reference itself
    # paired, not unpaired: the interval is that of the per-fold differences
    d = np.array([as_int["better"][k] - as_int["base"][k] for k in range(6)])
    assert result["paired"]["better"]["ci95"] == pytest.approx(
        stats_t975(5) * d.std(ddof=1) / np.sqrt(6)
    )
    row = next(line for line in text.splitlines() if line.startswith("| better"))
    better = result["paired"]["better"]
    assert f"{better['mean']:+.3f}" in row and f"{better['wins']}/6" in row
    assert "- part: compared on 3 common folds" in text
    # branch parts: the base run's predictions carry them, scored alone per fold
    branches = result["runs"]["base"]["branches"]
    for part in ("genomic", "image"):
        want = {
            str(k): fold_cindex(
                read_predictions(tmp_path / "base" / f"fold_{k}" / "predictions.csv").pipe(
                    lambda df, p=part: df.assign(hazard=df[f"hazard_{p}"])
                )
            )
            for k in range(6)
        }
        assert branches[part]["per_fold"] == pytest.approx(want)
    assert branches["genomic"]["mean"] > branches["image"]["mean"]  # the informative part
    assert "note" in result["runs"]["better"]["branches"]
    base_row = next(line for line in text.splitlines() if line.startswith("| base"))
    assert f"{branches['image']['mean']:.3f} ± " in base_row and "| reference |" in base_row


@pytest.mark.parametrize(
    "overrides, note",
    [
        (["model=kronecker"], "kronecker fusion mixes the modalities before the head: theta has "
         "no additive split"),
        (["model.modalities=[image]"], "one modality (image): no branch parts"),
        (["launch.fold_fn=hpc_pgo.train.coxph.coxph_fold"], "a CoxPH reference has no branches"),
    ],
)  # fmt: skip
def test_a_run_without_branch_parts_says_why_and_gives_no_numbers(tmp_path, overrides, note):
    save_config(compose(["folds=0-2", f"run_dir={tmp_path}", *overrides]), tmp_path)
    for k in range(3):
        write_fold(tmp_path, k)
    summary = write_report(tmp_path)
    assert summary["branches"] == {"note": note}
    assert f"Branch parts: none ({note})" in (tmp_path / "summary.md").read_text()


def stats_t975(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def test_a_sweep_reference_must_name_an_entry(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(Path(__file__).resolve().parents[2] / "configs", configs)
    (configs / "sweep" / "bad.yaml").write_text(
        "title: bad\nreference: nope\nruns:\n  - {name: a, overrides: []}\n"
    )
    with pytest.raises(PgoError, match=r"reference 'nope' names no entry; valid: one of a"):
        load_sweep("bad", config_dir=configs)
