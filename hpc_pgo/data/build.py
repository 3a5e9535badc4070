"""Build a cohort into WebDataset shards: validate the inputs, prepare the samples of each
patient in worker processes, write them in order, then the manifest, then rename into place.

Order of work, so that bad input fails before anything is written:
1. read and check the survival table, the omics tables, the image folder and a split file;
2. one task per patient (sorted ids); worker processes decode/tile images and encode every
   field; the results come back in task order (_results), so the shards do not depend on
   the number of workers (omics-only cohorts are encoded in-process: see write_shards);
3. the samples go through webdataset.ShardWriter (fixed mtime, owner and mode: the same
   inputs give byte-identical tars) into `.<out>.tmp-<pid>` beside the output directory;
4. splits over the patients that made it into the shards, manifest.json (each shard's entry
   lists its patients and their units), verified.json (the shards' sha256 with their sizes
   and mtimes: the set is verified as built), then rename.
On any error the temporary directory is removed and nothing is left at the output path; an
OSError on the way (read-only file system, disk full) becomes one PgoError line (output_error).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

import hpc_pgo
from hpc_pgo.data import images as image_units
from hpc_pgo.data.cohort import OmicsGroup, load_omics, load_spec, load_survival, resolve_spec
from hpc_pgo.data.layouts import layout_of
from hpc_pgo.data.members import TAR_OPTIONS, json_bytes, load_npy, npy_bytes, sha256_file
from hpc_pgo.data.shards import (
    SCHEMA_VERSION,
    SHARD_GLOB,
    SHARD_PATTERN,
    patient_runs,
    shard_record,
    verified_entry,
    write_manifest,
    write_verified,
)
from hpc_pgo.data.sidecar import OMICS_TABLE_KEY, write_patient_table
from hpc_pgo.data.splits import SPLITTERS, read_split_table, restrict, split_source
from hpc_pgo.data.staging import check_output_dir, staged_output
from hpc_pgo.errors import PgoError
from hpc_pgo.hold import Hold

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE_MB = 256
DEFAULT_SHARD_MAX_COUNT = 10000


def default_workers() -> int:
    """Worker processes used when none is given: the CPUs, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------- per-patient work


@dataclass(frozen=True)
class PatientTask:
    """Everything a worker needs to produce the samples of one patient.

    omics: group -> float32 vector, or None when the patient lacks that group;
    unavailable: modality -> why it is missing; files: the patient's image files (sorted);
    image_format: the cohort's image field ("png" | "jpg"); placeholder: the image of a
    patient kept without one (missing: mask), None otherwise.
    """

    patient: str
    time: float
    event: int
    omics: dict[str, np.ndarray | None]
    sizes: dict[str, int]
    unavailable: dict[str, str]
    files: tuple[str, ...]
    images: dict | None
    missing: str
    image_format: str | None = None
    placeholder: bytes | None = None


@dataclass
class PatientResult:
    """The encoded samples of one patient (in unit order) and what was dropped, with why."""

    patient: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)


def prepare_patient(task: PatientTask) -> PatientResult:
    """Samples of one patient: one per image unit (one per patient without images).

    Under `mask`, a missing omics group is stored as a zero vector and a missing image as one
    sample (unit = the patient id) carrying a black placeholder image, each with mask 0
    ({"<group>": 0|1, "image": 0|1}); under `drop`, or when nothing at all is available, the
    patient is dropped with the reasons. Runs in worker processes: pure function of the task.
    """
    result = PatientResult(task.patient)
    units: list[image_units.Unit] = []
    unavailable = dict(task.unavailable)
    if task.images is not None and task.files:
        reasons = []
        layout = layout_of(task.images)
        for path in map(Path, task.files):
            found, reason = layout.file_units(path, task.images, task.image_format)
            units += found
            if reason:
                reasons.append(reason)
                result.dropped.append(
                    {
                        "patient": task.patient,
                        "unit": image_units.unit_name(path.stem),
                        "reason": f"no image unit: {reason}",
                    }
                )
        names = [u.name for u in units]
        if len(set(names)) != len(names):
            dup = sorted(n for n in set(names) if names.count(n) > 1)[0]
            raise PgoError(
                f"images of patient {task.patient!r}: two files give the unit name "
                f"{dup!r} (names keep letters, digits, '-' and '_')"
            )
        if not units:
            unavailable["image"] = "no image unit in its files"
    available = [
        m for m in (*task.omics, *(["image"] if task.images else [])) if m not in unavailable
    ]
    if unavailable and (task.missing == "drop" or not available):
        why = "; ".join(f"{m} ({reason})" for m, reason in sorted(unavailable.items()))
        result.dropped.append(
            {"patient": task.patient, "unit": None, "reason": f"missing modality: {why}"}
        )
        return result
    common: dict[str, Any] = {
        f"{group}.npy": npy_bytes(vec if vec is not None else np.zeros(task.sizes[group]))
        for group, vec in task.omics.items()
    }
    if task.missing == "mask":
        mask = {m: int(m not in unavailable) for m in task.omics}
        if task.images is not None:
            mask["image"] = int("image" not in unavailable)
        common["mask.json"] = json_bytes(mask)
    for unit in sorted(units, key=lambda u: u.name) or [None]:
        name = unit.name if unit else task.patient
        sample = {
            "__key__": f"{task.patient}__{name}",
            **common,
            "surv.json": json_bytes(
                {"patient": task.patient, "unit": name, "time": task.time, "event": task.event}
            ),
        }
        if unit:
            sample[unit.ext] = unit.data
            result.sizes.add(unit.size)
        elif task.images is not None:
            sample[task.image_format] = task.placeholder
        result.samples.append(sample)
    return result


