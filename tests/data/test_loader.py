"""The fold loader on real tar shards (webdataset.ShardWriter, PIL PNGs) written by loader_fixtures."""

from __future__ import annotations

import json
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from hpc_pgo.data.epochs import plan_train
from hpc_pgo.data.folds import open_fold, split_keys
from hpc_pgo.data.loader import make_loader
from hpc_pgo.data.shards import patient_of_key
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.data.tarindex import index_shards
from hpc_pgo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_view,
    normalize,
    random_view,
)
from hpc_pgo.errors import PgoError
from tests.data.loader_fixtures import distributed_pass, free_port, write_shard_set

GROUPS = ["cnv", "mut"]
SIZE = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """12 patients with 1, 2, 3, 1, 2, 3 ... ROIs of 40 x 48 px (24 units), 5 samples per shard."""
    return write_shard_set(tmp_path_factory.mktemp("tiny"))


def loader(shards, split, fold=0, **options):
    settings = dict(batch_size=4, groups=GROUPS, image_size=SIZE, standardizer=None)
    return make_loader(shards.root, fold, split, **{**settings, **options})


def keys_of(batches) -> list[str]:
    return [key for batch in batches for key in batch["key"]]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Invert the ImageNet normalisation: float (3, S, S) -> uint8 (S, S, 3)."""
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    return (image * std + mean).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- fold and manifest


def test_open_fold_gives_the_manifest_split(shards):
    data = open_fold(shards.root, 1)
    assert list(data.train) == shards.fold(1)["train"]
    assert list(data.test) == shards.fold(1)["test"]
    assert data.units("test") == len(shards.split_keys(1, "test"))
    assert data.units("train") + data.units("test") == 24


def test_fold_out_of_range_names_the_valid_range(shards):
    with pytest.raises(PgoError, match=r"fold 2 is out of range .* valid folds are 0\.\.1"):
        open_fold(shards.root, 2)


def test_other_schema_version_is_refused(tmp_path):
    written = write_shard_set(tmp_path, n_patients=4)
    manifest = dict(written.manifest, schema_version=2)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PgoError, match="schema_version 2"):
        open_fold(tmp_path, 0)


def test_patient_of_key_allows_double_underscores_in_ids():
    patients = {"A__1": {}, "B": {}}
    assert patient_of_key("A__1__roi0", patients) == "A__1"
    assert patient_of_key("B__roi__x", patients) == "B"
    assert patient_of_key("B", patients) == "B"
    assert patient_of_key("C__roi0", patients) is None


# --------------------------------------------------------------------------- what a batch holds


def test_loaders_yield_only_the_folds_patients(shards):
    for fold in (0, 1):
        train = keys_of(loader(shards, "train", fold, batch_size=2))
        test = keys_of(loader(shards, "test", fold))
        assert {k.split("__")[0] for k in train} <= set(shards.fold(fold)["train"])
        assert sorted(test) == sorted(shards.split_keys(fold, "test"))
        assert not set(train) & set(test)


def test_batch_fields_shapes_and_values(shards):
    data = open_fold(shards.root, 0)
    standardizer = Standardizer.fit(shards.root, data.train, GROUPS)
    batches = list(loader(shards, "test", batch_size=5, standardizer=standardizer))
    batch = batches[0]
    count = len(batch["key"])
    assert set(batch) == {"key", "patient", "image", "cnv", "mut", "time", "event"}
    assert batch["image"].shape == (count, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["cnv"].shape == (count, 5) and batch["mut"].shape == (count, 3)
    assert batch["time"].dtype == batch["event"].dtype == torch.float32
    for i, key in enumerate(batch["key"]):
        patient = key.split("__")[0]
        assert batch["patient"][i] == patient
        record = shards.manifest["patients"][patient]
        assert batch["time"][i].item() == record["time"]
        assert batch["event"][i].item() == record["event"]
        expected = (shards.omics[patient]["cnv"] - standardizer.mean["cnv"]) / standardizer.std[
            "cnv"
        ]
        np.testing.assert_allclose(batch["cnv"][i].numpy(), expected, rtol=1e-5, atol=1e-5)
        # test view: the centre 32 x 32 crop of the 40 x 48 source, exactly
        source = shards.images[key]
        np.testing.assert_array_equal(to_uint8(batch["image"][i]), source[4:36, 8:40])


def test_standardizer_uses_train_patients_only(shards, tmp_path):
    data = open_fold(shards.root, 0)
    standardizer = Standardizer.fit(shards.root, data.train, GROUPS)
    for group in GROUPS:
        train = np.stack([shards.omics[p][group] for p in data.train]).astype(np.float64)
        everyone = np.stack([v[group] for v in shards.omics.values()]).astype(np.float64)
        np.testing.assert_allclose(standardizer.mean[group], train.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(standardizer.std[group], train.std(axis=0), rtol=1e-12)
        assert not np.allclose(standardizer.mean[group], everyone.mean(axis=0))
        assert standardizer.n_patients[group] == len(data.train)  # one vector per patient
    standardizer.save(tmp_path / "standardizer.json")
    again = Standardizer.load(tmp_path / "standardizer.json")
    assert again.patients_sha256 == standardizer.patients_sha256
    for group in GROUPS:
        np.testing.assert_array_equal(again.mean[group], standardizer.mean[group])
        np.testing.assert_array_equal(again.std[group], standardizer.std[group])
    assert [p.name for p in tmp_path.iterdir()] == ["standardizer.json"]


def test_constant_features_get_std_one(shards):
    single = Standardizer.fit(shards.root, ["P01"], ["cnv"])
    np.testing.assert_array_equal(single.std["cnv"], np.ones(5))
    np.testing.assert_allclose(single.mean["cnv"], shards.omics["P01"]["cnv"], rtol=1e-7)


def test_standardizer_of_other_patients_is_refused(shards):
    other = Standardizer.fit(shards.root, open_fold(shards.root, 1).train, GROUPS)
    with pytest.raises(PgoError, match="fitted on other patients than fold 0"):
        loader(shards, "test", standardizer=other)


def test_malformed_standardizer_file_is_named(tmp_path):
    path = tmp_path / "std.json"
    path.write_text('{"kind": "something else"}')
    with pytest.raises(PgoError, match="std.json: not a readable standardizer"):
        Standardizer.load(path)


# --------------------------------------------------------------------------- distribution


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 4), (3, 2), (3, 1), (2, 5)])
def test_every_rank_gets_the_same_number_of_full_train_batches(shards, world_size, batch_size):
    train_keys = set(shards.split_keys(0, "train"))  # 12 units
    per_rank = [
        list(loader(shards, "train", world_size=world_size, rank=r, batch_size=batch_size, epoch=3))
        for r in range(world_size)
    ]
    expected = (len(train_keys) // world_size) // batch_size
    assert [len(b) for b in per_rank] == [expected] * world_size
    assert all(len(batch["key"]) == batch_size for b in per_rank for batch in b)
    seen = [k for b in per_rank for k in keys_of(b)]
    assert len(seen) == len(set(seen)) and set(seen) <= train_keys
    assert len(train_keys) - len(seen) < world_size * batch_size


@pytest.mark.parametrize(
    ("world_size", "batch_size", "num_workers"),
    [(1, 4, 0), (2, 5, 2), (3, 2, 1), (3, 4, 2), (5, 1, 0)],
)
def test_test_pass_visits_every_unit_once(shards, world_size, batch_size, num_workers):
    per_rank = [
        list(
            loader(
                shards,
                "test",
                world_size=world_size,
                rank=r,
                batch_size=batch_size,
                num_workers=num_workers,
            )
        )
        for r in range(world_size)
    ]
    assert len({len(b) for b in per_rank}) == 1  # same number of batches: no rank waits
    seen = Counter(k for b in per_rank for k in keys_of(b))
    assert sorted(seen) == sorted(shards.split_keys(0, "test"))
    assert set(seen.values()) == {1}
    assert all(len(batch["key"]) <= batch_size for b in per_rank for batch in b)


def test_train_reading_is_split_exactly_between_workers(shards):
    """With 2 workers each unit of the plan arrives once, in the plan's order."""
    data = open_fold(shards.root, 0)
    index = index_shards(shards.root, data.manifest)
    plan = plan_train(
        index,
        split_keys(data, index, "train"),
        rank=1,
        world_size=2,
        batch_size=2,
        epoch=4,
        seed=7,
        shuffle_buffer=256,
    )
    got = keys_of(
        loader(shards, "train", rank=1, world_size=2, batch_size=2, epoch=4, seed=7, num_workers=2)
    )
    assert got == plan.keys and len(set(got)) == len(got) == 6


