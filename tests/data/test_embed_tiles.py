"""`pgo-shards embed-tiles` (hpc_pgo.data.embed_tiles) with a real timm backbone (resnet10t)
over a real demo shard set (3 shards of 12 ROIs) and a synthetic slide cohort: features equal an
independent recomputation, keys are the tar's, byte-identical reruns, resume after SIGKILL at a
known shard, idempotence, bad weights, damaged side-cars seen by verify and the reader, and the
same bytes whether DataLoader workers or the calling process prepare the tiles."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpc_pgo import hold
from hpc_pgo.data import synthetic_slides
from hpc_pgo.data.build import build_cohort
from hpc_pgo.data.cli import main
from hpc_pgo.data.demo import write_demo_cohort
from hpc_pgo.data.embed_tiles import PROGRESS, TileOptions, embed_tiles
from hpc_pgo.data.members import sha256_file
from hpc_pgo.data.shards import read_manifest, verify, write_manifest
from hpc_pgo.data.tile_features import (
    backbone_digest,
    read_tile_features,
    write_shard_features,
)
from hpc_pgo.errors import PgoError

REPO = Path(__file__).resolve().parents[2]
ARCH = "resnet10t"
SHARDS = ("shard-000000", "shard-000001", "shard-000002")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # resnet10t's pretrained_cfg statistics, written out
IMAGENET_STD = (0.229, 0.224, 0.225)


def _state_dict(arch: str, seed: int) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, num_classes=0).state_dict()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine two spinning threads run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A demo shard set: 12 patients x 3 ROIs of 32 px, 12 samples per shard (3 shards)."""
    root = tmp_path_factory.mktemp("tiles")
    spec = write_demo_cohort(root / "files", n_patients=12, rois_per_patient=3, image_size=32,
                             n_cnv=4, n_mut=2, n_rna=4)  # fmt: skip
    out = root / "demo"
    manifest = build_cohort(spec, out, workers=0, progress=False, shard_max_count=12)
    assert [s["name"] for s in manifest["shards"]] == [f"{s}.tar" for s in SHARDS]
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """resnet10t state dicts of two seeds, and one of another architecture."""
    root = tmp_path_factory.mktemp("weights")
    files = {"a": (ARCH, 1), "b": (ARCH, 2), "other": ("lcnet_050", 1)}
    paths = {}
    for name, (arch, seed) in files.items():
        paths[name] = root / f"{name}.pth"
        torch.save(_state_dict(arch, seed), paths[name])
    return paths


@pytest.fixture
def shard_set(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "set"
    shutil.copytree(built, out)
    return out


def side_car_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under tile_features/, by its path there (the set folder included)."""
    root = directory / "tile_features"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def set_dir(directory: Path) -> Path:
    """The folder of the recorded feature set (tile_features/<first 16 hex of its digest>)."""
    return directory / "tile_features" / read_manifest(directory)["tile_features"]["digest"][:16]


def tar_keys(path: Path) -> list[str]:
    """Sample keys of a tar in member order, read with tarfile (not webdataset)."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for name in tar.getnames():
            key = name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def tar_images(path: Path, field: str = "png") -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name.split(".", 1)[0]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.name.endswith("." + field)
        }


def reference_features(weights: Path, images: list[bytes], size: int) -> np.ndarray:
    """The features recomputed without hpc_pgo: PIL decode, torch resize, ImageNet stats, timm."""
    import timm

    model = timm.create_model(ARCH, num_classes=0)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    views = []
    for data in images:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        views.append((x - mean) / std)
    with torch.no_grad():
        return model(torch.cat(views)).numpy()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_pgo.data", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("size", [32, 48])  # the stored size (no resize), and a resize