# --------------------------------------------------------------------------- inputs


_KEY_UNSAFE = re.compile(r"[./\s]")


def _check_patient_ids(ids: Iterable[str], path: str) -> None:
    """Patient ids become tar member names `<patient>__<unit>.<field>`: no '.', '/' or space,
    and no id that is another id followed by '__...' (a key `A__B__u` would then name patient
    `A` or `A__B`: shards.patient_of_key, which the loader and verify use, takes the first)."""
    ids = list(ids)
    for pid in ids:
        if _KEY_UNSAFE.search(pid):
            raise PgoError(
                f"survival table {path}: patient id {pid!r} contains '.', '/' or "
                "white space, which WebDataset keys cannot hold; rename it"
            )
    known = set(ids)
    for pid in ids:
        cut = pid.find("__")
        while cut > 0:
            if pid[:cut] in known:
                raise PgoError(
                    f"survival table {path}: patient id {pid!r} is patient {pid[:cut]!r} "
                    "followed by '__', the separator of a sample key '<patient>__<unit>': their "
                    "samples' keys would be ambiguous; valid: ids none of which is another's "
                    "prefix up to a '__' (rename one)"
                )
            cut = pid.find("__", cut + 1)


def _omics_vectors(
    group: OmicsGroup, patients: Iterable[str]
) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """Per patient: its float32 vector of the group, or None and why it is missing."""
    values = group.values.to_numpy(dtype=np.float64)
    row_of = {p: i for i, p in enumerate(group.values.index)}
    out = {}
    for patient in patients:
        if patient not in row_of:
            out[patient] = None, f"not in omics table {group.path}"
            continue
        row = values[row_of[patient]]
        nan = int(np.isnan(row).sum())
        out[patient] = (
            (None, f"{nan} of {row.size} values missing (NaN) in {group.path}")
            if nan
            else (row.astype(np.float32), None)
        )
    return out


@dataclass
class Inputs:
    """The checked inputs of a build: tasks in key order, early drops, and file splits (with
    the file's column of each fold and the file's sha256)."""

    tasks: list[PatientTask]
    groups: dict[str, OmicsGroup]
    dropped: list[dict[str, Any]]
    file_splits: list | None
    image_format: str | None = None
    split_columns: list[str] | None = None
    split_sha256: str | None = None


