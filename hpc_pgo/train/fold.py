"""Train one cross-validation fold of a config on shards: ``train_fold(cfg, fold, run_dir) -> metrics``.

Runs on every rank of the fold, in a plain process, under torchrun or inside a submitit task
(the caller only sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or nothing for one
process); it knows nothing of Slurm. What it writes, in ``RUN_DIR/fold_<k>/``:

    config.yaml        the resolved config the fold trains (compared on resume)
    standardizer.json  omics z-score statistics of the fold's train patients (rank 0 fits them)
    modulation.csv     one row per optimizer step: step, epoch, rho_g, rho_p, k_g, k_p, loss,
                       cindex_g, cindex_p (Harrell's C of each branch part on the step's global
                       batch); rho and cindex_* NaN without per-modality theta, k = 1 outside the
                       balance window
    tensorboard/       the same scalars (and lr per group) for TensorBoard, rank 0
    checkpoints/       DeepSpeed checkpoints (Engine.save: atomic, ``latest`` names the last
                       complete one), every train.checkpoint_every epochs, every
                       train.steps_per_checkpoint steps when set, when a budget runs out, at the end;
                       only the newest is kept
    predictions.csv    patient, unit, hazard (theta, log hazard, higher = worse), time, event: one
                       row per test unit (with a bag encoder, model.image.encoder=mean|abmil: one
                       row per test patient, unit "bag"), from the FINAL model, or with
                       train.val_fraction > 0 from the weights of the epoch chosen on validation
                       patients (never on the test split);
                       with a concat head on both modalities also hazard_genomic, hazard_image:
                       the branch parts theta^G, theta^P (hazard = their sum)
    attention.csv      model.image.encoder=abmil only: patient, unit (the unit name, without
                       "<patient>__"), attention (the gated-attention softmax weight of the tile in
                       its patient's bag; sums to 1 per patient): one row per test tile, from the
                       same weights as predictions.csv, written before metrics.json
    metrics.json       fold C-index (patients' mean hazard, Harrell) and, with the branch parts,
                       cindex_genomic / cindex_image (each part scored alone, same protocol); loss
                       per epoch, wall time, config_digest; with validation also chosen_epoch,
                       chosen_step, val_cindex, val_cindex_per_epoch, n_val_patients/units/events;
                       written LAST: it marks the fold complete
    error.txt          on a failure inside training (NaN loss, bad input): one line, then details

The loop, per epoch e: ``make_loader(split="train", epoch=e, rank, world_size)`` (the stream is
fixed by (seed, epoch, rank, world size, batch size)), ``Engine.train_step`` per batch. With a
bag encoder (model.image.encoder=mean|abmil) the loader is ``make_bag_loader`` instead: one
sample per patient, its bag of frozen tile features from the shard set's side-car
(hpc_pgo.data.bags; train.batch_size counts patients), refused when it is another feature set
than data.tile_features names (check_feature_set); the rest of the fold is the same. Before
every step the torch RNG is seeded from (seed, fold, step, rank), so dropout masks depend on the
step, not on the history of the process: a run resumed from a checkpoint at (epoch, batch) skips
the batches already done and continues bit for bit as the uninterrupted run would. The loop
asks a ``FoldCheckpointer`` after each step whether a checkpoint is due and has it save one; the
same object resumes a call from the newest checkpoint, refusing one of another config or another
number of ranks.

Validation (train.val_fraction > 0, hpc_pgo.train.validation): a seeded, event-stratified share
of the fold's train patients is held out (not trained on, not in the z-score statistics). After
every epoch each rank scores its share of their units (like the test pass) and the rows are
gathered on every rank, so every rank computes the same Harrell's C and makes the same choice;
the weights of the best epoch so far are kept in memory and in every checkpoint's client state
(with the validation curve), so a resumed fold chooses exactly as an uninterrupted one. The test
predictions come from those weights.

Budgets (train.stop_after_steps, train.stop_after_minutes, or ``request_stop()`` from a signal
handler) end a call early: the fold checkpoints and returns ``{"status": "stopped", ...}``; the
next call resumes. A NaN loss stops the fold with a PgoError; the last good checkpoint stays.
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.atomic import write_text
from hpc_pgo.config import EXECUTION_KEYS, config_digest, save_config
from hpc_pgo.config.registry import reads_bags
from hpc_pgo.data.inner import fold_of
from hpc_pgo.engine.distributed import DistEnv, any_rank
from hpc_pgo.engine.global_batch import micro_batch
from hpc_pgo.errors import PgoError
from hpc_pgo.fold_outputs import (
    ATTENTION,
    CHECKPOINTS,
    ERROR,
    METRICS,
    MODULATION,
    PREDICTIONS,
    STANDARDIZER,
    TENSORBOARD,
    finished,
    fold_dir,
    read_metrics,
    refuse_other_config,
)
from hpc_pgo.hold import Hold
from hpc_pgo.train.validation import EpochSelection, validation_patients

if TYPE_CHECKING:
    from hpc_pgo.data.folds import FoldData
    from hpc_pgo.engine.engine import Engine

log = logging.getLogger(__name__)

MODULATION_COLUMNS = (
    "step", "epoch", "rho_g", "rho_p", "k_g", "k_p", "loss", "cindex_g", "cindex_p",
)  # fmt: skip
# predictions.csv columns beyond the five of hpc_pgo.survival.protocol, written when the head
# splits additively (concat, both modalities): each branch's part theta^m = W^m m + b/2 per unit
BRANCH_COLUMNS = {"hazard_genomic": "theta_g", "hazard_image": "theta_p"}
# EXECUTION_KEYS include the budgets (train.stop_after_*, steps_per_checkpoint): they decide how
# far one call goes, not what the fold computes, so a run may resume with other values.
RESUME_EXCLUDE = EXECUTION_KEYS
_TEST_BATCH = 64  # units (bags) per evaluation batch and rank (no gradient: memory is no limit)
BAG_UNIT = "bag"  # the unit of a bag encoder's prediction row: one per patient

# A loader factory: loader(split, epoch, batch_size) -> this rank's batches of the fold's split.
Loader = Callable[[str, int, int], Any]

_stop_requested = False


def request_stop() -> None:
    """Ask the running fold to checkpoint after its current step and return (e.g. from a signal
    handler before a time limit). Every rank's request counts; the ranks agree by all-reduce."""
    global _stop_requested
    _stop_requested = True


