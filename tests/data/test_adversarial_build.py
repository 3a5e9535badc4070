"""Adversarial inputs of `pgo-shards build` / `verify` / the fold loader (issue 10), one class a
section, each a real case of it: real tar shards, real PNGs, real file systems (a tmpfs mounted
read-only, a tmpfs too small for the build), real split files.

- bad split numbering: columns numbered from 0 keep every split (fold i = the i-th column, the
  mapping recorded); a gap, a repeated number or another start is one error line;
- wrong file-system state: read-only output, a disk that fills up: one error line, exit 2,
  nothing half-written, an existing shard set unchanged (build, demo, seal, cells);
- tampered metadata: a hand-edited manifest (counts, a patient moved between train and test,
  the digest itself, an old manifest without one) fails verify naming what changed, and the
  fold loader refuses it;
- stray files in the image folder: each listed in the manifest's `dropped` with its reason; an
  image file that does not decode stays an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.folds import open_fold
from hpc_pgo.data.shards import (
    DIGEST_KEY,
    MANIFEST,
    VERIFIED,
    manifest_digest,
    read_manifest,
    read_verified,
    verify,
    write_manifest,
)
from hpc_pgo.errors import PgoError

from .conftest import leftovers, porpoise_flags, porpoise_table, tree_bytes, write_pathomic

SPLIT_COLUMN = "Randomization - {k}"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fails(argv: list[str], capsys, out: Path | None = None) -> str:
    """Exit 2 with exactly one `error:` line (no traceback); nothing left at `out`."""
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if out is not None:
        assert leftovers(out.parent, out.name) == []
    return lines[0]


def _build_args(spec: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        "--spec",
        str(spec),
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "1",
        *extra,
    ]


# --------------------------------------------------------------------------- split numbering


def _renumber(cohort, shift: int) -> Path:
    """Rewrite the cohort's split file with its columns numbered k + shift (k = 1..15)."""
    path = cohort.root / "pnas_splits.csv"
    cohort.splits.rename(
        columns={SPLIT_COLUMN.format(k=k): SPLIT_COLUMN.format(k=k + shift) for k in range(1, 16)}
    ).to_csv(path, index=False)
    return path


def test_split_columns_numbered_from_0_keep_every_split(tmp_path: Path, capsys) -> None:
    """Issue 10 #3: a file numbered 0..14 made 14 splits, dropping one and shifting the rest."""
    cohort = write_pathomic(tmp_path / "pf", n_patients=8, rois=1)
    reference = build_cohort(cohort.spec_path, tmp_path / "from1", workers=1, progress=False)
    _renumber(cohort, -1)
    code, out, err = _run(_build_args(cohort.spec_path, tmp_path / "from0"), capsys)
    assert code == 0, err
    assert "15 splits (folds 0..14 = columns 'Randomization - 0'..'Randomization - 14')" in out
    manifest = read_manifest(tmp_path / "from0")
    splits = manifest["splits"]
    assert splits["columns"] == [SPLIT_COLUMN.format(k=k) for k in range(15)]
    assert reference["splits"]["columns"] == [SPLIT_COLUMN.format(k=k) for k in range(1, 16)]
    assert splits["folds"] == reference["splits"]["folds"]  # the same 15 splits, in order
    table = cohort.splits.set_index("TCGA ID")
    for i, fold in enumerate(splits["folds"]):  # fold i is the file's i-th column
        column = table[SPLIT_COLUMN.format(k=i + 1)]  # as written before renumbering
        assert fold["test"] == sorted(p for p in manifest["patients"] if column[p] == "Test")
    assert verify(tmp_path / "from0").ok


def _gap(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[SPLIT_COLUMN.format(k=7)])


