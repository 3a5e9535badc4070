"""`pgo-shards embed-tiles`: a frozen image backbone over every tile (image unit) once, stored beside the shards.

Input: a built shard set with images (manifest["image"]: the field, png or jpg, and the stored
size). Any timm architecture (and the project's t2t_vit_*) built by
hpc_pgo.models.image.create_backbone with num_classes=0; weights only from a local state dict
(--weights, loaded through timm's pretrained-cfg file override and refused unless they cover
the architecture). Without weights the backbone is randomly initialised (seeded with 0): allowed,
the record's weights is null and the CLI warns that the features are a random projection.

Each sample, shard by shard in manifest order and in tar order, is decoded
(hpc_pgo.data.transforms.decode_image, uint8 RGB), scaled to [0, 1] float32, resized so that
its shorter side is the input size S (bilinear, antialiased: torch interpolate, deterministic),
centre-cropped to S x S, normalised with the backbone's mean/std (backbone_stats) and run in
batches through the backbone (eval mode, no gradients, inference_mode; bf16 autocast with
--precision bf16, the default on CUDA, fp32 on CPU). S: --input-size, else the model's timm data
config for fixed-size models (ViTs, T2T-ViT), else the stored tile size (convolutional nets take
any size: the tiles are not rescaled), else the data config's.

Reading, decoding, resizing, cropping and normalising run in --workers N DataLoader processes
(TileOptions.workers; default 4 on CUDA, else 0: in the calling process, as the CPU also runs
the model): a map-style dataset (ShardTiles) over the samples of the shards to compute, in
manifest and tar order, each read by offset through the shard index (hpc_pgo.data.tarindex,
sizes, counts and patients checked against the manifest first; not the sha256, verify does
that), batches of --batch-size within one shard (shuffle off, pinned memory on CUDA). The
DataLoader hands batch b back from worker b mod N in turn, so keys and features are the same,
byte for byte, whatever N; the recipe and digest do not depend on it. The forward runs in the
calling process.

Output (layout and record: hpc_pgo.data.tile_features, shards/README.md): per shard
`tile_features/<set>/<stem>.npy` float16 (n, D) and `<stem>.keys.npy` (<set>: the first 16 hex
digits of the record's digest), each written atomically, and
manifest["tile_features"] (the manifest rewritten atomically; the tars are not touched, so their
sha256 in the manifest stay valid and `pgo-shards verify` still passes; it then checks the
side-car too). The recipe (view, input size, precision, the shards' sha256) and the backbone
digest (its architecture and every tensor) are sealed by the record's digest.

Resumable: after each shard, its pair and `tile_features/progress.json` (the digest and the
entries of the shards done) are written atomically; a rerun with the same digest skips the shards
whose files still have the recorded sha256, a run with another digest starts over. At the end the
manifest record is written and progress.json removed. Idempotent: a recorded feature set of the
same digest whose files are intact is left as it is (nothing computed); --force recomputes.
Recomputing with another backbone or recipe writes into its own set folder: the recorded set
stays whole and readable until the manifest names the new one; then the old folder is removed.

A sample that does not decode: PgoError naming the shard and key (one line, also from a worker:
the worker returns the error text with its batch, the calling process raises it); the shards
before it are written (and resume), the manifest is not changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_pgo import atomic
from hpc_pgo.data.members import sha256_file
from hpc_pgo.data.shards import MANIFEST, read_manifest, write_manifest
from hpc_pgo.data.tile_features import (
    DIRECTORY,
    RECORD_KEY,
    backbone_digest,
    read_tile_features,
    recipe_digest,
    set_folder,
    write_shard_features,
)
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

PROGRESS = f"{DIRECTORY}/progress.json"
PRECISION_NAMES = ("auto", "fp32", "bf16")
DEVICE_NAMES = ("cpu", "cuda")
VIEW = "shorter side to input_size (bilinear, antialiased, float [0, 1]), centre crop, normalised"
DEFAULT_CUDA_WORKERS = 4  # --workers on cuda when not given (0 on cpu: the cores run the model)
INIT_SEED = 0  # random initialisation without --weights: the same projection on every run


@dataclass(frozen=True)
class TileOptions:
    """What to embed with; see the module docstring for each."""

    arch: str
    weights: Path | str | None = None
    input_size: int | None = None
    batch_size: int = 64
    precision: str = "auto"
    device: str | None = None  # None: cuda when available, else cpu
    workers: int | None = None  # DataLoader workers; None: DEFAULT_CUDA_WORKERS on cuda, else 0


@dataclass
class TileResult:
    """What embed_tiles did: the manifest's record, the shards computed in this run and those
    taken from an interrupted run's progress (both empty when the set was up to date)."""

    record: dict
    computed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    units_computed: int = 0
    seconds: float = 0.0

    @property
    def up_to_date(self) -> bool:
        return not self.computed and not self.resumed