def test_loader_pickles_for_spawned_workers(shards):
    """Workers started by spawn/forkserver (Python 3.14's default) receive the pipeline pickled."""
    ready = loader(shards, "train", batch_size=2, epoch=1)
    again = pickle.loads(pickle.dumps(ready.dataset))
    assert len(again) == len(ready) == 6  # 12 train units, batches of 2
    assert [b["key"] for b in again] == [b["key"] for b in ready]


@pytest.mark.slow
def test_two_processes_see_every_test_unit_once_and_equal_train_batches(shards, tmp_path):
    result = tmp_path / "gathered.json"
    mp.spawn(
        distributed_pass, args=(2, free_port(), str(shards.root), str(result)), nprocs=2, join=True
    )
    gathered = json.loads(result.read_text())
    union = [k for rank_keys in gathered["test_keys"] for k in rank_keys]
    assert all(gathered["test_keys"])
    assert sorted(union) == sorted(shards.split_keys(0, "test")) and len(set(union)) == len(union)
    assert gathered["train_batches"] == [(12 // 2) // 3] * 2


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_epoch_give_the_same_stream_with_any_worker_count(shards):
    first = list(loader(shards, "train", batch_size=3, epoch=2, seed=5, num_workers=0))
    second = list(loader(shards, "train", batch_size=3, epoch=2, seed=5, num_workers=2))
    assert [b["key"] for b in first] == [b["key"] for b in second]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["image"], b["image"])  # the same augmentations
    other_epoch = keys_of(loader(shards, "train", batch_size=3, epoch=3, seed=5))
    other_seed = keys_of(loader(shards, "train", batch_size=3, epoch=2, seed=6))
    assert other_epoch != keys_of(first) and other_seed != keys_of(first)


def test_train_views_are_augmented_crops_of_the_source(shards):
    batches = list(loader(shards, "train", batch_size=3, epoch=1))
    views = [
        (k, to_uint8(img)) for b in batches for k, img in zip(b["key"], b["image"], strict=True)
    ]
    found_transformed = False
    for key, view in views:
        source = shards.images[key]
        matches = [
            (top, left, flip, turns)
            for flip in (False, True)
            for turns in range(4)
            for top in range(source.shape[0] - SIZE + 1)
            for left in range(source.shape[1] - SIZE + 1)
            if np.array_equal(
                np.rot90(np.fliplr(view) if flip else view, -turns, axes=(0, 1)),
                source[top : top + SIZE, left : left + SIZE],
            )
        ]
        assert matches, f"{key}: train view is not a flipped/rotated crop of its source"
        found_transformed |= matches[0][2:] != (False, 0)
    assert found_transformed


def test_normalize_matches_torchvision():
    import torchvision.transforms.v2.functional as F  # after hpc_pgo (see hpc_pgo/compat.py)

    views = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = F.normalize(
        F.to_dtype(views, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD
    )
    torch.testing.assert_close(normalize(views), expected, rtol=1e-6, atol=1e-5)


def test_view_functions_alone():
    image = torch.arange(3 * 6 * 8, dtype=torch.uint8).reshape(3, 6, 8)
    assert torch.equal(center_view(image, 4), image[:, 1:5, 2:6])
    a = random_view(image, 4, np.random.default_rng(1))
    assert torch.equal(a, random_view(image, 4, np.random.default_rng(1)))
    assert a.shape == (3, 4, 4)
    small = center_view(image, 10)  # smaller than asked: resized, shorter side to 10
    assert small.shape == (3, 10, 10)


# --------------------------------------------------------------------------- bad input


def _member(shard: Path, suffix: str) -> tarfile.TarInfo:
    with tarfile.open(shard) as tar:
        return next(m for m in tar.getmembers() if m.name.endswith(suffix))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_shard_is_named(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6)
    shard = tmp_path / "shard-000001.tar"
    member = _member(shard, "cnv.npy")
    _flip(shard, member.offset_data + member.size - 2)  # a float's byte: np.load still works
    with pytest.raises(PgoError, match=r"shard .*shard-000001\.tar: sha256 .* differs"):
        make_loader(
            written.root,
            0,
            "test",
            batch_size=2,
            groups=["cnv"],
            image_size=None,
            standardizer=None,
        )
    with pytest.raises(PgoError, match=r"shard .*shard-000001\.tar: sha256 .* differs"):
        Standardizer.fit(written.root, ["P00"], ["cnv"])


def test_truncated_shard_is_named(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(PgoError, match=r"shard .*shard-000000\.tar: 3000 bytes, the manifest says"):
        make_loader(
            written.root,
            0,
            "test",
            batch_size=2,
            groups=["cnv"],
            image_size=SIZE,
            standardizer=None,
        )


def test_shard_truncated_while_reading_is_named(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6)
    ready = make_loader(
        written.root, 0, "test", batch_size=2, groups=["cnv"], image_size=SIZE, standardizer=None
    )
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])  # after the loader was made
    with pytest.raises(PgoError, match=r"shard .*shard-000001\.tar: member .* ends after"):
        keys_of(ready)


def test_broken_tar_header_is_named(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6)
    shard = tmp_path / "shard-000001.tar"
    _flip(shard, 0)  # the first member's name: the header checksum fails
    with pytest.raises(PgoError, match=r"shard .*shard-000001\.tar: unreadable tar"):
        make_loader(
            written.root,
            0,
            "train",
            batch_size=2,
            groups=["cnv"],
            image_size=SIZE,
            standardizer=None,
            verify=False,
        )


def test_undecodable_image_names_shard_and_key(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6)
    shard = tmp_path / "shard-000000.tar"
    member = _member(shard, ".png")
    _flip(shard, member.offset_data + 20)  # inside the PNG's IHDR chunk: PIL refuses it
    key = member.name.rsplit(".", 1)[0]
    with pytest.raises(PgoError, match=rf"shard-000000\.tar: sample '{key}': cannot decode png"):
        keys_of(
            make_loader(
                written.root,
                0,
                "test",
                batch_size=2,
                groups=[],
                image_size=SIZE,
                standardizer=None,
                verify=False,
            )
        )


def test_missing_field_names_field_and_modality(tmp_path):
    written = write_shard_set(tmp_path, n_patients=6, drop_field="mut.npy")
    with pytest.raises(PgoError, match=r"has no field 'mut\.npy' \(omics group 'mut'\)"):
        keys_of(
            make_loader(
                written.root,
                0,
                "test",
                batch_size=2,
                groups=["mut"],
                image_size=None,
                standardizer=None,
            )
        )
    keys_of(
        make_loader(
            written.root,
            0,
            "test",
            batch_size=2,
            groups=["cnv"],
            image_size=None,
            standardizer=None,
        )
    )  # a caller who does not need mut is fine


def test_fields_the_shard_set_lacks_are_refused_up_front(shards, tmp_path):
    with pytest.raises(PgoError, match="no omics group 'rna' in this shard set; it has: cnv, mut"):
        loader(shards, "train", groups=["rna"])
    omics_only = write_shard_set(tmp_path, n_patients=6, image_size=None)
    with pytest.raises(PgoError, match="has no images"):
        make_loader(
            omics_only.root,
            0,
            "train",
            batch_size=2,
            groups=["cnv"],
            image_size=SIZE,
            standardizer=None,
        )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("split", "valid", "split 'valid' is not one of train, test"),
        ("rank", 2, r"rank = 2; valid: 0\.\.1"),
        ("batch_size", 0, "batch_size = 0; valid: an integer >= 1"),
    ],
)
def test_bad_arguments_name_the_valid_choices(shards, option, value, message):
    options = {"split": "train", "world_size": 2, option: value}
    split = options.pop("split")
    with pytest.raises(PgoError, match=message):
        loader(shards, split, **options)


