"""What a composed config must satisfy, and the values derived from others.

Checked here, at submit time, so that a bad value fails once on the command line rather than in
every fold of a job array. The value sets are read from the registries of the code that uses
them, never copied here: model.fusion, model.genomic.rna_encoder and model.modalities from
hpc_pgo.config.registry (the names the models bind their builders to; model.image.encoder
likewise), train.lr_schedule from
hpc_pgo.engine.schedule.SCHEDULES, balance.mode from hpc_pgo.engine.modulation.BALANCE_MODES,
deepspeed.dtype and deepspeed.zero_optimization.stage from hpc_pgo.engine.engine.

Derived values (null in the YAML means "derive"):
  wait                                     true on cluster=local, false on cluster=slurm
  balance.mode                             rho for model.fusion=concat over genomic + image, else none
  cluster.parallel (local)                 max(1, usable cores // (threads_per_fold * tasks_per_node))
  deepspeed.train_micro_batch_size_per_gpu train.batch_size / (cluster.nodes * cluster.tasks_per_node)
  run_dir (at submit, resolve_run_dir)     <cwd>/runs/<name>/<YYYYmmdd-HHMMSS>
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from hpc_pgo.config import registry
from hpc_pgo.config.folds import parse_folds
from hpc_pgo.engine.engine import DTYPES, ZERO_STAGES
from hpc_pgo.engine.global_batch import micro_batch
from hpc_pgo.engine.modulation import BALANCE_MODES
from hpc_pgo.engine.schedule import SCHEDULES
from hpc_pgo.errors import PgoError

# Mappings passed through to a tool as they are: any key may be added to them.
OPEN_MAPPINGS = frozenset({"cluster.sbatch"})

# Keys whose documented meaning includes null ("the site's default", "no end", "derive").
NULLABLE = frozenset(
    {
        "run_dir", "wait", "balance.end_epoch", "data.image_size", "model.image.pretrained",
        "cluster.parallel", "cluster.partition", "cluster.account", "cluster.qos",
        "cluster.constraint", "cluster.mem_gb", "deepspeed.train_micro_batch_size_per_gpu",
        "model.name", "model.genomic.mlp_a_weights", "model.image.out", "balance.mode",
        "model.genomic.rna_snn.hidden", "model.genomic.rna_snn.dropout",
        "train.steps_per_checkpoint", "train.stop_after_steps", "train.stop_after_minutes", "seeds", "inner.fold",
    }
)  # fmt: skip

# Keys whose value must be one of a few names: each registry's names, in its order.
CHOICES: dict[str, tuple] = {
    "cluster.kind": ("local", "slurm"),
    "deepspeed.zero_optimization.stage": tuple(ZERO_STAGES),
    # auto: bf16 on CUDA, fp32 on CPU, decided by the engine on the fold's device
    # (hpc_pgo.engine.engine.deepspeed_config), since the submit host may have no GPU.
    "deepspeed.dtype": tuple(DTYPES),
    "model.fusion": registry.FUSIONS.names(),
    "model.genomic.rna_encoder": registry.RNA_ENCODERS.names(),
    "model.image.encoder": registry.IMAGE_ENCODERS.names(),
    "train.lr_schedule": tuple(SCHEDULES),
    "balance.mode": tuple(BALANCE_MODES),
}

MODALITIES = registry.MODALITIES.names()

# Numeric keys and their lower bound; (bound, True) is strict (> bound), (bound, False) is >=.
LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "seed": (0, False),
    "inner.folds": (2, False),
    "inner.seed": (0, False),
    "data.n_splits": (1, False),
    "data.image_size": (1, False),
    "train.epochs": (1, False),
    "train.batch_size": (1, False),
    "train.lr": (0, True),
    "train.weight_decay": (0, False),
    "train.l1_genomic": (0, False),
    "train.checkpoint_every": (1, False),
    "train.steps_per_checkpoint": (1, False),
    "train.stop_after_steps": (1, False),
    "train.stop_after_minutes": (0, True),
    "train.num_workers": (0, False),
    "train.shuffle_buffer": (1, False),
    "train.val_fraction": (0, False),
    "model.genomic.rna_input_dropout": (0, False),
    "model.genomic.rna_pcs": (0, False),
    "model.image.bag.max_tiles": (1, False),
    "model.image.bag.hidden": (1, False),
    "model.image.bag.attention": (1, False),
    "model.image.bag.dropout": (0, False),
    "balance.alpha": (0, False),
    "balance.start_epoch": (0, False),
    "balance.end_epoch": (0, False),
    "cluster.parallel": (1, False),
    "cluster.folds_per_process": (1, False),
    "cluster.threads_per_fold": (1, False),
    "cluster.cpus_per_task": (1, False),
    "cluster.nodes": (1, False),
    "cluster.tasks_per_node": (1, False),
    "cluster.gpus_per_node": (0, False),
    "cluster.time": (1, False),
    "cluster.mem_gb": (0, True),
    "cluster.array_parallelism": (1, False),
    "cluster.signal_delay_s": (0, False),
}

BOOLEANS = ("force", "wait", "balance.noise")
FREE_FORM = frozenset({"folds"})  # parsed by parse_folds, any of str | int | list
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_WAIT_BY_KIND = {"local": True, "slurm": False}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_override(key: str, token: str, old: object, new: object) -> object:
    """The value of an override if its type fits the value it replaces; else PgoError.

    old: the current (default) value; new: the YAML-parsed override. A null default accepts
    anything; null is accepted only by NULLABLE keys; an int default wants an int, a float
    default any number, a text default text (numbers become text), a list a list, a mapping a
    mapping. Interpolations (`${...}`) are checked after resolution instead.
    """
    if old is None or key in FREE_FORM or (isinstance(new, str) and "${" in new):
        return new
    if new is None:
        if key in NULLABLE:
            return new
        raise PgoError(f"{token!r}: {key} may not be null; valid: {_kind_of(old)}, like {old!r}")
    accepts = _ACCEPTS[_kind_of(old)]
    if not accepts(new):
        raise PgoError(
            f"{token!r}: {key} takes {_kind_of(old)} (default {_shown(old)}), not {new!r}"
        )
    if _kind_of(old) == "text":
        return str(new)
    return new


def finish(cfg: DictConfig) -> None:
    """Check a resolved config and fill in its derived values, in place (see the module text)."""
    for step in _STEPS:
        step(cfg)


def finish_launch(cfg: DictConfig) -> None:
    """The checks and derivations a launched config shares with a fold's (LAUNCH_STEPS), in place."""
    for step in LAUNCH_STEPS:
        step(cfg)


