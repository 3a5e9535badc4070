"""`pgo-shards verify` and `info` on real shard sets, intact and damaged."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.shards import VERIFIED, info, read_manifest, verify, write_manifest
from hpc_pgo.errors import PgoError


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A Pathomic-Fusion-layout cohort built into three shards (module-wide, never modified)."""
    from .conftest import write_pathomic

    root = tmp_path_factory.mktemp("verify")
    cohort = write_pathomic(root / "pf", n_patients=6, rois=1, without_images=(5,))
    build_cohort(cohort.spec_path, root / "shards", workers=1, progress=False, shard_max_count=20)
    return root / "shards"


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built shard set, free to damage."""
    return Path(shutil.copytree(built, tmp_path / "shards"))


def _verify_cli(directory: Path, capsys) -> tuple[int, str, str]:
    code = main(["verify", str(directory)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_intact_shards_verify(built: Path, capsys) -> None:
    manifest = read_manifest(built)
    assert len(manifest["shards"]) == 3
    code, out, err = _verify_cli(built, capsys)
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"verify {built}: 3 shards, {manifest['counts']['units']} samples, "
        f"{sum(s['bytes'] for s in manifest['shards'])} bytes: OK"
    )


def test_a_flipped_byte_is_named(copy: Path, capsys) -> None:
    shard = copy / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside some member's bytes
    shard.write_bytes(bytes(data))
    code, out, err = _verify_cli(copy, capsys)
    assert code == 1
    assert "error: shard shard-000001.tar: sha256 differs from the manifest" in err
    assert "shard-000000.tar" not in err and "shard-000002.tar" not in err
    assert "FAILED" in out


def test_a_truncated_shard_is_named(copy: Path, capsys) -> None:
    shard = copy / "shard-000002.tar"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    code, _, err = _verify_cli(copy, capsys)
    assert code == 1
    assert f"shard shard-000002.tar: {size // 2} bytes, manifest says {size}" in err
    assert "shard shard-000002.tar: unreadable" in err or "samples, manifest says" in err


def test_missing_and_unlisted_shards_are_named(copy: Path, capsys) -> None:
    (copy / "shard-000000.tar").rename(copy / "shard-000007.tar")
    code, _, err = _verify_cli(copy, capsys)
    assert code == 1
    assert "shard shard-000000.tar: missing" in err
    assert "shard shard-000007.tar: present but not in the manifest" in err


def test_a_sample_that_does_not_decode_is_named(copy: Path, capsys) -> None:
    """A shard rewritten with one corrupt PNG and a manifest that matches its new hash:
    only decoding catches it."""
    import tarfile

    from hpc_pgo.data.shards import shard_record

    shard = copy / "shard-000000.tar"
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    bad = [m.name for m, _ in members if m.name.endswith(".png")][1]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            if m.name == bad:
                data = data[:40]  # the PNG signature and header survive, the pixels do not
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    manifest = read_manifest(copy)
    manifest["shards"][0] = shard_record(shard)
    write_manifest(copy, manifest)
    assert verify(copy, decode=False).ok
    report = verify(copy)
    key = bad[: -len(".png")]
    assert report.problems == [
        f"shard shard-000000.tar sample {key}: field png: does not "
        "decode (cannot identify image file)"
    ]


def test_manifest_problems_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: no manifest.json; not a shard set (build one with pgo-shards build)"
    )
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(PgoError, match="schema_version 99"):
        verify(tmp_path)


def test_info_summarises(built: Path, capsys) -> None:
    manifest = read_manifest(built)
    assert main(["info", str(built)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == info(built)
    c = manifest["counts"]
    assert f"patients {c['patients']}, units {c['units']}, events {c['events']}" in text
    assert "cnv: 60 features" in text and "mut: 20 features" in text
    assert "splits: file" in text and "15 folds" in text
    assert "image: tiles, png, 32x32" in text
    assert "dropped: 1 (1 x missing modality)" in text


# --------------------------------------------------------------------------- verified.json


def _record(directory: Path) -> dict:
    return json.loads((directory / VERIFIED).read_text())


def test_build_and_verify_record_the_verified_shards(copy: Path, capsys) -> None:
    manifest = read_manifest(copy)
    built = _record(copy)  # written by the build, which hashed every shard as it wrote it
    expected = [
        {
            "name": e["name"],
            "bytes": e["bytes"],
            "mtime_ns": (copy / e["name"]).stat().st_mtime_ns,
            "sha256": e["sha256"],
        }
        for e in manifest["shards"]
    ]
    assert built["shards"] == expected and built["manifest_sha256"] == manifest["manifest_sha256"]
    (copy / VERIFIED).unlink()
    code, out, _ = _verify_cli(copy, capsys)
    assert code == 0 and "note:" not in out
    assert _record(copy) == built


def test_a_failed_verify_records_nothing(copy: Path, capsys) -> None:
    (copy / VERIFIED).unlink()
    shard = copy / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, _ = _verify_cli(copy, capsys)
    assert code == 1 and not (copy / VERIFIED).exists()


def test_verify_of_a_read_only_copy_notes_it_and_passes(copy: Path, tmp_path: Path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mount -t tmpfs failed here")
    try:
        shutil.copytree(copy, mount / "set")
        (mount / "set" / VERIFIED).unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        code, out, err = _verify_cli(mount / "set", capsys)
        assert (code, err) == (0, "")
        note, summary = out.strip().splitlines()
        assert note.startswith(f"note: {VERIFIED} not written (Read-only file system)")
        assert summary.endswith(": OK")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_wrong_patients_entry_is_named(copy: Path, capsys) -> None:
    manifest = read_manifest(copy)
    entry = manifest["shards"][1]
    entry["patients"][0][1] += 1
    write_manifest(copy, manifest)  # re-sealed: the digest no longer tells
    code, _, err = _verify_cli(copy, capsys)
    assert code == 1
    runs = read_manifest(copy)["shards"][1]["patients"]
    found = [runs[0][0], runs[0][1] - 1]
    assert (
        f"error: shard shard-000001.tar: patients entry 0: the shard holds {found}, manifest "
        f"says {runs[0]} ([patient, units])" in err
    )