def test_features_equal_an_independent_recomputation(shard_set, weights, size):
    opts = {} if size == 32 else {"input_size": size}  # 32: the default, the stored tile size
    result = embed_tiles(shard_set, TileOptions(ARCH, weights["a"], **opts), progress=False)
    manifest = read_manifest(shard_set)
    record = manifest["tile_features"]
    assert record == result.record and result.computed == [f"{s}.tar" for s in SHARDS]
    assert record["dim"] == 512 and record["units"] == 36 and record["dtype"] == "float16"
    b = record["backbone"]
    assert b["input_size"] == size and b["weights"] == "a.pth"
    assert b["weights_sha256"] == hashlib.sha256(weights["a"].read_bytes()).hexdigest()
    assert b["digest"] == backbone_digest(ARCH, torch.load(weights["a"], weights_only=True))
    for stem in SHARDS:
        keys = np.load(set_dir(shard_set) / f"{stem}.keys.npy")
        feats = np.load(set_dir(shard_set) / f"{stem}.npy")
        assert keys.tolist() == tar_keys(shard_set / f"{stem}.tar")  # the tar's order
        assert feats.dtype == np.float16 and feats.shape == (12, 512)
    # a few keys of the middle shard, recomputed
    images = tar_images(shard_set / "shard-000001.tar")
    picked = list(images)[::5]
    ref = reference_features(weights["a"], [images[k] for k in picked], size)
    tiles = read_tile_features(shard_set, manifest)
    got = []
    for key in picked:
        patient = key.split("__")[0]
        got.append(tiles.bag(patient)[tiles.keys(patient).index(key)])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.stack(got), ref, rtol=2e-3, atol=2e-3 * scale)
    assert not np.allclose(ref[0], ref[1])  # different tiles, different features
    assert tiles.patients == sorted(manifest["patients"])
    assert all(tiles.bag(p).shape == (3, 512) for p in tiles.patients)


def test_bf16_autocast_is_its_own_recipe_and_agrees_with_fp32(shard_set, weights, tmp_path):
    """--precision bf16 runs the backbone under torch.autocast(bfloat16) (the CUDA default; on
    CPU the same call): another recipe and digest, features close to fp32's but not equal."""
    twin = tmp_path / "bf16"
    shutil.copytree(shard_set, twin)
    fp32 = embed_tiles(shard_set, TileOptions(ARCH, weights["a"], precision="fp32"),
                       progress=False).record  # fmt: skip
    bf16 = embed_tiles(twin, TileOptions(ARCH, weights["a"], precision="bf16", device="cpu"),
                       progress=False).record  # fmt: skip
    assert (fp32["recipe"]["precision"], bf16["recipe"]["precision"]) == ("fp32", "bf16")
    assert bf16["digest"] != fp32["digest"] and bf16["backbone"] == fp32["backbone"]
    a = read_tile_features(shard_set, read_manifest(shard_set))
    b = read_tile_features(twin, read_manifest(twin))
    x = np.concatenate([a.bag(p) for p in a.patients])
    y = np.concatenate([b.bag(p) for p in b.patients])
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert not np.array_equal(x, y)  # bf16 arithmetic, not fp32 again
    assert np.median(cosine) > 0.99 and cosine.min() > 0.95, (np.median(cosine), cosine.min())


def test_same_inputs_give_the_same_bytes_and_other_weights_another_digest(shard_set, weights,
                                                                           tmp_path):  # fmt: skip
    twin = tmp_path / "twin"
    shutil.copytree(shard_set, twin)
    first = embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False).record
    second = embed_tiles(twin, TileOptions(ARCH, weights["a"]), progress=False).record
    assert side_car_bytes(shard_set) == side_car_bytes(twin)
    assert (shard_set / "manifest.json").read_bytes() == (twin / "manifest.json").read_bytes()
    assert first == second
    other = embed_tiles(twin, TileOptions(ARCH, weights["b"]), progress=False).record
    assert other["backbone"]["digest"] != first["backbone"]["digest"]
    assert other["digest"] != first["digest"]
    assert (set_dir(twin) / "shard-000000.npy").read_bytes() != (
        set_dir(shard_set) / "shard-000000.npy"
    ).read_bytes()
    # the keys do not depend on the weights
    assert (set_dir(twin) / "shard-000000.keys.npy").read_bytes() == (
        set_dir(shard_set) / "shard-000000.keys.npy"
    ).read_bytes()
    # the tars are untouched: verify passes, and checks the side-car too
    report = verify(twin)
    assert report.ok, report.problems


def test_worker_processes_give_the_same_bytes_and_digest(shard_set, weights, tmp_path):
    # batch 5: three batches per 12-sample shard (5, 5, 2), dealt to the two workers in turn
    twin = tmp_path / "twin"
    shutil.copytree(shard_set, twin)
    inline = embed_tiles(shard_set, TileOptions(ARCH, weights["a"], batch_size=5, workers=0),
                         progress=False).record  # fmt: skip
    pooled = embed_tiles(twin, TileOptions(ARCH, weights["a"], batch_size=5, workers=2),
                         progress=False).record  # fmt: skip
    assert pooled == inline  # digest and recipe: no worker count in them
    assert side_car_bytes(twin) == side_car_bytes(shard_set)
    assert (twin / "manifest.json").read_bytes() == (shard_set / "manifest.json").read_bytes()
    for stem in SHARDS:
        keys = np.load(set_dir(twin) / f"{stem}.keys.npy").tolist()
        assert keys == tar_keys(twin / f"{stem}.tar")