# --------------------------------------------------------------------------- the backbone


def load_backbone(options: TileOptions, tile_size: int | None, device: str) -> tuple[Any, dict]:
    """(model on `device`, frozen and in eval mode; its record for the manifest).

    The record: arch, digest, weights (file name or None), weights_sha256, input_size, mean,
    std, num_features: the width of the model's output (num_classes=0), the feature dim D;
    timm's head_hidden_size where the model has a pre-logits stage (MobileNetV3, LCNet)."""
    import timm
    import torch
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg_value

    from hpc_pgo.models.image import backbone_stats, create_backbone, similar_timm_names

    if not timm.is_model(options.arch):
        raise PgoError(
            f"--arch {options.arch!r} is not a timm architecture; similar names: "
            f"{', '.join(similar_timm_names(options.arch)) or 'none'} (all: timm.list_models())"
        )
    weights = None if options.weights is None else Path(options.weights)
    fixed = bool(get_pretrained_cfg_value(options.arch, "fixed_input_size"))
    if weights is None:
        torch.manual_seed(INIT_SEED)
    model = create_backbone(
        options.arch,
        pretrained=weights,
        image_size=options.input_size,
        weights_key="--weights",
        arch_key="--arch",
    )
    size = options.input_size
    if size is None:
        configured = int(resolve_data_config({}, model=model)["input_size"][-1])
        size = configured if fixed or tile_size is None else tile_size
    mean, std = backbone_stats(model)
    model.eval().requires_grad_(False).to(device)
    record = {
        "arch": options.arch,
        "digest": backbone_digest(options.arch, model.state_dict()),
        "weights": None if weights is None else weights.name,
        "weights_sha256": None if weights is None else sha256_file(weights),
        "input_size": int(size),
        "mean": list(mean),
        "std": list(std),
        "num_features": _output_width(model, int(size), device),
    }
    return model, record


def _output_width(model, size: int, device: str) -> int:
    """D: the width of the model's output for one zero image of size x size."""
    import torch

    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, size, size, device=device)).shape[-1])