# --------------------------------------------------------------------------- other cohort kinds


def test_omics_only_cohort(tmp_path):
    written = write_shard_set(tmp_path, n_patients=8, image_size=None)
    batches = list(
        make_loader(
            written.root,
            1,
            "train",
            batch_size=2,
            groups=["cnv"],
            image_size=None,
            standardizer=None,
        )
    )
    assert len(batches) == 2 and "image" not in batches[0]
    assert sorted(keys_of(batches)) == sorted(written.fold(1)["train"])


def test_masked_cohort_zeroes_unavailable_groups(tmp_path):
    written = write_shard_set(tmp_path, n_patients=9, missing="mask", units=(1,))
    data = open_fold(written.root, 0)
    standardizer = Standardizer.fit(written.root, data.train, ["cnv", "mut"])
    available = [p for p in data.train if int(p[1:]) % 3 != 0]
    assert standardizer.n_patients == {"cnv": len(available), "mut": len(data.train)}
    expected = np.stack([written.omics[p]["cnv"] for p in available]).astype(np.float64)
    np.testing.assert_allclose(standardizer.mean["cnv"], expected.mean(axis=0), rtol=1e-12)
    batch = next(
        iter(
            make_loader(
                written.root,
                0,
                "test",
                batch_size=9,
                groups=["cnv", "mut"],
                image_size=SIZE,
                standardizer=standardizer,
            )
        )
    )
    for i, patient in enumerate(batch["patient"]):
        on = float(int(patient[1:]) % 3 != 0)
        assert batch["mask"]["cnv"][i] == on and batch["mask"]["image"][i] == 1.0
        if not on:
            assert torch.count_nonzero(batch["cnv"][i]) == 0