# --------------------------------------------------------------------------- resume


@contextlib.contextmanager
def held_embed(args: list[str], held: Path, *, shard: int) -> Iterator[subprocess.Popen]:
    """`pgo-shards <args>` in a fresh interpreter, yielded once it holds after shard `shard`
    (hold point embed); killed at the end if the test left it running."""
    env = {**os.environ, hold.ENV: hold.spec("embed", shard, held), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hpc_pgo.data", *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        hold.wait_held(held, timeout_s=120, running=lambda: proc.poll() is None)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # a fresh interpreter (torch, timm)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_after_a_shard_resumes_with_the_rest(
    shard_set, weights, tmp_path, capsys, signum
):
    whole = tmp_path / "whole"
    shutil.copytree(shard_set, whole)
    embed_tiles(whole, TileOptions(ARCH, weights["a"]), progress=False)
    manifest_before = (shard_set / "manifest.json").read_bytes()
    args = ["embed-tiles", str(shard_set), "--arch", ARCH, "--weights", str(weights["a"]),
            "--no-progress"]  # fmt: skip
    with held_embed(args, tmp_path / "held", shard=1) as proc:
        # held after the first shard: its pair and the progress written, nothing else
        progress = json.loads((shard_set / PROGRESS).read_text())
        assert [e["shard"] for e in progress["shards"]] == ["shard-000000.tar"]
        done = sorted(str(p.relative_to(shard_set / "tile_features"))
                      for p in (shard_set / "tile_features").rglob("*") if p.is_file())  # fmt: skip
        folder = progress["digest"][:16]
        assert done == [f"{folder}/shard-000000.keys.npy", f"{folder}/shard-000000.npy",
                        "progress.json"]  # fmt: skip
        proc.send_signal(signum)
        # SIGTERM: pgo-shards exits 128 + 15 (cli._exit_on_sigterm); SIGKILL: killed
        expected = 128 + signum if signum == signal.SIGTERM else -signum
        assert proc.wait(timeout=60) == expected, proc.stderr.read()
    assert (shard_set / "manifest.json").read_bytes() == manifest_before  # nothing recorded yet
    assert not [p.name for p in shard_set.rglob(".*.tmp")]  # no half-written file
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "computed 2 of 3 shards (24 units" in out and "1 resumed" in out
    assert not (shard_set / PROGRESS).exists()
    assert side_car_bytes(shard_set) == side_car_bytes(whole)
    assert (shard_set / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()


@pytest.mark.slow  # a fresh interpreter (torch, timm)
def test_a_recompute_with_other_weights_leaves_the_recorded_set_whole_until_it_ends(
    shard_set, weights, tmp_path
):
    embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False)
    manifest = read_manifest(shard_set)
    old = read_tile_features(shard_set, manifest)
    old_bags = {p: old.bag(p) for p in old.patients}
    old_dir = set_dir(shard_set)
    held = tmp_path / "held"
    args = ["embed-tiles", str(shard_set), "--arch", ARCH, "--weights", str(weights["b"]),
            "--no-progress"]  # fmt: skip
    with held_embed(args, held, shard=2) as proc:
        # two of three shards of weights b written: the recorded set (weights a) still reads
        # whole, with sha256 checks, and gives the same features
        assert read_manifest(shard_set) == manifest
        during = read_tile_features(shard_set, read_manifest(shard_set), verify=True)
        for patient, bag in old_bags.items():
            np.testing.assert_array_equal(during.bag(patient), bag)
        assert verify(shard_set).ok
        hold.release(held)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    new = read_manifest(shard_set)["tile_features"]
    assert (
        new["digest"] != manifest["tile_features"]["digest"]
        and new["backbone"]["weights"] == "b.pth"
    )
    assert not old_dir.exists() and set_dir(shard_set).is_dir()  # the old set removed at the end
    assert sorted(p.name for p in (shard_set / "tile_features").iterdir()) == [
        set_dir(shard_set).name
    ]
    assert verify(shard_set).ok


