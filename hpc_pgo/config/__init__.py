"""Configuration: compose base.yaml, config groups and key=value overrides; validate; parse fold ranges."""

from hpc_pgo.config.compose import (
    CONFIG_DIR_ENV,
    compose,
    compose_file,
    find_config_dir,
    group_choices,
    load_yaml,
)
from hpc_pgo.config.folds import format_folds, parse_folds
from hpc_pgo.config.rules import resolve_run_dir, usable_cores
from hpc_pgo.config.store import (
    CONFIG_FILE,
    EXECUTION_KEYS,
    config_digest,
    load_config,
    save_config,
)

__all__ = [
    "CONFIG_DIR_ENV",
    "CONFIG_FILE",
    "EXECUTION_KEYS",
    "compose",
    "compose_file",
    "config_digest",
    "find_config_dir",
    "format_folds",
    "group_choices",
    "load_config",
    "load_yaml",
    "parse_folds",
    "resolve_run_dir",
    "save_config",
    "usable_cores",
]
