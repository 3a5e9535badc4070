#!/usr/bin/env python
"""Train the cross-validation folds of one experiment as a job array (local processes or Slurm).

Thin entry: parse the command line, compose the config (hpc_pgo.config), plan the array
(hpc_pgo.launch.plan) and, with --dry-run, print both. Submission lands with the training issue.
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
                  checked against data.n_splits
"""

EPILOG = """\
examples:
  python launch/submit.py --dry-run
  python launch/submit.py folds=0-14 --dry-run
  python launch/submit.py data=tcga_kirc model=genomic folds=0,3,7 train.lr=0.001 --dry-run
  python launch/submit.py cluster=slurm cluster.partition=gpu cluster.time=120 \\
      deepspeed=zero2 deepspeed.dtype=bf16 cluster.sbatch.mail-type=END --dry-run
  python launch/submit.py name=ablation run_dir=runs/ablation/try1 force=true --dry-run

--dry-run prints the resolved config as YAML, then the planned array as '#' comment lines
(one line per fold with its resources), so the whole output can be saved and read back as YAML.
Bad input prints one line 'error: ...' on stderr and exits with status 2.
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


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (2 on bad input)."""
    args = build_parser().parse_intermixed_args(argv)

    # hpc_pgo imports torch (seconds): import it only once --help has had its chance to answer.
    from omegaconf import OmegaConf

    from hpc_pgo.config import compose, resolve_run_dir
    from hpc_pgo.errors import PgoError
    from hpc_pgo.launch.plan import format_plan, plan_array

    try:
        cfg = compose(args.opts, config_dir=args.config_dir)
        cfg.run_dir = str(resolve_run_dir(cfg))
        plans = plan_array(cfg)
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not args.dry_run:
        print(
            "error: submitting folds is not available yet (it lands with the training issue); "
            "use --dry-run to see the resolved config and the planned array",
            file=sys.stderr,
        )
        return 1

    print(OmegaConf.to_yaml(cfg), end="")
    for line in format_plan(cfg, plans).splitlines():
        print(f"# {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