def _zero_padded_twin(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(**{"Randomization - 01": table[SPLIT_COLUMN.format(k=1)]})


def _same_name_twice(table: pd.DataFrame) -> pd.DataFrame:
    twin = table[[SPLIT_COLUMN.format(k=3)]]
    return pd.concat([table, twin], axis=1)  # to_csv writes the header twice


def _from_2(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(
        columns={SPLIT_COLUMN.format(k=k): SPLIT_COLUMN.format(k=k + 1) for k in range(1, 16)}
    )


BAD_NUMBERING = {
    "a gap": (_gap, "are numbered 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15 (missing 7)"),
    "a zero-padded twin": (
        _zero_padded_twin,
        "split number 1 is given by 2 columns ('Randomization - 01', 'Randomization - 1')",
    ),
    "a repeated column": (
        _same_name_twice,
        "split number 3 is given by 2 columns ('Randomization - 3', 'Randomization - 3')",
    ),
    "numbered from 2": (_from_2, "are numbered 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16"),
}


@pytest.mark.parametrize("case", sorted(BAD_NUMBERING))
def test_bad_split_numbering_is_one_error_line(tmp_path: Path, capsys, case: str) -> None:
    change, message = BAD_NUMBERING[case]
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1)
    path = cohort.root / "pnas_splits.csv"
    change(cohort.splits).to_csv(path, index=False)
    out = tmp_path / "out"
    line = _fails(_build_args(cohort.spec_path, out), capsys, out)
    assert line.startswith(f"error: split table {path}: ")
    assert message in line
    assert (
        "valid: 'Randomization - {k}' numbered 1..n" in line or "numbered 1..n (or 0..n-1)" in line
    )


def test_a_test_split_without_a_death_is_a_warning_naming_the_split(
    tmp_path: Path, capsys, caplog
) -> None:
    """Issue 21: a split whose test patients hold no death (its fold's C-index is undefined)
    was written silently. The build still succeeds, with one warning per such split."""
    table = porpoise_table().assign(censorship=1)  # PORPOISE: censorship 1 = alive
    table.loc[table["case_id"] == table["case_id"].iloc[0], "censorship"] = 0  # one death
    table.to_csv(tmp_path / "kirc.csv", index=True)
    out = tmp_path / "kfold3"
    args = ["build", *porpoise_flags(tmp_path / "kirc.csv"), "--splits", "kfold:3"]
    with caplog.at_level(logging.WARNING, logger="hpc_pgo.data.build"):
        code, _, err = _run([*args, "--out", str(out), "--workers", "1"], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    dry = [k for k, fold in enumerate(manifest["splits"]["folds"])
           if not any(manifest["patients"][p]["event"] for p in fold["test"])]  # fmt: skip
    assert len(dry) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"cohort kfold3: split {k} (fold {k}) has no death among its 4 test patients: its "
        f"C-index is undefined, and launch/submit.py refuses folds={k} on this shard set"
        for k in dry
    ]


# --------------------------------------------------------------------------- file-system state


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """mount(dir, size, read_only) -> dir: a real tmpfs there (unmounted at teardown).

    Root ignores file modes, so a chmod 0o555 folder is no read-only output for a root test
    run; a read-only mount is. Skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "1m", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (read-only, or small enough to fill) needs root")
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        run = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            pytest.skip(f"mount -t tmpfs failed here: {run.stderr.strip() or run.returncode}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def _empty_and_free(mount: Path) -> None:
    """Nothing left on the tmpfs: no entry, every block free again."""
    assert sorted(p.name for p in mount.iterdir()) == []
    stat = os.statvfs(mount)
    assert stat.f_bfree == stat.f_blocks


@pytest.fixture
def big_cohort(tmp_path: Path):
    """8 patients x 2 ROIs of 128 px noise, 9 tiles each: about 1.8 MB of shards."""
    return write_pathomic(tmp_path / "big", n_patients=8, rois=2, size=128)


def test_build_on_a_read_only_file_system(tmp_path: Path, tmpfs, capsys, big_cohort) -> None:
    mount = tmpfs(tmp_path / "ro", read_only=True)
    out = mount / "new" / "pf"
    line = _fails(_build_args(big_cohort.spec_path, out), capsys, out)
    assert line == (
        f"error: {mount / 'new'}: Read-only file system [EROFS] while building {out}; nothing "
        "was left there; the file system is mounted read-only; give another --out"
    )
    _empty_and_free(mount)


def test_force_build_on_a_read_only_file_system_keeps_the_old_set(
    tmp_path: Path, tmpfs, capsys, porpoise
) -> None:
    mount = tmpfs(tmp_path / "ro")
    out = mount / "kirc"
    args = ["build", *porpoise.flags, "--out", str(out), "--workers", "1"]
    assert _run(args, capsys)[0] == 0
    before = tree_bytes(out)
    _remount_read_only(mount)
    line = _fails([*args, "--force", "--splits", "kfold:3"], capsys)
    assert line.startswith(f"error: {mount}/.kirc.tmp-")
    assert line.endswith(
        f": Read-only file system [EROFS] while building {out}; the shard set there is "
        "unchanged; the file system is mounted read-only; give another --out"
    )
    assert tree_bytes(out) == before and verify(out).ok
    assert sorted(p.name for p in mount.iterdir()) == ["kirc"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_build_that_fills_the_disk(tmp_path: Path, tmpfs, capsys, big_cohort, workers) -> None:
    """Issue 10 #6: a 59-line traceback and exit 1 on ENOSPC; now one line, exit 2, and the
    tmpfs as empty as before."""
    mount = tmpfs(tmp_path / "full", size="512k")
    out = mount / "pf"
    line = _fails(_build_args(big_cohort.spec_path, out, "--workers", workers), capsys, out)
    assert line == (
        f"error: {out}: No space left on device [ENOSPC] while building {out}; nothing was "
        "left there; free some space or give another --out"
    )
    _empty_and_free(mount)


def test_a_full_disk_keeps_the_old_set(tmp_path: Path, tmpfs, capsys, porpoise, big_cohort):
    mount = tmpfs(tmp_path / "full", size="512k")
    out = mount / "set"
    assert _run(["build", *porpoise.flags, "--out", str(out), "--workers", "1"], capsys)[0] == 0
    before = tree_bytes(out)
    line = _fails(_build_args(big_cohort.spec_path, out, "--force"), capsys)
    assert "No space left on device [ENOSPC]" in line and "the shard set there is unchanged" in line
    assert tree_bytes(out) == before and verify(out).ok
    assert sorted(p.name for p in mount.iterdir()) == ["set"]


def test_demo_on_a_read_only_file_system(tmp_path: Path, tmpfs, capsys) -> None:
    mount = tmpfs(tmp_path / "ro", read_only=True)
    out = mount / "demo"
    line = _fails(["demo", "--out", str(out), "--patients", "12", "--no-progress"], capsys, out)
    assert line == f"error: {mount / '.demo.demo-cohort'}: Read-only file system [EROFS]"
    assert list(mount.iterdir()) == []


def test_seal_on_a_read_only_file_system(tmp_path: Path, tmpfs, capsys, porpoise) -> None:
    mount = tmpfs(tmp_path / "ro")
    out = mount / "kirc"
    assert _run(["build", *porpoise.flags, "--out", str(out), "--workers", "1"], capsys)[0] == 0
    manifest = read_manifest(out)
    del manifest[DIGEST_KEY]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))  # an old one
    before = tree_bytes(out)
    _remount_read_only(mount)
    line = _fails(["seal", str(out)], capsys)
    assert line.startswith(f"error: {out}/.manifest.json.") and "[EROFS]" in line
    assert tree_bytes(out) == before


def test_cells_on_a_read_only_file_system(tmp_path: Path, tmpfs) -> None:
    """`pgo-shards cells` shares the build's staged output: the same one line."""
    import anndata as ad
    import scipy.sparse as sp

    from hpc_pgo.data.cells import LabelMap, write_cells

    adata = ad.AnnData(
        X=sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 1], [4, 1, 0]], dtype=np.float32)),
        obs=pd.DataFrame({"type": ["B cell", "T cell", "B cell"]}, index=["c0", "c1", "c2"]),
        var=pd.DataFrame(index=["CD19", "CD3E", "MS4A1"]),
    )
    adata.write_h5ad(tmp_path / "cells.h5ad")
    mount = tmpfs(tmp_path / "ro", read_only=True)
    out = mount / "cells"
    with pytest.raises(PgoError) as caught:
        write_cells(
            tmp_path / "cells.h5ad", out, vocab={"CD19": 0, "CD3E": 1, "MS4A1": 2},
            vocab_digest="test", label_col="type", progress=False,
            label_map=LabelMap(("B", "T"), {"B cell": "B", "T cell": "T"}),
        )  # fmt: skip
    assert str(caught.value).startswith(f"{mount}/.cells.tmp-")
    assert "Read-only file system [EROFS] while building" in str(caught.value)
    assert list(mount.iterdir()) == []


