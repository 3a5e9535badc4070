#!/usr/bin/env python
"""Train the cross-validation folds of one experiment as a job array (local processes or Slurm).

Thin entry: parse the command line, then hpc_pgo.launch does the work: compose the config,
create the run directory (runs/<name>/<timestamp>, or run_dir=), write the resolved config and
submit ONE array of fold tasks through submitit (cluster=local: this machine; cluster=slurm:
a Slurm job array plus a report job after it). Prints the job ids and the run directory; with
wait=true (the default on cluster=local) shows a progress bar and ends with the report.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Train the cross-validation folds of one experiment as one job array.

Arguments after the options are group choices and key=value overrides, composed with OmegaConf
over configs/base.yaml (see configs/README.md):
  group=choice    use configs/<group>/<choice>.yaml for a group: data=, model=, cluster=, deepspeed=
                  (e.g. data=tcga_kirc model=genomic cluster=slurm deepspeed=zero2); an unknown
                  choice is an error that lists the valid ones
  dotted.key=val  override one key; the value is YAML (0.001, true, null, [genomic], {mail-type: END});
                  an unknown key is an error that names the closest valid keys
  folds=SPEC      which splits to train: all (default), a range 0-14, a list 0,3,7, or one fold 3;
                  checked against data.n_splits and the shard set's manifest.json splits; a
                  fold whose test split holds no death is refused
  sweep=NAME      every configuration of configs/sweep/NAME.yaml x the folds, as ONE array
                  (e.g. sweep=table3); the report prints them side by side
  seeds=[0,1,2]   every configuration x fold x seed as ONE array; the report averages each fold
                  over the seeds and states the seed noise (a sweep entry's select: adds inner-CV
                  trainings of its candidates; configs/README.md "Nested selection")
  run_dir=DIR     where the run writes (default runs/<name>/<timestamp>); a directory holding
                  another config is refused unless force=true; finished folds are skipped
  wait=true|false block with a progress bar, then print the report (default: true on local)
"""

EPILOG = """\
examples:
  python launch/submit.py --dry-run
  python launch/submit.py folds=0-14 --dry-run
  python launch/submit.py data=tcga_kirc model=genomic folds=0,3,7 train.lr=0.001 --dry-run
  python launch/submit.py cluster=slurm cluster.partition=gpu cluster.time=120 \\
      deepspeed=zero2 deepspeed.dtype=bf16 cluster.sbatch.mail-type=END --dry-run
  python launch/submit.py name=ablation run_dir=runs/ablation/try1 force=true --dry-run
  python launch/submit.py folds=0-14                      # the demo on this machine
  python launch/submit.py sweep=table3 folds=0-14 cluster=slurm
  python launch/report.py runs/demo-fusion/<timestamp>    # (re)write the report

--dry-run prints the resolved config as YAML, then the planned array as '#' comment lines
(one line per fold with its resources), so the whole output can be saved and read back as YAML.
Bad input prints one line 'error: ...' on stderr and exits with status 2, and so does a
submission that cannot go ahead: a run_dir in use by another launcher or with a fold that a
live job trains or has queued, or an sbatch that refuses the array (its message is shown; the
run_dir is left as it was).

On cluster=local with wait=true the folds end with this command: Ctrl-C or SIGTERM cancels the
running folds (exit 130 / 143), and even a killed launcher (SIGKILL) takes its folds with it;
the same command again resumes them from their last checkpoints.

exit status: 0 submitted (not waiting), or every fold finished; 3 waited and some fold failed
(the report lists it); 2 bad input or refused, nothing written; 130/143 interrupted (SIGINT /
SIGTERM) while waiting.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: options plus the free `opts` tokens (group choices and overrides)."""
    parser = argparse.ArgumentParser(
        prog="submit.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "opts",
        nargs="*",
        metavar="group=choice|key=value",
        help="config group choices and dotted key=value overrides, applied in that order",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and the planned array, submit nothing",
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        metavar="DIR",
        help="configs directory (default: $HPC_PGO_CONFIGS, else the repository's configs/)",
    )
    return parser


FOLD_FAILED = 3  # the exit status when some fold failed (launch/report.py says the same)


class Interrupted(BaseException):
    """SIGINT or SIGTERM while the launcher waits for its local folds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (see the epilog: 0, 2, 3, 130/143)."""
    args = build_parser().parse_intermixed_args(argv)

    # hpc_pgo imports torch (seconds): import it only once --help has had its chance to answer.
    import logging

    from omegaconf import OmegaConf

    from hpc_pgo.errors import PgoError
    from hpc_pgo.launch.plan import format_plan, plan_array
    from hpc_pgo.launch.submission import cancel, compose_runs, report_text, submit, wait

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.dry_run:
            top, _, runs, _ = compose_runs(args.opts, config_dir=args.config_dir)
            print(OmegaConf.to_yaml(top), end="")
            for name, _, cfg in runs:
                if name is not None:
                    print(f"# sweep run {name}")
                for line in format_plan(cfg, plan_array(cfg)).splitlines():
                    print(f"# {line}")
            return 0
        done = submit(args.opts, config_dir=args.config_dir)
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    array = done.array
    print(f"run directory: {done.run_dir}")
    if done.skipped:
        print(f"skipped (finished with the same config): {', '.join(done.skipped)}")
    if not array.tasks:
        print("nothing to run: every selected fold is finished (force=true reruns them)")
    else:
        waiting = len(array.tasks) - len(array.jobs)
        print(
            f"submitted {len(array.tasks)} fold task(s); job ids: {' '.join(array.job_ids())}"
            + (f" (+{waiting} start as slots free)" if waiting else "")
        )
    if array.report_job is not None:
        print(f"report job: {array.report_job.job_id} (after the array, writes the report)")
    if not done.wait:
        print(f"not waiting; later: python launch/report.py {done.run_dir}")
        return 0
    import signal

    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        counts = wait(done, progress=True)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        cancelled = cancel(done, f"launch/submit.py got {name}")  # local folds only
        line = f"interrupted by {name}: "
        if array.parallel:  # local folds: cancelled, resumable
            line += f"cancelled {cancelled} running fold(s); the same command resumes them"
        else:
            line += f"the Slurm jobs go on; later: python launch/report.py {done.run_dir}"
        print(line, file=sys.stderr)
        return 128 + stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    try:
        print(report_text(done), end="")
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return FOLD_FAILED
    return FOLD_FAILED if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