def resolve_run_dir(cfg: DictConfig, now: datetime | None = None, cwd: Path | None = None) -> Path:
    """The run directory as an absolute path: cfg.run_dir, else <cwd>/runs/<name>/<timestamp>.

    A relative run_dir is taken relative to cwd (default: the current directory), since fold
    jobs may start elsewhere. timestamp: now (default: the local time) as YYYYmmdd-HHMMSS.
    """
    base = Path.cwd() if cwd is None else cwd
    if cfg.run_dir is not None:
        return (base / str(cfg.run_dir)).resolve()
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return (base / "runs" / cfg.name / stamp).resolve()


def _kind_of(value: object) -> str:
    """The kind of a default value, as error messages name it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, ListConfig)):
        return "a list"
    if isinstance(value, (dict, DictConfig)):
        return "a mapping"
    return "text"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_ACCEPTS: dict[str, Callable[[object], bool]] = {
    "a boolean": lambda v: isinstance(v, bool),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": _is_number,
    "a list": lambda v: isinstance(v, (list, ListConfig)),
    "a mapping": lambda v: isinstance(v, (dict, DictConfig)),
    "text": lambda v: isinstance(v, str) or _is_number(v),
}


def _shown(value: object) -> str:
    """A config value as YAML flow text, e.g. [genomic, image]."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return _flow(value)