def test_loader_reads_a_cohort_built_by_the_builder(tmp_path):
    """The contract end to end: pgo-shards' builder writes the demo cohort, the loader reads it."""
    from hpc_pgo.data.build import build_cohort
    from hpc_pgo.data.demo import write_demo_cohort

    spec = write_demo_cohort(
        tmp_path / "files",
        n_patients=20,
        rois_per_patient=2,
        image_size=32,
        n_cnv=6,
        n_mut=4,
        n_rna=8,
    )
    root = tmp_path / "shards"
    manifest = build_cohort(spec, root, progress=False, shard_max_count=7)
    assert len(manifest["shards"]) > 1
    data = open_fold(root, 3)
    groups = list(manifest["groups"])
    standardizer = Standardizer.fit(root, data.train, groups)
    options = dict(
        batch_size=4, groups=groups, image_size=24, standardizer=standardizer, world_size=2
    )
    train = [list(make_loader(root, 3, "train", rank=r, epoch=1, **options)) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == (data.units("train") // 2) // 4
    test = [keys_of(make_loader(root, 3, "test", rank=r, num_workers=1, **options)) for r in (0, 1)]
    assert len(set(test[0] + test[1])) == len(test[0]) + len(test[1]) == data.units("test")
    assert {key.split("__")[0] for key in test[0] + test[1]} == set(data.test)
    batch = train[0][0]
    assert batch["image"].shape == (4, 3, 24, 24)
    assert {g: batch[g].shape[1] for g in groups} == {g: len(manifest["groups"][g]) for g in groups}