def test_the_output_hint_is_only_for_the_outputs_paths(tmp_path: Path) -> None:
    """An input the build cannot read (EACCES on a ROI) is named without 'give another --out'."""
    import errno

    from hpc_pgo.data.staging import output_error

    out = tmp_path / "shards" / "pf"
    roi = tmp_path / "rois" / "a.png"
    stage = tmp_path / "shards" / ".pf.tmp-host-1" / "shard-000000.tar"
    denied = output_error(OSError(errno.EACCES, "Permission denied", str(roi)), out, False)
    assert str(denied) == (
        f"{roi}: Permission denied [EACCES] while building {out}; nothing was left there"
    )
    denied = output_error(OSError(errno.EACCES, "Permission denied", str(stage)), out, True)
    assert str(denied).endswith("the shard set there is unchanged; give a writable --out")


# --------------------------------------------------------------------------- tampered metadata


@pytest.fixture(scope="module")
def built_sets(tmp_path_factory) -> dict[str, Path]:
    """Two real shard sets, never modified: 'file' (Pathomic Fusion layout, splits from
    pnas_splits.csv) and 'random' (PORPOISE layout, random:15)."""
    root = tmp_path_factory.mktemp("tamper")
    cohort = write_pathomic(root / "pf", n_patients=8, rois=1)
    build_cohort(cohort.spec_path, root / "file", workers=1, progress=False, shard_max_count=4)
    table = porpoise_table(n_patients=10, n_double=0)
    table.to_csv(root / "kirc.csv", index=False)
    assert main(["build", *porpoise_flags(root / "kirc.csv"), "--out", str(root / "random")]) == 0
    return {"file": root / "file", "random": root / "random"}