def _clear_stop_request() -> None:
    global _stop_requested
    _stop_requested = False


# --------------------------------------------------------------------------- the fold


@dataclass(frozen=True)
class FoldInputs:
    """What a fold trains on, opened and checked before any process group starts.

    data: the fold's FoldData (with train.val_fraction > 0 its held-out patients in data.val,
    the train split without them); model: built from cfg.model, identical initial weights on
    every rank; groups: the omics groups the model reads (z-scored), embeddings: the
    per-patient embedding fields of `pgo-shards embed-rna` it reads (served as stored), each
    sorted; image_size: data.image_size when the model reads images, else None; bags: the
    model's image branch reads bags of tile features (model.image.encoder=mean|abmil), served by
    make_bag_loader with model.image.bag's field and max_tiles.
    """

    data: FoldData
    model: torch.nn.Module
    groups: list[str]
    embeddings: list[str]
    image_size: int | None
    bags: bool = False
    bag_field: str | None = None
    max_tiles: int | None = None

    @classmethod
    def open(cls, cfg: DictConfig, fold: int) -> FoldInputs:
        """Open fold `fold` of cfg.data.shards, build the model, and refuse a shard set that
        lacks a field the model reads (PgoError naming it); with a bag encoder also tile features
        other than those of data.tile_features (check_feature_set)."""
        from hpc_pgo.data.folds import open_fold
        from hpc_pgo.models import build_model

        shards = Path(str(cfg.data.shards))
        data = open_fold(shards, fold)
        fraction = float(OmegaConf.select(cfg, "train.val_fraction", default=0.0) or 0.0)
        if fraction > 0:
            events = {p: r.get("event") for p, r in data.manifest["patients"].items()}
            held = validation_patients(
                data.train, {p: e for p, e in events.items() if e is not None}, fraction,
                seed=int(cfg.seed), fold=fold,
            )  # fmt: skip
            data = open_fold(shards, fold, held)
        embedded = dict(getattr(data, "embeddings", {}))  # field -> width (`pgo-shards embed-rna`)
        feature_dims = {**{group: len(names) for group, names in data.groups.items()}, **embedded}
        uses_image = "image" in cfg.model.modalities
        bag = OmegaConf.select(cfg, "model.image.bag", default=None)
        bags = uses_image and reads_bags(OmegaConf.select(cfg, "model.image.encoder"))
        if bags:  # the side-car of `pgo-shards embed-tiles`; PgoError naming what to run
            from hpc_pgo.data.tile_features import read_tile_features

            features = read_tile_features(data.shard_dir, data.manifest, verify=False)
            check_feature_set(cfg, data.shard_dir, features.record)
            feature_dims[str(bag.field)] = features.dim
        image_size = int(cfg.data.image_size) if uses_image and not bags else None
        torch.manual_seed(int(cfg.seed) + fold)  # identical initial weights on every rank
        model = build_model(cfg.model, feature_dims=feature_dims, image_size=image_size)
        available = set(feature_dims) | ({"image"} if data.image is not None else set())
        model.check_fields(available, source=f"shard set {data.shard_dir} (manifest.json)")
        return cls(
            data=data,
            model=model,
            groups=sorted(f for f in model.required_fields if f in data.groups),
            embeddings=sorted(f for f in model.required_fields if f in embedded),
            image_size=image_size,
            bags=bags,
            bag_field=str(bag.field) if bags else None,
            max_tiles=int(bag.max_tiles) if bags else None,
        )


