"""Sweeps: configs/sweep/<name>.yaml lists configurations; each runs every fold, all as ONE array.

A sweep file (config, not code):

    title: "Table 3: ablation"                     # the report table's heading
    columns: [Exp., Encoding RNA-seq, Fusion]      # label columns of the side-by-side table
    reference: exp1-snn-concat                     # optional: the entry the others are compared to
    runs:
      - name: exp1-snn-concat                      # sub-run directory <run_dir>/<name>/
        labels: {Exp.: 1, Encoding RNA-seq: SNN, Fusion: Concat}
        overrides: [model.genomic.rna_encoder=snn, balance.mode=none]

With a reference, the report compares every other entry with it fold by fold (the entries share
the splits): hpc_pgo.survival.paired.paired_difference over the folds both finished.

A configuration is composed from the command line's tokens followed by its overrides (so the
sweep wins for the keys it sets; group choices such as model=kronecker are tokens too).

Nested selection: an entry with `select: [name, ...]` (other entries of the sweep, its
candidates) trains nothing of its own. Each candidate is also trained by inner K-fold CV on
every outer fold's train patients (inner.folds, inner.seed; hpc_pgo.data.inner), and the report
gives the entry, per outer fold, the predictions of the candidate with the best mean inner
C-index, refit on all the fold's train patients: that candidate's own fold
(hpc_pgo.launch.selection).

    runs:
      - {name: rna-snn, overrides: [model.genomic.rna_encoder=snn]}
      - {name: rna-none, overrides: [model.genomic.rna_encoder=none]}
      - {name: selected, labels: {RNA: inner CV}, select: [rna-snn, rna-none]}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from hpc_pgo.config import compose, find_config_dir, load_yaml
from hpc_pgo.errors import PgoError

SWEEP_FOLDER = "sweep"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SweepRun:
    """One configuration of a sweep: its sub-run name, table labels and override tokens."""

    name: str
    labels: dict
    overrides: tuple[str, ...]
    select: tuple[str, ...] = ()  # candidates (entry names) of a nested-selection entry


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    title: str
    columns: tuple[str, ...]
    runs: tuple[SweepRun, ...]
    reference: str | None = None

    def as_dict(self) -> dict:
        """The JSON form written to <run_dir>/sweep.json (what the report reads)."""
        return {
            "name": self.name,
            "title": self.title,
            "columns": list(self.columns),
            "reference": self.reference,
            "runs": [
                {"name": r.name, "labels": r.labels, "overrides": list(r.overrides),
                 **({"select": list(r.select)} if r.select else {})}
                for r in self.runs
            ],
        }


def sweep_choices(config_dir: str | Path | None = None) -> list[str]:
    """The sweep names available: the .yaml stems of configs/sweep/."""
    return sorted(p.stem for p in (find_config_dir(config_dir) / SWEEP_FOLDER).glob("*.yaml"))


def load_sweep(name: str, config_dir: str | Path | None = None) -> Sweep:
    """Read and check configs/sweep/<name>.yaml; PgoError naming the file and the broken rule."""
    valid = sweep_choices(config_dir)
    if name not in valid:
        raise PgoError(
            f"unknown sweep {name!r} (in 'sweep={name}'); valid: {', '.join(valid) or 'none'}"
        )
    path = find_config_dir(config_dir) / SWEEP_FOLDER / f"{name}.yaml"
    tree = load_yaml(path)
    runs = tree.get("runs")
    if not isinstance(runs, ListConfig) or not runs:
        raise PgoError(
            f"{path}: key 'runs' must be a non-empty list of {{name, labels, overrides}}"
        )
    parsed, seen = [], set()
    for i, run in enumerate(runs):
        if not isinstance(run, DictConfig) or not _NAME.fullmatch(str(run.get("name", ""))):
            raise PgoError(
                f"{path}: runs[{i}] needs a name of letters, digits, '.', '_', '-' (it names a directory)"
            )
        if run.name in seen:
            raise PgoError(
                f"{path}: runs[{i}] repeats the name {run.name!r}; valid: distinct names"
            )
        seen.add(run.name)
        overrides = run.get("overrides", ListConfig([]))
        if not isinstance(overrides, ListConfig) or not all(isinstance(t, str) for t in overrides):
            raise PgoError(
                f"{path}: runs[{i}] ({run.name}): overrides must be a list of key=value texts"
            )
        labels = run.get("labels")
        labels = OmegaConf.to_container(labels) if isinstance(labels, DictConfig) else {}
        select = run.get("select", ListConfig([]))
        if not isinstance(select, ListConfig) or not all(isinstance(t, str) for t in select):
            raise PgoError(f"{path}: runs[{i}] ({run.name}): select must be a list of entry names")
        if select and overrides:
            raise PgoError(
                f"{path}: runs[{i}] ({run.name}) has both select and overrides; valid: a select "
                "entry trains nothing of its own (its candidates carry the overrides)"
            )
        parsed.append(SweepRun(name=str(run.name), labels=labels, overrides=tuple(overrides),
                               select=tuple(str(t) for t in select)))  # fmt: skip
    trained = {r.name for r in parsed if not r.select}
    for r in parsed:
        wrong = [c for c in r.select if c not in trained]
        if wrong or (r.select and len(set(r.select)) != len(r.select)):
            raise PgoError(
                f"{path}: entry {r.name!r} selects {wrong[0] if wrong else 'a name twice'!r}; "
                f"valid: distinct names of entries that train ({', '.join(sorted(trained))})"
            )
    reference = tree.get("reference")
    if reference is not None and str(reference) not in seen:
        raise PgoError(
            f"{path}: reference {reference!r} names no entry; valid: one of "
            f"{', '.join(r.name for r in parsed)}"
        )
    return Sweep(
        name=name,
        title=str(tree.get("title", name)),
        columns=tuple(str(c) for c in tree.get("columns", [])),
        runs=tuple(parsed),
        reference=None if reference is None else str(reference),
    )


def compose_sweep(
    sweep: Sweep, args: Sequence[str], config_dir: str | Path | None = None
) -> list[tuple[SweepRun, DictConfig]]:
    """The composed config of each sweep configuration that trains: compose(args + overrides)
    (select entries train nothing and are left out)."""
    out = []
    for run in sweep.runs:
        if run.select:  # trains nothing of its own: hpc_pgo.launch.selection at report time
            continue
        try:
            out.append((run, compose([*args, *run.overrides], config_dir=config_dir)))
        except PgoError as err:
            raise PgoError(f"sweep={sweep.name}, run {run.name}: {err}") from err
    return out
