"""Frozen scGPT: strict checkpoint loading, gene matching, tokenising and batched cell/sample embedding.

A checkpoint folder in the official layout holds

    args.json       model hyper-parameters (embsize, nheads, d_hid, nlayers, n_layers_cls,
                    dropout, pad_token, pad_value)
    vocab.json      gene symbol -> token index (<pad>, <cls>, <eoc> appended when missing,
                    as scgpt.tasks.embed_data does)
    best_model.pt   a plain state dict; keys of the flash-attn model ("self_attn.Wqkv.*")
                    are renamed to torch's ("self_attn.in_proj_*")

`load_scgpt` builds the package's own `scgpt.model.TransformerModel` exactly as
`scgpt.tasks.embed_data` does and loads the state dict STRICTLY (scgpt's own `load_pretrained`
silently skips keys whose name or shape does not match): any missing, unexpected or mis-shaped
key is a PgoError listing them. The one exception is `flag_encoder.weight` (PRETRAINING_ONLY_KEYS),
which official checkpoints carry and the package's model has no place for.

The embedding of a sample (a cell, or a bulk RNA-seq sample) is embed_data's: the expressed
(> 0) genes found in the vocab, each value replaced by its per-sample bin (51 bins over the
quantiles of the sample's non-zero values, `bin_values`), a leading <cls> token with value
pad_value, the transformer encoder's output at <cls> (`model._encode(...)[:, 0, :]`), divided
by its L2 norm. What differs from embed_data is only the choice when a sample has more than
max_length - 1 expressed genes: embed_data samples them at random; `selection="top"` keeps the
most expressed ones, ties broken by gene name, and bin ties are broken by a generator seeded
per sample, so that the same sample always gets the same embedding, whatever its batch.

Speed: samples are grouped by token count (length bucketing) so that padding is small, run
under torch.inference_mode, with torch's scaled-dot-product attention (torch.nn.Transformer
layers) and bf16 autocast on a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpc_pgo import atomic
from hpc_pgo.compat import ensure_torchtext_vocab
from hpc_pgo.errors import PgoError
from hpc_pgo.models.genomic import MLP
from hpc_pgo.models.weights import one_line

# scgpt imports torchtext.vocab at import time: the stand-in must be in place first.
ensure_torchtext_vocab()
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="flash_attn is not installed")
    from scgpt.model import TransformerModel
    from scgpt.tokenizer import GeneVocab

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FILES",
    "DEFAULT_MIN_MATCH",
    "N_BINS",
    "PRECISIONS",
    "SPECIAL_TOKENS",
    "TRANSFORMS",
    "EmbedReport",
    "GeneMatch",
    "ScGPT",
    "bin_values",
    "build_transformer",
    "check_expression",
    "checkpoint_digest",
    "collate",
    "embed_expression",
    "encode",
    "length_buckets",
    "load_mlp_a",
    "load_scgpt",
    "match_genes",
    "read_args",
    "read_vocab",
    "rename_flash_keys",
    "save_mlp_a",
    "strict_load",
    "tokenize_sample",
    "vocab_digest",
    "write_random_checkpoint",
]

CHECKPOINT_FILES = ("args.json", "vocab.json", "best_model.pt")
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
# args.json keys the model is built from (what embed_data reads)
ARGS_KEYS = (
    "embsize",
    "nheads",
    "d_hid",
    "nlayers",
    "n_layers_cls",
    "dropout",
    "pad_token",
    "pad_value",
)
N_BINS = 51  # scGPT's value bins (DataCollator's n_bins): 0 = not expressed, 1..50 = quantile bins
DEFAULT_MIN_MATCH = 0.5  # refuse inputs where fewer than half the genes are in the vocab
# the flash-attn layer stores q,k,v in one Linear "Wqkv"; torch's MultiheadAttention calls it in_proj_
FLASH_RENAMES = (
    ("self_attn.Wqkv.weight", "self_attn.in_proj_weight"),
    ("self_attn.Wqkv.bias", "self_attn.in_proj_bias"),
)
# Entries of official checkpoints that scgpt's TransformerModel does not have: the whole-human
# pretraining's expressed/not-expressed flag embedding. Neither _encode nor embed_data uses it
# (embed_data's load_pretrained drops it silently); every other unexpected key is an error.
PRETRAINING_ONLY_KEYS = ("flag_encoder.weight",)


# --------------------------------------------------------------------------- checkpoint


@dataclass
class ScGPT:
    """A loaded, frozen scGPT: the package's TransformerModel in eval mode and its GeneVocab.

    digest = checkpoint_digest(model_dir), vocab_sha = vocab_digest(vocab); d_model = embsize.
    """

    model: TransformerModel
    vocab: GeneVocab
    config: dict
    model_dir: Path
    digest: str
    vocab_sha: str

    @property
    def d_model(self) -> int:
        return int(self.config["embsize"])

    @property
    def pad_id(self) -> int:
        return self.vocab[self.config["pad_token"]]

    @property
    def cls_id(self) -> int:
        return self.vocab["<cls>"]

    @property
    def pad_value(self) -> float:
        return float(self.config["pad_value"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> ScGPT:
        self.model.to(device)
        return self


def checkpoint_digest(model_dir: str | Path) -> str:
    """sha256 (hex) over the checkpoint folder's three files, in CHECKPOINT_FILES order.

    Each file contributes its name, its size in bytes and its bytes, so the digest changes when
    any weight, hyper-parameter or vocab entry changes, and is the same for a copy of the folder.
    Computed from the files (not the loaded tensors) so that it can be checked without loading.
    """
    model_dir = Path(model_dir)
    _check_files(model_dir)
    h = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = model_dir / name
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def vocab_digest(vocab: GeneVocab | str | Path) -> str:
    """sha256 (hex) of the vocab's tokens in index order, as JSON (after SPECIAL_TOKENS are appended).

    Independent of vocab.json's formatting and key order; a vocab file or a GeneVocab.
    """
    if not isinstance(vocab, GeneVocab):
        vocab = read_vocab(Path(vocab))
    return hashlib.sha256(json.dumps(vocab.get_itos()).encode()).hexdigest()


def _check_files(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise PgoError(
            f"scGPT checkpoint {str(model_dir)!r}: no such folder (expected {', '.join(CHECKPOINT_FILES)})"
        )
    missing = [n for n in CHECKPOINT_FILES if not (model_dir / n).is_file()]
    if missing:
        raise PgoError(
            f"scGPT checkpoint {str(model_dir)!r} lacks {', '.join(missing)} "
            f"(a checkpoint folder holds {', '.join(CHECKPOINT_FILES)})"
        )


def read_vocab(path: Path) -> GeneVocab:
    """GeneVocab from vocab.json (token -> index, indices 0..n-1), SPECIAL_TOKENS appended when missing."""
    try:
        token2idx = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PgoError(
            f"{str(path)!r} is not a JSON object of gene -> index: {one_line(err)}"
        ) from err
    if not isinstance(token2idx, dict) or not all(isinstance(i, int) for i in token2idx.values()):
        raise PgoError(f"{str(path)!r} is not a JSON object of gene -> integer index")
    if sorted(token2idx.values()) != list(range(len(token2idx))):
        raise PgoError(f"{str(path)!r}: indices must be 0..{len(token2idx) - 1}, each once")
    vocab = GeneVocab.from_dict(token2idx)
    for token in SPECIAL_TOKENS:
        if token not in vocab:
            vocab.append_token(token)
    vocab.set_default_index(vocab["<pad>"])
    return vocab


def read_args(path: Path) -> dict:
    """args.json as a dict, checked for the keys the model is built from (ARGS_KEYS)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PgoError(f"{str(path)!r} is not a JSON object: {one_line(err)}") from err
    if not isinstance(config, dict):
        raise PgoError(f"{str(path)!r} is not a JSON object of model hyper-parameters")
    missing = [k for k in ARGS_KEYS if k not in config]
    if missing:
        raise PgoError(f"{str(path)!r} lacks {', '.join(missing)} (needed: {', '.join(ARGS_KEYS)})")
    style = config.get("input_emb_style", "continuous")
    if style != "continuous":
        raise PgoError(
            f"{str(path)!r}: input_emb_style={style!r} is not supported; valid: continuous"
        )
    return config


