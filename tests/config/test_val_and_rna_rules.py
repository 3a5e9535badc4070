"""compose() rules of train.val_fraction and the RNA SNN's front end (model.genomic.rna_*)."""

from __future__ import annotations

import pytest

from hpc_pgo.config import compose
from hpc_pgo.errors import PgoError


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("train.val_fraction=1", r"train.val_fraction=1 is not valid; valid: a number in \[0, 1\)"),
        ("train.val_fraction=-0.1", r"train.val_fraction=-0.1 is not valid; valid: a number >= 0"),
        (
            "model.genomic.rna_input_dropout=1.0",
            r"model.genomic.rna_input_dropout=1.0 is not valid; valid: a number in \[0, 1\)",
        ),
        (
            "model.genomic.rna_pcs=-2",
            r"model.genomic.rna_pcs=-2 is not valid; valid: a number >= 0",
        ),
        ("model.genomic.rna_pcs=1.5", r"model.genomic.rna_pcs takes an integer"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_key(token, expected):
    with pytest.raises(PgoError, match=expected) as caught:
        compose(["model=genomic", token])
    assert "\n" not in str(caught.value)


def test_defaults_are_off_and_the_rna_snn_may_take_its_own_widths():
    cfg = compose(["model=genomic"])
    assert cfg.train.val_fraction == 0.0
    genomic = cfg.model.genomic
    assert (genomic.rna_pcs, genomic.rna_input_dropout) == (0, 0.0)
    assert genomic.rna_snn.hidden is None and genomic.rna_snn.dropout is None  # = snn's
    cfg = compose(["model=genomic", "model.genomic.rna_snn.hidden=[32]", "train.val_fraction=0.2"])
    assert list(cfg.model.genomic.rna_snn.hidden) == [32] and cfg.train.val_fraction == 0.2