def check_feature_set(cfg: DictConfig, shard_dir: Path, record: dict) -> None:
    """Refuse tile features other than those the config was submitted for.

    cfg.data.tile_features is the digest of the shard set's feature set that the launcher read
    at submit (hpc_pgo.launch.submission.fill_tile_features); record is the side-car's current
    manifest record. Another digest there means `pgo-shards embed-tiles` recomputed the features
    since: PgoError naming the shard set and both digests. Null (a fold run directly, `python -m
    hpc_pgo.train` or train_fold from a test, with a config that never went through submit):
    the current features are accepted.
    """
    wanted = OmegaConf.select(cfg, "data.tile_features", default=None)
    current = str(record.get("digest"))
    if wanted is None or str(wanted) == current:
        return
    raise PgoError(
        f"shard set {shard_dir}: its tile features are feature set {current[:12]} (manifest.json "
        f"tile_features.digest) but this config was submitted for {str(wanted)[:12]} "
        "(data.tile_features): `pgo-shards embed-tiles` recomputed them since; valid: resubmit "
        "the run (the launcher fills data.tile_features with the current digest; the run_dir "
        "then refuses the other config unless force=true, which retrains its folds), or "
        "data.tile_features=null to train on the current features"
    )


@dataclass(frozen=True)
class FoldRun:
    """One call of train_fold once the process group is up: what every part of it refers to.

    digest: config_digest(cfg), what metrics.json records; started: time.monotonic() when the
    call began (the budgets and wall_time_s count from it).
    """

    cfg: DictConfig
    fold: int
    out: Path
    env: DistEnv
    digest: str
    started: float


def train_fold(cfg: DictConfig, fold: int, run_dir: Path) -> dict:
    """Train fold `fold` of `cfg` and write RUN_DIR/fold_<k>/ (module docstring); the fold's metrics.

    Collective: call it on every rank. Resumes from fold_<k>/checkpoints when a checkpoint
    exists (refusing one written under another config, naming the keys that differ). Returns
    metrics.json's content at once when the fold is complete under the same config_digest,
    unless cfg.force (which starts the fold again). When a budget stops the call early, returns
    {"status": "stopped", "fold", "step", "epoch"} after checkpointing. Raises PgoError on bad
    input and on a NaN/inf loss (error.txt written; the last good checkpoint kept).
    """
    from hpc_pgo.engine import setup_distributed, teardown_distributed

    started = time.monotonic()
    fold = fold_of(cfg, fold)  # an inner training of nested selection opens its inner split
    out = fold_dir(Path(run_dir), fold)
    # RANK is set for every rank of a multi-rank fold; rank 0 alone writes error.txt
    is_main = os.environ.get("RANK", "0") == "0"
    try:
        # Before any process group starts: a complete fold returns at once, bad input fails fast.
        digest = config_digest(cfg)
        done = None if cfg.force else read_metrics(out)
        if done is not None:
            if finished(done, digest):
                log.info("fold %d is complete (%s); nothing to do", fold, out / METRICS)
                return done
            _check_same_config(cfg, out, METRICS)
        inputs = FoldInputs.open(cfg, fold)
        if not dist.is_initialized():
            # The group stays up for later folds in this process (DeepSpeed caches it: a destroyed
            # and re-created group breaks the next engine) and ends at exit (else gloo may abort).
            atexit.register(teardown_distributed)
        env = setup_distributed()
        run = FoldRun(cfg=cfg, fold=fold, out=out, env=env, digest=digest, started=started)
        return _train_fold(run, inputs)
    except PgoError as err:
        if is_main:
            write_text(out / ERROR, f"PgoError: {err}\n")
        raise


