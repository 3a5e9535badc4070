"""benchmarks/nested_selection.py: its table reads a sweep_summary.json as the report writes it."""

from pathlib import Path

from hpc_pgo.survival.paired import paired_difference
from hpc_pgo.survival.protocol import summarize_cindex
from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nested_selection.py"


def load_benchmark():
    return load_script(SCRIPT)


def test_table_rows_paired_deltas_best_fixed_and_choice_counts():
    per = {
        "rna-snn": {0: 0.70, 1: 0.66, 2: 0.61},
        "rna-pca": {0: 0.60, 1: 0.58, 2: 0.62},
        "coxph": {0: 0.65, 1: 0.60, 2: 0.60},
    }
    chosen = {"0": "rna-snn", "1": "rna-snn", "2": "rna-pca"}
    per["selected"] = {int(k): per[c][int(k)] for k, c in chosen.items()}

    def run(name):
        c = summarize_cindex(per[name])
        c["per_fold"] = {str(k): v for k, v in per[name].items()}
        return {"c_index": c, "n_folds": 3}

    summary = {
        "reference": "coxph",
        "runs": {name: run(name) for name in per},
        "paired": {n: paired_difference(per[n], per["coxph"]) for n in per if n != "coxph"},
        "selection": {"selected": {"choices": {"-": chosen}, "inner_folds": 5,
                                   "counts": {"rna-snn": 2, "rna-pca": 1, "coxph": 0}}},
    }  # fmt: skip
    text = load_benchmark().table(summary)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:6]] == ["rna-snn", "rna-pca", "selected", "coxph"]
    assert "(reference)" in lines[5]
    assert "+0.040 [" in lines[2] and "3/3" in lines[2]  # rna-snn - coxph: +.05 +.06 +.01
    best = paired_difference(per["selected"], per["rna-snn"])
    assert "(rna-snn, highest mean test C" in text
    assert f"Δ {best['mean']:+.3f}" in text and "wins 1/3 (ties 2)" in text
    assert "times chosen by 5-fold inner CV (3 outer folds): rna-snn 2, rna-pca 1, coxph 0" in text
    assert "0:rna-snn, 1:rna-snn, 2:rna-pca" in text
