"""MLP-A mix-up pretraining on cell shards, as ONE submitit job of nodes x tasks_per_node ranks.

    python launch/pretrain.py cells=shards/cells scgpt=ckpt/whole_human [key=value ...]
    python launch/pretrain.py cluster=slurm_cpu cluster.nodes=2 cluster.tasks_per_node=1 ...
    python launch/pretrain.py --dry-run ...    # print the composed config, run nothing

Keys: configs/pretrain.yaml (plus the cluster and deepspeed groups). The job writes into
run_dir: config.yaml, checkpoints/, metrics.json, head.pt and mlp_a.pt; run it again with the
same run_dir to resume (a killed job resumes from its last periodic checkpoint). On submitit's
warning signal (Slurm sends it cluster.signal_delay_s before the time limit, and on preemption)
every rank checkpoints after its current step, and the job is requeued and resumes. cluster=local waits for the job (progress in the log); Slurm returns at once unless
--wait. Exit status: 0 ok, 1 the job failed, 2 bad input (`error: <one line>`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import submitit
from omegaconf import OmegaConf

from hpc_pgo.config import load_config, resolve_run_dir, save_config
from hpc_pgo.engine.distributed import teardown_distributed
from hpc_pgo.errors import PgoError
from hpc_pgo.launch.env import export_rendezvous
from hpc_pgo.launch.executors import check_slurm_answers, local_parameters, slurm_parameters
from hpc_pgo.launch.task import StopOnWarning
from hpc_pgo.train.pretrain import compose_pretrain, pretrain

log = logging.getLogger("pretrain")
REQUEUE_POLL_S = 5.0


def job_results(job: submitit.Job, poll_s: float = REQUEUE_POLL_S) -> list:
    """job.results(), through requeues: submitit can take a requeued Slurm job for finished in
    the moment between its first run's end and the requeued run (the first run's records say
    CANCELLED DUE TO JOB REQUEUE, and the ranks that did not requeue left result pickles), and
    then raises for the rank without a result. While squeue still lists the job, it is queued or
    running again: wait and ask again; the requeued run writes every rank's result anew."""
    from hpc_pgo.launch.executors import slurm_alive

    while True:
        try:
            return job.results()
        except Exception:
            if not isinstance(job, submitit.SlurmJob) or not slurm_alive([job.job_id]):
                raise
            log.info("job %s: requeued; waiting for its next run", job.job_id)
            time.sleep(poll_s)


EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class PretrainTask:
    """The job's callable on every rank: rendezvous from submitit's environment, then pretrain().

    Only run_dir is pickled; the config is read from run_dir/config.yaml in the job. The warning
    signal stops pretrain() after its current step with a checkpoint (StopOnWarning, as a fold's);
    then submitit's ``checkpoint`` requeues a fresh copy, which resumes from run_dir/checkpoints.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> dict:
        cfg = load_config(self.run_dir)
        threads = (
            cfg.cluster.threads_per_fold
            if cfg.cluster.kind == "local"
            else cfg.cluster.cpus_per_task
        )
        export_rendezvous(int(threads))
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            with StopOnWarning(pretrain) as warning:
                result = pretrain(cfg, self.run_dir)
        finally:
            teardown_distributed()
        if result["stopped"] == "signal":
            warning.requeue()  # submitit's handler: checkpoint() (a fresh copy), requeue, exit
        return {k: v for k, v in result.items() if k != "losses"} | {
            "last_loss": result["losses"][-1]
        }

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(PretrainTask(self.run_dir))


def make_executor(cfg, folder: Path) -> submitit.Executor:
    """LocalExecutor (cluster=local) or one Slurm job (cluster=slurm*), with the group's resources."""
    if cfg.cluster.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**local_parameters(cfg.cluster))
        return executor
    check_slurm_answers()
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = slurm_parameters(cfg.cluster, f"pgo-{cfg.name}")
    params.pop("slurm_array_parallelism", None)  # one job, not an array
    executor.update_parameters(**params)
    return executor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "overrides", nargs="*", help="group=choice or key=value (configs/pretrain.yaml)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the composed config and stop")
    parser.add_argument("--config-dir", help="configs folder (default: the repository's)")
    parser.add_argument("--wait", action="store_true", help="wait for a Slurm job to finish")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose_pretrain(args.overrides, args.config_dir)
        run_dir = resolve_run_dir(cfg)
        cfg.run_dir = str(run_dir)
        for key in ("cells", "scgpt", "export"):  # the job may start in another directory
            if cfg[key] is not None:
                cfg[key] = str(Path(cfg[key]).expanduser().resolve())
        if args.dry_run:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        save_config(cfg, run_dir)
        executor = make_executor(cfg, run_dir / "logs" / "%j")
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    job = executor.submit(PretrainTask(str(run_dir)))
    ranks = cfg.cluster.nodes * cfg.cluster.tasks_per_node
    print(
        f"submitted pretraining job {job.job_id} ({ranks} ranks, cluster={cfg.groups.cluster}); run_dir {run_dir}"
    )
    if cfg.cluster.kind == "slurm" and not args.wait:
        return 0
    try:
        result = job_results(job)[0]
    except Exception as err:  # submitit's FailedJobError carries the job's traceback
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        print(
            f"error: pretraining job {job.job_id} failed: {lines[-1] if lines else err}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    state = "done" if result["done"] else "stopped (train.stop_after; run again to resume)"
    print(
        f"pretraining {state}: step {result['step']}, last loss {result['last_loss']:.4f}, mlp_a {result['mlp_a']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