def gather_inputs(spec: Mapping) -> Inputs:
    """Read and check every input of a resolved spec; nothing is written."""
    tables: dict = {}
    survival = load_survival(spec["survival"], tables)
    _check_patient_ids(survival.index, spec["survival"]["path"])
    groups = load_omics(spec["omics"], spec["survival"], tables)
    images = spec["images"]
    layout = layout_of(images) if images else None  # how its image folder is read
    files = layout.find_files(images["dir"], images["patient_regex"]) if layout else {}
    file_splits = split_columns = split_sha256 = None
    if spec["splits"]["kind"] == "file":
        section = spec["splits"]["file"]
        table = read_split_table(section, survival.index)
        file_splits, split_columns = table.splits(table.sides), table.columns
        split_sha256 = sha256_file(Path(section["path"]))
    known = set(survival.index)
    dropped = []
    if layout:  # files of the image folder that are no image of the cohort: listed, not lost
        for path, why in layout.skipped_entries(images["dir"]):
            dropped.append(
                {"patient": None, "unit": path.name, "reason": f"not an image file: {path}: {why}"}
            )
    others = {p: f"omics table {g.path}" for g in groups.values() for p in g.values.index}
    others.update({p: f"{len(f)} image files in {images['dir']}" for p, f in files.items()})
    for patient in sorted(set(others) - known):
        dropped.append(
            {
                "patient": patient,
                "unit": None,
                "reason": f"no survival record: in {others[patient]} only",
            }
        )
    vectors = {name: _omics_vectors(g, survival.index) for name, g in groups.items()}
    image_format = placeholder = None
    if layout:
        all_files = [p for patient_files in files.values() for p in patient_files]
        image_format = layout.image_format(images, all_files)
        if spec["missing"] == "mask":
            size = layout.unit_size(images, all_files[0])
            placeholder = image_units.placeholder(image_format, size)
    tasks = []
    for patient, record in survival.iterrows():
        omics, unavailable = {}, {}
        for name in groups:
            omics[name], why = vectors[name][patient]
            if why:
                unavailable[name] = why
        if images and patient not in files:
            unavailable["image"] = f"no image file in {images['dir']}"
        tasks.append(
            PatientTask(
                patient=patient,
                time=float(record["time"]),
                event=int(record["event"]),
                omics=omics,
                sizes={n: len(g.columns) for n, g in groups.items()},
                unavailable=unavailable,
                files=tuple(str(p) for p in files.get(patient, ())),
                images=images,
                missing=spec["missing"],
                image_format=image_format,
                placeholder=placeholder,
            )
        )
    return Inputs(tasks, groups, dropped, file_splits, image_format, split_columns, split_sha256)


# --------------------------------------------------------------------------- build


def _worker_init() -> None:
    """Workers die on SIGTERM whatever handler the parent installed, and leave Ctrl-C to the
    parent (which stops them)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _serve(conn) -> None:
    """A build worker: prepare each patient it is sent and send back (True, result) or
    (False, the exception), until None or the pipe closes."""
    _worker_init()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            reply = (True, prepare_patient(task))
        except Exception as exc:  # the parent raises it
            reply = (False, exc)
        try:
            conn.send(reply)
        except OSError:  # the parent stopped listening
            return
        except Exception as exc:  # an exception that does not pickle: its text then
            conn.send((False, RuntimeError(f"{type(exc).__name__}: {reply[1]}")))


def _results(tasks: list[PatientTask], workers: int) -> Iterator[PatientResult]:
    """Results of `prepare_patient` in task order, from `workers` processes (or in-process).

    Each worker has its own pipe and at most one task at a time; the parent hands the next
    task to whichever worker is idle and reorders, keeping at most 4 * workers results ahead of
    the one it waits for. Nothing is shared between processes, so stopping early (an error in
    the parent, a full disk, SIGTERM) just terminates the workers: multiprocessing.Pool's
    terminate could deadlock on its shared result queue when a worker was killed mid-send.
    A worker that dies (out of memory) is an error naming its patient, not a hang.
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(prepare_patient, tasks)
        return
    # fork: the workers inherit the imported modules instead of importing torch again each
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    procs, conns = [], []
    try:
        for _ in range(min(workers, len(tasks))):
            conn, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child,), daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(conn)
        idle, running = list(range(len(procs)))[::-1], {}  # worker -> task index
        ready: dict[int, PatientResult] = {}
        sent = done = 0
        while done < len(tasks):
            while idle and sent < len(tasks) and sent - done < 4 * len(procs):
                worker = idle.pop()
                conns[worker].send(tasks[sent])
                running[worker] = sent
                sent += 1
            if done in ready:
                yield ready.pop(done)
                done += 1
                continue
            for conn in multiprocessing.connection.wait([conns[w] for w in running]):
                worker = conns.index(conn)
                index = running.pop(worker)
                try:
                    ok, value = conn.recv()
                except EOFError:
                    procs[worker].join()
                    raise PgoError(
                        f"build worker {procs[worker].pid} ended (exit code "
                        f"{procs[worker].exitcode}; a negative code is the signal, e.g. -9 when "
                        f"out of memory) while preparing patient {tasks[index].patient!r}"
                    ) from None
                if not ok:
                    raise value
                ready[index] = value
                idle.append(worker)
    finally:  # normally every worker is idle in recv(); SIGTERM ends it wherever it is
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        for conn in conns:
            conn.close()


