"""Compose a run's config: configs/base.yaml, one file per group, then key=value overrides.

The order of composition (later wins):

1. ``base.yaml``; its ``groups`` mapping names the default choice of every group;
2. for each group (``data``, ``model``, ``cluster``, ``deepspeed``): the file
   ``<group>/<choice>.yaml`` placed under the key ``<group>``; a ``<group>=<choice>`` token
   picks another choice, and ``groups.<group>`` records the choice made. A group folder may hold
   a base file, ``<group>/_base.yaml`` (configs/model has one): every choice of the group is then
   merged onto it (OmegaConf.merge: mappings key by key, lists and values replaced), so a choice
   states only what differs, and may set no key the base lacks. Files whose name starts with
   ``_`` are not choices;
3. the ``key=value`` tokens (an OmegaConf dotlist; values are YAML: ``[0,3]``, ``{a: 1}``,
   ``null``, ``1e-3``), in the order given, group choices having been applied first.

The result is in struct mode: reading or setting a key that does not exist raises. Unknown keys
in overrides fail early with the closest valid keys (``difflib``), a value of the wrong type fails
with what the default's type is, and the values marked "derived" are filled in (rules.py).

Where the configs live: an explicit ``config_dir``, else ``$HPC_PGO_CONFIGS``, else ``configs/``
beside the ``hpc_pgo`` package (the repository layout; the package is installed editable).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_pgo.config import rules
from hpc_pgo.errors import PgoError

CONFIG_DIR_ENV = "HPC_PGO_CONFIGS"
BASE_FILE = "base.yaml"
GROUP_BASE_FILE = "_base.yaml"  # <group>/_base.yaml: what every choice of the group starts from
GROUPS_KEY = "groups"
# The configs shipped with the code (beside the hpc_pgo package); the default configs directory.
PACKAGE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_SYNTAX = "expected key=value (e.g. train.lr=0.001) or group=choice (e.g. data=tcga_kirc)"


def find_config_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The configs directory: `explicit`, else $HPC_PGO_CONFIGS, else <repository>/configs.

    Raises PgoError when the chosen directory has no base.yaml, naming where the choice came from.
    """
    if explicit is not None:
        path, source = Path(explicit), "given explicitly"
    elif os.environ.get(CONFIG_DIR_ENV):
        path, source = Path(os.environ[CONFIG_DIR_ENV]), f"from ${CONFIG_DIR_ENV}"
    else:
        path, source = PACKAGE_CONFIGS, "beside the hpc_pgo package"
    if not (path / BASE_FILE).is_file():
        raise PgoError(
            f"config directory {path} ({source}) has no {BASE_FILE}; valid: a directory holding "
            f"{BASE_FILE} and the group folders, passed as config_dir (--config-dir) or ${CONFIG_DIR_ENV}"
        )
    return path


def group_choices(
    configs: str | os.PathLike | None = None, top_file: str = BASE_FILE
) -> dict[str, list[str]]:
    """Every group named in the top file's `groups` (base.yaml's by default), with its choices
    (the .yaml stems of its folder, except those starting with '_', like the base _base.yaml)."""
    root = find_config_dir(configs)
    base = load_yaml(root / top_file)
    defaults = base.get(GROUPS_KEY)
    if not isinstance(defaults, DictConfig) or not defaults:
        raise PgoError(
            f"{root / top_file}: key '{GROUPS_KEY}' must map each group to its default choice, "
            f"e.g. {GROUPS_KEY}: {{data: demo}}"
        )
    choices = {}
    for group in defaults:
        folder = root / str(group)
        if not folder.is_dir():
            raise PgoError(f"{root / top_file}: group {group!r} has no folder {folder}")
        choices[str(group)] = sorted(
            p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_")
        )
    return choices


def group_base(root: str | os.PathLike, group: str) -> DictConfig | None:
    """The base file of a group, `<root>/<group>/_base.yaml`, or None when the group has none."""
    path = Path(root) / group / GROUP_BASE_FILE
    return load_yaml(path) if path.is_file() else None


