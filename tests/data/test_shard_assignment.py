"""Ranks reading their own shards, and the verified record, on shard sets built by the builder.

The set: the demo cohort (40 patients x 3 ROIs of 16 px) built with 7 samples per shard, so its
18 shards hold 1-3 patients each and patients span shards. Fold 0: 96 train, 24 test units.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from hpc_pgo.data import tarindex
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.demo import write_demo_cohort
from hpc_pgo.data.epochs import plan_rank, rank_share, shard_layout, sharded
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.loader import FoldLoader, make_loader
from hpc_pgo.data.shards import VERIFIED, read_manifest, write_manifest
from hpc_pgo.data.standardizer import Standardizer
from hpc_pgo.data.tarindex import TAR_INDEX, index_shards
from hpc_pgo.errors import PgoError
from tests.data.loader_fixtures import without_table

GROUPS = ["cnv", "mut"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The demo cohort in 18 shards (module-wide; tests that change it take a copy)."""
    root = tmp_path_factory.mktemp("assign")
    spec = write_demo_cohort(
        root / "files", n_patients=40, rois_per_patient=3, image_size=16, n_cnv=4, n_mut=3,
        n_rna=5,
    )  # fmt: skip
    build_cohort(spec, root / "shards", workers=1, progress=False, shard_max_count=7)
    return root / "shards"


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A private copy (file times kept, so its verified.json still holds), free to change."""
    return Path(shutil.copytree(built, tmp_path / "shards"))


def make(root: Path, split: str, **options) -> FoldLoader:
    settings = dict(batch_size=4, groups=GROUPS, image_size=None, standardizer=None)
    return make_loader(root, 0, split, **{**settings, **options})


def keys_of(batches) -> list[str]:
    return [key for batch in batches for key in batch["key"]]


def split_keys(root: Path, split: str) -> set[str]:
    """Every unit key of fold 0's split, from the manifest (patients' units) and the tars."""
    data = open_fold(root, 0)
    index = index_shards(root, data.manifest)
    return {k for k, p in index.patient_of.items() if p in set(data.patients(split))}


def without_layout(root: Path, out: Path) -> Path:
    """A copy of the set whose manifest lacks the shards' patients (as built before the field)."""
    shutil.copytree(root, out)
    manifest = read_manifest(out)
    for entry in manifest["shards"]:
        del entry["patients"]
    write_manifest(out, manifest)
    return out