def _flow(value: object) -> str:
    """One-line YAML-like text of a value: 0.002, [genomic, image], {a: 1}, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _present(cfg: DictConfig, key: str) -> tuple[bool, object]:
    """(True, value) when `key` exists in cfg, else (False, None); missing nodes are no error."""
    sentinel = object()
    value = OmegaConf.select(cfg, key, default=sentinel)
    return (value is not sentinel), (None if value is sentinel else value)


def _check_choices(cfg: DictConfig) -> None:
    """Each CHOICES key holds one of its names."""
    for key, valid in CHOICES.items():
        present, value = _present(cfg, key)
        if present and value not in valid:
            raise PgoError(
                f"{key}={_shown(value)} is not valid; valid: {', '.join(map(str, valid))}"
            )


def _check_finite(cfg: DictConfig) -> None:
    """Every number of the config is finite: .nan, .inf and -.inf pass the type checks (a float
    default takes any float) and every bound (nan compares false), then train a fold to NaN."""
    for key, value in _leaves_of(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):
            raise PgoError(f"{key}={_shown(value)} is not valid; valid: a finite number")


def _leaves_of(tree: object, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a container (list items as key.0, key.1, ...)."""
    if isinstance(tree, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(f"{prefix}.{i}", v) for i, v in enumerate(tree)]
    else:
        return [(prefix, tree)]
    return [leaf for key, value in items for leaf in _leaves_of(value, key)]


def _check_bounds(cfg: DictConfig) -> None:
    """Each LOWER_BOUNDS key present and not null is a number above its bound."""
    for key, (bound, strict) in LOWER_BOUNDS.items():
        present, value = _present(cfg, key)
        if not present or value is None:
            continue
        if not _is_number(value) or value < bound or (strict and value == bound):
            relation = ">" if strict else ">="
            raise PgoError(
                f"{key}={_shown(value)} is not valid; valid: a number {relation} {bound}"
            )


def _check_booleans(cfg: DictConfig) -> None:
    """force, wait and balance.noise are true or false (wait may still be null here)."""
    for key in BOOLEANS:
        present, value = _present(cfg, key)
        if present and value is not None and not isinstance(value, bool):
            raise PgoError(f"{key}={_shown(value)} is not valid; valid: true, false")


def _check_name(cfg: DictConfig) -> None:
    """name becomes a directory name: letters, digits, '.', '_', '-', not starting with '.'."""
    if not _NAME.fullmatch(str(cfg.name)):
        raise PgoError(
            f"name={cfg.name!r} is not valid; valid: letters, digits, '.', '_' and '-' "
            "(it names the run directory), e.g. name=kirc-fusion"
        )


def _check_modalities(cfg: DictConfig) -> None:
    """model.modalities: a non-empty subset of MODALITIES that the cohort (data.modalities) holds."""
    wanted = list(cfg.model.modalities)
    held = list(cfg.data.modalities)
    for key, names in (("model.modalities", wanted), ("data.modalities", held)):
        unknown = [m for m in names if m not in MODALITIES]
        if not names or unknown or len(set(names)) != len(names):
            raise PgoError(
                f"{key}={_shown(names)} is not valid; valid: a non-empty list of distinct "
                f"{' and '.join(MODALITIES)}"
            )
    missing = [m for m in wanted if m not in held]
    if missing:
        raise PgoError(
            f"model={cfg.groups.model} needs {', '.join(missing)}, which data={cfg.groups.data} "
            f"does not hold (data.modalities={_shown(held)}); valid: a model using only "
            f"{', '.join(held)}, e.g. model={held[0] if len(held) == 1 else 'fusion'}"
        )
    bags = registry.reads_bags(OmegaConf.select(cfg, "model.image.encoder", default="backbone"))
    if "image" in wanted and cfg.data.image_size is None and not bags:  # bags carry features
        raise PgoError(
            f"model.modalities includes image but data.image_size is null (data={cfg.groups.data}); "
            "valid: the image side in pixels, e.g. data.image_size=64"
        )


# Shares and rates: below 1 (their lower bound, 0, is in LOWER_BOUNDS); key -> what it is.
BELOW_ONE: dict[str, str] = {
    "train.val_fraction": "the share of each fold's train patients held out for validation; 0 = none",
    "model.genomic.rna_input_dropout": "the dropout rate on the RNA values; 0 = none",
    "model.image.bag.dropout": "the dropout rate of the bag encoders' tile MLP; 0 = none",
}