def load_group(root: str | os.PathLike, group: str, choice: str) -> DictConfig:
    """One choice of a group as compose() places it under `group`: `<group>/<choice>.yaml`
    merged onto the group's `_base.yaml` when there is one (else the file as it is).

    Raises PgoError naming the file for a key the base does not define (a choice states only
    values that differ from the base; a misspelt key would otherwise add a new one).
    """
    path = Path(root) / group / f"{choice}.yaml"
    tree = load_yaml(path)
    base = group_base(root, group)
    if base is None:
        return tree
    outside = _keys_outside(OmegaConf.to_container(tree), OmegaConf.to_container(base))
    if outside:
        key, valid = outside[0]
        close = difflib.get_close_matches(key.rpartition(".")[2], valid, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PgoError(
            f"{path}: key {group}.{key} is not in {Path(root) / group / GROUP_BASE_FILE} (a "
            f"choice sets only keys of its group's base); {hint or 'valid: ' + ', '.join(valid)}"
        )
    merged = OmegaConf.merge(base, tree)
    OmegaConf.set_struct(merged, None)  # the flags of a loaded file: compose sets struct later
    return merged


def compose(args: Sequence[str] = (), config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The resolved, checked, struct-mode config for group choices and key=value overrides.

    args: command-line tokens, each `group=choice` or `dotted.key=value` (see the module text).
    `folds` comes back as a sorted list of ints checked against data.n_splits; keys marked
    derived are filled in, except run_dir (see rules.resolve_run_dir). Raises PgoError (one line)
    for a malformed token, an unknown key or group choice, a value of the wrong type or out of
    its valid set, and for folds outside 0 .. data.n_splits - 1.
    """
    return compose_file(BASE_FILE, args, config_dir, finish=rules.finish)


def compose_file(
    top_file: str,
    args: Sequence[str] = (),
    config_dir: str | os.PathLike | None = None,
    *,
    finish: Callable[[DictConfig], None],
) -> DictConfig:
    """compose() for another top file of the configs folder (e.g. pretrain.yaml): the file, the
    groups ITS `groups` key names, key=value overrides, resolved, then `finish(cfg)` (checks and
    derived keys, in place). Same token rules and messages as compose()."""
    root = find_config_dir(config_dir)
    available = group_choices(root, top_file)
    picked, overrides = _split_tokens(args, available)

    cfg = load_yaml(root / top_file)
    for group, names in available.items():
        choice = picked.get(group, cfg[GROUPS_KEY][group])
        if choice not in names:
            raise PgoError(
                f"unknown choice {choice!r} for group {group!r} (in {_origin(group, choice, picked, top_file)}); "
                f"valid: {', '.join(names) or 'none: ' + str(root / group) + ' has no .yaml file'}"
            )
        cfg[GROUPS_KEY][group] = choice
        cfg[group] = load_group(root, group, choice)

    OmegaConf.set_struct(cfg, True)
    _open_pass_through_mappings(cfg)
    for token in overrides:
        try:
            _apply_override(cfg, token)
        except _UnknownKeyError as err:
            raise PgoError(_other_choice_hint(err, root, available, cfg) or str(err)) from None

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise PgoError(f"cannot resolve the config: {_first_line(err)}") from err
    finish(cfg)
    return cfg


def finish_loaded(cfg: DictConfig, source: str | os.PathLike) -> DictConfig:
    """A config read from a file (``load_config``), after compose()'s checks and derived keys.

    The direct fold entry (``python -m hpc_pgo.train CONFIG --fold K``) trains what it reads;
    a hand-written config.yaml never went through compose(), so its nulls meaning "derive"
    (balance.mode, wait, ...) and its values would otherwise go unchecked (a null balance.mode
    trained unmodulated). ``rules.finish`` is applied in place and the config returned; on a
    config that compose() made it changes nothing (every derived key is already filled in).
    Raises PgoError, naming ``source``, for a bad value or a key the config lacks.
    """
    try:
        rules.finish(cfg)
    except PgoError as err:
        raise PgoError(f"{source}: {err}") from None
    except OmegaConfBaseException as err:
        raise PgoError(
            f"{source}: not a complete config ({_first_line(err)}); valid: a config composed by "
            "launch/submit.py (`python launch/submit.py --dry-run [args]` prints one)"
        ) from None
    return cfg


def load_yaml(path: Path) -> DictConfig:
    """One YAML mapping as a DictConfig; PgoError naming the file (and line) when it is not one."""
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError as err:
        raise PgoError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or _first_line(err)
        raise PgoError(f"{where}: not valid YAML: {problem}") from err
    except OmegaConfBaseException as err:
        raise PgoError(f"{path}: not a valid config: {_first_line(err)}") from err
    if not isinstance(loaded, DictConfig):
        raise PgoError(f"{path}: a config file must hold a mapping of keys, not a list")
    return loaded


def _split_tokens(
    args: Sequence[str], available: dict[str, list[str]]
) -> tuple[dict[str, str], list[str]]:
    """Group choices (`data=tcga_kirc`) apart from dotlist overrides; malformed tokens rejected."""
    picked: dict[str, str] = {}
    overrides: list[str] = []
    for token in args:
        key, sep, value = token.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PgoError(f"malformed argument {token!r}: {_SYNTAX}")
        if key in available:
            picked[key] = value.strip()
        elif key.split(".")[0] == GROUPS_KEY:
            group = key.partition(".")[2]
            raise PgoError(
                f"{token!r}: {GROUPS_KEY}.* records the choices made; choose a group with "
                f"group=choice, valid groups: {', '.join(available)}"
                + (f" (e.g. {group}={available[group][0]})" if available.get(group) else "")
            )
        else:
            overrides.append(token)
    return picked, overrides


def _origin(group: str, choice: str, picked: dict[str, str], top_file: str = BASE_FILE) -> str:
    """Where a group's choice came from, for error messages."""
    return f"'{group}={choice}'" if group in picked else f"{top_file} {GROUPS_KEY}.{group}"


def _open_pass_through_mappings(cfg: DictConfig) -> None:
    """Let the pass-through mappings (rules.OPEN_MAPPINGS, e.g. cluster.sbatch) take new keys."""
    for key in rules.OPEN_MAPPINGS:
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)


def _apply_override(cfg: DictConfig, token: str) -> None:
    """Set one `dotted.key=value`: the key must exist (or lie in an open mapping), the type fit."""
    key, _, raw = token.partition("=")
    key = key.strip()
    value = _parse_value(raw, token)
    _check_key(cfg, key, token)
    old = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, dict) and isinstance(old, DictConfig):
        for sub_key in _leaf_keys(value, key):
            _check_key(cfg, sub_key, token)
    value = rules.check_override(key, token, old, value)
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as err:
        raise PgoError(f"cannot apply {token!r}: {_first_line(err)}") from err