def test_the_manifest_lists_each_shards_patients(built: Path) -> None:
    manifest = read_manifest(built)
    assert len(manifest["shards"]) == 18
    for entry in manifest["shards"]:
        assert sum(n for _, n in entry["patients"]) == entry["samples"]
    spans = Counter(p for e in manifest["shards"] for p, _ in e["patients"])
    assert max(spans.values()) == 2  # some patients continue in the next shard
    for patient, record in manifest["patients"].items():
        assert (
            sum(n for e in manifest["shards"] for p, n in e["patients"] if p == patient)
            == (record["units"])
        )


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 4), (3, 5), (4, 3), (4, 1)])
def test_train_units_are_read_at_most_once_and_evenly(built, world_size, batch_size) -> None:
    train = split_keys(built, "train")
    per_rank = [
        keys_of(make(built, "train", rank=r, world_size=world_size, batch_size=batch_size, epoch=2))
        for r in range(world_size)
    ]
    n = (len(train) // world_size) // batch_size  # as when every rank indexes every shard
    assert [len(keys) for keys in per_rank] == [n * batch_size] * world_size
    seen = [k for keys in per_rank for k in keys]
    assert len(seen) == len(set(seen)) and set(seen) <= train
    other = [keys_of(make(built, "train", rank=0, world_size=world_size, epoch=3))]
    assert other[0] != per_rank[0][: len(other[0])]  # another epoch, other shards and units


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_test_units_are_read_exactly_once(built, world_size) -> None:
    test = split_keys(built, "test")
    for batch_size in (1, 4, 7):
        per_rank = [
            list(make(built, "test", rank=r, world_size=world_size, batch_size=batch_size))
            for r in range(world_size)
        ]
        assert len({len(batches) for batches in per_rank}) == 1  # no rank waits for another
        seen = Counter(k for batches in per_rank for k in keys_of(batches))
        assert set(seen) == test and set(seen.values()) == {1}
        assert all(len(b["key"]) <= batch_size for batches in per_rank for b in batches)
    data = open_fold(built, 0)
    assert sharded(shard_layout(data, "test"), world_size) == (world_size > 1)


def test_a_rank_indexes_only_the_shards_that_hold_its_units(built) -> None:
    data = open_fold(built, 0)
    everything = {entry["name"] for entry in data.manifest["shards"]}
    for split, world_size in (("train", 3), ("test", 4), ("train", 4)):
        union = set()
        for rank in range(world_size):
            TAR_INDEX.clear()
            plan, index = plan_rank(
                data, split, rank=rank, world_size=world_size, batch_size=2, epoch=1
            )
            opened = {Path(path).name for path in TAR_INDEX.entries}
            slices, _ = rank_share(
                shard_layout(data, split), split, rank=rank, world_size=world_size,
                batch_size=2, epoch=1, seed=0,
            )  # fmt: skip
            assert opened == {piece.name for piece in slices} == set(plan.shard_order)
            assert len(opened) < len(everything)
            assert {index.shard_of[k] for k in plan.keys} <= opened
            assert set(index.members) == set(plan.keys)  # the rank keeps its own units only
            union |= opened
        if split == "test":  # together the ranks read every shard holding a test unit
            layout = shard_layout(data, "test")
            assert union == {name for name, units in layout if units}


def test_same_stream_with_any_number_of_workers(built) -> None:
    options = dict(rank=1, world_size=3, batch_size=3, epoch=2, seed=5, image_size=16)
    streams = [list(make(built, "train", num_workers=w, **options)) for w in (0, 1, 2)]
    for other in streams[1:]:
        assert [b["key"] for b in other] == [b["key"] for b in streams[0]]
        for a, b in zip(streams[0], other, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["cnv"], b["cnv"])
    test = [keys_of(make(built, "test", rank=2, world_size=3, num_workers=w)) for w in (0, 2)]
    assert test[0] == test[1]


def test_an_epochs_plan_depends_on_its_inputs_only(built) -> None:
    """Resuming at epoch 3 in a fresh process (cold caches) gives the stream the run had."""
    data = open_fold(built, 0)
    options = dict(rank=2, world_size=4, batch_size=2, seed=9, shuffle_buffer=5)
    ran = [plan_rank(data, "train", epoch=e, **options)[0] for e in range(4)]
    TAR_INDEX.clear()
    tarindex._sha256.cache_clear()
    resumed = plan_rank(open_fold(built, 0), "train", epoch=3, **options)[0]
    assert resumed == ran[3] and ran[3] != ran[2]
    assert keys_of(make(built, "train", epoch=3, **options)) == resumed.keys


def test_one_rank_and_small_sets_keep_todays_plan(built, tmp_path) -> None:
    """W = 1 (and W > the shards holding the split) plan as every rank indexing every shard
    does: the same plan as on the same set without the field, which takes that path."""
    old = without_layout(built, tmp_path / "old")
    for split in ("train", "test"):
        for epoch in (0, 1):
            options = dict(rank=0, world_size=1, batch_size=4, epoch=epoch, seed=3)
            new_plan, _ = plan_rank(open_fold(built, 0), split, **options)
            old_plan, _ = plan_rank(open_fold(old, 0), split, **options)
            assert new_plan == old_plan and len(new_plan.shard_order) == 18
    data = open_fold(built, 0)
    assert not sharded(shard_layout(data, "train"), 19)  # 18 shards: too few for 19 ranks
    assert not sharded(shard_layout(open_fold(old, 0), "train"), 2)
    for world_size in (2, 4):  # sets without the field index every shard, as before
        seen = [
            keys_of(make(old, "test", rank=r, world_size=world_size)) for r in range(world_size)
        ]
        flat = [k for keys in seen for k in keys]
        assert len(flat) == len(set(flat)) == len(split_keys(built, "test"))


def test_the_standardizer_indexes_no_shard_and_equals_the_first_unit_reads(built, tmp_path) -> None:
    data = open_fold(built, 0)
    TAR_INDEX.clear()
    reads = TAR_INDEX.reads
    fitted = Standardizer.fit(built, data.train, GROUPS)
    assert TAR_INDEX.reads == reads and not TAR_INDEX.entries  # the patient table only

    # a set built before the table: each train patient's first unit, read from the shards where
    # a train patient starts
    old = without_table(built, tmp_path / "old")
    TAR_INDEX.clear()
    first_units = Standardizer.fit(old, data.train, GROUPS)
    starts = {
        next(e["name"] for e in data.manifest["shards"] if p in {q for q, _ in e["patients"]})
        for p in data.train
    }
    assert {Path(p).name for p in TAR_INDEX.entries} == starts
    oldest = Standardizer.fit(without_layout(old, tmp_path / "oldest"), data.train, GROUPS)
    for other in (first_units, oldest):
        for group in GROUPS:
            assert (fitted.mean[group] == other.mean[group]).all()
            assert (fitted.std[group] == other.std[group]).all()


# --------------------------------------------------------------------------- verified record


def hashes() -> int:
    """Shards hashed by the loader in this process so far (its digest cache's misses)."""
    return tarindex._sha256.cache_info().misses


def test_a_verified_set_is_not_hashed(built, caplog) -> None:
    record = json.loads((built / VERIFIED).read_text())
    manifest = read_manifest(built)
    assert record["manifest_sha256"] == manifest["manifest_sha256"]
    assert [(e["name"], e["bytes"], e["sha256"]) for e in record["shards"]] == [
        (e["name"], e["bytes"], e["sha256"]) for e in manifest["shards"]
    ]
    for entry in record["shards"]:
        assert entry["mtime_ns"] == (built / entry["name"]).stat().st_mtime_ns
    tarindex._sha256.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hpc_pgo.data.tarindex"):
        for rank in range(3):
            keys_of(make(built, "train", rank=rank, world_size=3))
        keys_of(make(built, "test"))
    assert hashes() == 0 and not caplog.records


def test_an_unverified_set_warns_once_and_hashes_what_the_rank_reads(copy, caplog) -> None:
    (copy / VERIFIED).unlink()
    tarindex._sha256.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hpc_pgo.data.tarindex"):
        TAR_INDEX.clear()
        first = make(copy, "train", rank=1, world_size=4)
        assert hashes() == len(TAR_INDEX.entries) == len(first.plan.shard_order) < 18
        make(copy, "train", rank=1, world_size=4, epoch=1)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert str(copy) in warnings[0] and f"no {VERIFIED}" in warnings[0]
    assert f"pgo-shards verify {copy}" in warnings[0]


def _flip_inside(path: Path) -> None:
    """Flip the last byte of a cnv.npy member's data: a float changes, the tar still reads and
    the vector still loads (same size, new mtime); only the sha256 tells."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("cnv.npy"))
    data = bytearray(path.read_bytes())
    data[member.offset_data + member.size - 1] ^= 0xFF
    path.write_bytes(bytes(data))


def _reader_of(root: Path, name: str, world_size: int) -> tuple[int, int]:
    """(a rank that reads shard `name` in the test pass, a rank that does not)."""
    data = open_fold(root, 0)
    readers = [
        name in {p.name for p in rank_share(
            shard_layout(data, "test"), "test", rank=r, world_size=world_size, batch_size=4,
            epoch=0, seed=0,
        )[0]}
        for r in range(world_size)
    ]  # fmt: skip
    return readers.index(True), readers.index(False)


@pytest.mark.parametrize("record", ["kept", "removed"])
def test_a_tampered_shard_is_refused_by_the_rank_that_reads_it(copy, record, caplog) -> None:
    if record == "removed":
        (copy / VERIFIED).unlink()
    data = open_fold(copy, 0)
    name = next(n for n, units in shard_layout(data, "test") if units)
    reader, other = _reader_of(copy, name, 3)
    _flip_inside(copy / name)
    with pytest.raises(PgoError, match=rf"shard .*{name}: sha256 .* differs .*tampered"):
        make(copy, "test", rank=reader, world_size=3)
    assert keys_of(make(copy, "test", rank=other, world_size=3))  # it never reads that shard
    with pytest.raises(PgoError, match=rf"shard .*{name}: sha256 .* differs"):
        make(copy, "test")  # one rank reads every shard


def test_a_shard_touched_since_verification_is_hashed_and_then_trusted(copy) -> None:
    data = open_fold(copy, 0)
    name = next(n for n, units in shard_layout(data, "test") if units)
    stat = (copy / name).stat()
    os.utime(copy / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # e.g. a cp without -p
    tarindex._sha256.cache_clear()
    TAR_INDEX.clear()
    keys_of(make(copy, "test"))
    assert hashes() == 1  # that shard only: its content is still the verified one


def test_a_tamper_that_keeps_size_and_mtime_needs_verify(copy, capsys) -> None:
    """The documented trade-off: the record keys on size and mtime; `pgo-shards verify` hashes."""
    from hpc_pgo.data.cli import main

    data = open_fold(copy, 0)
    name = next(n for n, units in shard_layout(data, "test") if units)
    stat = (copy / name).stat()
    _flip_inside(copy / name)
    os.utime(copy / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    make(copy, "test")  # trusted: not hashed
    assert main(["verify", str(copy)]) == 1
    assert f"shard {name}: sha256 differs from the manifest" in capsys.readouterr().err


def test_a_wrong_patients_entry_is_refused(copy) -> None:
    manifest = read_manifest(copy)
    entry = next(e for e in manifest["shards"] if len(e["patients"]) > 1)
    first, second = entry["patients"][:2]
    entry["patients"][:2] = [[first[0], first[1] - 1], [second[0], second[1] + 1]]
    write_manifest(copy, manifest)  # sealed: only the shards can tell
    with pytest.raises(PgoError, match=rf"shard .*{entry['name']}: patients entry 0: the shard"):
        index_shards(copy, manifest)


def test_rank_startup_measures_a_cold_rank(built) -> None:
    from hpc_pgo.data.startup import rank_startup

    result = rank_startup(built, 0, 1, 3, batch_size=4)
    data = open_fold(built, 0)
    slices, batches = rank_share(
        shard_layout(data, "train"), "train", rank=1, world_size=3, batch_size=4, epoch=0, seed=0
    )
    assert result["shards_indexed"] == len({piece.name for piece in slices}) < 18
    assert result["shards_hashed"] == 0 and result["batches"] == batches
    assert result["units"] == batches * 4 and result["python_peak_mb"] > 0