def test_progress_of_another_recipe_starts_over(shard_set, weights):
    embed_tiles(shard_set, TileOptions(ARCH, weights["b"]), progress=False)
    entries = read_manifest(shard_set)["tile_features"]["shards"]
    # as if a run of weights b had stopped after the first shard
    (shard_set / PROGRESS).write_text(json.dumps({"digest": "b" * 64, "shards": entries[:1]}))
    result = embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False)
    assert len(result.computed) == 3 and result.resumed == []


# --------------------------------------------------------------------------- idempotence


def test_a_rerun_computes_nothing_and_force_recomputes(shard_set, weights, capsys):
    args = ["embed-tiles", str(shard_set), "--arch", ARCH, "--weights", str(weights["a"]),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "computed 3 of 3 shards (36 units" in capsys.readouterr().out
    files = side_car_bytes(shard_set)
    stamps = {p.name: p.stat().st_mtime_ns for p in set_dir(shard_set).iterdir()}
    manifest = (shard_set / "manifest.json").read_bytes()
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in set_dir(shard_set).iterdir()}
    assert (shard_set / "manifest.json").read_bytes() == manifest
    assert main([*args, "--force", "--workers", "2"]) == 0
    assert "computed 3 of 3 shards" in capsys.readouterr().out
    assert side_car_bytes(shard_set) == files  # recomputed in 2 worker processes, the same bytes
    # a damaged file of a recorded set is recomputed, not trusted
    (set_dir(shard_set) / "shard-000002.npy").unlink()
    result = embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False)
    assert len(result.computed) == 3 and side_car_bytes(shard_set) == files


# --------------------------------------------------------------------------- refusals


def test_bad_weights_are_refused_in_one_line_and_nothing_is_written(shard_set, weights, tmp_path,
                                                                    capsys):  # fmt: skip
    manifest = (shard_set / "manifest.json").read_bytes()
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    cases = {
        str(weights["other"]): "could not be built",  # lcnet_050's state dict for resnet10t
        str(tmp_path): "no such file",  # a folder
        str(text): "not a readable weights file",
    }
    for path, why in cases.items():
        code = main(["embed-tiles", str(shard_set), "--arch", ARCH, "--weights", path,
                     "--no-progress"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith("error: --") and why in err and "\n" not in err, err
        assert f"--weights={path!r}" in err or f"--weights {path!r}" in err, err
    assert (shard_set / "manifest.json").read_bytes() == manifest
    assert not (shard_set / "tile_features").exists()
    # a CLI argument outside its choices: one line naming the valid ones, exit 2
    run = run_cli("embed-tiles", str(shard_set), "--arch", ARCH, "--device", "tpu")
    assert run.returncode == 2 and "choose from 'cpu', 'cuda'" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    for value in ("-1", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["embed-tiles", str(shard_set), "--arch", ARCH, "--workers", value])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and "\n" not in err, err
        assert f"argument --workers: {value!r}: valid: an integer >= 0" in err, err
    with pytest.raises(PgoError, match="--workers -1: valid: 0"):
        embed_tiles(shard_set, TileOptions(ARCH, weights["a"], workers=-1), progress=False)
    assert not (shard_set / "tile_features").exists()


def test_the_reader_checks_a_feature_set_once_per_process_and_file_version(
    shard_set, weights, monkeypatch
):
    """A fold opens a loader per epoch: the side-car's sha256 is read once, not every epoch,
    and a file changed since is checked again."""
    import hpc_pgo.data.tile_features as tf

    embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False)
    hashed: list[Path] = []
    monkeypatch.setattr(tf, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    manifest = read_manifest(shard_set)
    first = read_tile_features(shard_set, manifest)
    assert len(hashed) == 6  # 3 shards x (features, keys)
    again = read_tile_features(shard_set, manifest)
    assert again is first and len(hashed) == 6  # the same files: not hashed again
    damaged = set_dir(shard_set) / "shard-000001.npy"
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))  # same size, another mtime
    with pytest.raises(PgoError, match=str(damaged)):
        read_tile_features(shard_set, manifest)