def _train_fold(run: FoldRun, inputs: FoldInputs) -> dict:
    """The fold on every rank: prepare its directory, resume, train epoch by epoch (checkpointing
    and validating), then predict the test split and, on rank 0, write the outputs."""
    cfg, fold, env = run.cfg, run.fold, run.env
    if cfg.force:
        if env.is_main:
            _clear_fold(run.out)
        _barrier()
    selection = EpochSelection(enabled=bool(inputs.data.val))
    checkpointer = FoldCheckpointer.for_fold(run, selection)
    _prepare_fold_dir(run, resuming=checkpointer.found)

    standardizer = _standardizer(inputs.data, inputs.groups, run.out, env.is_main)
    _fit_rna_projection(inputs.model, inputs.data, standardizer, env.is_main)
    loader = _loader_factory(run, inputs, standardizer)
    micro = micro_batch(int(cfg.train.batch_size), env.world_size)
    seed, epochs = int(cfg.seed), int(cfg.train.epochs)

    from hpc_pgo.engine import build_engine

    steps_per_epoch = len(loader("train", 0, micro))
    if steps_per_epoch == 0:
        data = inputs.data
        raise PgoError(
            f"fold {fold} of {data.shard_dir} has {data.units('train')} train units, fewer than "
            f"train.batch_size={cfg.train.batch_size}; valid: a smaller train.batch_size"
        )
    engine = build_engine(inputs.model, cfg, steps_per_epoch=steps_per_epoch, dist_env=env)
    start_epoch, start_batch = checkpointer.resume(engine) or (0, 0)

    budget = Budget.from_config(cfg, run.started)
    first_step = engine.global_step if checkpointer.found else 0
    fold_log = FoldLog(run.out, enabled=env.is_main, first_step=first_step)
    bar = _progress(env.is_main, epochs * steps_per_epoch, engine.global_step, fold)
    steps_here = 0
    hold = Hold.from_env("fold", rank=env.rank)  # HPC_PGO_HOLD, set by tests only (hpc_pgo.hold)
    try:
        for epoch in range(start_epoch, epochs):
            skip = start_batch if epoch == start_epoch else 0  # done before the checkpoint
            for b, batch in enumerate(loader("train", epoch, micro)):
                if b < skip:
                    continue
                torch.manual_seed(step_seed(seed, fold, engine.global_step, env.rank))
                stats = engine.train_step(batch, epoch)
                fold_log.step(epoch, stats)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{stats['loss']:.3f}", refresh=False)
                steps_here += 1
                at = (epoch, b + 1) if b + 1 < steps_per_epoch else (epoch + 1, 0)
                over = budget.spent(steps_here)
                if at[1] == 0 and selection.enabled:  # collective: every rank scores its share
                    value = _validation_cindex(engine, loader, fold)
                    selection.record(epoch, value, engine)
                    fold_log.scalar("val/cindex", value, engine.global_step)
                periodic = checkpointer.due(at, engine.global_step)
                if periodic:
                    checkpointer.save(*at)
                if hold is not None:  # tests only: step k done and saved, its stop check to come
                    hold.at(engine.global_step, lambda: _stop_requested)
                stop = any_rank(over or _stop_requested)
                if stop and not periodic:
                    checkpointer.save(*at)
                if stop and at[0] < epochs:
                    _clear_stop_request()
                    log.info(
                        "fold %d: stopped at step %d by its budget; checkpoint saved",
                        fold,
                        engine.global_step,
                    )
                    return {
                        "status": "stopped",
                        "fold": int(fold),
                        "step": engine.global_step,
                        "epoch": at[0],
                    }
    finally:
        bar.close()
        fold_log.close()

    if selection.enabled:  # the test predictions come from the epoch chosen on validation
        engine.ds.module.load_state_dict(selection.best_state)
    attention: list[dict] = []
    predictions = _predict(engine, loader, fold, attention=attention)
    metrics = None
    if env.is_main:
        metrics = _finish(
            run,
            predictions,
            attention=attention,
            engine=engine,
            wall_s=checkpointer.wall_s(),
            calls=checkpointer.calls,
            validation=selection.metrics(inputs.data) if selection.enabled else {},
        )
    return _from_rank0(metrics)


# --------------------------------------------------------------------------- before the loop


