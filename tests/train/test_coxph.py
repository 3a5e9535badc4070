"""The penalised CoxPH reference on a real demo shard set, against a fit made independently from
the shard tar (tarfile + numpy) with the manifest's split and survival."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from hpc_pgo.errors import PgoError
from hpc_pgo.train.coxph import coxph_fold_predictions, project

GROUPS = ["cnv", "mut"]


def _reference(shards: Path, fold: int, penalizer: float) -> pd.Series:
    """Test-patient log partial hazards from the first principles of the module docstring."""
    manifest = json.loads((shards / "manifest.json").read_text())
    vectors: dict[str, np.ndarray] = {}
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for patient in manifest["patients"]:
                parts = []
                for group in GROUPS:
                    member = members.get(f"{patient}__{patient}_0.{group}.npy")
                    if member is None:
                        break
                    parts.append(np.load(io.BytesIO(tar.extractfile(member).read())))
                else:
                    vectors[patient] = np.concatenate(parts).astype(np.float64)
    split = manifest["splits"]["folds"][fold]
    train, test = sorted(split["train"]), sorted(split["test"])
    x_train = np.stack([vectors[p] for p in train])
    x_test = np.stack([vectors[p] for p in test])
    # z-scores per group with train mean and population std, as the networks see them
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std < 1e-8, 1.0, std)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    keep = x_train.std(0) > 0
    x_train, x_test = x_train[:, keep], x_test[:, keep]
    surv = manifest["patients"]
    frame = pd.DataFrame(x_train).assign(
        time=[surv[p]["time"] for p in train], event=[surv[p]["event"] for p in train]
    )
    frame.columns = [str(c) for c in frame.columns]
    model = CoxPHFitter(penalizer=penalizer).fit(frame, duration_col="time", event_col="event")
    hazard = model.predict_log_partial_hazard(pd.DataFrame(x_test, columns=frame.columns[:-2]))
    return pd.Series(np.asarray(hazard), index=test)


def test_same_patients_same_standardisation_same_fit_as_an_independent_one(small_shards):
    got = coxph_fold_predictions(small_shards, 2, GROUPS, penalizer=0.5)
    manifest = json.loads((small_shards / "manifest.json").read_text())
    test = sorted(manifest["splits"]["folds"][2]["test"])
    # one row per test patient (each has 2 ROIs in the shards), unit = patient
    assert got["patient"].tolist() == test and got["unit"].tolist() == test
    assert list(got.columns) == ["patient", "unit", "hazard", "time", "event"]
    want = _reference(small_shards, 2, 0.5)
    np.testing.assert_allclose(got["hazard"].to_numpy(), want.loc[test].to_numpy(), rtol=1e-4)
    # times ride in the shards as float32
    times = [manifest["patients"][p]["time"] for p in test]
    assert got["time"].tolist() == pytest.approx(times, rel=1e-6)


def test_principal_components_are_fitted_on_train_only():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 6))
    train[:, 2] = 1.0  # constant on train: dropped
    test = rng.normal(size=(5, 6)) + 100.0  # far away: must not move the basis
    a_train, a_test = project(train, test, 3)
    b_train, b_test = project(train, test * 0.0, 3)
    assert a_train.shape == (30, 3) and a_test.shape == (5, 3)
    np.testing.assert_allclose(a_train, b_train)  # the test rows never enter the fit
    kept_train, _ = project(train, test, 0)
    assert kept_train.shape == (30, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": []}, "no omics group chosen"),
        ({"penalizer": -1.0}, r"penalizer = -1.0; valid: a number >= 0"),
        ({"l1_ratio": 2.0}, r"l1_ratio = 2.0; valid: a number in \[0, 1\]"),
    ],
)
def test_bad_settings_are_one_clear_error(small_shards, kwargs, message):
    args = {"groups": GROUPS, "penalizer": 0.1, **kwargs}
    groups = args.pop("groups")
    with pytest.raises(PgoError, match=message):
        coxph_fold_predictions(small_shards, 0, groups, **args)