def test_a_backbone_that_gives_every_tile_one_feature_is_refused(shard_set):
    manifest = (shard_set / "manifest.json").read_bytes()
    with pytest.raises(PgoError, match="all 36 tiles got the same feature vector"):
        embed_tiles(shard_set, TileOptions("lcnet_050"), progress=False)  # random init: all 0
    assert (shard_set / "manifest.json").read_bytes() == manifest
    assert not [p for p in (shard_set / "tile_features").rglob("*") if p.is_file()]


@pytest.mark.parametrize("workers", [0, 2])  # in-process, and from a DataLoader worker
def test_a_sample_that_does_not_decode_names_shard_and_key(shard_set, weights, workers):
    path = shard_set / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = next(m.name for m, _ in members if m.name.endswith(".png"))
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = b"\x89PNG broken" if member.name == broken else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    manifest = (shard_set / "manifest.json").read_bytes()
    with pytest.raises(PgoError) as err:
        embed_tiles(shard_set, TileOptions(ARCH, weights["a"], workers=workers), progress=False)
    key = broken.split(".", 1)[0]
    assert str(err.value).startswith(f"shard shard-000001.tar: sample {key!r}: its png does not")
    assert "\n" not in str(err.value)  # one line, no worker traceback
    assert (shard_set / "manifest.json").read_bytes() == manifest
    assert not list((shard_set / "tile_features").rglob("shard-000001.npy"))


def test_verify_and_the_reader_name_a_damaged_features_file(shard_set, weights, capsys):
    embed_tiles(shard_set, TileOptions(ARCH, weights["a"]), progress=False)
    assert verify(shard_set).ok
    damaged = set_dir(shard_set) / "shard-000001.npy"
    data = bytearray(damaged.read_bytes())
    data[-7] ^= 0xFF  # same size, other bytes
    damaged.write_bytes(bytes(data))
    report = verify(shard_set)
    assert [p for p in report.problems if str(damaged) in p and "sha256" in p], report.problems
    assert main(["verify", str(shard_set)]) == 1
    assert str(damaged) in capsys.readouterr().err
    with pytest.raises(PgoError, match=str(damaged)):
        read_tile_features(shard_set, read_manifest(shard_set))
    # keys in another order than the tar's, files and record consistent: only verify sees it
    manifest = read_manifest(shard_set)
    record = manifest["tile_features"]
    keys = np.load(set_dir(shard_set) / "shard-000000.keys.npy").tolist()
    feats = np.load(set_dir(shard_set) / "shard-000000.npy")
    record["shards"][0] = write_shard_features(shard_set, "shard-000000.tar", keys[::-1], feats)
    record["shards"][1] = write_shard_features(
        shard_set, "shard-000001.tar", tar_keys(shard_set / "shard-000001.tar"),
        np.zeros((12, 512)),
    )  # fmt: skip
    write_manifest(shard_set, manifest)
    problems = verify(shard_set).problems
    assert len(problems) == 1 and "shard-000000.keys.npy: keys differ" in problems[0], problems


# --------------------------------------------------------------------------- slides


def test_a_slide_cohort_gives_one_row_per_tile(tmp_path, capsys):
    synthetic_slides.write_cohort(tmp_path / "syn", slides=3, width=768, height=512,
                                         patients=2, seed=3, quality=80)  # fmt: skip
    out = tmp_path / "slides"
    manifest = build_cohort(tmp_path / "syn" / "cohort.yaml", out, workers=0, progress=False)
    field = manifest["image"]["format"]
    # no weights: a random projection, recorded as such; tiles of 256 px resized to 64
    code = main(["embed-tiles", str(out), "--arch", ARCH, "--input-size", "64", "--no-progress"])
    assert code == 0
    manifest = read_manifest(out)
    record = manifest["tile_features"]
    assert record["backbone"]["weights"] is None and record["backbone"]["input_size"] == 64
    tiles = read_tile_features(out, manifest)
    keys = [k for s in manifest["shards"] for k in tar_keys(out / s["name"])]
    assert len(keys) == record["units"] > 2
    for patient, facts in manifest["patients"].items():
        theirs = [k for k in keys if k.startswith(patient + "__")]
        assert tiles.bag(patient).shape == (len(theirs), 512) == (facts["units"], 512)
        assert tiles.keys(patient) == theirs
    assert len(tar_images(out / manifest["shards"][0]["name"], field)) > 0
    assert verify(out).ok
    assert main(["info", str(out)]) == 0
    assert f"tile features: {ARCH}, dim 512" in capsys.readouterr().out