def _resolve_device(options: TileOptions) -> tuple[str, str]:
    """(device, precision) with auto resolved: bf16 on cuda, fp32 on cpu."""
    import torch

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICE_NAMES:
        raise PgoError(f"--device {device!r}: valid: {', '.join(DEVICE_NAMES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise PgoError("--device cuda: torch sees no CUDA device here; valid: cpu")
    if options.precision not in PRECISION_NAMES:
        raise PgoError(f"--precision {options.precision!r}: valid: {', '.join(PRECISION_NAMES)}")
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return device, precision


# --------------------------------------------------------------------------- the tiles


def tile_view(data: bytes, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Encoded image bytes -> float32 (3, size, size): [0, 1], shorter side resized to `size`
    (bilinear, antialiased), centre crop, (x - mean) / std per channel."""
    import torch
    import torch.nn.functional as nnf

    from hpc_pgo.data.transforms import decode_image

    image = decode_image(data).to(torch.float32).div_(255.0)[None]  # (1, 3, H, W)
    h, w = image.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = nnf.interpolate(image, size=shape, mode="bilinear", antialias=True,
                                align_corners=False)  # fmt: skip
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    image = image[0, :, top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image - mean_t) / std_t


class ShardTiles:
    """Map-style dataset of the tiles of some shards, in manifest and tar order: item i ->
    (key, float32 (3, S, S) tile_view, None), or (key, None, error text) for a sample without
    the image field or whose image does not decode (the text names shard and key: the caller
    raises it as a one-line PgoError, not DataLoader's re-raise with a worker traceback).

    Each sample's image member is read by offset from the shard index (hpc_pgo.data.tarindex;
    hpc_pgo.data.stages.read_sample, as the fold loader reads), so a DataLoader worker reads only
    its own samples; each worker keeps one open shard file at a time. Per item only numpy arrays
    are kept (shard number, key, offset, size), not the index's Python objects: forked workers
    of a cohort of millions of tiles do not copy them page by page as they touch refcounts."""

    def __init__(self, shard_dir: Path, index, image_field: str, size: int, mean, std):
        self.shard_dir = shard_dir
        self.names = [name for name, _ in index.shards]
        self.image_field, self.size, self.mean, self.std = image_field, size, mean, std
        keys = [key for _, shard_keys in index.shards for key in shard_keys]
        self.shard = np.repeat(np.arange(len(self.names), dtype=np.int32),
                               [len(shard_keys) for _, shard_keys in index.shards])  # fmt: skip
        self.keys = np.array(keys, dtype=str)
        self.member = np.full((len(keys), 2), -1, np.int64)  # (data offset, size); -1: absent
        self.missing: dict[int, str] = {}  # item -> the suffixes it has instead
        for i, key in enumerate(keys):
            found = [(o, n) for suffix, o, n in index.members[key] if suffix == image_field]
            if found:
                self.member[i] = found[0]
            else:
                self.missing[i] = ", ".join(sorted(suffix for suffix, _, _ in index.members[key]))
        self._open: tuple[int, Any] | None = None  # (shard number, file); opened in the reader

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, Any, str | None]:
        from hpc_pgo.data.stages import read_sample

        shard, key, field = int(self.shard[i]), str(self.keys[i]), self.image_field
        name = self.names[shard]
        if i in self.missing:
            error = (
                f"shard {name}: sample {key!r} has no image field '{field}' (manifest "
                f"image.format); it has: {self.missing[i]}; nothing was recorded"
            )
            return key, None, error
        if self._open is None or self._open[0] != shard:
            if self._open is not None:
                self._open[1].close()
            self._open = (shard, open(self.shard_dir / name, "rb"))
        offset, size = (int(v) for v in self.member[i])
        try:
            data = read_sample(self._open[1], str(self.shard_dir / name), key,
                               [(field, offset, size)], frozenset({field}))[field]  # fmt: skip
        except PgoError as err:
            return key, None, str(err)
        try:
            return key, tile_view(data, self.size, self.mean, self.std), None
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
            error = (
                f"shard {name}: sample {key!r}: its {field} does not decode "
                f"({type(err).__name__}: {' '.join(str(err).split())}); rebuild the shard set "
                "(pgo-shards verify names every such sample); nothing was recorded"
            )
            return key, None, error


def collate_tiles(items: list[tuple[str, Any, str | None]]) -> tuple[list[str], Any, str | None]:
    """(keys, float32 (B, 3, S, S) or None, the first error or None) of one batch; the stack
    goes to shared memory inside a DataLoader worker (default_collate)."""
    from torch.utils.data import default_collate

    keys = [key for key, _, _ in items]
    error = next((e for _, _, e in items if e is not None), None)
    if error is not None:
        return keys, None, error
    return keys, default_collate([view for _, view, _ in items]), None


def shard_batches(index, batch_size: int) -> list[list[int]]:
    """Batches of dataset positions (ShardTiles order): runs of batch_size within each shard,
    the last of a shard shorter; no batch spans two shards."""
    batches, start = [], 0
    for _, keys in index.shards:
        batches += [list(range(i, min(i + batch_size, start + len(keys))))
                    for i in range(start, start + len(keys), batch_size)]  # fmt: skip
        start += len(keys)
    return batches


def _embed_shard(model, batches: Iterator, n_batches: int, backbone: dict, device: str,
                 precision: str, bar) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """(keys, float32 (n, D)) of one shard from its n_batches (keys, tiles, error) batches."""
    import contextlib

    import torch

    keys: list[str] = []
    parts: list[np.ndarray] = []
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with torch.inference_mode():
        for _ in range(n_batches):
            batch_keys, batch, error = next(batches)
            if error is not None:
                raise PgoError(error)
            with autocast:
                out = model(batch.to(device, non_blocking=True))
            parts.append(out.float().cpu().numpy())
            keys += batch_keys
            bar.update(len(batch_keys))
    if not parts:
        return keys, np.zeros((0, backbone["num_features"]), np.float32)
    return keys, np.concatenate(parts)


# --------------------------------------------------------------------------- progress


def _read_progress(shard_dir: Path, digest: str) -> dict[str, dict]:
    """Entries of the shards an interrupted run of this digest finished, whose files still hold
    the recorded bytes; {} for none, or progress of another recipe (it starts over)."""
    path = shard_dir / PROGRESS
    if not path.is_file():
        return {}
    try:
        progress = json.loads(path.read_text())
        entries = list(progress["shards"])
        same = progress["digest"] == digest
    except (ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; starting over", path)
        return {}
    if not same:
        log.info("%s: of another backbone or recipe; starting over", path)
        return {}
    done = {}
    for entry in entries:
        files = [entry["features"], entry["keys"]]
        if all((shard_dir / f["file"]).is_file() and sha256_file(shard_dir / f["file"]) == f["sha256"]
               for f in files):  # fmt: skip
            done[entry["shard"]] = entry
    return done


def _write_progress(shard_dir: Path, digest: str, entries: list[dict]) -> None:
    atomic.write_text(
        shard_dir / PROGRESS, json.dumps({"digest": digest, "shards": entries}) + "\n"
    )


def _remove_other_sets(shard_dir: Path, record: dict) -> None:
    """Once the manifest names the new feature set: delete the files of tile_features/ that it
    does not record (an older set's folder, the flat files of a set written before set folders).
    A reader that memory-mapped an old file keeps its pages (POSIX unlink)."""
    import shutil

    keep = {f["file"] for e in record["shards"] for f in (e["features"], e["keys"])}
    folders = {str(Path(f).parent) for f in keep}
    for child in sorted((shard_dir / DIRECTORY).iterdir()):
        rel = f"{DIRECTORY}/{child.name}"
        if child.is_dir() and rel not in folders:
            shutil.rmtree(child, ignore_errors=True)
        elif child.is_file() and child.suffix == ".npy" and rel not in keep:
            child.unlink(missing_ok=True)


# --------------------------------------------------------------------------- embed-tiles


def embed_tiles(
    shard_dir: Path | str,
    options: TileOptions,
    *,
    progress: bool = True,
    force: bool = False,
) -> TileResult:
    """Embed every image unit of the shard set (module docstring); returns what was done."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from hpc_pgo import hold
    from hpc_pgo.data.tarindex import index_shards

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    image = manifest.get("image")
    if not image:
        raise PgoError(
            f"{shard_dir / MANIFEST}: an omics-only shard set (no image); no tiles to embed"
        )
    if options.batch_size < 1 or (options.input_size is not None and options.input_size < 1):
        raise PgoError("--batch-size and --input-size must be >= 1")
    if options.workers is not None and options.workers < 0:
        raise PgoError(f"--workers {options.workers}: valid: 0 (in-process) or more")
    if options.weights is not None and not Path(options.weights).is_file():
        raise PgoError(
            f"--weights {str(options.weights)!r}: no such file (expected a state dict saved by "
            "torch.save of the architecture's model)"
        )
    device, precision = _resolve_device(options)
    workers = options.workers
    if workers is None:
        workers = DEFAULT_CUDA_WORKERS if device == "cuda" else 0
    held = hold.Hold.from_env("embed")
    size = image.get("size")
    tile_size = int(min(size)) if size else None
    model, backbone = load_backbone(options, tile_size, device)
    if options.weights is None:
        log.warning(
            "embed-tiles: no --weights: %s is randomly initialised, the features are a random "
            "projection of the tiles (the record's weights is null)",
            options.arch,
        )
    shards_text = "\n".join(f"{s['name']} {s['sha256']}" for s in manifest["shards"])
    recipe = {
        "view": VIEW,
        "input_size": backbone["input_size"],
        "image_field": image["format"],
        "precision": precision,
        "dtype": "float16",
        "shards_sha256": hashlib.sha256(shards_text.encode()).hexdigest(),
    }
    digest = recipe_digest(backbone, recipe)
    old = manifest.get(RECORD_KEY)
    if not force and old and old.get("digest") == digest:
        try:
            read_tile_features(shard_dir, manifest, verify=True)
        except PgoError as err:
            log.warning("%s; recomputing", err)
        else:
            log.info("%s: tile features up to date (same backbone, recipe and shards)", shard_dir)
            return TileResult(record=old)
    done = {} if force else _read_progress(shard_dir, digest)
    result = TileResult(record={})
    entries: list[dict] = []
    units = sum(int(s["samples"]) for s in manifest["shards"])
    todo = [s for s in manifest["shards"] if s["name"] not in done]
    index = index_shards(shard_dir, manifest, verify=False, names={s["name"] for s in todo})
    plan = shard_batches(index, options.batch_size)
    per_shard = {name: -(-len(keys) // options.batch_size) for name, keys in index.shards}
    tiles = ShardTiles(shard_dir, index, image["format"], backbone["input_size"],
                       backbone["mean"], backbone["std"])  # fmt: skip
    # batches in plan order whatever the worker count (DataLoader takes batch b from worker
    # b mod n in turn); the forward stays here
    loader = DataLoader(tiles, batch_sampler=plan, num_workers=workers, collate_fn=collate_tiles,
                        pin_memory=device == "cuda")  # fmt: skip
    batches = iter(loader) if plan else iter(())  # no workers started for nothing to do
    start = time.perf_counter()
    spread = FeatureSpread()
    with tqdm(total=units, unit="tile", disable=not progress, desc="embed-tiles") as bar:
        for number, shard in enumerate(manifest["shards"], start=1):
            name = shard["name"]
            if name in done:
                entries.append(done[name])
                result.resumed.append(name)
                spread.add(np.load(shard_dir / done[name]["features"]["file"], mmap_mode="r"))
                bar.update(int(shard["samples"]))
                continue
            keys, feats = _embed_shard(model, batches, per_shard[name], backbone, device,
                                       precision, bar)  # fmt: skip
            if len(keys) != int(shard["samples"]):
                raise PgoError(
                    f"shard {name}: {len(keys)} samples, {MANIFEST} says {shard['samples']}; "
                    "run pgo-shards verify"
                )
            spread.add(feats.astype(np.float16))
            entries.append(write_shard_features(shard_dir, name, keys, feats, set_folder(digest)))
            _write_progress(shard_dir, digest, entries)
            result.computed.append(name)
            result.units_computed += len(keys)
            log.info("%s: embedded %d units of %s", shard_dir, len(keys), name)
            if held is not None:
                held.at(number)
    del batches  # shuts the workers down
    if units > 1 and not spread.varied:
        import shutil

        shutil.rmtree(shard_dir / DIRECTORY / set_folder(digest), ignore_errors=True)
        (shard_dir / PROGRESS).unlink(missing_ok=True)
        raise PgoError(
            f"embed-tiles --arch {options.arch}: all {units} tiles got the same feature vector "
            "(in float16), so a bag of them carries nothing; e.g. a randomly initialised network "
            "whose activations vanish through its depth in eval mode (lcnet_050 does); nothing "
            "recorded; valid: --weights of a trained backbone, or another --arch"
        )
    result.seconds = time.perf_counter() - start
    record = {
        "dir": DIRECTORY,
        "dim": backbone["num_features"],
        "dtype": "float16",
        "units": units,
        "backbone": backbone,
        "recipe": recipe,
        "digest": digest,
        "shards": entries,
    }
    manifest[RECORD_KEY] = record
    write_manifest(shard_dir, manifest)
    (shard_dir / PROGRESS).unlink(missing_ok=True)
    _remove_other_sets(shard_dir, record)
    result.record = record
    return result


class FeatureSpread:
    """Whether any stored tile feature differs from the first one (add() shard by shard)."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None
        self.varied = False

    def add(self, features: np.ndarray) -> None:
        if self.varied or len(features) == 0:
            return
        if self.first is None:
            self.first = np.array(features[0])
        self.varied = bool((np.asarray(features) != self.first).any())


# --------------------------------------------------------------------------- command line


def cmd_embed_tiles(args) -> int:
    """`pgo-shards embed-tiles DIR --arch NAME [...]`: prints what it computed, or that nothing was to do."""
    options = TileOptions(
        arch=args.arch,
        weights=args.weights,
        input_size=args.input_size,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        workers=args.workers,
    )
    result = embed_tiles(args.dir, options, progress=not args.no_progress, force=args.force)
    r = result.record
    what = f"{r['backbone']['arch']} ({r['dim']} features, input {r['backbone']['input_size']} px)"
    if result.up_to_date:
        print(
            f"{args.dir}: tile features up to date ({what}, {r['units']} units); nothing computed"
        )
        return 0
    rate = result.units_computed / result.seconds if result.seconds > 0 else float("nan")
    resumed = f", {len(result.resumed)} resumed from an interrupted run" if result.resumed else ""
    print(
        f"embedded {args.dir}: {what}; computed {len(result.computed)} of {len(r['shards'])} "
        f"shards ({result.units_computed} units, {rate:.1f} units/s){resumed}; into {r['dir']}/"
    )
    return 0


def _workers(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: valid: an integer >= 0 (0: in-process)")
    return value


def add_embed_tiles_parser(sub) -> None:
    """Register `embed-tiles` on pgo-shards' subparsers (without importing torch or timm)."""
    p = sub.add_parser(
        "embed-tiles",
        help="a frozen image backbone over every tile once, stored beside the shards",
        description="Embed every image unit of a shard set with a frozen timm backbone "
        "(weights from a local file only), shard by shard; writes tile_features/*.npy and records "
        "them in manifest.json (hpc_pgo/data/embed_tiles.py). Tiles are decoded in --workers "
        "processes, in tar order; the model runs in this one. Resumes an interrupted run; "
        "re-running with the same inputs does nothing.",
    )
    p.add_argument("dir", help="shard set directory (built by pgo-shards build, with images)")
    p.add_argument("--arch", required=True, help="timm architecture (or t2t_vit_*), e.g. resnet18")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="local state dict of --arch (torch.save / safetensors); without it: random init",
    )
    p.add_argument(
        "--input-size",
        type=int,
        help="backbone input px (default: timm's for fixed-size models, else the stored tile size)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (64)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_NAMES,
        help="auto: bf16 on GPU, fp32 on CPU",
    )
    p.add_argument("--device", choices=DEVICE_NAMES, help="default cuda when available, else cpu")
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help=f"DataLoader processes that read, decode and resize the tiles (default "
        f"{DEFAULT_CUDA_WORKERS} on cuda, else 0: in-process); the features do not depend on it",
    )
    p.add_argument("--force", action="store_true", help="recompute even when up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed_tiles)
