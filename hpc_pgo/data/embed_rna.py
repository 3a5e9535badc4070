"""`pgo-shards embed-rna`: frozen scGPT (+ MLP-A) over every patient's bulk RNA once, stored beside the shards.

Input: a built shard set whose RNA group (default `rna`) holds each patient's bulk expression
(`rna.npy`, one vector per patient, the same on each of its units) over the gene symbols
`manifest["genes"][group]`. Each patient's vector is embedded by
`hpc_pgo.models.scgpt.embed_expression` (genes matched to the vocab, the deterministic "top"
gene choice, L2-normalised <cls> output); with `--mlp-a`, MLP-A (checked to have been trained
on this scGPT checkpoint) is applied to that embedding too.

Output: a side-car file `rna_emb.npz` in the shard directory, keyed by patient, and a manifest
record `embeddings` (manifest rewritten atomically; the shards are not touched, so their sha256
in the manifest stay valid and `pgo-shards verify` is unaffected):

    rna_emb.npz   patients: <U (N,) sorted ids; rna_emb: float32 (N, d_model) scGPT embedding;
                  rna_mlpa: float32 (N, out) MLP-A(rna_emb), only with --mlp-a.
                  A zip of .npy members with fixed timestamps: same content, same bytes.
    manifest["embeddings"] = {
      "file": "rna_emb.npz", "sha256": ..., "bytes": ...,
      "fields": {"rna_emb": {"dim": d}, "rna_mlpa": {"dim": out}},
      "recipe": {source group, genes, sha256 of the input values, transform, max_length,
                 selection, seed, min_match, scGPT checkpoint digest, MLP-A file sha256},
      "scgpt": {"digest", "vocab_digest", "d_model"}, "mlp_a": {"sha256", "scgpt_digest", "dims"} | null,
      "genes": {"matched": M, "total": G}, "patients_without_rna": [...]}

Refused before anything is written: an embedding (scGPT's or MLP-A's) holding NaN or inf,
naming the checkpoint, the first such patient and the first non-finite weight tensor.

Idempotent: when the manifest's recipe equals the one these inputs give and the side-car's
sha256 matches, nothing is computed. A patient whose RNA is missing (`--missing mask`, mask 0)
gets a zero embedding and is listed in `patients_without_rna`.

The fold loader serves the fields as batch["rna_emb"] / batch["rna_mlpa"] (float32 (B, d), NOT
standardised: the scGPT embedding is L2-normalised and MLP-A was pretrained on exactly that),
see hpc_pgo.data.loader.make_loader(embeddings=...).

Values must be non-negative expression (counts, TPM, RSEM, log1p of these). TCGA-KIRC's
`_rnaseq` columns are z-scores (negative values): refused unless `--transform exp2|rank` is
given; the model then sees each gene's level relative to the cohort, which is not expression
(see hpc_pgo.models.scgpt.TRANSFORMS).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_pgo.data.members import sha256_file
from hpc_pgo.data.patients import patient_vectors
from hpc_pgo.data.shards import MANIFEST, read_manifest, write_manifest
from hpc_pgo.data.sidecar import SIDE_CAR, write_side_car
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

FIELD_SCGPT = "rna_emb"
FIELD_MLPA = "rna_mlpa"
# hpc_pgo.models.scgpt's TRANSFORMS and PRECISIONS, named here so that the CLI parser does not
# import scgpt (several seconds) for every pgo-shards command
TRANSFORM_NAMES = ("none", "exp2", "rank")
PRECISION_NAMES = ("auto", "fp32", "bf16")


def values_digest(patients: list[str], values: np.ndarray) -> str:
    """sha256 of the patient ids and their float64 values (row-major, little-endian)."""
    h = hashlib.sha256("\n".join(patients).encode())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- embed-rna


@dataclass(frozen=True)
class EmbedOptions:
    """How to embed: see hpc_pgo.models.scgpt.embed_expression for each."""

    group: str = "rna"
    transform: str = "none"
    max_length: int = 1200
    selection: str = "top"
    seed: int = 0
    min_match: float = 0.5
    batch_size: int = 32
    precision: str = "auto"
    device: str | None = None  # None: cuda when available, else cpu


def embed_rna(
    shard_dir: Path | str,
    model_dir: Path | str,
    *,
    mlp_a: Path | str | None = None,
    options: EmbedOptions = EmbedOptions(),
    verify: bool = True,
    progress: bool = True,
    force: bool = False,
) -> tuple[dict, bool]:
    """Embed every patient's RNA of the shard set; returns (the manifest's embeddings record, whether work was done).

    See the module docstring for the output. force=True recomputes even when up to date.
    """
    import torch

    from hpc_pgo.models.scgpt import (
        EmbedReport,
        check_expression,
        checkpoint_digest,
        embed_expression,
        load_mlp_a,
        load_scgpt,
    )

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    if mlp_a is not None and not Path(mlp_a).is_file():
        raise PgoError(f"--mlp-a {str(mlp_a)!r}: no such file (written by launch/pretrain.py)")
    if options.selection != "top":
        log.warning(
            "selection %r: embeddings of samples with more than %d expressed genes are random",
            options.selection,
            options.max_length - 1,
        )
    group = options.group
    if group not in manifest["groups"]:
        have = ", ".join(manifest["groups"]) or "none"
        raise PgoError(
            f"{shard_dir / MANIFEST}: no omics group '{group}' to embed; it has: {have} (--group)"
        )
    vectors = patient_vectors(shard_dir, manifest, [group], verify=verify)
    patients, values, available = vectors.patients, vectors.values[group], vectors.available[group]
    genes = list(
        (manifest.get("genes") or {}).get(options.group) or manifest["groups"][options.group]
    )
    recipe = {
        "group": options.group,
        "genes_sha256": hashlib.sha256("\n".join(genes).encode()).hexdigest(),
        "values_sha256": values_digest(patients, values),
        "transform": options.transform,
        "max_length": options.max_length,
        "selection": options.selection,
        "seed": options.seed,
        "min_match": options.min_match,
        "scgpt_digest": checkpoint_digest(model_dir),
        "mlp_a_sha256": None if mlp_a is None else sha256_file(Path(mlp_a)),
    }
    old = manifest.get("embeddings")
    if not force and old and old.get("recipe") == recipe:
        side_car = shard_dir / old["file"]
        if side_car.is_file() and sha256_file(side_car) == old["sha256"]:
            log.info(
                "%s: embeddings are up to date (same RNA, options and checkpoints); nothing to do",
                shard_dir,
            )
            return old, False

    where = f"{shard_dir / MANIFEST} group '{options.group}'"
    if not available.any():
        raise PgoError(f"{where}: no patient has values to embed")
    check_expression(values[available], transform=options.transform, where=where)  # before loading
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scgpt = load_scgpt(model_dir, device=device)
    mlp = meta = None
    if mlp_a is not None:
        mlp, meta = load_mlp_a(mlp_a, scgpt.digest)
        if meta["vocab_digest"] != scgpt.vocab_sha:
            raise PgoError(
                f"--mlp-a {str(mlp_a)!r} was trained with another gene vocab than {model_dir}/vocab.json"
            )
        if mlp.in_dim != scgpt.d_model:
            raise PgoError(
                f"--mlp-a {str(mlp_a)!r} takes {mlp.in_dim} inputs; this scGPT gives {scgpt.d_model}"
            )
    report = EmbedReport(match=None)
    emb = np.zeros((len(patients), scgpt.d_model), dtype=np.float32)
    emb[available] = embed_expression(
        scgpt,
        values[available],
        genes,
        max_length=options.max_length,
        batch_size=options.batch_size,
        selection=options.selection,
        seed=options.seed,
        transform=options.transform,
        min_match=options.min_match,
        precision=options.precision,
        where=where,
        progress=progress,
        report=report,
    )
    overflow = f"an overflow at precision {options.precision}? (try --precision fp32)"
    _refuse_non_finite(emb, patients, f"scGPT checkpoint {model_dir}", scgpt.model, overflow)
    arrays = {"patients": np.array(patients, dtype=str), FIELD_SCGPT: emb}
    fields = {FIELD_SCGPT: {"dim": scgpt.d_model}}
    if mlp is not None:
        with torch.inference_mode():
            out = mlp(torch.from_numpy(emb)).numpy().astype(np.float32)
        out[~available] = 0.0
        _refuse_non_finite(out, patients, f"MLP-A {mlp_a}", mlp, "an overflow")
        arrays[FIELD_MLPA] = out
        fields[FIELD_MLPA] = {"dim": int(out.shape[1])}
    path = shard_dir / SIDE_CAR
    write_side_car(path, arrays)
    record = {
        "file": SIDE_CAR,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "fields": fields,
        "recipe": recipe,
        "scgpt": {
            "digest": scgpt.digest,
            "vocab_digest": scgpt.vocab_sha,
            "d_model": scgpt.d_model,
        },
        "mlp_a": None
        if meta is None
        else {
            "sha256": recipe["mlp_a_sha256"],
            "scgpt_digest": meta["scgpt_digest"],
            "dims": meta["dims"],
        },
        "genes": {"matched": report.match.n_matched, "total": report.match.n_input},
        "patients_without_rna": [p for p, ok in zip(patients, available, strict=True) if not ok],
    }
    manifest["embeddings"] = record
    write_manifest(shard_dir, manifest)
    log.info(
        "%s: embedded %d patients (%d of %d genes matched) into %s",
        shard_dir,
        int(available.sum()),
        report.match.n_matched,
        report.match.n_input,
        path.name,
    )
    return record, True


def _refuse_non_finite(emb: np.ndarray, patients: list[str], source: str, model, hint: str):
    """A PgoError naming `source` (the checkpoint) when an embedding holds NaN or inf, before
    anything is written: a checkpoint with NaN weights gave an all-NaN rna_emb that the fold
    then trained on. The message names the first such patient and, when the weights themselves
    are not finite, the first such tensor."""
    bad = ~np.isfinite(emb).all(axis=1)
    if not bad.any():
        return
    import torch

    tensors = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if tensors:
        why = (
            f"its weights hold NaN or inf in {len(tensors)} tensor(s), first {tensors[0]!r} "
            "(a diverged or damaged training run)"
        )
    else:
        why = f"its weights are finite: {hint}"
    raise PgoError(
        f"{source}: embeddings hold NaN or inf for {int(bad.sum())} of {len(patients)} patients "
        f"(first {patients[int(np.flatnonzero(bad)[0])]!r}); {why}; nothing was written; valid: "
        "a checkpoint whose weights and embeddings are finite"
    )


# --------------------------------------------------------------------------- command line


def cmd_embed_rna(args) -> int:
    """`pgo-shards embed-rna DIR --scgpt MODEL_DIR [...]`: prints what it wrote, or that nothing was to do."""
    if not 0.0 <= args.min_match <= 1.0:
        raise PgoError(f"--min-match {args.min_match}: valid: a fraction in [0, 1]")
    if args.max_length < 2 or args.batch_size < 1:
        raise PgoError("--max-length must be >= 2 (<cls> + a gene) and --batch-size >= 1")
    options = EmbedOptions(
        group=args.group,
        transform=args.transform,
        max_length=args.max_length,
        selection=args.selection,
        seed=args.seed,
        min_match=args.min_match,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
    )
    record, done = embed_rna(
        args.dir,
        args.scgpt,
        mlp_a=args.mlp_a,
        options=options,
        verify=not args.no_verify,
        progress=not args.no_progress,
        force=args.force,
    )
    fields = ", ".join(f"{name} ({spec['dim']})" for name, spec in record["fields"].items())
    if not done:
        print(f"{args.dir}: embeddings up to date ({fields}); nothing to do")
        return 0
    g = record["genes"]
    print(
        f"embedded {args.dir}: {fields} for {len(read_manifest(args.dir)['patients'])} patients "
        f"into {record['file']}; {g['matched']} of {g['total']} genes in the scGPT vocab"
    )
    return 0


def add_embed_rna_parser(sub) -> None:
    """Register `embed-rna` on pgo-shards' subparsers (without importing scgpt: it takes seconds)."""
    p = sub.add_parser(
        "embed-rna",
        help="frozen scGPT (+ MLP-A) over each patient's bulk RNA, stored beside the shards",
        description="Embed every patient's bulk RNA of a shard set with a frozen scGPT "
        "checkpoint (+ MLP-A), once; writes rna_emb.npz and records it in manifest.json "
        "(hpc_pgo/data/embed_rna.py). Re-running with the same inputs does nothing.",
    )
    p.add_argument("dir", help="shard set directory (built by pgo-shards build)")
    p.add_argument(
        "--scgpt",
        required=True,
        metavar="MODEL_DIR",
        help="checkpoint folder: args.json, vocab.json, best_model.pt",
    )
    p.add_argument(
        "--mlp-a",
        metavar="FILE",
        help="mlp_a.pt from launch/pretrain.py (trained on this checkpoint)",
    )
    p.add_argument(
        "--group",
        default="rna",
        help="omics group holding bulk RNA over gene symbols (default rna)",
    )
    p.add_argument(
        "--transform",
        default="none",
        choices=TRANSFORM_NAMES,
        help="none: values are expression (>= 0); exp2 / rank: for z-scores (2**z, or per-sample "
        "rank): every gene counts as expressed and the tokens are the per-sample ranks of z, "
        "i.e. levels relative to the cohort, not expression",
    )
    p.add_argument(
        "--max-length", type=int, default=1200, help="tokens per sample incl. <cls> (1200)"
    )
    p.add_argument(
        "--selection",
        default="top",
        choices=("top", "random"),
        help="genes kept when more are expressed: top = most expressed, ties by name "
        "(deterministic, default); random = embed_data's draw (seeded)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bin tie-break (and random selection)"
    )
    p.add_argument(
        "--min-match",
        type=float,
        default=0.5,
        help="refuse below this fraction of genes in the vocab (0.5)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cuda or cpu (default cuda when available)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_NAMES,
        help="auto: bf16 on GPU, fp32 on CPU",
    )
    p.add_argument("--force", action="store_true", help="recompute even when up to date")
    p.add_argument("--no-verify", action="store_true", help="skip the shards' sha256 check")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed_rna)
