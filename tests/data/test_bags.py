"""The bag loader (hpc_pgo.data.bags) on real demo shards with a tile-feature side-car."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_pgo.data.bags import make_bag_loader
from hpc_pgo.data.cli import main as pgo_shards
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.patients import patient_vectors
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.data.tile_features import read_tile_features
from hpc_pgo.errors import PgoError
from tests.tile_feature_fixtures import key_features, write_tile_features

GROUPS = ["cnv", "mut"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """`pgo-shards demo`: 16 patients x 3 ROIs, with a side-car of per-key features (dim 6)."""
    out = tmp_path_factory.mktemp("bags") / "demo"
    args = ["demo", "--out", str(out), "--patients", "16", "--rois", "3", "--image-size", "16"]
    assert pgo_shards([*args, "--no-progress", "--workers", "1"]) == 0
    write_tile_features(out, key_features(6))
    return out


@pytest.fixture(scope="module")
def standardizer(shards) -> Standardizer:
    return Standardizer.fit(shards, open_fold(shards, 0).train, GROUPS)


def passes(shards, standardizer, split="train", **options) -> list[dict]:
    options = {"batch_size": 2, "epoch": 0, **options}
    loader = make_bag_loader(shards, 0, split, groups=GROUPS, standardizer=standardizer, **options)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def patients_of(batches) -> list[str]:
    return [p for b in batches for p in b["patient"]]


@pytest.mark.parametrize("world", [1, 2])
def test_every_train_patient_at_most_once_per_epoch_in_the_global_batches(
    shards, standardizer, world
):
    train = sorted(open_fold(shards, 0).train)
    micro = 2
    ranks = [
        passes(shards, standardizer, batch_size=micro, rank=r, world_size=world)
        for r in range(world)
    ]
    seen = [p for batches in ranks for p in patients_of(batches)]
    steps = (len(train) // world) // micro
    assert all(len(batches) == steps for batches in ranks)  # no rank waits for another
    assert len(seen) == len(set(seen)) == world * steps * micro  # each patient at most once
    assert set(seen) <= set(train) and len(train) - len(seen) < world * micro
    # optimizer step j's global batch: the same patients whatever the number of ranks
    whole = passes(shards, standardizer, batch_size=world * micro)
    for j in range(steps):
        assert sorted(p for batches in ranks for p in batches[j]["patient"]) == sorted(
            whole[j]["patient"]
        )
    for batch in ranks[0]:
        assert batch["key"] == batch["patient"] and batch["tile_features"].dtype == torch.float32


def test_the_seeded_order_changes_with_the_epoch_and_repeats_with_it(shards, standardizer):
    order = [patients_of(passes(shards, standardizer, batch_size=1, epoch=e)) for e in (0, 0, 1)]
    assert order[0] == order[1] and order[0] != order[2]
    assert (
        sorted(order[0]) == sorted(order[2]) == sorted(open_fold(shards, 0).train)
    )  # W=1, B=1: all
    assert patients_of(passes(shards, standardizer, batch_size=1, seed=1)) != order[0]


def test_the_tile_cap_is_a_deterministic_choice_of_at_most_max_tiles(shards, standardizer):
    features = read_tile_features(shards, json_manifest(shards))
    runs = [passes(shards, standardizer, batch_size=1, epoch=e, max_tiles=2) for e in (0, 0, 1)]
    chosen = [{b["patient"][0]: b["units"][0] for b in batches} for batches in runs]
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2]
    for batches in runs:
        for batch in batches:
            patient, units = batch["patient"][0], batch["units"][0]
            assert len(units) == 2 and batch["tile_features_mask"].tolist() == [[True, True]]
            names = [k.split("__", 1)[1] for k in features.keys(patient)]
            assert units == [n for n in names if n in units]  # in key order, no repeat
            rows = [names.index(u) for u in units]
            np.testing.assert_array_equal(
                batch["tile_features"][0].numpy(), features.bag(patient, rows)
            )
    uncapped = passes(shards, standardizer, batch_size=1, max_tiles=None)
    assert all(b["tile_features"].shape[1] == 3 for b in uncapped)


def json_manifest(shards: Path) -> dict:
    from hpc_pgo.data.shards import read_manifest

    return read_manifest(shards)


@pytest.mark.parametrize("world", [1, 2])
def test_test_bags_hold_every_tile_in_key_order_each_patient_once(shards, standardizer, world):
    data = open_fold(shards, 0)
    features = read_tile_features(shards, data.manifest)
    seen = []
    for rank in range(world):
        batches = passes(
            shards, standardizer, "test", batch_size=64, rank=rank, world_size=world, max_tiles=1
        )
        for batch in batches:
            for i, patient in enumerate(batch["patient"]):
                seen.append(patient)
                bag = features.bag(patient)
                n = len(bag)
                assert batch["units"][i] == [k.split("__", 1)[1] for k in features.keys(patient)]
                np.testing.assert_array_equal(batch["tile_features"][i, :n].numpy(), bag)
                assert (
                    batch["tile_features_mask"][i, :n].all()
                    and not batch["tile_features_mask"][i, n:].any()
                )
                record = data.manifest["patients"][patient]
                assert float(batch["time"][i]) == pytest.approx(record["time"])
                assert float(batch["event"][i]) == record["event"]
    assert sorted(seen) == sorted(data.test) and len(seen) == len(set(seen))


def test_the_stream_does_not_depend_on_the_number_of_workers(shards, standardizer):
    zero = passes(shards, standardizer, batch_size=2, epoch=1, max_tiles=2)
    two = passes(shards, standardizer, batch_size=2, epoch=1, max_tiles=2, num_workers=2)
    assert len(zero) == len(two)
    for a, b in zip(zero, two, strict=True):
        assert a["key"] == b["key"] and a["units"] == b["units"]
        for name in ("tile_features", "tile_features_mask", *GROUPS, "time", "event"):
            assert torch.equal(a[name], b[name]), name


def test_omics_are_the_patient_table_z_scored_with_the_folds_standardizer(shards, standardizer):
    data = open_fold(shards, 0)
    vectors = patient_vectors(shards, data.manifest, GROUPS, data.test)
    batches = passes(shards, standardizer, "test", batch_size=64)
    for batch in batches:
        for i, patient in enumerate(batch["patient"]):
            row = vectors.patients.index(patient)
            for group in GROUPS:
                want = standardizer.apply(group, vectors.values[group][row])
                np.testing.assert_array_equal(batch[group][i].numpy(), want)
    raw = passes(shards, None, "test", batch_size=64)
    assert not torch.equal(raw[0]["cnv"], batches[0]["cnv"])


def test_a_patient_absent_from_the_side_car_is_refused_naming_it(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    missing = open_fold(copy, 0).test[0]
    write_tile_features(copy, key_features(6), drop=missing)
    with pytest.raises(PgoError) as caught:
        make_bag_loader(copy, 0, "test", batch_size=4, groups=GROUPS, standardizer=None)
    message = str(caught.value)
    assert f"patient {missing!r} has no tile features" in message
    assert "run `pgo-shards embed-tiles`" in message
    (copy / "tile_features").rename(copy / "gone")
    with pytest.raises(
        PgoError, match=r"missing, but manifest.json records it; re-run `pgo-shards embed-tiles`"
    ):
        make_bag_loader(copy, 0, "test", batch_size=4, groups=GROUPS, standardizer=None)


def test_too_few_patients_and_bad_arguments_are_refused(shards):
    with pytest.raises(
        PgoError, match=r"train split has 13 patient\(s\): too few for 2 rank\(s\) x batch_size 7"
    ):
        make_bag_loader(
            shards, 0, "train", batch_size=7, world_size=2, groups=GROUPS, standardizer=None
        )
    with pytest.raises(PgoError, match=r"max_tiles = 0; valid: an integer >= 1"):
        make_bag_loader(
            shards, 0, "train", batch_size=1, groups=GROUPS, standardizer=None, max_tiles=0
        )
    with pytest.raises(PgoError, match=r"split 'val' serves the validation patients"):
        make_bag_loader(shards, 0, "val", batch_size=1, groups=GROUPS, standardizer=None)


def test_a_masked_set_gives_a_patient_without_images_an_empty_bag(tmp_path):
    from tests.data.conftest import write_pathomic

    cohort = write_pathomic(tmp_path / "pf", n_patients=8, rois=2, without_images=(3,))
    out = tmp_path / "masked"
    args = ["build", "--spec", str(cohort.spec_path), "--out", str(out), "--no-progress"]
    assert pgo_shards([*args, "--missing", "mask", "--workers", "1"]) == 0
    write_tile_features(out, key_features(4))
    data = open_fold(out, 0)
    groups = list(data.groups)
    batches = []
    for split in ("train", "test"):
        batches += list(
            make_bag_loader(
                out,
                0,
                split,
                batch_size=64 if split == "test" else 1,
                groups=groups,
                standardizer=None,
            )
        )
    by_patient = {}
    for batch in batches:
        for i, patient in enumerate(batch["patient"]):
            by_patient[patient] = (
                batch["mask"]["image"][i].item(),
                batch["tile_features_mask"][i].sum().item(),
                batch["units"][i],
            )
    empty = [p for p, (image, _, _) in by_patient.items() if image == 0]
    assert len(empty) == 1  # the patient without images: its placeholder is no tile
    assert by_patient[empty[0]][1:] == (0, [])
    features = read_tile_features(out, data.manifest)
    assert features.units(empty[0]) == 1  # the side-car holds the placeholder's row
    for patient, (image, n, units) in by_patient.items():
        if patient not in empty:
            assert image == 1 and n == features.units(patient) > 0
            assert units == [k.split("__", 1)[1] for k in features.keys(patient)]
