"""Submit a run (or a sweep) as one fold array, wait for it with a progress bar, report.

``submit(args)`` composes the config, checks what can be checked before anything is written
(folds, the shard set, a Slurm that answers, a run directory holding another config), writes
the run directory and submits one FoldTask per (configuration, fold) through the executor of
cluster.kind (hpc_pgo.launch.executors). ``wait(submission)`` polls the folds (tqdm bar of
done / running / failed), records the scheduler's error for a fold that died without
error.txt, and writes the report (hpc_pgo.launch.report).

Concurrent submissions (hpc_pgo.launch.locks): submit() locks the run directory while it checks,
writes and submits, and refuses, with one PgoError line naming the run_dir and the holder, a
run_dir that another launcher holds or with a selected fold that a live job of another
submission trains or will train (queued on Slurm). On cluster=local with wait=true the lock is
held until wait() has seen every fold finish, and the folds end with the launcher process
(FoldTask.launcher). A submission that fails after it began writing (sbatch refuses the array)
cancels what it submitted and puts the run directory back as it found it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hpc_pgo.atomic import write_text
from hpc_pgo.config import CONFIG_FILE, compose, resolve_run_dir, save_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import ERROR, fold_dir, has_metrics
from hpc_pgo.launch.executors import DONE, FAILED, RUNNING, Array, launch_array, slurm_alive
from hpc_pgo.launch.locks import RunDirLock, claim_submitted, describe, fold_holder
from hpc_pgo.launch.replicates import SEEDS_FILE, expand
from hpc_pgo.launch.report import SWEEP_FILE, ReportJob, report
from hpc_pgo.launch.rundir import (
    SUBMITIT_DIR,
    RunDirChanges,
    check_run_dir,
    prepare_run_dir,
    unwritable,
)
from hpc_pgo.launch.sweep import compose_sweep, load_sweep
from hpc_pgo.launch.task import FoldTask, ProcessId, resolve_fold_fn

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# How to build each known cohort's shard set, for the missing-shards error.
BUILD_HINTS = {
    "demo": "pgo-shards demo --out {path}",
    "tcga_kirc": "pgo-shards build --spec configs/cohorts/tcga_kirc_porpoise.yaml --data-dir DIR --out {path} (DIR: the folder of tcga_kirc_all_clean.csv.zip)",
    "tcga_gbmlgg_porpoise": "pgo-shards build --spec configs/cohorts/tcga_gbmlgg_porpoise.yaml --data-dir DIR --out {path} (DIR: the folder of tcga_gbmlgg_all_clean.csv.zip)",
    "tcga_kirc_pathomic": "pgo-shards build --spec configs/cohorts/tcga_kirc_pathomic.yaml --data-dir DIR --out {path} (DIR: Pathomic Fusion's data/TCGA_KIRC)",
    "tcga_gbmlgg_pathomic": "pgo-shards build --spec configs/cohorts/tcga_gbmlgg_pathomic.yaml --data-dir DIR --out {path} (DIR: Pathomic Fusion's data/TCGA_GBMLGG)",
}
_DEFAULT_HINT = "pgo-shards build --spec <cohort.yaml> --out {path} (shards/README.md)"


@dataclass
class Submission:
    """What submit() did: the top run directory, the sub-runs, the array, the folds skipped."""

    run_dir: Path
    runs: list[tuple[str | None, Path, DictConfig]]  # (sweep run name or None, run dir, config)
    array: Array
    skipped: list[str]  # "<run>/fold_<k>" already finished with the same config
    wait: bool
    lock: RunDirLock | None = None  # held while a local launcher waits for its folds

    def close(self) -> None:
        """Release the run directory's lock (wait() does it once every fold has finished)."""
        if self.lock is not None:
            self.lock.release()


def check_shards(cfg: DictConfig) -> None:
    """PgoError naming the shard set path and the pgo-shards command that builds it, if missing;
    then check_fold_splits and check_rna_inputs."""
    path = Path(str(cfg.data.shards))
    if not (path / MANIFEST).is_file():
        hint = BUILD_HINTS.get(str(cfg.groups.data), _DEFAULT_HINT).format(path=path)
        raise PgoError(
            f"data={cfg.groups.data}: shard set {path} has no {MANIFEST} (data.shards); build it "
            f"with: {hint}"
        )
    check_fold_splits(cfg, path)
    check_rna_inputs(cfg, path)


