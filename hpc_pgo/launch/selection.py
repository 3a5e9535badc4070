"""Nested selection: the fold outputs of a sweep's `select:` entry, from its candidates' runs.

For each outer fold k (and each seed with seeds=[...]), every candidate c has been trained
inner.folds times on k's TRAIN patients (<c>/[seed_<s>/]inner_<j>/fold_<k>: trained on the parts
other than j, scored on part j; hpc_pgo.data.inner) and once on all of k's train patients (its
own <c>/[seed_<s>/]fold_<k>, tested on k's test patients). The candidate with the highest mean
inner C-index (Harrell's, patients' mean hazard, the report's protocol; the first listed on a
tie; a part without a comparable pair counts as the lowest) is the choice; the entry's
fold_<k>/ gets that candidate's refit predictions and a metrics.json recording the choice and
every candidate's inner scores. The outer test patients take part in no inner training, so the
choice never sees them.

``write_selection`` runs at report time (it trains nothing; all the trainings are elements of
the run's one array): a fold whose inner trainings or refit are not all finished is left
missing, one whose inputs failed gets error.txt naming the input.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpc_pgo.atomic import write_text
from hpc_pgo.config import CONFIG_FILE, load_config
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import ERROR, METRICS, PREDICTIONS, fold_dir, has_metrics
from hpc_pgo.launch.replicates import INNER_DIR, read_seeds, seed_dir
from hpc_pgo.survival import fold_cindex, read_predictions

SELECTION_FILE = "selection.json"

__all__ = ["SELECTION_FILE", "choose", "write_selection"]


def choose(inner: Mapping[str, Sequence[float]]) -> str:
    """The candidate with the highest mean inner C-index; the first listed on a tie; a NaN part
    (no comparable pair) counts as -inf, so such a candidate never wins over a scored one."""
    best, best_value = None, -math.inf
    for name, scores in inner.items():
        values = [s if s is not None and math.isfinite(s) else -math.inf for s in scores]
        value = sum(values) / len(values) if values else -math.inf
        if best is None or value > best_value:
            best, best_value = name, value
    if best is None:
        raise PgoError("no candidate to choose from; valid: a select list of entry names")
    return best


def _state(out: Path) -> tuple[str, str | None]:
    """("done", None) | ("failed", error line) | ("missing", None) of one fold directory."""
    if has_metrics(out) and (out / PREDICTIONS).is_file():
        return "done", None
    if (out / ERROR).is_file():
        lines = (out / ERROR).read_text(encoding="utf-8", errors="replace").splitlines()
        return "failed", next((line.strip() for line in lines if line.strip()), "error.txt")
    return "missing", None


def _clear(out: Path) -> None:
    for name in (PREDICTIONS, METRICS, ERROR):
        (out / name).unlink(missing_ok=True)


def _select_folds(
    entry_dir: Path, candidate_dirs: Mapping[str, Path], parts: int, seed: int | None
) -> dict[int, str]:
    """Write entry_dir/fold_<k>/ for every fold of the candidates; returns fold -> choice."""
    first = next(iter(candidate_dirs.values()))
    folds = [int(k) for k in load_config(first).folds] if (first / CONFIG_FILE).is_file() else []
    entry_dir.mkdir(parents=True, exist_ok=True)
    write_text(entry_dir / SELECTION_FILE, json.dumps({
        "folds": folds, "candidates": list(candidate_dirs), "inner_folds": parts, "seed": seed,
    }, indent=1) + "\n")  # fmt: skip
    chosen: dict[int, str] = {}
    for k in folds:
        out = fold_dir(entry_dir, k)
        out.mkdir(parents=True, exist_ok=True)
        inputs = {
            f"{c}/{INNER_DIR.format(part=j)}/fold_{k}": fold_dir(d / INNER_DIR.format(part=j), k)
            for c, d in candidate_dirs.items() for j in range(parts)
        }  # fmt: skip
        inputs.update({f"{c}/fold_{k}": fold_dir(d, k) for c, d in candidate_dirs.items()})
        states = {name: _state(path) for name, path in inputs.items()}
        failed = [(name, line) for name, (state, line) in states.items() if state == "failed"]
        if failed:
            _clear(out)
            write_text(out / ERROR, f"PgoError: selection input {failed[0][0]} failed: "
                                    f"{failed[0][1]}\n")  # fmt: skip
            continue
        if any(state == "missing" for state, _ in states.values()):
            _clear(out)  # missing until every input has finished
            continue
        inner = {
            c: [
                fold_cindex(read_predictions(inputs[f"{c}/{INNER_DIR.format(part=j)}/fold_{k}"]
                                             / PREDICTIONS), where=f"{c} inner {j} fold {k}")
                for j in range(parts)
            ]
            for c in candidate_dirs
        }  # fmt: skip
        choice = choose(inner)
        refit = inputs[f"{choice}/fold_{k}"]
        refit_metrics = json.loads((refit / METRICS).read_text(encoding="utf-8"))
        (out / ERROR).unlink(missing_ok=True)
        tmp = out / f".{PREDICTIONS}.tmp"
        shutil.copyfile(refit / PREDICTIONS, tmp)
        tmp.replace(out / PREDICTIONS)
        metrics = {
            "fold": k,
            "seed": seed,
            "selected": choice,
            "cindex": refit_metrics.get("cindex"),
            "inner_folds": parts,
            "inner_cindex": {c: _mean(v) for c, v in inner.items()},
            "inner_cindex_per_part": inner,
            "refit": str(refit),
        }
        write_text(out / METRICS, json.dumps(metrics, indent=1, allow_nan=True) + "\n")
        chosen[k] = choice
    return chosen


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if len(finite) == len(values) and values else None


def _seeded(config_dir: Path, seed: int | None) -> Path:
    return config_dir if seed is None else seed_dir(config_dir, seed)


def write_selection(run_dir: Path, entry: Mapping, sweep: Mapping) -> dict:
    """The select entry's fold outputs (module text), per seed when the run has seeds.
    Returns {"choices": {"<seed or ->": {"<k>": candidate}}, "counts": {candidate: n}}."""
    name, candidates = entry["name"], list(entry["select"])
    parts = int((sweep.get("inner") or {}).get("folds", 0))
    if parts < 2:
        raise PgoError(f"{run_dir / 'sweep.json'}: entry {name!r} selects but the sweep has no "
                       "inner record; valid: a run written by launch/submit.py")  # fmt: skip
    entry_dir = run_dir / name
    seeds = read_seeds(entry_dir)
    contexts = [None] if seeds is None else seeds
    choices: dict[str, dict[str, str]] = {}
    counts = {c: 0 for c in candidates}
    for seed in contexts:
        chosen = _select_folds(
            _seeded(entry_dir, seed), {c: _seeded(run_dir / c, seed) for c in candidates},
            parts, seed,
        )  # fmt: skip
        choices["-" if seed is None else str(seed)] = {str(k): c for k, c in chosen.items()}
        for c in chosen.values():
            counts[c] += 1
    return {"choices": choices, "counts": counts, "inner_folds": parts}
