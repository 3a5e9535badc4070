"""The modulated optimizer step: each branch's learning rate scaled by its coefficient (Eq. 7-8).

The paper's update is phi_{t+1}^m = phi_t^m - eta * k^m * g(phi_t^m): k^m scales the step,
which for Adam is its learning rate (scaling the gradient would do almost nothing: Adam is
invariant to gradient scale). We keep the coefficient in the optimizer's parameter-group dict
(key "coef") and apply it with step hooks registered on the torch optimizer BEFORE
``deepspeed.initialize``:

    pre-hook:  lr <- lr * coef   (for every group with a "coef")
    post-hook: lr <- the lr before the pre-hook

DeepSpeed keeps our optimizer object and its group dicts under ZeRO 0-2 and calls its step()
after gradient reduction and clipping, so the hooks scale exactly that step's update, and the
LR scheduler (stepped by the engine after the optimizer step) sees the unmodulated rate.
Groups are matched by their "name" key because DeepSpeed drops empty groups.

Only the two branches are modulated ("genomic" with k^G, "image" with k^P); the head (W^G, W^P,
b) is shared by both modalities and keeps coefficient 1, as in OGM-GE, which modulates the
encoders only.

OGM-GE's Gaussian noise (Peng et al. 2022, "generalization enhancement"): while the modulation
is active, each parameter tensor of both branch groups gets zero-mean Gaussian noise with the
standard deviation of its own gradient added to its gradient before the update, as OGM-GE's code
does for both encoders whatever their coefficient. It needs the real parameters in the
optimizer's groups (ZeRO stage 0, fp32); DeepSpeed's ZeRO 1/2 and bf16 optimizers hand the
torch optimizer flat partitions instead, where a per-tensor std does not exist, so the engine
refuses noise there. Noise comes from a generator seeded identically on every rank and drawn in
the same order, so replicas stay identical; it is re-seeded from (seed, step) every step, so a
resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from hpc_pgo.errors import PgoError

GROUP_NAMES = ("genomic", "image", "head")
# balance.mode: none (no modulation) | rho (the Cox modality balancing of Eq. 5-8).
BALANCE_MODES = ("none", "rho")
# Which coefficient modulates which group: k^G the genomic branch, k^P the image branch.
MODULATED = {"genomic": "k_g", "image": "k_p"}


def named_param_groups(
    groups: Mapping[str, Sequence[torch.nn.Parameter]], *, lr: float, weight_decay: float
) -> list[dict]:
    """Optimizer parameter groups from a model's ``param_groups()`` dict.

    groups: {"genomic": [...], "image": [...], "head": [...]} (frozen parameters already left
    out). Returns one dict per non-empty group with keys params, name, lr, weight_decay and
    coef (1.0). Raises PgoError on an unknown group name, a parameter in two groups or a frozen
    parameter.
    """
    unknown = sorted(set(groups) - set(GROUP_NAMES))
    if unknown:
        raise PgoError(
            f"model.param_groups() has group(s) {', '.join(unknown)}; valid: {', '.join(GROUP_NAMES)}"
        )
    seen: dict[int, str] = {}
    out = []
    for name in GROUP_NAMES:
        params = list(groups.get(name, []))
        for p in params:
            if not p.requires_grad:
                raise PgoError(
                    f"model.param_groups()[{name!r}] holds a frozen parameter; leave it out"
                )
            if id(p) in seen:
                raise PgoError(
                    f"a parameter is in both model.param_groups()[{seen[id(p)]!r}] and [{name!r}]"
                )
            seen[id(p)] = name
        if params:
            out.append(
                {
                    "params": params,
                    "name": name,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "coef": 1.0,
                }
            )
    if not out:
        raise PgoError("model.param_groups() has no trainable parameter")
    return out


@dataclass(frozen=True)
class BalanceWindow:
    """When the modulation applies: mode "rho" and start_epoch <= epoch < end_epoch (None = no end)."""

    mode: str = "none"
    alpha: float = 1.0
    start_epoch: int = 0
    end_epoch: int | None = None
    noise: bool = False

    def __post_init__(self) -> None:
        if self.mode not in BALANCE_MODES:
            raise PgoError(
                f"balance.mode={self.mode!r} is unknown; valid: {', '.join(BALANCE_MODES)}"
            )
        if self.start_epoch < 0 or (
            self.end_epoch is not None and self.end_epoch < self.start_epoch
        ):
            raise PgoError(
                f"balance epoch window [{self.start_epoch}, {self.end_epoch}) is invalid; valid: "
                "0 <= start_epoch <= end_epoch, or end_epoch null for no end"
            )

    def active(self, epoch: int) -> bool:
        """True when this epoch's steps are modulated."""
        if self.mode == "none" or epoch < self.start_epoch:
            return False
        return self.end_epoch is None or epoch < self.end_epoch


class StepModulator:
    """Holds the per-step coefficients on a torch optimizer and applies them through step hooks.

    Create it on the torch optimizer before ``deepspeed.initialize``; call ``set`` after the
    backward pass and before the engine's step. ``noise_seed`` is the seed of the (rank-shared)
    noise generator.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_seed: int = 0) -> None:
        self.optimizer = optimizer
        self.noise_now = False
        self._noise_seed = noise_seed
        self._step = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self._frozen = False
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def set(self, k_g: float, k_p: float, *, noise: bool = False, step: int = 0) -> None:
        """Coefficients for the next optimizer step (1.0, 1.0 for an unmodulated step).

        noise: add OGM-GE noise in that step; step: the global step number (seeds the noise).
        """
        coefs = {"k_g": float(k_g), "k_p": float(k_p)}
        for group in self.optimizer.param_groups:
            key = MODULATED.get(group.get("name"))
            group["coef"] = coefs[key] if key else 1.0
        self.noise_now = noise
        self._step = int(step)
        self._generators = {}

    def effective_lr(self) -> dict[str, float]:
        """{"lr_<name>": lr * coef} of each group: the rate the next step will use."""
        return {
            f"lr_{g['name']}": g["lr"] * g.get("coef", 1.0) for g in self.optimizer.param_groups
        }

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every optimizer step inside runs with lr 0 (moves no parameter).

        For DeepSpeed's set-up: its bf16/fp16 ZeRO-0 wrapper takes one optimizer step on zero
        gradients to allocate state, and with Adam's coupled weight decay that step would move
        every weight by about lr. The caller clears the optimizer state afterwards.
        """
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = False

    def remove(self) -> None:
        """Unregister the hooks."""
        for handle in self._handles:
            handle.remove()

    def _pre_step(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            group["lr_unmodulated"] = group["lr"]
            group["lr"] = 0.0 if self._frozen else group["lr"] * group.get("coef", 1.0)
            if self.noise_now and group.get("name") in MODULATED:
                self._add_noise(group["params"])

    def _post_step(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            if "lr_unmodulated" in group:
                group["lr"] = group.pop("lr_unmodulated")

    def _add_noise(self, params: Sequence[torch.Tensor]) -> None:
        """grad <- grad + N(0, std(grad)^2) per tensor, from the rank-shared generator."""
        for p in params:
            if p.grad is None or p.grad.numel() < 2:
                continue
            gen = self._generator(p.grad.device)
            std = p.grad.float().std()
            noise = torch.randn(p.grad.shape, generator=gen, device=p.grad.device)
            p.grad.add_((noise * std).to(p.grad.dtype))

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._noise_seed * 1_000_003 + self._step)
            self._generators[device] = gen
        return self._generators[device]