def _image_manifest(images: Mapping | None, fmt: str | None, sizes: set) -> dict | None:
    """The manifest's `image` entry: field format, kind of unit, size when all units share it."""
    if images is None:
        return None
    return {
        "format": fmt,
        "kind": layout_of(images).manifest_kind(images),
        "size": list(next(iter(sizes))) if len(sizes) == 1 else None,
    }


def _shard_entry(path: Path, held: Mapping[str, list[str]]) -> dict:
    """The manifest entry of a written shard: shard_record plus `patients`, [[patient, units],
    ...] in sample order (a patient may continue in the next shard), which lets a loader rank
    choose its shards from the manifest without reading them."""
    record = shard_record(path)
    runs = patient_runs(held.get(path.name, []))
    if sum(n for _, n in runs) != record["samples"]:  # the writer and the file disagree: a bug
        raise PgoError(
            f"shard {path}: {record['samples']} samples on disk, {sum(n for _, n in runs)} "
            "written; the build's shard layout is inconsistent"
        )
    return {**record, "patients": runs}


def _patient_table(
    directory: Path, rows: Mapping[str, dict], groups: list[str], missing: str
) -> dict:
    """Write the patient table (hpc_pgo.data.sidecar) from each patient's first sample (every
    unit of a patient carries the same omics and mask) and return its manifest record."""
    patients = list(rows)
    values = {
        g: np.stack([load_npy(rows[p][f"{g}.npy"]) for p in patients]).reshape(len(patients), -1)
        for g in groups
    }
    available = None
    if missing == "mask":
        masks = [json.loads(rows[p]["mask.json"]) for p in patients]
        available = {g: np.array([bool(m[g]) for m in masks]) for g in groups}
    return write_patient_table(directory, patients, values, available)


def write_shards(
    inputs: Inputs,
    spec: Mapping,
    directory: Path,
    *,
    workers: int,
    progress: bool,
    shard_size_mb: float,
    shard_max_count: int,
) -> dict:
    """Write the samples of every task into `directory` and return the manifest."""
    patients: dict[str, dict] = {}
    dropped = list(inputs.dropped)
    sizes: set = set()
    units = 0
    held: dict[str, list[str]] = {}  # shard name -> the patient of each of its samples, in order
    rows: dict[str, dict] = {}  # patient -> its first sample: its row of the patient table
    pattern = str(directory).replace("%", "%%") + "/" + SHARD_PATTERN
    hold = Hold.from_env("build")  # HPC_PGO_HOLD, set by tests only (hpc_pgo.hold)
    if spec["images"] is None:
        # Without images a sample is a few .npy encodings (microseconds): shipping the vectors
        # to a worker and the bytes back costs the main process more than encoding them.
        workers = 1
    bar = tqdm(
        total=len(inputs.tasks),
        unit="patient",
        disable=not progress,
        desc=f"pgo-shards build {spec['cohort']}",
    )
    with (
        bar,
        wds.ShardWriter(
            pattern,
            maxcount=shard_max_count,
            maxsize=shard_size_mb * 2**20,
            verbose=0,
            encoder=False,
            **TAR_OPTIONS,
        ) as sink,
    ):
        prepared = zip(inputs.tasks, _results(inputs.tasks, workers), strict=True)
        for done, (task, result) in enumerate(prepared, start=1):
            for sample in result.samples:
                sink.write(sample)
                held.setdefault(Path(sink.fname).name, []).append(task.patient)
            dropped += result.dropped
            sizes |= result.sizes
            if result.samples:
                rows[task.patient] = result.samples[0]
                units += len(result.samples)
                patients[task.patient] = {
                    "units": len(result.samples),
                    "time": task.time,
                    "event": task.event,
                }
            bar.update()
            if hold is not None:  # tests only: k patients staged, the build not finished
                hold.at(done)
    if not patients:
        raise PgoError(
            f"cohort {spec['cohort']}: every patient was dropped "
            f"({len(dropped)} entries, e.g. {dropped[0]['patient']}: "
            f"{dropped[0]['reason']})"
            if dropped
            else f"cohort {spec['cohort']}: the survival table has no patient"
        )
    kept = set(patients)
    splits = spec["splits"]
    source = split_source(splits)
    folds = (
        restrict(inputs.file_splits, kept, source, inputs.split_columns)
        if inputs.file_splits is not None
        else SPLITTERS[splits["kind"]](splits, sorted(kept))
    )
    _warn_deathless_tests(spec["cohort"], folds, patients)
    split_record = {"kind": splits["kind"], "source": source, "folds": folds}
    if inputs.file_splits is not None:  # fold i is the file's column columns[i]
        split_record.update(columns=inputs.split_columns, sha256=inputs.split_sha256)
    return {
        "schema_version": SCHEMA_VERSION,
        "cohort": spec["cohort"],
        "created_by": f"hpc_pgo {hpc_pgo.__version__}",
        "groups": {name: g.columns for name, g in inputs.groups.items()},
        "genes": {name: g.genes for name, g in inputs.groups.items()},
        "image": _image_manifest(spec["images"], inputs.image_format, sizes),
        "counts": {
            "patients": len(patients),
            "units": units,
            "events": sum(p["event"] for p in patients.values()),
        },
        "patients": patients,
        "shards": [_shard_entry(p, held) for p in sorted(directory.glob(SHARD_GLOB))],
        "splits": split_record,
        OMICS_TABLE_KEY: _patient_table(directory, rows, list(inputs.groups), spec["missing"]),
        "dropped": sorted(dropped, key=lambda d: (d["patient"] or "", d["unit"] or "")),
        "missing": spec["missing"],
        "spec": dict(spec),
    }


