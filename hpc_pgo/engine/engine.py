"""The DeepSpeed engine of one fold: set-up from the config, the modulated training step, checkpoints.

One training step (``Engine.train_step``), on every rank:

1. forward this rank's slice of the batch: theta (B/W,), theta_g, theta_p;
2. gather the GLOBAL batch (``global_batch.gather_global_batch``; theta keeps its autograd);
3. loss = cox_nll(theta, time, event) on the global batch (mean over its events)
          + train.l1_genomic * sum |w| over the genomic group's parameters (weights and biases,
            as Pathomic Fusion's omic L1);
   a NaN or infinite loss stops training with a PgoError naming epoch and step;
4. rho^G, rho^P from the global per-modality theta (``hpc_pgo.balance``): identical on every
   rank; inside the balance window the coefficients k^G, k^P are set on the optimizer groups,
   outside it (and with balance.mode none) both are 1;
5. engine.backward(loss); engine.step(): DeepSpeed averages gradients over ranks, the torch Adam
   steps with each branch's lr scaled by its coefficient (``modulation.StepModulator``), then
   DeepSpeed steps the LR schedule.

Optimizer: torch.optim.Adam (L2 weight decay coupled into the gradient, as Pathomic Fusion's
Adam with weight_decay; not AdamW) over the named groups genomic / image / head. The LR schedule
is a LambdaLR handed to ``deepspeed.initialize`` (stepped by DeepSpeed once per optimizer step).
Precision: deepspeed.dtype (fp32 | bf16 | auto = bf16 on CUDA, fp32 on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from hpc_pgo.atomic import write_text
from hpc_pgo.engine.distributed import DistEnv, setup_distributed
from hpc_pgo.engine.global_batch import gather_global_batch, micro_batch
from hpc_pgo.engine.modulation import BalanceWindow, StepModulator, named_param_groups
from hpc_pgo.engine.schedule import LrSchedule
from hpc_pgo.errors import PgoError

log = logging.getLogger(__name__)

# Batch keys that are survival labels, not model inputs: kept in their dtype (never cast to bf16).
LABEL_KEYS = ("time", "event")
# Model outputs eval_outputs returns (those the model gives).
EVAL_OUTPUTS = ("theta", "theta_g", "theta_p", "attention")
# Keys of the DeepSpeed config that the engine owns: the optimizer and schedule are ours (the
# step hooks live on our torch optimizer), the batch bookkeeping follows from train.batch_size.
_OWNED_KEYS = ("optimizer", "scheduler")
# deepspeed.zero_optimization.stage values the engine supports.
ZERO_STAGES = (0, 1, 2)
# deepspeed.dtype -> bf16 enabled ("auto": bf16 on CUDA, fp32 on CPU).
DTYPES = {"fp32": False, "bf16": True, "auto": None}
# Our client state rides under one key: DeepSpeed returns its own entries beside it on load.
_CLIENT_KEY = "pgo_client_state"


def _select(cfg: DictConfig, key: str, default: Any = None, *, required: bool = False) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        if required:
            raise PgoError(f"config key {key} is missing; it is required by the engine")
        return default
    return value


def deepspeed_config(
    group: Mapping[str, Any] | None, *, batch_size: int, world_size: int, device_type: str
) -> dict[str, Any]:
    """The DeepSpeed config dict from the ``deepspeed`` config group plus what the engine decides.

    group: DeepSpeed's own keys (zero_optimization.stage in 0, 1, 2; gradient_clipping; ...)
    plus ``dtype``: fp32 | bf16 | auto (auto: bf16 on CUDA, fp32 on CPU), which becomes
    DeepSpeed's bf16 section. It must not define optimizer, scheduler or fp16 (fp16's loss
    scaler skips steps; the engine runs fp32 or bf16).
    Set here: train_micro_batch_size_per_gpu = batch_size / world_size (``micro_batch``: a
    PgoError when world_size does not divide batch_size), train_batch_size = micro * world_size
    = batch_size, gradient_accumulation_steps = 1 (the Cox risk sets
    span one step's global batch; DeepSpeed's batch keys are bookkeeping, the loader decides the
    real batch); gradient_clipping 0.0 (none, as Pathomic Fusion) unless given, since DeepSpeed
    would otherwise clip at 1.0.
    """
    conf = dict(group or {})
    owned = [key for key in (*_OWNED_KEYS, "fp16") if key in conf]
    if owned:
        raise PgoError(
            f"deepspeed config defines {', '.join(owned)}; valid: leave them out (the engine "
            "builds torch Adam from train.*, the schedule from train.lr_schedule, and the "
            "precision from deepspeed.dtype)"
        )
    zero = dict(conf.get("zero_optimization") or {})
    stage = zero.get("stage", 0)
    if stage not in ZERO_STAGES:
        raise PgoError(
            f"deepspeed.zero_optimization.stage={stage!r} is not supported; valid: "
            f"{', '.join(map(str, ZERO_STAGES))}"
        )
    zero["stage"] = stage
    conf["zero_optimization"] = zero
    dtype = conf.pop("dtype", "auto")
    if dtype not in DTYPES:
        raise PgoError(f"deepspeed.dtype={dtype!r} is unknown; valid: {', '.join(DTYPES)}")
    bf16 = DTYPES[dtype] if dtype != "auto" else device_type == "cuda"
    conf["bf16"] = {**dict(conf.get("bf16") or {}), "enabled": bf16}
    micro = micro_batch(batch_size, world_size)
    conf.update(
        train_micro_batch_size_per_gpu=micro,
        train_batch_size=micro * world_size,
        gradient_accumulation_steps=1,
    )
    conf.setdefault("gradient_clipping", 0.0)
    conf.setdefault("steps_per_print", 10**9)  # our trainer logs; keep DeepSpeed quiet
    return conf


def _window_from_config(cfg: DictConfig) -> BalanceWindow:
    return BalanceWindow(
        mode=str(_select(cfg, "balance.mode", "none")),
        alpha=float(_select(cfg, "balance.alpha", 1.0)),
        start_epoch=int(_select(cfg, "balance.start_epoch", 0)),
        end_epoch=None
        if _select(cfg, "balance.end_epoch") is None
        else int(_select(cfg, "balance.end_epoch")),
        noise=bool(_select(cfg, "balance.noise", False)),
    )


def build_engine(
    model: torch.nn.Module,
    cfg: DictConfig | Mapping[str, Any],
    *,
    steps_per_epoch: int,
    dist_env: DistEnv | None = None,
) -> Engine:
    """DeepSpeed engine with torch Adam over the model's named groups, the schedule and the hooks.

    model: has ``forward(batch) -> {"theta", "theta_g", "theta_p"}``, ``param_groups()`` and
    ``supports_balance``. cfg keys read: train.lr (required), train.epochs (required),
    train.batch_size (32), train.weight_decay (0), train.lr_schedule (linear | cosine | constant;
    linear), train.l1_genomic (0), train.adam_betas ([0.9, 0.999]), train.adam_eps (1e-8),
    balance.mode (none | rho; none), balance.alpha (1), balance.start_epoch (0),
    balance.end_epoch (null = to the end), balance.noise (false), seed (0), and the deepspeed
    group (see ``deepspeed_config``). steps_per_epoch: optimizer steps per epoch (for the
    schedule). dist_env: from ``setup_distributed()``, called here when not given.
    """
    import deepspeed  # heavy; only when an engine is built

    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    window = _window_from_config(cfg)
    if window.mode != "none" and hasattr(model, "require_per_modality_theta"):
        model.require_per_modality_theta(f"balance.mode={window.mode}")  # its own, fuller message
    if window.mode != "none" and not getattr(model, "supports_balance", False):
        raise PgoError(
            f"balance.mode={window.mode} needs a model with per-modality theta "
            f"(supports_balance); {type(model).__name__} has none; valid: balance.mode=none"
        )
    lr = float(_select(cfg, "train.lr", required=True))
    weight_decay = float(_select(cfg, "train.weight_decay", 0.0))
    groups = named_param_groups(model.param_groups(), lr=lr, weight_decay=weight_decay)
    # Copies taken now: under ZeRO 1/2 and bf16 DeepSpeed replaces each group's "params" (in
    # the same dict objects) by a flat fp32 partition, which is not what L1 must act on.
    model_groups = {g["name"]: list(g["params"]) for g in groups}
    optimizer = torch.optim.Adam(
        groups,
        lr=lr,
        weight_decay=weight_decay,
        betas=tuple(_select(cfg, "train.adam_betas", (0.9, 0.999))),
        eps=float(_select(cfg, "train.adam_eps", 1e-8)),
    )
    modulator = StepModulator(optimizer, noise_seed=int(_select(cfg, "seed", 0)))
    schedule = LrSchedule(
        name=str(_select(cfg, "train.lr_schedule", "linear")),
        epochs=int(_select(cfg, "train.epochs", required=True)),
        steps_per_epoch=int(steps_per_epoch),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # Everything above only reads the config and the model; the process group starts here.
    dist_env = dist_env or setup_distributed()
    group_cfg = _select(cfg, "deepspeed")
    ds_conf = deepspeed_config(
        OmegaConf.to_container(group_cfg, resolve=True) if group_cfg is not None else None,
        batch_size=int(_select(cfg, "train.batch_size", 32)),
        world_size=dist_env.world_size,
        device_type=dist_env.device.type,
    )
    if window.noise and (ds_conf["zero_optimization"]["stage"] != 0 or ds_conf["bf16"]["enabled"]):
        raise PgoError(_noise_refusal(ds_conf))
    with modulator.frozen():
        ds_engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_conf
        )
    # Forget the Adam state of DeepSpeed's set-up step (bf16 ZeRO 0), so the first training
    # step is Adam's first step, as in plain torch. Empty in every other configuration.
    optimizer.state.clear()
    if window.noise:
        _check_noise_supported(optimizer, model_groups, ds_conf)
    return Engine(
        ds_engine,
        modulator,
        window,
        dist_env=dist_env,
        l1_genomic=float(_select(cfg, "train.l1_genomic", 0.0)),
        l1_params=model_groups.get("genomic", []),
    )


def _check_noise_supported(
    optimizer: torch.optim.Optimizer, model_groups: dict[str, list], ds_conf: dict
) -> None:
    """OGM-GE noise needs the model's own parameters (with .grad) in the optimizer's groups."""
    ours = {name: [id(p) for p in params] for name, params in model_groups.items()}
    held = {g["name"]: [id(p) for p in g["params"]] for g in optimizer.param_groups}
    if held != ours:
        raise PgoError(_noise_refusal(ds_conf))


def _noise_refusal(ds_conf: dict) -> str:
    return (
        f"balance.noise=true needs ZeRO stage 0 in fp32 (per-tensor gradients); this run has "
        f"zero_optimization.stage={ds_conf['zero_optimization']['stage']} and "
        f"bf16.enabled={ds_conf['bf16']['enabled']}, where DeepSpeed hands the optimizer flat "
        "partitions; valid: balance.noise=false, or deepspeed=zero0 with bf16 off"
    )


class Engine:
    """A DeepSpeed engine plus the modulated step; built by ``build_engine``."""

    def __init__(
        self,
        ds_engine: Any,
        modulator: StepModulator,
        window: BalanceWindow,
        *,
        dist_env: DistEnv,
        l1_genomic: float,
        l1_params: list[torch.nn.Parameter],
    ) -> None:
        self.ds = ds_engine
        self.modulator = modulator
        self.window = window
        self.dist_env = dist_env
        self.l1_genomic = l1_genomic
        self.l1_params = l1_params
        self.compute_dtype = torch.bfloat16 if ds_engine.bfloat16_enabled() else torch.float32

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (restored by ``load``)."""
        return int(self.ds.global_steps)

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Tensors of the batch on the engine's device; float inputs (not time/event) in its
        dtype; bool tensors (a bag's padding mask, hpc_pgo.data.bags) move uncast, and the
        per-modality "mask" dict (read by no model) passes as it is."""
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.dist_env.device, non_blocking=True)
                if value.is_floating_point() and key not in LABEL_KEYS:
                    value = value.to(self.compute_dtype)
            out[key] = value
        return out

    def train_step(self, batch: Mapping[str, Any], epoch: int) -> dict[str, float]:
        """One modulated optimizer step on this rank's slice of the global batch (collective).

        batch: the model's inputs plus "time" (B/W,) and "event" (B/W,) (1 = death observed).
        Returns floats, identical on every rank: step (after this one), loss (Cox + L1), cox,
        l1, rho_g, rho_p (NaN when the model gives no per-modality theta), k_g, k_p (1.0 outside
        the balance window), lr_<group> (the rate the step used: scheduled lr * coefficient).
        A batch without events gives cox 0 with zero Cox gradient, rho 1, k 1 (the step still
        applies weight decay, L1 and Adam's momentum). Raises PgoError on a NaN/inf loss.
        """
        missing = [key for key in LABEL_KEYS if key not in batch]
        if missing:
            raise PgoError(
                f"batch has no {', '.join(missing)}; valid: a dict with 'time' and 'event'"
            )
        from hpc_pgo.survival import cox_nll

        batch = self.to_device(batch)
        out = self.ds(batch)
        if "theta" not in out:
            raise PgoError(
                f"model output has keys {', '.join(out)}; valid: a dict with 'theta' (B,) "
                "[and 'theta_g', 'theta_p']"
            )
        glob = gather_global_batch(
            out["theta"], batch["time"], batch["event"], out.get("theta_g"), out.get("theta_p")
        )
        cox = cox_nll(glob.theta.float(), glob.time, glob.event, reduction="mean")
        l1 = self._l1()
        loss = cox + l1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise PgoError(
                f"training loss is {loss_value} at epoch {epoch}, step {self.global_step} (0-based) "
                f"(rank {self.dist_env.rank}): a NaN/inf in the batch or the model; training stops "
                "here (resume from the last good checkpoint, lower train.lr or check the inputs)"
            )
        stats = self._balance(glob, epoch)
        stats.update(branch_concordance(glob))
        lrs = self.modulator.effective_lr()
        self.ds.backward(loss)
        self.ds.step()
        return {
            "step": float(self.global_step),
            "loss": loss_value,
            "cox": float(cox.detach()),
            "l1": float(l1.detach()),
            **stats,
            **lrs,
        }

    def _l1(self) -> torch.Tensor:
        """train.l1_genomic * sum |w| over the genomic group's parameters (0-d, fp32)."""
        if self.l1_genomic == 0.0 or not self.l1_params:
            return torch.zeros((), device=self.dist_env.device)
        return self.l1_genomic * torch.stack([p.abs().sum().float() for p in self.l1_params]).sum()

    def _balance(self, glob, epoch: int) -> dict[str, float]:
        """rho on the global batch (always, when available) and the coefficients for this step."""
        from hpc_pgo.balance import coefficient, rho

        if glob.theta_g is None:
            rho_g = rho_p = math.nan
        else:
            rho_g, rho_p = rho(glob.theta_g, glob.theta_p, glob.time, glob.event)
        active = self.window.active(epoch) and glob.theta_g is not None
        k_g = coefficient(rho_g, self.window.alpha) if active else 1.0
        k_p = coefficient(rho_p, self.window.alpha) if active else 1.0
        self.modulator.set(k_g, k_p, noise=active and self.window.noise, step=self.global_step)
        return {"rho_g": rho_g, "rho_p": rho_p, "k_g": k_g, "k_p": k_p}

    @torch.no_grad()
    def eval_outputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The head's outputs of this rank's batch in eval mode (dropout off), no gradient, as
        float32 tensors: "theta" (B,), and "theta_g", "theta_p" (B,) when the head splits
        additively (concat with both modalities; see hpc_pgo.models.fusion), "attention" (B, N)
        with an attention-MIL image branch (hpc_pgo.models.bags; 0 on padding)."""
        was_training = self.ds.module.training
        self.ds.eval()
        try:
            out = self.ds(self.to_device(batch))
        finally:
            if was_training:
                self.ds.train()
        return {k: out[k].float() for k in EVAL_OUTPUTS if k in out}

    def eval_theta(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """theta (B,) float32 of this rank's batch in eval mode (dropout off), no gradient."""
        return self.eval_outputs(batch)["theta"]

    def save(
        self, directory: str | os.PathLike, client_state: Mapping[str, Any] | None = None
    ) -> Path:
        """save_checkpoint of this engine's DeepSpeed engine (see there)."""
        return save_checkpoint(self.ds, directory, client_state, is_main=self.dist_env.is_main)

    def load(self, directory: str | os.PathLike) -> dict[str, Any]:
        """load_checkpoint of this engine's DeepSpeed engine (see there)."""
        return load_checkpoint(self.ds, directory)


def branch_concordance(glob: Any) -> dict[str, float]:
    """Harrell's C of each branch part (theta_g, theta_p) on one step's global batch: who is
    learning, as training goes (a diagnostic: training mode, one batch). NaN for a head without
    per-modality theta, or a batch without a comparable pair."""
    from hpc_pgo.survival import concordance

    out = {}
    for key, part in (("cindex_g", glob.theta_g), ("cindex_p", glob.theta_p)):
        try:
            c = math.nan if part is None else concordance(glob.time, part.float(), glob.event)
        except PgoError:  # no death before another sample's time in this batch
            c = math.nan
        out[key] = c
    return out


def save_checkpoint(
    ds_engine: Any,
    directory: str | os.PathLike,
    client_state: Mapping[str, Any] | None = None,
    *,
    is_main: bool,
) -> Path:
    """Save a DeepSpeed checkpoint under ``directory/step<NNNNNNNN>`` and point ``latest`` at it.

    Collective (every rank of ds_engine's group calls it; is_main on rank 0). DeepSpeed writes
    into a hidden temporary tag; after every rank has written, rank 0 renames it to the final tag
    and replaces ``latest`` atomically, so ``latest`` only ever names a complete checkpoint.
    client_state: small picklable values (epoch, losses ...), returned by ``load_checkpoint``.
    directory must be shared by all ranks.
    """
    directory = Path(directory)
    tag = f"step{int(ds_engine.global_steps):08d}"
    tmp_tag = f".tmp-{tag}"
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory / tmp_tag, ignore_errors=True)
    _barrier()
    ds_engine.save_checkpoint(
        str(directory),
        tag=tmp_tag,
        save_latest=False,
        client_state={_CLIENT_KEY: dict(client_state or {})},
    )
    _barrier()
    if is_main:
        final, stale = directory / tag, directory / f".old-{tag}"
        if final.exists():  # saved twice at the same step: keep the newer one
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
        os.replace(directory / tmp_tag, final)
        shutil.rmtree(stale, ignore_errors=True)
        write_text(directory / "latest", tag)
    _barrier()
    return directory / tag


def load_checkpoint(ds_engine: Any, directory: str | os.PathLike) -> dict[str, Any]:
    """Load the checkpoint that ``directory/latest`` names into ds_engine (model, optimizer,
    schedule, step). Returns the client_state given to ``save_checkpoint``. Every file is read
    with torch.load(weights_only=True) (``_safe_loads``): a file whose pickle would build any
    other object (run code) is refused, naming it, before anything of it runs.

    Raises PgoError, naming the checkpoint directory, when there is no ``latest``, when the tag
    it names is not there (listing the tags that are), when a file of the checkpoint pickles a
    type that is not allowed (named, with the globals it names), and when a file does not load (a
    truncated or corrupt file: named, with the loader's first line).
    """
    directory = Path(directory)
    latest = directory / "latest"
    if not latest.is_file():
        raise PgoError(f"{directory}: no 'latest' file; valid: a directory written by Engine.save")
    tag = latest.read_text().strip()
    if not tag or not (directory / tag).is_dir():
        found = [p.name for p in sorted(directory.iterdir()) if p.is_dir() and p.name[0] != "."]
        raise PgoError(
            f"{directory}: 'latest' names checkpoint {tag!r}, which does not exist; the directory "
            f"holds {', '.join(found) or 'no checkpoint'}; valid: a 'latest' naming one of them "
            "(written by Engine.save), or no checkpoints directory to start the fold afresh"
        )
    try:
        with _safe_loads(ds_engine) as refused:
            path, client_state = ds_engine.load_checkpoint(str(directory), tag=tag)
    except Exception as err:  # torch.load, unpickling, DeepSpeed's asserts: one line with the path
        cause = f"{type(err).__name__}: {_first_line(err)}"
        if refused:
            file, names = refused[0]
            raise PgoError(
                f"{file}: a file of checkpoint {tag!r} in {directory} pickles "
                f"{', '.join(names) or 'objects'}, which a checkpoint written by Engine.save never "
                "holds; refused without unpickling it (checkpoints load with torch.load("
                "weights_only=True) and only tensors, containers and DeepSpeed's own state types); "
                "valid: a checkpoint written by Engine.save (remove the checkpoints directory to "
                "start the fold afresh)"
            ) from err
        culprit = _unreadable_file(directory / tag)
        if culprit is not None:
            raise PgoError(
                f"{culprit}: a file of checkpoint {tag!r} in {directory} is truncated or corrupt "
                f"(not a complete torch archive; {cause}); valid: a complete checkpoint written "
                "by Engine.save (remove the checkpoints directory to start the fold afresh)"
            ) from err
        raise PgoError(
            f"{directory / tag}: checkpoint {tag!r} does not load ({cause}); valid: a checkpoint "
            "written by Engine.save for this model and config"
        ) from err
    if path is None:
        raise PgoError(f"{directory}/{tag}: DeepSpeed found no loadable checkpoint there")
    return dict((client_state or {}).get(_CLIENT_KEY, {}))


def _safe_globals() -> list:
    """The non-tensor types DeepSpeed pickles into its checkpoints (ZeRO 1/2 optimizer states),
    allowed to torch.load(weights_only=True): plain state holders, no code runs to build them."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def _safe_loads(ds_engine: Any) -> Iterator[list[tuple[Path, list[str]]]]:
    """While open, every file DeepSpeed loads through ds_engine's checkpoint engine is read with
    torch.load(weights_only=True) and ``_safe_globals`` (DeepSpeed's own loader passes
    weights_only=False: a planted file would run code as the training user). A file that the
    restricted unpickler refuses is appended to the yielded list as (path, the globals it names)
    before the error propagates."""
    checkpoint_engine = ds_engine.checkpoint_engine
    refused: list[tuple[Path, list[str]]] = []
    allowed = _safe_globals()

    def load(path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            refused.append((Path(path), _unsafe_globals(Path(path), allowed)))
            raise

    checkpoint_engine.load = load  # this instance only, for the duration of one load
    try:
        yield refused
    finally:
        del checkpoint_engine.load


def _unsafe_globals(file: Path, allowed: list) -> list[str]:
    """The globals a torch archive's pickles name beyond torch's and ``allowed`` (read with
    pickletools, nothing is executed); empty when the file cannot be scanned."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # a legacy (non-zip) file or a broken archive: no names to give
        return []
    ok = {f"{t.__module__}.{t.__qualname__}" for t in allowed}
    return [name for name in names if name not in ok]


def _unreadable_file(checkpoint: Path) -> Path | None:
    """The first file of a checkpoint tag that is not a complete torch zip archive, else None.

    torch.save writes a zip file; a truncated one has no end-of-central-directory record, so
    zipfile refuses it (or finds a member whose CRC fails) without unpickling anything.
    """
    for file in sorted(checkpoint.rglob("*.pt")):
        try:
            with zipfile.ZipFile(file) as archive:
                if archive.testzip() is not None:
                    return file
        except (zipfile.BadZipFile, OSError, EOFError):
            return file
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
