"""`make demo`'s sweep composed with the Makefile's own tokens: every row shares the preset,
budget and splits, and differs from the reference (concat) only in what the row is about."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from hpc_pgo.launch.submission import compose_runs

REPO = Path(__file__).resolve().parents[2]


def makefile_tokens(variable: str) -> list[str]:
    match = re.search(rf"^{variable}\s*:=\s*(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"Makefile has no {variable}"
    return match.group(1).split()


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_make_demo_rows_differ_from_concat_only_in_what_they_compare(tmp_path: Path):
    args = ["sweep=demo", "folds=0-14", f"data.shards={tmp_path / 'shards'}",
            f"run_dir={tmp_path / 'run'}", *makefile_tokens("DEMO_PRESET"),
            *makefile_tokens("DEMO_RUN")]  # fmt: skip
    _, _, runs, sweep = compose_runs(args, config_dir=REPO / "configs")
    seeded = [f"{row}/seed_{s}" for row in ("concat", "concat-rho") for s in (0, 1, 2)]
    assert [name for name, _, _ in runs] == [
        "genomic", "image", *seeded[:3], *seeded[3:], "coxph"
    ]
    assert sweep["reference"] == "concat"
    assert {e["name"]: e["seeds"] for e in sweep["runs"]} == {
        "genomic": None, "image": None, "concat": [0, 1, 2], "concat-rho": [0, 1, 2],
        "coxph": None,
    }  # fmt: skip
    rows = {
        name: flat(OmegaConf.to_container(cfg, resolve=True))
        for name, _, cfg in runs
    }  # fmt: skip
    reference = rows["concat/seed_0"]
    assert reference["model.modalities"] == ["genomic", "image"]
    assert reference["balance.mode"] == "none"
    assert reference["train.epochs"] == 15 and reference["folds"] == list(range(15))
    assert reference["model.genomic.snn.dropout"] == 0.1
    # seeds: an execution key (which seeds run), not in the folds' config digest
    unseeded = {"seeds": None}
    expected = {
        "genomic": {"model.modalities": ["genomic"], **unseeded},
        "image": {"model.modalities": ["image"], **unseeded},
        **{f"concat/seed_{s}": {"seed": s} if s else {} for s in (0, 1, 2)},
        **{f"concat-rho/seed_{s}": {"balance.mode": "rho", **({"seed": s} if s else {})}
           for s in (0, 1, 2)},
        # the CoxPH entry ignores balancing; the default mode is left as it is
        "coxph": {"launch.fold_fn": "hpc_pgo.train.coxph.coxph_fold", "balance.mode": "rho",
                  **unseeded},
    }  # fmt: skip
    for name, row in rows.items():
        changed = {
            key: row.get(key)
            for key in set(row) | set(reference)
            if row.get(key) != reference.get(key) and key != "run_dir"
        }
        assert changed == expected[name], name
        assert row["run_dir"] == str(tmp_path / "run" / name)