def _parse_value(raw: str, token: str) -> object:
    """The value text as YAML, the way OmegaConf reads a dotlist (1e-3 is a float, null is None)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise PgoError(f"{token!r}: the value is not valid YAML: {_first_line(err)}") from err


def _check_key(cfg: DictConfig, key: str, token: str) -> None:
    """Raise PgoError unless `key` exists in cfg or lies inside an open pass-through mapping.

    The error names the key, the token, and the closest valid keys at the level where the path
    first fails (difflib ratio >= 0.6), or every valid key at that level when none is close.
    """
    parts = key.split(".")
    node: object = cfg
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth])
        if here in rules.OPEN_MAPPINGS:
            return
        if not isinstance(node, DictConfig):
            raise PgoError(
                f"unknown config key {key!r} in {token!r}: {here!r} is a value, not a section of keys"
            )
        if part not in node:
            valid = [str(k) for k in node]
            raise _UnknownKeyError(
                key, token, _unknown_key_message(key, token, parts, depth, valid)
            )
        node = node[part]


def _unknown_key_message(
    key: str, token: str, parts: list[str], depth: int, valid: list[str]
) -> str:
    """`unknown config key 'train.lrr' in 'train.lrr=0.1'; did you mean 'train.lr'?`."""
    close = difflib.get_close_matches(parts[depth], valid, n=3, cutoff=0.6)
    if close:
        spelled = [".".join([*parts[:depth], c, *parts[depth + 1 :]]) for c in close]
        hint = "did you mean " + " or ".join(repr(s) for s in spelled) + "?"
    else:
        level = f"under {'.'.join(parts[:depth])!r}" if depth else "at the top level"
        hint = f"valid keys {level}: {', '.join(sorted(valid))}"
    return f"unknown config key {key!r} in {token!r}; {hint}"


class _UnknownKeyError(PgoError):
    """An override names a key the composed config lacks (compose may add a better hint)."""

    def __init__(self, key: str, token: str, message: str) -> None:
        super().__init__(message)
        self.key, self.token = key, token


def _other_choice_hint(
    err: _UnknownKeyError, root: Path, available: dict[str, list[str]], cfg: DictConfig
) -> str | None:
    """For a key that only other choices of its group define (cluster.partition under
    cluster=local), the message saying which choices have it; None when no choice does."""
    group, _, rest = err.key.partition(".")
    if group not in available or not rest:
        return None
    having = [
        f"{group}={choice}"
        for choice in available[group]
        if _defines(load_group(root, group, choice), group, rest)
    ]
    if not having:
        return None
    return (
        f"unknown config key {err.key!r} in {err.token!r}; {group}={cfg[GROUPS_KEY][group]} has "
        f"no such key, it is a key of {', '.join(having)} (choose one, e.g. {having[0]})"
    )


def _defines(tree: DictConfig, group: str, rest: str) -> bool:
    """True when a group file has the key `rest`, or an open mapping (rules.OPEN_MAPPINGS) above it."""
    parts = rest.split(".")
    missing = object()
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        found = OmegaConf.select(tree, prefix, default=missing, throw_on_resolution_failure=False)
        if found is missing:
            return False
        if f"{group}.{prefix}" in rules.OPEN_MAPPINGS:
            return True
    return True


def _keys_outside(tree: dict, base: dict, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the keys valid at its level) for each key of `tree` that `base` lacks;
    mappings present in both are compared key by key."""
    found = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key not in base:
            found.append((path, [str(k) for k in base]))
        elif isinstance(value, dict) and isinstance(base[key], dict):
            found.extend(_keys_outside(value, base[key], path + "."))
    return found


def _leaf_keys(mapping: dict, prefix: str) -> list[str]:
    """Dotted paths of the leaves of a nested dict value, e.g. {'a': {'b': 1}} -> ['p.a.b']."""
    keys = []
    for name, value in mapping.items():
        path = f"{prefix}.{name}"
        keys.extend(_leaf_keys(value, path) if isinstance(value, dict) and value else [path])
    return keys


def _first_line(err: BaseException) -> str:
    """An exception's message, first line only (errors here are one line)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
