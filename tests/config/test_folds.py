"""parse_folds / format_folds: fold selections as sorted lists checked against n_splits."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from hpc_pgo.config import format_folds, parse_folds
from hpc_pgo.errors import PgoError


@pytest.mark.parametrize(
    "spec,n_splits,expected",
    [
        ("0-14", 15, list(range(15))),
        ("0,3,7", 15, [0, 3, 7]),
        ("7,3,0", 15, [0, 3, 7]),
        ("all", 15, list(range(15))),
        ("ALL", 4, [0, 1, 2, 3]),
        ("3", 15, [3]),
        (3, 15, [3]),
        (0, 1, [0]),
        (" 0 - 2 , 5 ", 15, [0, 1, 2, 5]),
        ("0-3,2-5", 15, [0, 1, 2, 3, 4, 5]),  # overlapping ranges: each fold once
        ("4-4", 15, [4]),
        ("14", 15, [14]),
        ([9, 1, 1], 15, [1, 9]),
        ((2, 0), 3, [0, 2]),
        (OmegaConf.create([5, 2]), 15, [2, 5]),
    ],
)
def test_valid_selections(spec, n_splits, expected):
    assert parse_folds(spec, n_splits) == expected


@pytest.mark.parametrize(
    "spec,n_splits,expected",
    [
        ("3-1", 15, "folds=3-1: range 3-1 is descending; use e.g. folds=1-3"),
        ("0-20", 15, "folds=0-20: folds 15-20 out of range for 15 splits (valid 0-14)"),
        ("15", 15, "folds=15: fold 15 out of range for 15 splits (valid 0-14)"),
        ("0,3,40", 15, "folds=0,3,40: fold 40 out of range"),
        (20, 15, "folds=20: fold 20 out of range"),
        ([1, 99], 15, "folds=[1,99]: fold 99 out of range"),
        ("abc", 15, "folds=abc: 'abc' is not a fold or a range a-b"),
        ("1-", 15, "'1-' is not a fold or a range"),
        ("-1", 15, "'-1' is not a fold or a range"),
        ("1,,2", 15, "'' is not a fold or a range"),
        ("0-3-5", 15, "'0-3-5' is not a fold"),
        ("1.5", 15, "'1.5' is not a fold"),
        ("", 15, "selects no fold"),
        ("   ", 15, "selects no fold"),
        (None, 15, "folds= is empty"),
        ([], 15, "folds=[] selects no fold"),
        (-2, 15, "folds=-2: folds are numbered from 0"),
        (True, 15, "is not a fold selection"),
        (["a"], 15, "'a' is not a fold number"),
        (1.0, 15, "is not a fold selection"),
        ("0-3", 0, "n_splits=0 is invalid"),
    ],
)
def test_invalid_selections_fail_with_one_line(spec, n_splits, expected):
    with pytest.raises(PgoError) as caught:
        parse_folds(spec, n_splits)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "folds,text",
    [
        ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"),
        ([3], "3"),
        ([], ""),
        ([2, 1, 0, 1], "0-2"),
        (range(15), "0-14"),
    ],
)
def test_format_folds(folds, text):
    assert format_folds(folds) == text


def test_format_then_parse_is_identity():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 40)
        chosen = sorted(rng.sample(range(n), rng.randint(1, n)))
        assert parse_folds(format_folds(chosen), n) == chosen