def _copy(built_sets, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_sets[kind], tmp_path / kind))


def _edit(directory: Path, change: Callable[[dict], None], reseal: bool = False) -> dict:
    """Edit manifest.json as a person would (load, change, dump; the digest left as it was),
    or, with reseal, through write_manifest (a fresh digest)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    change(manifest)
    if reseal:
        write_manifest(directory, manifest)
    else:
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _move_to_train(fold: int) -> Callable[[dict], str]:
    moved = {}

    def change(manifest: dict) -> None:
        split = manifest["splits"]["folds"][fold]
        moved["patient"] = patient = split["test"][0]
        split["test"].remove(patient)
        split["train"] = sorted([*split["train"], patient])

    change.moved = moved  # type: ignore[attr-defined]
    return change


def _verify_fails(directory: Path, capsys) -> list[str]:
    code, out, err = _run(["verify", str(directory)], capsys)
    assert code == 1 and "FAILED" in out, (out, err)
    return [line.removeprefix("error: ") for line in err.strip().splitlines()]


STALE = f"{MANIFEST}: its content differs from its {DIGEST_KEY} (edited after it was written)"


@pytest.mark.parametrize("kind", ["file", "random"])
def test_a_test_patient_moved_into_train(built_sets, tmp_path, capsys, kind) -> None:
    """Issue 10 #7: verify said OK and the fold trained on a test patient."""
    shards = _copy(built_sets, kind, tmp_path)
    change = _move_to_train(3)
    _edit(shards, change)
    patient = change.moved["patient"]
    problems = _verify_fails(shards, capsys)
    assert problems[0].startswith(STALE)
    if kind == "file":
        path = read_manifest(shards, check_digest=False)["spec"]["splits"]["file"]["path"]
        source = f"the split file {path} (column 'Randomization - 4')"
    else:
        source = "the recipe (random: n=15, test_fraction=0.2, seed=0)"
    assert problems[1:] == [
        f"{MANIFEST} splits fold 3: patient {patient!r} is in train, {source} puts it in test "
        "(1 such)"
    ]
    with pytest.raises(
        PgoError, match=rf"manifest\.json: its content differs from its {DIGEST_KEY}"
    ):
        open_fold(shards, 3)


def test_a_resealed_edit_is_still_caught_by_recomputing(built_sets, tmp_path, capsys) -> None:
    """Whoever re-digests an edited manifest still meets the splits its recipe gives."""
    shards = _copy(built_sets, "file", tmp_path)
    change = _move_to_train(0)
    _edit(shards, change, reseal=True)
    problems = _verify_fails(shards, capsys)
    assert problems == [
        f"{MANIFEST} splits fold 0: patient {change.moved['patient']!r} is in train, the split "
        f"file {read_manifest(shards)['spec']['splits']['file']['path']} (column "
        "'Randomization - 1') puts it in test (1 such)"
    ]