def _warn_deathless_tests(cohort: str, folds: list, patients: Mapping[str, Mapping]) -> None:
    """A logged warning per split whose test patients hold no death: that fold's C-index is
    undefined (launch/submit.py refuses the fold). The shard set is still written."""
    for k, fold in enumerate(folds):
        if not any(patients[p]["event"] == 1 for p in fold["test"]):
            log.warning(
                "cohort %s: split %d (fold %d) has no death among its %d test patients: its "
                "C-index is undefined, and launch/submit.py refuses folds=%d on this shard set",
                cohort, k, k, len(fold["test"]), k,
            )  # fmt: skip


def build_cohort(
    spec: Mapping | Path | str,
    out_dir: Path | str,
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
    shard_max_count: int = DEFAULT_SHARD_MAX_COUNT,
) -> dict:
    """Build the cohort described by `spec` (a dict, or a YAML file) into `out_dir`.

    Returns the manifest (also written as out_dir/manifest.json). Deterministic: the same
    inputs give byte-identical shards and manifest, whatever `workers` is. Shards hold at most
    `shard_max_count` samples and close once they pass `shard_size_mb` MiB. An existing
    shard set at `out_dir` is replaced only with `force`. Raises PgoError on bad input, and
    then leaves nothing at `out_dir`.
    """
    spec = load_spec(spec) if isinstance(spec, str | Path) else resolve_spec(spec, Path.cwd())
    out = Path(out_dir).expanduser().resolve()
    spec["cohort"] = spec["cohort"] or out.name
    if shard_size_mb <= 0 or shard_max_count < 1:
        raise PgoError(
            f"shard limits: size {shard_size_mb} MB and count {shard_max_count} must be positive"
        )
    workers = default_workers() if workers is None else workers
    check_output_dir(out, force)
    inputs = gather_inputs(spec)
    with staged_output(out) as tmp:
        manifest = write_shards(
            inputs,
            spec,
            tmp,
            workers=workers,
            progress=progress,
            shard_size_mb=shard_size_mb,
            shard_max_count=shard_max_count,
        )
        write_manifest(tmp, manifest)
        # every shard was hashed as it was written: record it verified (rename(2) of the
        # directory keeps the files' sizes and mtimes, so the record holds at `out`)
        entries = [verified_entry(tmp / s["name"], s["sha256"]) for s in manifest["shards"]]
        write_verified(tmp, manifest, entries)
    c = manifest["counts"]
    log.info(
        "built %s: %d patients, %d units, %d shards, %d dropped",
        out,
        c["patients"],
        c["units"],
        len(manifest["shards"]),
        len(manifest["dropped"]),
    )
    return manifest