def build_transformer(config: dict, vocab: GeneVocab) -> TransformerModel:
    """scgpt's TransformerModel with the arguments embed_data uses, torch attention (no flash-attn)."""
    return TransformerModel(
        ntoken=len(vocab),
        d_model=config["embsize"],
        nhead=config["nheads"],
        d_hid=config["d_hid"],
        nlayers=config["nlayers"],
        nlayers_cls=config["n_layers_cls"],
        n_cls=1,
        vocab=vocab,
        dropout=config["dropout"],
        pad_token=config["pad_token"],
        pad_value=config["pad_value"],
        do_mvc=True,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
    )


def rename_flash_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict with the flash-attn names ("...self_attn.Wqkv.weight") as torch's ("...in_proj_weight")."""
    renamed = {}
    for key, value in state.items():
        for old, new in FLASH_RENAMES:
            if key.endswith(old):
                key = key[: -len(old)] + new
        renamed[key] = value
    return renamed


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def strict_load(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    where: str,
    fit: str = "the model in args.json/vocab.json",
    ignored: Sequence[str] = (),
) -> None:
    """Load every tensor of `model` from `state`: a PgoError lists missing, unexpected and mis-shaped keys.

    ignored: names of state entries the model does not have and does not need (logged, not loaded).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    skipped = [k for k in state if k not in expected and k in ignored]
    unexpected = [k for k in state if k not in expected and k not in ignored]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{label} {len(keys)}: {_key_list(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if keys
    ]
    if problems:
        raise PgoError(f"{where} does not fit {fit}: {'; '.join(problems)}")
    if skipped:
        log.info("%s: not loaded (not part of this model): %s", where, _key_list(skipped))
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=True)


def load_scgpt(model_dir: str | Path, *, device: str | torch.device = "cpu") -> ScGPT:
    """Load a frozen scGPT from a checkpoint folder (args.json, vocab.json, best_model.pt).

    The weights are read with torch.load(weights_only=True) (no pickled objects) and loaded
    strictly (see strict_load). The model is in eval mode with requires_grad False on `device`.
    """
    model_dir = Path(model_dir)
    _check_files(model_dir)
    config = read_args(model_dir / "args.json")
    vocab = read_vocab(model_dir / "vocab.json")
    weights = model_dir / "best_model.pt"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for files that are not state dicts
        raise PgoError(
            f"{str(weights)!r} is not a readable state dict (torch.load, weights_only=True): {one_line(err)}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PgoError(f"{str(weights)!r} does not hold a state dict (names -> tensors)")
    model = build_transformer(config, vocab)
    strict_load(model, rename_flash_keys(state), str(weights), ignored=PRETRAINING_ONLY_KEYS)
    model.requires_grad_(False).eval().to(device)
    log.info(
        "loaded scGPT %s: %d layers, d %d, vocab %d",
        model_dir,
        config["nlayers"],
        config["embsize"],
        len(vocab),
    )
    return ScGPT(model, vocab, config, model_dir, checkpoint_digest(model_dir), vocab_digest(vocab))


# --------------------------------------------------------------------------- genes and values


@dataclass(frozen=True)
class GeneMatch:
    """Input genes found in the vocab: columns[i] of the input is token token_ids[i].

    columns: (M,) int64 positions in the input gene list; token_ids: (M,) int64; names: (M,)
    matched symbols; unmatched: the input symbols not in the vocab; fraction = M / n_input.
    """

    columns: np.ndarray
    token_ids: np.ndarray
    names: np.ndarray
    unmatched: list[str]
    n_input: int

    @property
    def n_matched(self) -> int:
        return len(self.columns)

    @property
    def fraction(self) -> float:
        return self.n_matched / self.n_input if self.n_input else 0.0


def match_genes(
    genes: Sequence[str],
    vocab: GeneVocab,
    *,
    min_fraction: float = DEFAULT_MIN_MATCH,
    where: str = "genes",
) -> GeneMatch:
    """Match gene symbols to the vocab by exact name (as embed_data does); special tokens never match.

    Logs matched/unmatched counts; raises PgoError when fewer than `min_fraction` of them match
    or a symbol repeats (one column per gene).
    """
    genes = [str(g) for g in genes]
    repeated = [g for g, n in Counter(genes).items() if n > 1]
    if repeated:
        raise PgoError(f"{where}: gene symbols repeat ({_key_list(repeated)}); give each gene once")
    columns = [i for i, g in enumerate(genes) if g in vocab and g not in SPECIAL_TOKENS]
    names = np.array([genes[i] for i in columns], dtype=object)
    match = GeneMatch(
        columns=np.asarray(columns, dtype=np.int64),
        token_ids=np.asarray(vocab.lookup_indices(list(names)), dtype=np.int64),
        names=names,
        unmatched=[genes[i] for i in sorted(set(range(len(genes))) - set(columns))],
        n_input=len(genes),
    )
    log.info(
        "%s: %d of %d genes in the scGPT vocab, %d unmatched",
        where,
        match.n_matched,
        len(genes),
        len(match.unmatched),
    )
    if match.fraction < min_fraction or match.n_matched == 0:
        raise PgoError(
            f"{where}: only {match.n_matched} of {len(genes)} genes ({match.fraction:.1%}) are in the "
            f"scGPT vocab (need >= {min_fraction:.0%}; unmatched e.g. {_key_list(match.unmatched, 5)}); "
            "give HGNC gene symbols, or lower the minimum match fraction (--min-match)"
        )
    return match


def _rank_transform(values: np.ndarray) -> np.ndarray:
    """Per-sample dense rank 1..K of each gene's value (equal values share a rank): > 0 everywhere."""
    ranks = np.empty_like(values, dtype=np.float64)
    for i, row in enumerate(values):
        ranks[i] = np.unique(row, return_inverse=True)[1] + 1
    return ranks