COUNT_EDITS = {
    "units": (
        lambda m: m["counts"].update(units=m["counts"]["units"] + 5),
        "{M} counts.units: {new}, the shards hold {old}",
    ),
    "patients": (
        lambda m: m["counts"].update(patients=m["counts"]["patients"] - 1),
        "{M} counts.patients: {new}, the shards hold {old}",
    ),
    "events": (
        lambda m: m["counts"].update(events=m["counts"]["events"] + 1),
        "{M} counts.events: {new}, its patients give {old}",
    ),
}


@pytest.mark.parametrize("key", sorted(COUNT_EDITS))
@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "resealed"])
def test_edited_counts_are_named(built_sets, tmp_path, capsys, key, reseal) -> None:
    shards = _copy(built_sets, "file", tmp_path)
    old = read_manifest(shards)["counts"][key]
    change, message = COUNT_EDITS[key]
    new = _edit(shards, change, reseal=reseal)["counts"][key]
    problems = _verify_fails(shards, capsys)
    expected = [message.format(M=MANIFEST, new=new, old=old)]
    assert problems == (expected if reseal else [problems[0], *expected])
    if not reseal:
        assert problems[0].startswith(STALE)
        with pytest.raises(PgoError, match="edited after it was written"):
            open_fold(shards, 0)


def test_an_edited_patient_record_is_named(built_sets, tmp_path, capsys) -> None:
    shards = _copy(built_sets, "random", tmp_path)
    first = sorted(read_manifest(shards)["patients"])[0]
    _edit(shards, lambda m: m["patients"][first].update(units=2))
    problems = _verify_fails(shards, capsys)
    assert problems[0].startswith(STALE)
    assert problems[1:] == [f"patient {first}: 1 samples, manifest says 2"]


def test_a_changed_digest_alone_is_named(built_sets, tmp_path, capsys) -> None:
    shards = _copy(built_sets, "random", tmp_path)
    _edit(shards, lambda m: m.update({DIGEST_KEY: "0" * 64}))
    assert [p.split(" (")[0] for p in _verify_fails(shards, capsys)] == [STALE.split(" (")[0]]


def test_a_manifest_missing_a_key_is_named_not_a_traceback(built_sets, tmp_path, capsys):
    shards = _copy(built_sets, "random", tmp_path)
    _edit(shards, lambda m: m.pop("patients"))
    problems = _verify_fails(shards, capsys)
    assert problems[0].startswith(STALE)
    assert problems[1:] == [f"{MANIFEST}: key(s) patients missing or not dict"]


def test_an_old_manifest_without_digest_is_refused_until_sealed(built_sets, tmp_path, capsys):
    shards = _copy(built_sets, "file", tmp_path)
    _edit(shards, lambda m: m.pop(DIGEST_KEY))
    (problem,) = _verify_fails(shards, capsys)
    assert problem == (
        f"{MANIFEST}: no {DIGEST_KEY} (written before hpc_pgo sealed its manifests, or by hand); "
        f"rebuild the shard set, or check and seal it: pgo-shards seal {shards}"
    )
    with pytest.raises(PgoError, match=f"no {DIGEST_KEY} .* pgo-shards seal {shards}"):
        open_fold(shards, 0)
    (shards / VERIFIED).unlink()  # a set from before digests has no record of a verification
    code, out, err = _run(["seal", str(shards)], capsys)
    assert (code, err) == (0, "") and out.startswith(f"sealed {shards / MANIFEST}: ")
    manifest = read_manifest(shards)
    assert manifest[DIGEST_KEY] == manifest_digest(manifest)
    # seal verified every shard: it records that, so loaders do not hash them again
    record, why = read_verified(shards)
    assert why is None and sorted(record) == sorted(s["name"] for s in manifest["shards"])
    assert verify(shards).ok and open_fold(shards, 0).fold == 0
    sealed = tree_bytes(shards)
    code, out, _ = _run(["seal", str(shards)], capsys)
    assert code == 0 and "already sealed; nothing to do" in out and tree_bytes(shards) == sealed


def test_seal_refuses_an_unsound_or_edited_manifest(built_sets, tmp_path, capsys) -> None:
    shards = _copy(built_sets, "file", tmp_path)
    change = _move_to_train(2)
    _edit(shards, lambda m: (m.pop(DIGEST_KEY), change(m)))
    before = tree_bytes(shards)
    code, out, err = _run(["seal", str(shards)], capsys)
    assert code == 1 and "refused, verify finds 1 problems" in out
    assert f"splits fold 2: patient {change.moved['patient']!r} is in train" in err
    assert tree_bytes(shards) == before
    shards = _copy(built_sets, "random", tmp_path)
    _edit(shards, lambda m: m["counts"].update(events=0))
    line = _fails(["seal", str(shards)], capsys)
    assert "its content differs from its manifest_sha256" in line and "rebuild" in line


