"""`python -m hpc_pgo.train RUN_DIR/config.yaml --fold K`: train one fold in this process.

Runs as a plain process (one rank) or under torchrun (`torchrun --nproc_per_node 2 -m
hpc_pgo.train RUN_DIR/config.yaml --fold 3`): every rank calls the same ``train_fold``. The
config is a saved, resolved config (hpc_pgo.config.save_config; `launch/submit.py` writes one
per run), or a hand-written one: either way it goes through compose()'s checks and derived keys
first (``finish_loaded``: a null balance.mode becomes rho or none as at submit, a bad value is
refused), so this entry trains what `launch/submit.py` would. RUN_DIR defaults to the folder
holding it. Rank 0 prints the fold's metrics as one JSON line. Bad input prints
`error: <one line>` to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hpc_pgo.errors import PgoError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hpc_pgo.train",
        description="Train one cross-validation fold of a saved config (resumes from its checkpoint).",
    )
    parser.add_argument(
        "config", type=Path, help="a saved config.yaml, or the run directory holding it"
    )
    parser.add_argument(
        "--fold", type=int, required=True, help="0-based split index of the shard set"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where fold_<k>/ goes (default: the config's folder)",
    )
    parser.add_argument(
        "--force", action="store_true", help="start the fold again, even if complete"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from hpc_pgo.config import load_config
    from hpc_pgo.config.compose import finish_loaded
    from hpc_pgo.train.fold import train_fold

    try:
        cfg = finish_loaded(load_config(args.config), args.config)
        run_dir = args.run_dir or (args.config if args.config.is_dir() else args.config.parent)
        if args.force:
            cfg.force = True
        metrics = train_fold(cfg, args.fold, run_dir)
    except PgoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