def check_fold_splits(cfg: DictConfig, path: Path) -> None:
    """The selected folds against the shard set's own splits (manifest.json splits.folds), not
    only against data.n_splits (the config's word for it): each fold must be one of its splits,
    and its test split must hold a death (Harrell's C over a test set without one is undefined:
    the fold would train, then fail). PgoError naming the fold and the shard set."""
    from hpc_pgo.config.folds import format_folds
    from hpc_pgo.data.shards import read_manifest

    manifest = read_manifest(path, check_digest=False)  # the fold itself refuses an edited one
    splits = manifest.get("splits")
    folds = splits.get("folds") if isinstance(splits, dict) else None
    if not isinstance(folds, list):
        raise PgoError(
            f"{path / MANIFEST}: no splits.folds list; valid: a shard set built by pgo-shards "
            "build or demo"
        )
    outside = [k for k in cfg.folds if k >= len(folds)]
    if outside:
        valid = f"folds within {format_folds(range(len(folds)))}" if folds else "none"
        raise PgoError(
            f"folds={format_folds(cfg.folds)}: fold(s) {format_folds(outside)} out of range for "
            f"shard set {path}, whose {MANIFEST} has {len(folds)} splits (data.n_splits="
            f"{cfg.data.n_splits} does not match it); valid: {valid}, with data.n_splits="
            f"{len(folds)}"
        )
    patients = manifest.get("patients") or {}
    for k in cfg.folds:
        test = list((folds[k] or {}).get("test") or [])
        if not any(int((patients.get(p) or {}).get("event", 0)) == 1 for p in test):
            raise PgoError(
                f"fold {k}: the test split of shard set {path} ({len(test)} patients) has no "
                f"death (event 1 in its {MANIFEST}), so the fold's C-index is undefined; valid: "
                f"leave fold {k} out of folds=, or rebuild the shard set with other splits"
            )


def check_rna_inputs(cfg: DictConfig, path: Path) -> None:
    """The inputs the scGPT routes of the genomic branch need, each a PgoError naming the command
    that produces it: the shard set's stored scGPT embedding (rna_encoder scgpt, scgpt_mlpa) and
    the MLP-A weights file (scgpt_mlpa)."""
    model = cfg.model
    encoder = OmegaConf.select(model, "genomic.rna_encoder")
    if "genomic" not in model.modalities or encoder not in ("scgpt", "scgpt_mlpa"):
        return
    field = str(model.genomic.rna_embedding_field)
    manifest = json.loads((path / MANIFEST).read_text())
    stored = ((manifest.get("embeddings") or {}).get("fields") or {}).keys()
    if field not in stored:
        raise PgoError(
            f"model.genomic.rna_encoder={encoder} reads the stored scGPT embedding {field!r} "
            f"(model.genomic.rna_embedding_field), which shard set {path} does not hold "
            f"(stored: {', '.join(sorted(stored)) or 'none'}); produce it with: pgo-shards "
            f"embed-rna {path} --scgpt SCGPT_MODEL_DIR"
        )
    if encoder != "scgpt_mlpa":
        return
    weights = model.genomic.mlp_a_weights
    how = (
        "python launch/pretrain.py cells=CELL_SHARDS scgpt=SCGPT_MODEL_DIR (writes "
        "<run_dir>/mlp_a.pt), then model.genomic.mlp_a_weights=<run_dir>/mlp_a.pt"
    )
    if weights is None:
        raise PgoError(
            "model.genomic.rna_encoder=scgpt_mlpa needs the pretrained MLP-A "
            f"(model.genomic.mlp_a_weights is null); produce it with: {how}"
        )
    if not Path(str(weights)).is_file():
        raise PgoError(
            f"model.genomic.mlp_a_weights={weights}: no such file; produce it with: {how}"
        )