def _check_below_one(cfg: DictConfig) -> None:
    """Each BELOW_ONE key present is a number in [0, 1) (1 would hold out or drop everything)."""
    for key, what in BELOW_ONE.items():
        present, value = _present(cfg, key)
        if present and _is_number(value) and value >= 1:
            raise PgoError(
                f"{key}={_shown(value)} is not valid; valid: a number in [0, 1) ({what})"
            )


def _check_local_nodes(cfg: DictConfig) -> None:
    """The local executor runs one fold on this one machine: cluster.nodes is 1."""
    if cfg.cluster.kind == "local" and cfg.cluster.nodes != 1:
        raise PgoError(
            f"cluster.nodes={cfg.cluster.nodes} with cluster=local; valid: 1 (use cluster=slurm "
            "for folds spanning several nodes)"
        )


def _derive_balance_mode(cfg: DictConfig) -> None:
    """balance.mode: null -> rho for fusion=concat over genomic + image (Path-GPTomic), else none.

    Only that model has the per-modality theta^m = W^m m + b/2 the balancing compares (Eq. 5-6).
    """
    if cfg.balance.mode is None:
        cfg.balance.mode = "rho" if _has_per_modality_theta(cfg) else "none"


def _has_per_modality_theta(cfg: DictConfig) -> bool:
    return cfg.model.fusion == "concat" and set(cfg.model.modalities) == set(MODALITIES)


def _check_balance_model(cfg: DictConfig) -> None:
    """balance.mode=rho needs concat fusion over both modalities (the model's per-modality theta)."""
    if cfg.balance.mode == "rho" and not _has_per_modality_theta(cfg):
        raise PgoError(
            f"balance.mode=rho needs model.fusion=concat with model.modalities=[genomic, image]; "
            f"model={cfg.groups.model} has fusion={cfg.model.fusion} and modalities="
            f"{_shown(cfg.model.modalities)}; valid: balance.mode=none (or leave it null)"
        )


def _check_balance_window(cfg: DictConfig) -> None:
    """balance.end_epoch, when set, is after balance.start_epoch: the window [start, end) of
    epochs with balancing on is not empty (end = start would be a window that never opens)."""
    end, start = cfg.balance.end_epoch, cfg.balance.start_epoch
    if end is not None and end <= start:
        relation = "is before" if end < start else "equals"
        raise PgoError(
            f"balance.end_epoch={end} {relation} balance.start_epoch={start}, so balancing "
            f"would never turn on (end_epoch is the first epoch with it off again); valid: "
            f"balance.end_epoch > {start}, or null for no end"
        )


def _check_balance_turns_on(cfg: DictConfig) -> None:
    """balance.mode=rho modulates at some step: alpha > 0 and start_epoch < train.epochs.

    With alpha = 0 every coefficient is k = min(1 - tanh(0), 1) = 1; with start_epoch >=
    train.epochs the window opens after the last epoch. Either trains unmodulated while the
    config (and the report) says rho. balance.mode=none is the way to ask for no balancing.
    """
    if cfg.balance.mode != "rho":
        return
    model = OmegaConf.select(cfg, "groups.model", default=None)
    mode = f"balance.mode=rho{f' (model={model})' if model is not None else ''}"
    if cfg.balance.alpha == 0:
        raise PgoError(
            f"balance.alpha={_shown(cfg.balance.alpha)} with {mode} never modulates "
            "(k = 1 - tanh(0 * (rho - 1)) = 1 at every step); valid: balance.alpha > 0 (1 is the "
            "paper's), or balance.mode=none for no balancing"
        )
    epochs, start = cfg.train.epochs, cfg.balance.start_epoch
    if start >= epochs:
        raise PgoError(
            f"balance.start_epoch={start} with train.epochs={epochs}: {mode} would never turn "
            f"on (epochs are 0..{epochs - 1}); valid: balance.start_epoch < {epochs}, or "
            "balance.mode=none for no balancing"
        )


def _derive_wait(cfg: DictConfig) -> None:
    """wait: null -> block on cluster=local (folds are child processes), return on cluster=slurm."""
    if cfg.wait is None:
        cfg.wait = _WAIT_BY_KIND[cfg.cluster.kind]