# value transforms for inputs that are not expression (e.g. z-scores). scGPT bins each sample's
# values by rank, so any increasing transform gives the same tokens; what they change is which
# genes count as expressed (value > 0): with both, EVERY gene does. Neither makes z-scores into
# expression: the model then sees "relative level across the cohort", which it was not trained on.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda v: v,  # counts, TPM, FPKM, RSEM, log1p of any of these (non-negative)
    "exp2": lambda v: np.exp2(v),  # z as a log2 ratio to the cohort mean -> ratio > 0
    "rank": _rank_transform,  # per-sample rank of the value, 1..G
}


def check_expression(
    values: np.ndarray, *, transform: str = "none", where: str = "values"
) -> np.ndarray:
    """Expression matrix (N, G) as float64 after `transform` (TRANSFORMS), checked non-negative and finite.

    Negative values (z-scores, log ratios) are refused unless a transform is chosen: scGPT was
    trained on non-negative expression, where 0 means "not expressed".
    """
    if transform not in TRANSFORMS:
        raise PgoError(
            f"{where}: transform {transform!r} is not known; valid: {', '.join(TRANSFORMS)}"
        )
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise PgoError(f"{where}: expected a (samples, genes) matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise PgoError(
            f"{where}: value at sample {bad[0]}, gene {bad[1]} is {values[tuple(bad)]} (need finite values)"
        )
    if transform == "none" and (values < 0).any():
        neg = np.argwhere(values < 0)
        i, j = neg[0]
        raise PgoError(
            f"{where}: {len(neg)} negative values (e.g. {values[i, j]:.3g} at sample {i}, gene {j}); "
            "scGPT needs non-negative expression (counts, TPM, RSEM); these look like z-scores or "
            f"log ratios - choose a transform ({', '.join(t for t in TRANSFORMS if t != 'none')}; "
            "pgo-shards embed-rna --transform) to embed them anyway"
        )
    return TRANSFORMS[transform](values)


