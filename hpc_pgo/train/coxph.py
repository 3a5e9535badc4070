"""The classical reference: a penalised Cox proportional-hazards model on a fold's omics.

Pathomic Fusion reports Cox baselines beside its networks; every comparison here has one
computed on the same shard set, the same fold, the same train and test patients:

1. one row per patient (a patient's omics ride with each of its image units; the first unit's
   copy is taken: they are identical), the chosen omics groups concatenated in manifest order;
2. each group z-scored with the fold's TRAIN statistics (hpc_pgo.data.standardizer.Standardizer, the
   same transform the networks see);
3. columns that are constant or non-finite on the train patients dropped; then, when pcs > 0,
   the first `pcs` principal components of the centred train matrix (SVD), applied to both
   splits (lifelines' Newton steps diverge on thousands of raw columns for a few hundred
   patients, and each fit takes minutes);
4. lifelines' CoxPHFitter(penalizer, l1_ratio) fitted on the train patients;
5. the log partial hazard of each test patient as its `hazard`, in the prediction table of
   hpc_pgo.survival.protocol (unit = patient), so that the C-index, the paired comparisons and
   the report treat it as any other run's fold.
Nothing is chosen on the test patients: penalizer, l1_ratio and pcs are fixed by the config.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.atomic import write_text
from hpc_pgo.config import config_digest, save_config
from hpc_pgo.errors import PgoError

__all__ = ["coxph_fold", "coxph_fold_predictions", "patient_matrix", "project"]

log = logging.getLogger(__name__)


def project(train: np.ndarray, test: np.ndarray, pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop columns constant or non-finite on train; then, when pcs > 0, the first `pcs`
    principal components of train (SVD of the centred train matrix) applied to both.

    train: (N_train, F), test: (N_test, F) -> (N_train, F'), (N_test, F') with
    F' = min(pcs, kept columns, N_train) when pcs > 0, else the kept columns.
    """
    keep = np.isfinite(train).all(0) & np.isfinite(test).all(0) & (train.std(0) > 0)
    train, test = train[:, keep], test[:, keep]
    if pcs <= 0:
        return train, test
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:pcs].T
    return (train - mean) @ basis, (test - mean) @ basis


def patient_matrix(
    shards: Path | str,
    fold: int,
    split: str,
    groups: Sequence[str],
    standardizer,
    holdout: Sequence[str] = (),
) -> tuple[np.ndarray, pd.DataFrame]:
    """The standardised omics of `groups` for the patients of (fold, split), one row each.

    split: train | val | test; holdout: the fold's train patients held out for validation
    (hpc_pgo.data.folds.open_fold), which "train" then leaves out and "val" serves.
    Returns x: (P, F) float64 and a frame with columns patient, time, event (P rows, sorted by
    patient id). The values are those a fold loader's batch carries (float32 z-scores, a
    masked-out group zero, times as float32), read from the patient table
    (hpc_pgo.data.patients.patient_vectors): no shard is indexed.
    """
    from hpc_pgo.data.folds import open_fold
    from hpc_pgo.data.patients import patient_vectors
    from hpc_pgo.data.standardizer import check_standardizer

    data = open_fold(shards, fold, holdout)
    if standardizer is not None:
        check_standardizer(standardizer, data, groups)
    patients = sorted(data.patients(split))
    vectors = patient_vectors(data.shard_dir, data.manifest, groups, patients)
    masked = data.manifest.get("missing") == "mask"
    columns = []
    for group in groups:
        values = vectors.values[group].astype(np.float32)
        if standardizer is not None:
            values = standardizer.apply(group, values)
        if masked:  # as the loader's collate: an unavailable group is the train mean, 0
            values = values * vectors.available[group].astype(np.float32)[:, None]
        columns.append(values.astype(np.float32, copy=False))
    width = sum(len(data.groups[g]) for g in groups)
    x = np.concatenate(columns, axis=1) if columns else np.zeros((len(patients), width))
    records = data.manifest["patients"]
    frame = pd.DataFrame(
        {
            "patient": patients,
            "time": np.array([records[p]["time"] for p in patients], dtype=np.float32).astype(
                np.float64
            ),
            "event": np.array([records[p]["event"] for p in patients], dtype=int),
        }
    )
    return x.astype(np.float64), frame