def _derive_parallel(cfg: DictConfig) -> None:
    """cluster.parallel (local): null -> max(1, usable cores // (threads_per_fold * tasks_per_node))."""
    cluster = cfg.cluster
    if "parallel" in cluster and cluster.parallel is None:
        per_fold = cluster.threads_per_fold * cluster.tasks_per_node
        cluster.parallel = max(1, usable_cores() // per_fold)


def _derive_micro_batch(cfg: DictConfig) -> None:
    """DeepSpeed batch keys from train.batch_size B and the ranks per fold W = nodes * tasks_per_node.

    train_batch_size = B; train_micro_batch_size_per_gpu = B / W (W must divide B);
    gradient_accumulation_steps = 1, because the Cox risk sets are taken over the global batch of
    one optimizer step (theta, time and event gathered across ranks).
    """
    batch = cfg.train.batch_size
    ranks = cfg.cluster.nodes * cfg.cluster.tasks_per_node
    ds = cfg.deepspeed
    if ds.gradient_accumulation_steps != 1:
        raise PgoError(
            f"deepspeed.gradient_accumulation_steps={ds.gradient_accumulation_steps} is not valid; "
            "valid: 1 (Cox risk sets span one step's global batch)"
        )
    if ds.train_batch_size != batch:
        raise PgoError(
            f"deepspeed.train_batch_size={ds.train_batch_size} differs from train.batch_size={batch}; "
            "valid: set train.batch_size only"
        )
    micro = micro_batch(
        batch,
        ranks,
        ranks_from=f"cluster.nodes={cfg.cluster.nodes} x cluster.tasks_per_node="
        f"{cfg.cluster.tasks_per_node}",
    )
    given = ds.train_micro_batch_size_per_gpu
    if given is not None and given != micro:
        raise PgoError(
            f"deepspeed.train_micro_batch_size_per_gpu={given} is not valid; it is derived: "
            f"train.batch_size / ranks per fold = {batch} / {ranks} = {micro} (leave it null)"
        )
    ds.train_micro_batch_size_per_gpu = micro


def _check_seeds_and_inner(cfg: DictConfig) -> None:
    """seeds: null or a non-empty list of distinct integers >= 0 (kept in the given order);
    inner.fold: null or a part 0..inner.folds-1."""
    seeds = OmegaConf.select(cfg, "seeds")
    if seeds is not None:
        values = list(seeds) if isinstance(seeds, ListConfig | list | tuple) else [seeds]
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if not values or bad or len(set(values)) != len(values):
            raise PgoError(
                f"seeds={_flow(seeds)} is not valid; valid: null or a list of distinct integers "
                ">= 0, e.g. seeds=[0,1,2]"
            )
        cfg.seeds = values
    inner = OmegaConf.select(cfg, "inner.fold")
    if inner is not None and (
        isinstance(inner, bool) or not isinstance(inner, int) or not 0 <= inner < cfg.inner.folds
    ):
        raise PgoError(
            f"inner.fold={inner!r} is not valid; valid: null or a part 0..{cfg.inner.folds - 1} "
            f"of inner.folds={cfg.inner.folds}"
        )


def _parse_config_folds(cfg: DictConfig) -> None:
    """folds: the selection as a sorted list of ints, checked against data.n_splits."""
    cfg.folds = parse_folds(cfg.folds, cfg.data.n_splits)


# Value checks first, then derivations (which read checked values), then relations between keys.
# balance.mode alone is derived first, so that its choice check sees a name.
_STEPS: tuple[Callable[[DictConfig], None], ...] = (
    _derive_balance_mode,
    _check_finite,
    _check_choices,
    _check_bounds,
    _check_below_one,
    _check_booleans,
    _check_name,
    _check_modalities,
    _check_local_nodes,
    _check_balance_window,
    _check_balance_model,
    _check_balance_turns_on,
    _derive_wait,
    _derive_parallel,
    _derive_micro_batch,
    _check_seeds_and_inner,
    _parse_config_folds,
)
# What every launched config (a fold's, MLP-A pretraining's) shares: its value checks, its
# executor and its DeepSpeed batch keys. Other top files (configs/pretrain.yaml) finish with these.
LAUNCH_STEPS: tuple[Callable[[DictConfig], None], ...] = (
    _check_finite,
    _check_choices,
    _check_bounds,
    _check_name,
    _check_local_nodes,
    _derive_micro_batch,
)