def bin_values(values: np.ndarray, rng: np.random.RandomState, n_bins: int = N_BINS) -> np.ndarray:
    """Per-sample binning of scGPT (scgpt.preprocess.binning): values (L,) > 0 -> int64 bins in 1..n_bins-1.

    Edges = np.quantile(values, linspace(0, 1, n_bins - 1)); a value's bin is its left digit
    np.digitize(x, edges); a value equal to several edges (tied values) gets a bin drawn uniformly
    between its right and left digits with `rng.rand` (scGPT draws from numpy's global state).
    """
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    return np.ceil(rng.rand(len(values)) * (right - left) + left).astype(np.int64)


def tokenize_sample(
    values: np.ndarray,
    token_ids: np.ndarray,
    names: np.ndarray,
    *,
    cls_id: int,
    pad_value: float,
    max_length: int = 1200,
    selection: str = "top",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One sample's tokens: (ids (L,) int64, values (L,) float32), L <= max_length, <cls> first.

    values: (M,) non-negative expression of the matched genes (token_ids, names (M,)). Genes with
    value 0 are dropped, the rest binned (bin_values, rng = RandomState(seed)); when more than
    max_length - 1 remain, selection "top" keeps the most expressed, ties broken by gene name
    (deterministic), "random" draws them like embed_data (RandomState(seed)).
    """
    rng = np.random.RandomState(seed)
    expressed = np.flatnonzero(values > 0)
    bins = bin_values(values[expressed], rng) if len(expressed) else np.zeros(0, np.int64)
    keep = max_length - 1
    if len(expressed) > keep:
        if selection == "top":
            # lexsort: last key is primary -> value descending, then name ascending
            order = np.lexsort((names[expressed].astype(str), -values[expressed]))[:keep]
            order.sort()  # input order; attention has no positions, so this only fixes float rounding
        elif selection == "random":
            order = np.sort(rng.choice(len(expressed), keep, replace=False))
        else:
            raise PgoError(f"gene selection {selection!r} is not known; valid: top, random")
        expressed, bins = expressed[order], bins[order]
    ids = np.concatenate([[cls_id], token_ids[expressed]]).astype(np.int64)
    vals = np.concatenate([[pad_value], bins]).astype(np.float32)
    return ids, vals


def collate(
    samples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int, pad_value: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad tokenised samples to the longest: ids (B, L) int64, values (B, L) float32, padding mask (B, L) bool (True = pad)."""
    length = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    vals = torch.full((len(samples), length), pad_value, dtype=torch.float32)
    for i, (sample_ids, sample_vals) in enumerate(samples):
        ids[i, : len(sample_ids)] = torch.from_numpy(sample_ids)
        vals[i, : len(sample_vals)] = torch.from_numpy(sample_vals)
    return ids, vals, ids.eq(pad_id)


# --------------------------------------------------------------------------- embedding

PRECISIONS = ("auto", "fp32", "bf16")


def _autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA for "auto"/"bf16"; fp32 otherwise ("bf16" on CPU autocasts on CPU)."""
    if precision not in PRECISIONS:
        raise PgoError(f"precision {precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def encode(
    scgpt: ScGPT,
    ids: torch.Tensor,
    values: torch.Tensor,
    padding_mask: torch.Tensor,
    *,
    precision: str = "auto",
    normalize: bool = True,
) -> torch.Tensor:
    """Cell embedding of a padded batch: the encoder's output at <cls>, (B, d_model) float32 on scgpt's device.

    normalize=True divides by the L2 norm (embed_data's embedding). Runs under inference_mode;
    the result is a normal tensor (cloned out), usable as input to a trained module.
    """
    device = scgpt.device
    with torch.inference_mode(), _autocast(device, precision), _sdpa_path():
        out = scgpt.model._encode(
            ids.to(device), values.to(device), src_key_padding_mask=padding_mask.to(device)
        )
        cls = out[:, 0, :].float()
        if normalize:
            cls = F.normalize(cls, dim=1)
    return cls.clone()


@contextlib.contextmanager
def _sdpa_path() -> Iterator[None]:
    """Run torch's Transformer layers on their ordinary path (scaled_dot_product_attention).

    In inference, nn.TransformerEncoder otherwise takes its "fast path" (fused kernels over
    nested tensors built from the padding mask), which measured 10-20x SLOWER on CPU here
    (d 32, 64 cells of ~370 tokens: 7.8 s against 0.38 s).
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Batches of sample indices of similar token counts: sorted by length (stable), cut every batch_size."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@dataclass
class EmbedReport:
    """What embed_expression matched and kept: genes matched, tokens per sample (incl. <cls>)."""

    match: GeneMatch
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def embed_expression(
    scgpt: ScGPT,
    values: np.ndarray,
    genes: Sequence[str],
    *,
    max_length: int = 1200,
    batch_size: int = 32,
    selection: str = "top",
    seed: int = 0,
    transform: str = "none",
    min_match: float = DEFAULT_MIN_MATCH,
    precision: str = "auto",
    where: str = "expression",
    progress: bool = False,
    report: EmbedReport | None = None,
) -> np.ndarray:
    """Embeddings (N, d_model) float32, L2-normalised, of N samples of expression `values` (N, G) over `genes` (G,).

    Genes are matched to the vocab (match_genes, min_match), values checked (check_expression,
    transform), each sample tokenised (tokenize_sample with `seed` for every sample, so a
    sample's embedding does not depend on the others), then encoded in length buckets of
    batch_size. A sample with no expressed matched gene is a PgoError.
    """
    values = check_expression(values, transform=transform, where=where)
    if values.shape[1] != len(genes):
        raise PgoError(f"{where}: {values.shape[1]} value columns but {len(genes)} gene names")
    match = match_genes(genes, scgpt.vocab, min_fraction=min_match, where=where)
    matched = values[:, match.columns]
    empty = np.flatnonzero((matched > 0).sum(axis=1) == 0)
    if len(empty):
        raise PgoError(
            f"{where}: sample(s) {_key_list([str(i) for i in empty])} express none of the matched genes"
        )
    tokens = [
        tokenize_sample(
            row,
            match.token_ids,
            match.names,
            cls_id=scgpt.cls_id,
            pad_value=scgpt.pad_value,
            max_length=max_length,
            selection=selection,
            seed=seed,
        )
        for row in matched
    ]
    if report is not None:
        report.match, report.tokens = match, np.array([len(t[0]) for t in tokens])
    out = np.zeros((len(tokens), scgpt.d_model), dtype=np.float32)
    batches = list(length_buckets([len(t[0]) for t in tokens], batch_size))
    from tqdm.auto import tqdm

    for idx in tqdm(batches, desc="scGPT", unit="batch", disable=not progress):
        ids, vals, mask = collate([tokens[i] for i in idx], scgpt.pad_id, scgpt.pad_value)
        out[idx] = encode(scgpt, ids, vals, mask, precision=precision).cpu().numpy()
    return out


# --------------------------------------------------------------------------- MLP-A file

MLP_A_META_KEYS = ("scgpt_digest", "vocab_digest", "class_names", "dims")


def save_mlp_a(
    path: str | Path,
    mlp: MLP,
    *,
    scgpt_digest: str,
    vocab_digest: str,
    class_names: Sequence[str],
    dims: dict[str, Any],
    mix: bool | None = None,
) -> Path:
    """Write MLP-A's file atomically: {"state_dict": mlp.state_dict(), "meta": {...}}.

    meta = {scgpt_digest: checkpoint_digest of the frozen scGPT it was trained on, vocab_digest,
    class_names: the pretraining cell types, dims: {"in", "hidden", "out", "layers", "dropout"}
    (MLP's arguments), mix: whether it was trained with mix-up (None = not recorded)}.
    Readable with torch.load(weights_only=True).
    """

    path = Path(path)
    meta = {
        "scgpt_digest": str(scgpt_digest),
        "vocab_digest": str(vocab_digest),
        "class_names": [str(c) for c in class_names],
        "dims": {k: (float(v) if k == "dropout" else int(v)) for k, v in dims.items()},
        "mix": None if mix is None else bool(mix),
    }
    state = {k: v.detach().cpu() for k, v in mlp.state_dict().items()}
    return atomic.save_torch(path, {"state_dict": state, "meta": meta})


def load_mlp_a(path: str | Path, expected_scgpt_digest: str | None) -> tuple[MLP, dict]:
    """MLP-A (eval mode, frozen) and its meta from `path` (save_mlp_a's format), checked against the scGPT.

    PgoError when the file is missing/unreadable, lacks meta keys, does not fit the MLP its
    dims describe, or was trained on another scGPT checkpoint (meta scgpt_digest !=
    expected_scgpt_digest; None skips that check).
    """
    path = Path(path)
    if not path.is_file():
        raise PgoError(f"MLP-A file {str(path)!r}: no such file (written by launch/pretrain.py)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PgoError(
            f"MLP-A file {str(path)!r} is not readable with torch.load(weights_only=True): {one_line(err)}"
        ) from err
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise PgoError(
            f"MLP-A file {str(path)!r}: expected {{'state_dict', 'meta'}} (save_mlp_a's format)"
        )
    meta = blob["meta"]
    missing = [k for k in MLP_A_META_KEYS if k not in meta]
    if missing:
        raise PgoError(
            f"MLP-A file {str(path)!r}: meta lacks {', '.join(missing)} (needed: {', '.join(MLP_A_META_KEYS)})"
        )
    if expected_scgpt_digest is not None and meta["scgpt_digest"] != expected_scgpt_digest:
        raise PgoError(
            f"MLP-A file {str(path)!r} was trained on scGPT checkpoint {meta['scgpt_digest'][:12]}..., "
            f"not on this one ({expected_scgpt_digest[:12]}...); pretrain MLP-A on this checkpoint "
            "or give the checkpoint it was trained on"
        )
    dims = meta["dims"]
    try:
        mlp = MLP(
            int(dims["in"]),
            int(dims["hidden"]),
            int(dims["out"]),
            int(dims["layers"]),
            float(dims.get("dropout", 0.0)),
        )
    except KeyError as err:
        raise PgoError(
            f"MLP-A file {str(path)!r}: meta dims lacks {err} (needed: in, hidden, out, layers)"
        ) from None
    strict_load(
        mlp,
        blob["state_dict"],
        f"MLP-A file {str(path)!r}",
        f"the MLP its meta dims describe ({dims})",
    )
    return mlp.requires_grad_(False).eval(), meta


# --------------------------------------------------------------------------- random checkpoints


def write_random_checkpoint(
    model_dir: str | Path,
    genes: Sequence[str],
    *,
    d_model: int = 32,
    nlayers: int = 2,
    nheads: int = 2,
    d_hid: int | None = None,
    seed: int = 0,
    flash_keys: bool = False,
) -> Path:
    """Write a randomly initialised scGPT in the official layout (for tests and benchmarks; no download).

    vocab.json = SPECIAL_TOKENS then the sorted unique `genes`; args.json as whole-human's but
    with these sizes (n_layers_cls 3, dropout 0.2, pad_value -2); best_model.pt = the state dict,
    with flash-attn key names ("self_attn.Wqkv.*") when flash_keys, as official checkpoints have.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokens = list(SPECIAL_TOKENS) + sorted({str(g) for g in genes} - set(SPECIAL_TOKENS))
    config = {
        "embsize": d_model,
        "nheads": nheads,
        "d_hid": d_hid or d_model,
        "nlayers": nlayers,
        "n_layers_cls": 3,
        "dropout": 0.2,
        "pad_token": "<pad>",
        "pad_value": -2,
        "input_emb_style": "continuous",
        "n_bins": N_BINS,
    }
    (model_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (model_dir / "args.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = build_transformer(config, read_vocab(model_dir / "vocab.json"))
    state = model.state_dict()
    if flash_keys:
        state = {
            k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight").replace(
                "self_attn.in_proj_bias", "self_attn.Wqkv.bias"
            ): v
            for k, v in state.items()
        }
    torch.save(state, model_dir / "best_model.pt")
    return model_dir