def test_splits_without_their_file_are_checked_by_the_digest(tmp_path: Path, capsys) -> None:
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1)
    out = tmp_path / "shards"
    build_cohort(cohort.spec_path, out, workers=1, progress=False)
    (cohort.root / "pnas_splits.csv").unlink()
    code, stdout, err = _run(["verify", str(out)], capsys)
    assert (code, err) == (0, "")
    assert stdout.startswith(
        f"note: splits: not recomputed (the split file {cohort.root / 'pnas_splits.csv'} is not "
        "there any more); checked by the manifest digest\n"
    )
    _edit(out, _move_to_train(1))
    assert _verify_fails(out, capsys)[0].startswith(STALE)


# --------------------------------------------------------------------------- stray files


def test_stray_files_in_the_roi_folder_are_listed_in_dropped(tmp_path: Path, capsys) -> None:
    """Issue 10 #9: notes.txt, .DS_Store, a macOS '._' copy of a PNG (not an image) and a
    sub-folder were skipped without a trace."""
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1)
    rois = cohort.root / "rois"
    first = sorted(rois.iterdir())[0]
    (rois / "notes.txt").write_text("scanned on the old scanner")
    (rois / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (rois / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble
    (rois / "thumbs").mkdir()
    (rois / "thumbs" / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "out"
    code, stdout, err = _run(_build_args(cohort.spec_path, out), capsys)
    assert code == 0, err
    assert "4 dropped" in stdout
    manifest = read_manifest(out)
    suffixes = ".png, .jpg, .jpeg, .tif, .tiff, .bmp"
    assert manifest["dropped"] == [
        {
            "patient": None,
            "unit": ".DS_Store",
            "reason": f"not an image file: {rois / '.DS_Store'}: a hidden file (name starts "
            "with '.')",
        },
        {
            "patient": None,
            "unit": f"._{first.name}",
            "reason": f"not an image file: {rois / ('._' + first.name)}: a hidden file (name "
            "starts with '.')",
        },
        {
            "patient": None,
            "unit": "notes.txt",
            "reason": f"not an image file: {rois / 'notes.txt'}: suffix '.txt' is not an image "
            f"suffix of a rois cohort ({suffixes})",
        },
        {
            "patient": None,
            "unit": "thumbs",
            "reason": f"not an image file: {rois / 'thumbs'}: a folder (images.dir is not "
            "searched recursively)",
        },
    ]
    assert manifest["counts"]["patients"] == 6 and verify(out).ok
    assert main(["info", str(out)]) == 0
    assert "dropped: 4 (4 x not an image file)" in capsys.readouterr().out


def test_an_image_file_that_does_not_decode_stays_an_error(tmp_path: Path, capsys) -> None:
    """A file named like an image is an image of the cohort: when it does not decode the build
    stops naming it (as before), rather than dropping a patient's ROI quietly."""
    cohort = write_pathomic(tmp_path / "pf", n_patients=6, rois=1)
    broken = sorted((cohort.root / "rois").iterdir())[2]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    out = tmp_path / "out"
    line = _fails(_build_args(cohort.spec_path, out), capsys, out)
    assert line.startswith(f"error: image {broken}: does not decode")


# --------------------------------------------------------------------------- issue 21


def test_patient_ids_with_double_underscores_build_and_verify(tmp_path: Path, capsys) -> None:
    """Issue 21 #7: verify took a key's patient to be its text up to the first '__', so a set
    freshly built from ids like 'TCGA__A0-1000' failed ('0 samples, manifest says 1'). Verify
    now reads keys with the build's rule (shards.patient_of_key)."""
    table = porpoise_table(n_patients=6, n_double=2)
    table["case_id"] = table["case_id"].str.replace("-", "__", n=2)  # TCGA__A0__1000
    table.to_csv(tmp_path / "kirc.csv", index=False)
    out = tmp_path / "set"
    args = ["build", *porpoise_flags(tmp_path / "kirc.csv"), "--splits", "kfold:3"]
    code, _, err = _run([*args, "--out", str(out), "--workers", "1"], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    assert all("__" in p for p in manifest["patients"]) and manifest["counts"]["patients"] == 6
    code, stdout, err = _run(["verify", str(out)], capsys)
    assert (code, err) == (0, ""), err
    assert stdout.strip().endswith(": OK")
    fold = open_fold(out, 0)
    assert sorted([*fold.train, *fold.test]) == sorted(manifest["patients"])


def test_a_patient_id_that_is_another_id_and_a_unit_separator_is_refused(
    tmp_path: Path, capsys
) -> None:
    """Ids 'A' and 'A__B' make the key 'A__B__u' ambiguous (patient_of_key takes 'A'): the
    build refuses them in one line naming both ids, and writes nothing."""
    table = porpoise_table(n_patients=6, n_double=0)
    first = table["case_id"].iloc[0]
    table.loc[table.index[1], "case_id"] = f"{first}__B"
    table.to_csv(tmp_path / "kirc.csv", index=False)
    out = tmp_path / "set"
    args = ["build", *porpoise_flags(tmp_path / "kirc.csv"), "--splits", "kfold:3"]
    code, _, err = _run([*args, "--out", str(out), "--workers", "1"], capsys)
    assert code == 2
    assert f"patient id '{first}__B' is patient '{first}' followed by '__'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def _outside(shards: Path, tmp_path: Path, where: str) -> str:
    """Move shard-000001.tar out of the set's folder; the manifest name that reaches it."""
    if where == "parent":
        (tmp_path / "outside").mkdir()
        (shards / "shard-000001.tar").rename(tmp_path / "outside" / "shard-000001.tar")
        return "../outside/shard-000001.tar"
    if where == "absolute":
        (shards / "shard-000001.tar").rename(tmp_path / "shard-000001.tar")
        return str(tmp_path / "shard-000001.tar")
    (shards / "sub").mkdir()  # a sub-folder: a path separator inside the set
    (shards / "shard-000001.tar").rename(shards / "sub" / "shard-000001.tar")
    return "sub/shard-000001.tar"


@pytest.mark.parametrize("where", ["parent", "absolute", "subfolder"])
def test_a_shard_name_outside_the_set_is_refused(built_sets, tmp_path, capsys, where) -> None:
    """Issue 21 #12: a manifest whose shard name was '../outside/shard-000001.tar' (re-digested)
    verified OK, reading a file outside the set. Now verify names the entry and reads nothing
    there; the fold loader refuses the set."""
    from hpc_pgo.data.tarindex import index_shards

    shards = _copy(built_sets, "file", tmp_path)
    name = _outside(shards, tmp_path, where)
    _edit(shards, lambda m: m["shards"][1].update(name=name), reseal=True)
    problems = _verify_fails(shards, capsys)
    assert problems[0] == (
        f"{MANIFEST} shards entry 1: name {name!r} is not a file of the shard set's folder; "
        "valid: a plain file name such as 'shard-000000.tar' (no '/' or '\\', not '..', not an "
        "absolute path)"
    )
    assert not any("shard-000001.tar: " in p for p in problems)  # never read
    with pytest.raises(PgoError, match=r"shards entry 1: name .* is not a file of the shard set"):
        index_shards(shards, read_manifest(shards), verify=True)


REPEATS = {  # the column written twice (the copy with other values) -> what it is used for
    "R3_rnaseq": "omics group 'rna'",
    "survival_months": "the survival record",
    "case_id": "the patient ids",
}


@pytest.mark.parametrize("column", [*REPEATS, "age"])
def test_a_repeated_column_name_is_one_error_line(tmp_path: Path, capsys, column: str) -> None:
    """Issue 21 #6: pandas reads a header that names 'R3_rnaseq' twice as 'R3_rnaseq' and
    'R3_rnaseq.1'; the suffix selector took the first only and the second copy was dropped
    without a word. A repeated column the spec uses is now an error naming the file, the
    column and both positions; a repeated column nothing uses ('age') is no error."""
    table = porpoise_table(n_patients=6, n_double=0)
    twin = table[[column]]
    if column != "case_id":
        twin = twin.apply(lambda c: c + 1)  # other values: which copy is read matters
    path = tmp_path / "kirc.csv"
    pd.concat([table, twin], axis=1).to_csv(path, index=False)  # the header names it twice
    first = list(table.columns).index(column) + 1
    out = tmp_path / "set"
    args = ["build", *porpoise_flags(path), "--splits", "kfold:3", "--out", str(out)]
    if column not in REPEATS:
        assert _run(args, capsys)[0] == 0 and verify(out).ok
        return
    line = _fails(args, capsys, out)
    what = "survival" if column in ("survival_months", "case_id") else "omics"
    assert line == (
        f"error: {what} table {path} line 1: column {column!r} occurs 2 times in the header "
        f"(columns {first}, {len(table.columns) + 1}), used for {REPEATS[column]}; only the "
        f"first would be read ('{column}.1' dropped); valid: each column name once in the "
        "header (rename or remove the repeats)"
    )


def _gradients(size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit, 16-bit) versions of one diagonal gradient (each ROI its own range): the 8-bit
    one rounded to 0..255, the 16-bit one to 0..65535 (as a scanner exporting 16 bits would)."""
    y, x = np.mgrid[0:size, 0:size]
    level = (20 + 10 * k + (x + 2 * y) * (200 - 10 * k) / (3 * (size - 1))) / 255  # in [0, 1]
    return np.round(level * 255).astype(np.uint8), np.round(level * 65535).astype(np.uint16)


@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
def test_a_16_bit_grayscale_roi_keeps_its_pixels(tmp_path: Path, capsys, tiled: bool) -> None:
    """Issue 21 #5: a 16-bit grayscale PNG ROI (Pillow mode I;16) was stored as it is and
    decoded by Pillow's convert('RGB'), which clips at 255: a solid white image. The build now
    scales it by the full 16-bit range (images.to_rgb) into an 8-bit RGB PNG."""
    from hpc_pgo.data.transforms import decode_image

    from .conftest import read_samples

    cohort = write_pathomic(tmp_path / "pf", n_patients=4, rois=1, size=64)
    if not tiled:
        spec = cohort.spec
        spec["images"]["tile"] = None
        cohort.spec_path.write_text(json.dumps(spec))  # JSON is YAML
    eight = {}
    for k, (patient, (path,)) in enumerate(sorted(cohort.rois.items())):
        eight[patient], sixteen = _gradients(64, k)
        Image.fromarray(sixteen).save(path)  # a real 16-bit PNG
        with Image.open(path) as im:
            assert im.mode == "I;16" and path.read_bytes()[24] == 16  # IHDR bit depth 16
    out = tmp_path / "out"
    code, _, err = _run(_build_args(cohort.spec_path, out), capsys)
    assert code == 0, err
    samples = read_samples(out)
    assert len(samples) == (4 * 9 if tiled else 4)
    for sample in samples:
        patient, unit = sample["__key__"].split("__", 1)
        pixels = decode_image(sample["png"]).numpy()  # the fold loader's decoding
        assert (pixels[0] == pixels[1]).all() and (pixels[0] == pixels[2]).all()
        expected = eight[patient]
        if tiled:
            top, left = (int(part[1:]) for part in unit.rsplit("_", 2)[1:])
            expected = expected[top : top + 32, left : left + 32]
        assert pixels[0].std() > 10  # not a solid image
        assert np.abs(pixels[0].astype(int) - expected).max() <= 1  # the 8-bit version
    assert verify(out).ok
    for patient, (path,) in cohort.rois.items():  # the loader decodes such bytes alike too
        pixels = decode_image(path.read_bytes()).numpy()[0].astype(int)
        assert np.abs(pixels - eight[patient]).max() <= 1


def test_a_float_tiff_roi_is_refused(tmp_path: Path, capsys) -> None:
    """32-bit float pixels have no range to map to 8 bits: one error line naming the file."""
    cohort = write_pathomic(tmp_path / "pf", n_patients=4, rois=1, size=64)
    png = sorted(cohort.rois.items())[1][1][0]
    tiff = png.with_suffix(".tif")
    Image.fromarray(_gradients(64, 0)[0].astype(np.float32)).save(tiff)
    png.unlink()
    out = tmp_path / "out"
    line = _fails(_build_args(cohort.spec_path, out), capsys, out)
    assert line == (
        f"error: image {tiff}: 32-bit float pixels (Pillow mode F) have no defined range to map "
        "to 8 bits; valid: 8-bit (gray, RGB, RGBA, palette) or 16-bit grayscale images"
    )