def _clear_fold(out: Path) -> None:
    """Remove a fold's outputs (force=true), keeping the directory."""
    if not out.is_dir():
        return
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _prepare_fold_dir(run: FoldRun, *, resuming: bool) -> None:
    """Refuse a checkpoint of another config; rank 0 creates the fold directory, removes an old
    error.txt and, on a fresh start, an old modulation.csv, and writes config.yaml."""
    if resuming:
        _check_same_config(run.cfg, run.out, f"the checkpoint in {run.out / CHECKPOINTS}")
    if run.env.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / ERROR).unlink(missing_ok=True)
        if not resuming:
            (run.out / MODULATION).unlink(missing_ok=True)
            save_config(run.cfg, run.out)
    _barrier()


def _check_same_config(cfg: DictConfig, out: Path, what: str) -> None:
    """Refuse to continue `what` (a checkpoint, finished outputs) written under another config."""
    refuse_other_config(
        cfg, out, f"{out}: {what} was written by another config", "start the fold again"
    )


def _standardizer(data: FoldData, groups: list[str], out: Path, is_main: bool):
    """Rank 0 fits the fold's z-score statistics once and saves them; every rank loads the file."""
    from hpc_pgo.data.standardizer import Standardizer

    if not groups:
        return None
    path = out / STANDARDIZER
    if is_main and not path.is_file():
        Standardizer.fit(data.shard_dir, data.train, groups).save(path)
    _barrier()
    return Standardizer.load(path)


def _fit_rna_projection(model, data: FoldData, standardizer, is_main: bool) -> None:
    """model.genomic.rna_pcs > 0: rank 0 fits the RNA principal components on the fold's
    training patients (validation patients excluded; one z-scored row per patient) and every
    rank takes its buffers. A resumed fold fits them again and the checkpoint's copy, the same
    values, replaces them."""
    genomic = getattr(model, "genomic", None)
    projection = None if genomic is None else genomic.rna_projection
    if projection is None:
        return
    from hpc_pgo.train.coxph import patient_matrix

    state = None
    if is_main:
        field = genomic.rna.field
        values, _ = patient_matrix(
            data.shard_dir, data.fold, "train", [field], standardizer, holdout=data.val
        )
        genomic.fit_rna_projection(torch.from_numpy(values))
        state = projection.state_dict()
    projection.load_state_dict(_from_rank0(state))


def _loader_factory(run: FoldRun, inputs: FoldInputs, standardizer) -> Loader:
    """loader(split, epoch, batch_size): make_loader of this rank's share of the fold's `split`
    (train, val, test), the stream fixed by (seed, epoch, rank, world size, batch size); with a
    bag encoder make_bag_loader (batches of patients) instead."""
    from hpc_pgo.data.bags import make_bag_loader
    from hpc_pgo.data.loader import make_loader

    cfg, data = run.cfg, inputs.data
    extra: dict[str, Any] = {}
    if inputs.embeddings:  # passed only when the model reads embedding fields
        extra["embeddings"] = inputs.embeddings
    if data.val:  # the train split without, and a "val" split of, the held-out patients
        extra["holdout"] = data.val
    if inputs.bags:
        make, extra = make_bag_loader, {
            **extra, "field": inputs.bag_field, "max_tiles": inputs.max_tiles,
        }  # fmt: skip
    else:
        make, extra = make_loader, {**extra, "image_size": inputs.image_size}

    def loader(split: str, epoch: int, batch_size: int):
        return make(
            data.shard_dir, run.fold, split, batch_size=batch_size, groups=inputs.groups,
            standardizer=standardizer, rank=run.env.rank,
            world_size=run.env.world_size, epoch=epoch, seed=int(cfg.seed),
            num_workers=int(cfg.train.num_workers), shuffle_buffer=int(cfg.train.shuffle_buffer),
            **extra,
        )  # fmt: skip

    return loader


# --------------------------------------------------------------------------- inside the loop


def step_seed(seed: int, fold: int, step: int, rank: int) -> int:
    """The torch seed of optimizer step `step` on `rank`: a fixed function of its arguments."""
    return (((seed * 1_000_003 + fold) * 1_000_033 + step) * 1_009 + rank) % (2**63 - 1)


@dataclass(frozen=True)
class Budget:
    """How far one call may go: `steps` optimizer steps (train.stop_after_steps) or `seconds`
    since `started` (train.stop_after_minutes); None is no limit."""

    steps: int | None
    seconds: float | None
    started: float

    @classmethod
    def from_config(cls, cfg: DictConfig, started: float) -> Budget:
        minutes = cfg.train.stop_after_minutes
        return cls(
            steps=cfg.train.stop_after_steps,
            seconds=None if minutes is None else 60.0 * minutes,
            started=started,
        )

    def spent(self, steps_done: int) -> bool:
        """True once this call has done `steps` steps or run `seconds`."""
        return (self.steps is not None and steps_done >= self.steps) or (
            self.seconds is not None and time.monotonic() - self.started >= self.seconds
        )