def fill_tile_features(cfg: DictConfig) -> None:
    """The derived data.tile_features: the digest of the shard set's tile-feature side-car
    (manifest.json tile_features.digest, written by `pgo-shards embed-tiles`) when the model's
    image branch reads bags (model.image.encoder=mean|abmil), else null; a value given on the
    command line is replaced. Being part of the config it enters config_digest, so the folds of
    a run trained on one feature set are neither skipped as finished nor resumed once the
    features changed (the run_dir refuses the other config, naming the key). A shard set with
    no manifest or no side-car leaves it null: check_shards, or the fold, refuses it by name."""
    bags = _reads_bags(cfg)
    if not bags and OmegaConf.select(cfg, "data.tile_features", default=None) is None:
        return  # null already (or a data file of its own without the key): left as it is
    digest = None
    if bags:
        try:
            manifest = json.loads((Path(str(cfg.data.shards)) / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        record = manifest.get("tile_features") if isinstance(manifest, dict) else None
        digest = record.get("digest") if isinstance(record, dict) else None
    OmegaConf.update(cfg, "data.tile_features", digest, force_add=True)


def _reads_bags(cfg: DictConfig) -> bool:
    """Whether cfg's model reads bags of tile features (an image branch with a bag encoder)."""
    from hpc_pgo.config.registry import reads_bags

    return "image" in cfg.model.modalities and reads_bags(
        OmegaConf.select(cfg, "model.image.encoder")
    )


def _finish_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Absolute shard path (jobs may start elsewhere), the run's directory and the feature set
    of a bag encoder (fill_tile_features), set in cfg."""
    cfg.data.shards = str(Path(str(cfg.data.shards)).resolve())
    cfg.run_dir = str(run_dir)
    fill_tile_features(cfg)
    return cfg


def compose_runs(
    args: Sequence[str], config_dir: str | Path | None = None, now: datetime | None = None
) -> tuple[DictConfig, Path, list[tuple[str | None, Path, DictConfig]], dict | None]:
    """(top config, top run dir, [(name, run dir, config)], sweep as dict or None).

    The runs are every sub-run that trains (hpc_pgo.launch.replicates.expand): one per
    configuration, or per configuration x seed with seeds=[...], plus the inner trainings of the
    candidates of a sweep's select entries."""
    top = compose(args, config_dir=config_dir)
    run_dir = resolve_run_dir(top, now=now)
    _finish_config(top, run_dir)
    if top.sweep is None:
        return top, run_dir, expand(None, run_dir, top, inner=False), None
    sweep = load_sweep(str(top.sweep), config_dir)
    candidates = {name for run in sweep.runs for name in run.select}
    composed = compose_sweep(sweep, args, config_dir)
    runs = [
        sub
        for run, cfg in composed
        for sub in expand(
            run.name, run_dir / run.name, _finish_config(cfg, run_dir / run.name),
            inner=run.name in candidates,
        )
    ]  # fmt: skip
    # seeds per entry (an entry's overrides may set its own, e.g. more seeds for the rows a
    # table compares); a select entry has its candidates' seeds, which must agree
    seeds = {run.name: _seed_list(cfg) for run, cfg in composed}
    record = sweep.as_dict()
    for entry in record["runs"]:
        if entry.get("select"):
            found = {json.dumps(seeds[c]) for c in entry["select"]}
            if len(found) > 1:
                raise PgoError(
                    f"sweep={sweep.name}, run {entry['name']}: its candidates have different "
                    f"seeds ({', '.join(sorted(found))}); valid: the same seeds for every candidate"
                )
            entry["seeds"] = seeds[entry["select"][0]]
        else:
            entry["seeds"] = seeds[entry["name"]]
    if candidates:
        record["inner"] = {"folds": int(top.inner.folds), "seed": int(top.inner.seed)}
    return top, run_dir, runs, record


def busy_folds(runs: Sequence[tuple[str | None, Path, DictConfig]]) -> list[str]:
    """'fold_<k> is running as job ...' for each selected fold that a live job holds."""
    busy = []
    for name, sub_dir, cfg in runs:
        for k in cfg.folds:
            holder = fold_holder(fold_dir(sub_dir, k), slurm_alive)
            if holder is not None:
                busy.append(f"{name + '/' if name else ''}fold_{k} is {describe(holder)}")
    return busy


def submit(
    args: Sequence[str], config_dir: str | Path | None = None, now: datetime | None = None
) -> Submission:
    """Compose, check, write the run directory and submit the fold array (see the module text)."""
    top, run_dir, runs, sweep = compose_runs(args, config_dir, now)
    # every check before the first write: a refused submission leaves nothing behind
    checked: set[tuple] = set()
    for _, sub_dir, cfg in runs:
        resolve_fold_fn(cfg.launch.fold_fn)
        # the seed and inner sub-runs of a configuration share its shard set, folds and model:
        # its manifest is read once for them
        inputs = (str(cfg.data.shards), tuple(cfg.folds), OmegaConf.to_yaml(cfg.model))
        if inputs not in checked:
            check_shards(cfg)
            checked.add(inputs)
        check_run_dir(cfg, sub_dir)
    if sweep is not None or top.seeds is not None:
        check_run_dir(top, run_dir)
    n_tasks_max = sum(len(cfg.folds) for _, _, cfg in runs)
    local = top.cluster.kind == "local"
    if local and not top.wait and top.cluster.parallel < n_tasks_max:
        raise PgoError(
            f"wait=false with cluster=local and cluster.parallel={top.cluster.parallel} < "
            f"{n_tasks_max} folds: the local executor starts waiting folds from this process; "
            "valid: wait=true, cluster.parallel>=the number of folds, or cluster=slurm"
        )
    if top.cluster.kind == "slurm":
        from hpc_pgo.launch.executors import check_slurm_answers

        check_slurm_answers()

    changes = RunDirChanges()
    try:
        changes.mkdir(run_dir)
        lock = RunDirLock.acquire(run_dir)
    except BaseException as err:
        changes.rollback()
        if isinstance(err, OSError):
            raise unwritable(run_dir, err) from err
        raise
    try:
        # under the lock: what another submission did meanwhile counts
        for _, sub_dir, cfg in runs:
            check_run_dir(cfg, sub_dir)
        busy = busy_folds(runs)
        if busy:
            raise PgoError(
                f"run_dir {run_dir} is in use: {'; '.join(busy)}; valid: wait for that job to "
                "end (squeue; or scancel it), or another run_dir"
            )
        # the ranks of local folds end with this process when it waits for them
        launcher = ProcessId.current() if local and top.wait else None
        submission = _write_and_submit(top, run_dir, runs, sweep, changes, launcher)
    except BaseException as err:
        try:
            changes.rollback()
        finally:
            lock.release()
        if isinstance(err, OSError):
            raise unwritable(run_dir, err) from err
        raise
    changes.commit()
    if local and top.wait:
        submission.lock = lock  # released by wait()
    else:
        lock.release()
    return submission


def _write_and_submit(
    top: DictConfig,
    run_dir: Path,
    runs: Sequence[tuple[str | None, Path, DictConfig]],
    sweep: dict | None,
    changes: RunDirChanges,
    launcher: ProcessId | None,
) -> Submission:
    """Write the run directories (recorded in changes) and submit the array."""
    if sweep is not None or top.seeds is not None:
        changes.write(run_dir / CONFIG_FILE, lambda: save_config(top, run_dir))
    if sweep is not None:
        changes.write(
            run_dir / SWEEP_FILE,
            lambda: write_text(run_dir / SWEEP_FILE, json.dumps(sweep, indent=1) + "\n"),
        )
    for config_dir, seeds in _seeded_dirs(top, run_dir, sweep):
        record = json.dumps({"seeds": seeds}) + "\n"
        changes.mkdir(config_dir)
        changes.write(
            config_dir / SEEDS_FILE,
            lambda d=config_dir, r=record: write_text(d / SEEDS_FILE, r),
        )
    changes.watch(run_dir / SUBMITIT_DIR)
    tasks, skipped = [], []
    for name, sub_dir, cfg in runs:
        todo = prepare_run_dir(cfg, sub_dir, changes)
        tasks.extend(FoldTask(sub_dir, k, launcher) for k in todo)
        skipped.extend(f"{name + '/' if name else ''}fold_{k}" for k in cfg.folds if k not in todo)
    changes.mkdir(run_dir / SUBMITIT_DIR)
    array = launch_array(top, run_dir / SUBMITIT_DIR, tasks, report=ReportJob(run_dir))
    if top.cluster.kind == "slurm":  # queued tasks claim their folds (locks.claim_submitted)
        for i, job in array.jobs.items():
            claim_submitted(fold_dir(array.tasks[i].run_dir, array.tasks[i].fold), job.job_id)
    log.info("run %s: %d fold task(s) submitted, %d skipped", run_dir, len(tasks), len(skipped))
    return Submission(run_dir=run_dir, runs=runs, array=array, skipped=skipped, wait=bool(top.wait))


def _seed_list(cfg: DictConfig) -> list[int] | None:
    seeds = OmegaConf.select(cfg, "seeds")
    return None if seeds is None else [int(s) for s in seeds]


def _seeded_dirs(top: DictConfig, run_dir: Path, sweep: dict | None) -> list[tuple[Path, list]]:
    """(configuration directory, its seeds) of each one that holds seed_<s>/ sub-runs (each gets
    seeds.json): the run itself, or each seeded sweep entry (a select entry too: its report is
    per seed as well)."""
    if sweep is None:
        return [] if top.seeds is None else [(run_dir, _seed_list(top))]
    return [(run_dir / e["name"], e["seeds"]) for e in sweep["runs"] if e.get("seeds")]


def _record_scheduler_errors(array: Array, states: list[str], recorded: set[int]) -> None:
    """error.txt for each failed fold that has none (killed, out of memory, a requeue limit):
    its first line is the cause (executors.job_error). Not for a fold whose metrics.json exists
    or that a live job of another submission holds (its files are not ours)."""
    errors = None
    for i, state in enumerate(states):
        if state != FAILED or i in recorded:
            continue
        recorded.add(i)
        task = array.tasks[i]
        out = fold_dir(task.run_dir, task.fold)
        if (out / ERROR).exists() or has_metrics(out):
            continue
        holder = fold_holder(out)
        if holder is not None and holder.get("job") != array.jobs[i].job_id:
            continue
        errors = array.errors() if errors is None else errors
        line = errors.get(
            i, f"job {array.jobs[i].job_id}: ended without metrics.json and without error.txt"
        )
        write_text(out / ERROR, line + "\n")


def wait(
    submission: Submission,
    progress: bool = True,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> dict[str, int]:
    """Block until every fold task is done or failed. Returns {"done": n, "failed": n}.

    The bar counts finished folds (done + failed); its postfix shows running and failed.
    timeout_s: give up after this long with TimeoutError naming the unfinished folds (the jobs
    are left as they are).
    """
    array = submission.array
    recorded: set[int] = set()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown: dict[str, int] = {}
    with tqdm(total=len(array.tasks), desc="folds", unit="fold", disable=not progress) as bar:
        while True:
            states = array.poll()
            _record_scheduler_errors(array, states, recorded)
            finished = sum(s in (DONE, FAILED) for s in states)
            counts = {s: states.count(s) for s in (DONE, RUNNING, FAILED)}
            if counts != shown:  # redraw on a change of state, not only when a fold finishes
                bar.set_postfix(counts, refresh=False)
                bar.n = finished
                bar.refresh()
                shown = counts
            if finished == len(states):
                break
            if deadline is not None and time.monotonic() > deadline:
                left = [f"{array.tasks[i].run_dir}/fold_{array.tasks[i].fold}: {s}"
                        for i, s in enumerate(states) if s not in (DONE, FAILED)]  # fmt: skip
                raise TimeoutError(
                    f"{len(left)} fold(s) unfinished after {timeout_s:.0f} s: {left}"
                )
            time.sleep(poll_s)
    submission.close()  # every fold has finished: another launcher may use the run_dir now
    return {"done": states.count(DONE), "failed": states.count(FAILED)}


def cancel(submission: Submission, why: str) -> int:
    """Cancel the local folds still running (their controllers end their ranks); each gets
    error.txt 'job <id>: cancelled (<why>) ...'. Returns how many; Slurm jobs are left alone."""
    array = submission.array
    cancelled = array.cancel()
    for i in cancelled:
        out = fold_dir(array.tasks[i].run_dir, array.tasks[i].fold)
        if not has_metrics(out) and not (out / ERROR).exists():
            write_text(
                out / ERROR,
                f"job {array.jobs[i].job_id}: cancelled ({why}); the same command resumes it "
                "from its last checkpoint\n",
            )
    submission.close()
    return len(cancelled)


def report_text(submission: Submission) -> str:
    """Write the run's report now and return the table to print."""
    return report(submission.run_dir)