def coxph_fold_predictions(
    shards: Path | str,
    fold: int,
    groups: Sequence[str],
    *,
    penalizer: float,
    l1_ratio: float = 0.0,
    pcs: int = 0,
) -> pd.DataFrame:
    """Fit the penalised CoxPH of the module docstring on (fold, train); predict (fold, test).

    Returns the fold's prediction table (patient, unit, hazard, time, event; one row per test
    patient, unit = patient id). Raises PgoError on an empty group list, a negative penalizer,
    l1_ratio outside [0, 1], or a fit that does not converge (lifelines' message, with the fold).
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    from hpc_pgo.data.folds import open_fold
    from hpc_pgo.data.standardizer import Standardizer

    if not groups:
        raise PgoError("coxph: no omics group chosen; valid: one or more manifest groups")
    if not penalizer >= 0:
        raise PgoError(f"coxph: penalizer = {penalizer!r}; valid: a number >= 0")
    if not 0.0 <= l1_ratio <= 1.0:
        raise PgoError(f"coxph: l1_ratio = {l1_ratio!r}; valid: a number in [0, 1]")
    standardizer = Standardizer.fit(shards, open_fold(shards, fold).train, list(groups))
    x_train, train = patient_matrix(shards, fold, "train", groups, standardizer)
    x_test, test = patient_matrix(shards, fold, "test", groups, standardizer)
    x_train, x_test = project(x_train, x_test, pcs)
    columns = [f"f{i}" for i in range(x_train.shape[1])]
    frame = pd.DataFrame(x_train, columns=columns).assign(
        time=train["time"].to_numpy(), event=train["event"].to_numpy()
    )
    try:
        model = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio).fit(
            frame, duration_col="time", event_col="event"
        )
    except ConvergenceError as err:
        first = str(err).strip().splitlines()[0]
        raise PgoError(
            f"coxph fold {fold}: the fit did not converge ({first}); valid: a larger penalizer "
            "or fewer pcs"
        ) from None
    hazard = model.predict_log_partial_hazard(pd.DataFrame(x_test, columns=columns))
    return pd.DataFrame(
        {
            "patient": test["patient"],
            "unit": test["patient"],
            "hazard": np.asarray(hazard, dtype=np.float64),
            "time": test["time"],
            "event": test["event"],
        }
    )


def coxph_fold(cfg: DictConfig, fold: int, run_dir: str | os.PathLike) -> dict:
    """The fold entry of the CoxPH reference (``launch.fold_fn=hpc_pgo.train.coxph.coxph_fold``).

    Writes RUN_DIR/fold_<k>/ as hpc_pgo.train.fold.train_fold does (config.yaml,
    predictions.csv, then metrics.json last, with the config digest), so that the launcher's
    skip rule, the report and the paired comparisons treat it as any other run; keys read:
    data.shards and coxph.{groups, penalizer, l1_ratio, pcs}. Only rank 0 works (a fit takes
    seconds on one core); other ranks return at once. A fold complete under the same config
    returns its metrics without refitting, unless cfg.force.
    """
    from hpc_pgo.data.inner import fold_of
    from hpc_pgo.fold_outputs import (
        DIGEST_KEY,
        ERROR,
        METRICS,
        PREDICTIONS,
        finished,
        fold_dir,
        read_metrics,
    )
    from hpc_pgo.survival import fold_cindex, validate_predictions

    fold = fold_of(cfg, fold)  # an inner training of nested selection opens its inner split
    out = fold_dir(Path(run_dir), fold)
    if os.environ.get("RANK", "0") != "0":
        return {"fold": fold, "status": "complete"}
    digest = config_digest(cfg)
    done = None if cfg.force else read_metrics(out)
    if finished(done, digest):
        return done
    started = time.monotonic()
    settings = cfg.coxph
    try:
        frame = coxph_fold_predictions(
            str(cfg.data.shards), fold, [str(g) for g in settings.groups],
            penalizer=float(settings.penalizer), l1_ratio=float(settings.l1_ratio),
            pcs=int(settings.pcs),
        )  # fmt: skip
        validate_predictions(frame, where=f"coxph fold {fold} predictions")
        cindex = fold_cindex(frame, where=f"coxph fold {fold}")
    except PgoError as err:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / ERROR, f"PgoError: {err}\n")
        raise
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    write_text(out / PREDICTIONS, frame.to_csv(index=False, float_format="%.10g"))
    metrics = {
        "fold": fold,
        "status": "complete",
        "model": "coxph",
        "cindex": cindex,
        "n_test_patients": len(frame),
        "n_test_units": len(frame),
        "n_test_events": int(frame["event"].sum()),
        "coxph": OmegaConf.to_container(settings),
        "wall_time_s": round(time.monotonic() - started, 3),
        "calls": 1,
        DIGEST_KEY: digest,
    }
    (out / ERROR).unlink(missing_ok=True)
    write_text(out / METRICS, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    log.info("coxph fold %d: C-index %.4f on %d test patients", fold, cindex, len(frame))
    return metrics