@dataclass
class FoldCheckpointer:
    """The fold's DeepSpeed checkpoints in <fold dir>/checkpoints: resume, the periodic rule, save.

    found: a checkpoint exists (``latest``) and the call may resume from it (not under force).
    resume(engine) binds the engine and, when found, restores it; save() writes the engine with a
    client state of the position to continue from, the config digest,
    the world size, the wall time and calls so far, and the EpochSelection's state. wall_s() and
    calls are the fold's totals over all its calls.
    """

    out: Path  # the fold directory
    fold: int
    world_size: int
    is_main: bool
    epochs: int
    every_epochs: int  # train.checkpoint_every
    every_steps: int | None  # train.steps_per_checkpoint
    digest: str  # config_digest without RESUME_EXCLUDE: what a resumed call must match
    selection: EpochSelection
    started: float
    may_resume: bool = True
    engine: Engine | None = field(default=None, init=False)
    wall_before: float = field(default=0.0, init=False)
    calls: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        self.directory = self.out / CHECKPOINTS
        self.found = (self.directory / "latest").is_file() and self.may_resume

    @classmethod
    def for_fold(cls, run: FoldRun, selection: EpochSelection) -> FoldCheckpointer:
        """The checkpointer of run's fold, its rule from train.checkpoint_every (epochs) and
        train.steps_per_checkpoint; it does not resume under force."""
        cfg = run.cfg
        every_steps = cfg.train.steps_per_checkpoint
        return cls(
            run.out,
            fold=run.fold,
            world_size=run.env.world_size,
            is_main=run.env.is_main,
            epochs=int(cfg.train.epochs),
            every_epochs=int(cfg.train.checkpoint_every),
            every_steps=None if every_steps is None else int(every_steps),
            digest=config_digest(cfg, exclude=RESUME_EXCLUDE),
            selection=selection,
            started=run.started,
            may_resume=not cfg.force,
        )

    def resume(self, engine: Engine) -> tuple[int, int] | None:
        """Bind `engine` (what save() writes); when a checkpoint was found, load it into engine
        and return the (epoch, batch) to continue from, else None.

        Refuses (PgoError) a checkpoint of another config or of another number of ranks (the
        data stream depends on it). Restores the wall time, the count of calls and the
        validation state; rank 0 drops the modulation.csv rows of steps after the checkpoint.
        """
        self.engine = engine
        if not self.found:
            return None
        ckpt_dir, digest, world = self.directory, self.digest, self.world_size
        state = engine.load(ckpt_dir)
        if state.get("config_digest") != digest:
            raise PgoError(
                f"{ckpt_dir}: checkpoint of another config (config digest "
                f"{str(state.get('config_digest'))[:12]}..., this config {digest[:12]}...); "
                "valid: the same config, another run_dir, or force=true"
            )
        if state.get("world_size") != world:
            raise PgoError(
                f"{ckpt_dir}: checkpoint written by {state.get('world_size')} rank(s), this run "
                f"has {world}; the data stream depends on it; valid: the same ranks per fold"
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        self.wall_before, self.calls = float(state["wall_s"]), int(state["calls"]) + 1
        self.selection.restore(state)
        if self.is_main:
            _truncate_modulation(self.out / MODULATION, engine.global_step)
        log.info(
            "fold %d: resumed at epoch %d, batch %d (step %d)",
            self.fold,
            epoch,
            batch,
            engine.global_step,
        )
        return epoch, batch

    def due(self, at: tuple[int, int], step: int) -> bool:
        """Whether the periodic rule asks for a checkpoint once optimizer step `step` is done and
        training continues at `at` = (epoch, batch): at the end of an epoch (batch 0) when the
        epochs done are a multiple of every_epochs or are all of them, and every every_steps
        steps when set."""
        next_epoch, next_batch = at
        end_of_epoch = next_batch == 0
        return (
            end_of_epoch and (next_epoch % self.every_epochs == 0 or next_epoch == self.epochs)
        ) or (self.every_steps is not None and step % self.every_steps == 0)

    def save(self, next_epoch: int, next_batch: int) -> None:
        """Checkpoint the bound engine to continue at (next_epoch, next_batch); rank 0 then
        deletes the older step tags. Collective."""
        state = {
            "epoch": next_epoch, "batch": next_batch, "config_digest": self.digest,
            "world_size": self.world_size, "wall_s": self.wall_s(), "calls": self.calls,
            "fold": int(self.fold), **self.selection.state(),
        }  # fmt: skip
        tag = self.engine.save(self.directory, client_state=state)
        if self.is_main:
            _prune_checkpoints(self.directory, tag)

    def wall_s(self) -> float:
        """Seconds this fold has trained, over all its calls up to now."""
        return self.wall_before + time.monotonic() - self.started


def _truncate_modulation(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= last_step (those after the checkpoint will be trained again)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if int(float(r["step"])) <= last_step]
    lines = [",".join(MODULATION_COLUMNS)] + [
        ",".join(r[c] for c in MODULATION_COLUMNS) for r in rows
    ]
    write_text(path, "\n".join(lines) + "\n")


def _prune_checkpoints(ckpt_dir: Path, keep: Path) -> None:
    """Delete every step tag but `keep` (checkpoints hold the optimizer state: they are large)."""
    for child in ckpt_dir.iterdir():
        if child.is_dir() and child.name.startswith("step") and child != keep:
            shutil.rmtree(child, ignore_errors=True)


class FoldLog:
    """Rank 0's per-step log: modulation.csv (appended, flushed per row) and TensorBoard scalars."""

    def __init__(self, out: Path, *, enabled: bool, first_step: int) -> None:
        self.enabled = enabled
        self.csv = None
        self.tb = None
        if not enabled:
            return
        path = out / MODULATION
        new = not path.is_file()
        self.csv = path.open("a", encoding="utf-8")
        if new:
            self.csv.write(",".join(MODULATION_COLUMNS) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides the events of steps after the checkpoint (step first_step) that an
        # interrupted call logged; they are trained and logged again
        self.tb = SummaryWriter(
            str(out / TENSORBOARD), purge_step=first_step + 1 if first_step else None
        )

    def step(self, epoch: int, stats: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        step = int(stats["step"])
        row = {**stats, "step": step, "epoch": epoch}
        self.csv.write(",".join(_fmt(row[c]) for c in MODULATION_COLUMNS) + "\n")
        self.csv.flush()
        for key, value in stats.items():
            if key != "step" and math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, step)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if self.enabled and value is not None and math.isfinite(value):
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _progress(enabled: bool, total: int, initial: int, fold: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"fold {fold}",
        unit="step",
        disable=not enabled,
        mininterval=1.0,
    )


def _validation_cindex(engine: Engine, loader: Loader, fold: int) -> float | None:
    """Harrell's C (patients' mean hazard) of the current weights on the validation patients;
    None when they have no comparable pair. Collective, like the test pass."""
    import pandas as pd

    from hpc_pgo.survival import fold_cindex

    rows = _predict(engine, loader, fold, split="val")
    frame = pd.DataFrame(rows, columns=["patient", "unit", "hazard", "time", "event"])
    try:
        return float(fold_cindex(frame, where=f"fold {fold} validation"))
    except PgoError:
        return None


# --------------------------------------------------------------------------- after the loop


@torch.no_grad()
def _predict(
    engine: Engine,
    loader: Loader,
    fold: int,
    split: str = "test",
    *,
    attention: list[dict] | None = None,
) -> list[dict]:
    """theta of every unit of `split` (test, val) once (each rank its share), gathered on every rank.

    A bag batch (hpc_pgo.data.bags: its samples are patients, "units" lists each bag's tiles)
    gives one row per patient, unit "bag". attention: when given and the model outputs
    attention weights (abmil), it receives one row {patient, unit, attention} per tile, gathered
    and sorted like the predictions.
    """
    rows, weights = [], []
    for batch in loader(split, 0, _TEST_BATCH):
        if not batch["key"]:
            continue
        outputs = {k: v.cpu().double().tolist() for k, v in engine.eval_outputs(batch).items()}
        bag_units = batch.get("units")
        for i, key in enumerate(batch["key"]):
            patient = batch["patient"][i]
            if bag_units is not None:
                unit = BAG_UNIT
                if attention is not None and "attention" in outputs:
                    weights += [
                        {"patient": patient, "unit": name, "attention": outputs["attention"][i][j]}
                        for j, name in enumerate(bag_units[i])
                    ]
            else:
                unit = key[len(patient) + 2 :] if key.startswith(patient + "__") else key
            row = {
                "patient": patient, "unit": unit, "hazard": outputs["theta"][i],
                "time": float(batch["time"][i]), "event": int(batch["event"][i]),
            }  # fmt: skip
            for column, key_out in BRANCH_COLUMNS.items():
                if key_out in outputs:
                    row[column] = outputs[key_out][i]
            rows.append(row)
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (rows, weights))
        rows = [row for part in parts for row in part[0]]
        weights = [row for part in parts for row in part[1]]
    if attention is not None:
        attention += sorted(weights, key=lambda r: (r["patient"], r["unit"]))
    return sorted(rows, key=lambda r: (r["patient"], r["unit"]))


def _finish(
    run: FoldRun,
    rows: list[dict],
    *,
    attention: Sequence[dict] = (),
    engine: Engine,
    wall_s: float,
    calls: int,
    validation: Mapping[str, Any],
) -> dict:
    """Rank 0: predictions.csv, attention.csv (abmil), then metrics.json (last: it marks the
    fold complete).

    rows: _predict's test rows; attention: its attention rows (empty: no attention.csv);
    wall_s, calls: the fold's totals over all calls; validation: metrics.json's validation keys
    (EpochSelection.metrics), {} without validation.
    """
    import pandas as pd

    from hpc_pgo.survival import fold_cindex, validate_predictions

    out, fold = run.out, run.fold
    branches = [c for c in BRANCH_COLUMNS if rows and c in rows[0]]
    frame = pd.DataFrame(rows, columns=["patient", "unit", "hazard", "time", "event", *branches])
    validate_predictions(frame, where=f"fold {fold} predictions")
    write_text(out / PREDICTIONS, frame.to_csv(index=False, float_format="%.10g"))
    if attention:
        weights = pd.DataFrame(list(attention), columns=["patient", "unit", "attention"])
        write_text(out / ATTENTION, weights.to_csv(index=False, float_format="%.10g"))
    cindex = fold_cindex(frame)
    # each branch's own part of the head (theta^G, theta^P of Eq. 1) scored alone, by the same
    # protocol: the direct view of whether one modality dominates and the other is under-trained
    branch_cindex = {
        f"cindex_{column.removeprefix('hazard_')}": fold_cindex(
            frame.assign(hazard=frame[column]), where=f"fold {fold} {column}"
        )
        for column in branches
    }
    if branches:  # the training-batch C-index of each part, per epoch (who learns when)
        branch_cindex["train_cindex_per_epoch"] = {
            name: per_epoch_mean(out / MODULATION, column)
            for name, column in (("genomic", "cindex_g"), ("image", "cindex_p"))
        }
    losses = loss_per_epoch(out / MODULATION)
    metrics = {
        "fold": int(fold),
        "status": "complete",
        "cindex": cindex,
        **branch_cindex,
        "n_test_patients": int(frame["patient"].nunique()),
        "n_test_units": len(frame),
        "n_test_events": int(frame.groupby("patient")["event"].first().sum()),
        "epochs": int(run.cfg.train.epochs),
        "steps": engine.global_step,
        "loss_per_epoch": losses,
        "loss_first_epoch": losses[0] if losses else None,
        "loss_last_epoch": losses[-1] if losses else None,
        "wall_time_s": round(wall_s, 3),
        "calls": calls,
        "world_size": run.env.world_size,
        "device": run.env.device.type,
        "dtype": str(engine.compute_dtype).replace("torch.", ""),
        "config_digest": run.digest,
        **validation,
    }
    tb_dir = out / TENSORBOARD
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as writer:
        writer.add_scalar("test/cindex", cindex, engine.global_step)
    write_text(out / METRICS, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    log.info("fold %d: C-index %.4f on %d test patients", fold, cindex, metrics["n_test_patients"])
    return metrics


def per_epoch_mean(path: Path, column: str = "loss") -> list[float | None]:
    """Mean of one modulation.csv column per epoch (NaN steps left out; None for an epoch with
    no finite value)."""
    values: dict[int, list[float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value = float(row.get(column) or "nan")
            values.setdefault(int(row["epoch"]), [])
            if math.isfinite(value):
                values[int(row["epoch"])].append(value)
    return [sum(v) / len(v) if v else None for _, v in sorted(values.items())]


def loss_per_epoch(path: Path) -> list[float]:
    """Mean training loss of each epoch, from modulation.csv."""
    return per_epoch_mean(path, "loss")


# --------------------------------------------------------------------------- collectives


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _from_rank0(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
