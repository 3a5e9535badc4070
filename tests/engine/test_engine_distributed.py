"""The engine on real DeepSpeed with 2 gloo processes against 1 process and against plain torch.

One spawn of 2 ranks and one of 1 rank run every scenario (see workers.py); the tests compare
their result files. Equal results need: the global-batch Cox loss (risk sets across ranks), the
gradient averaging, the named groups and the lr-scaling hooks all to be right.
"""

from __future__ import annotations

import pytest
import torch

from hpc_pgo.balance import coefficient, rho
from hpc_pgo.survival import cox_nll
from tests.engine.toy import TwoBranch, make_batch
from tests.engine.workers import STEPS, STEPS_PER_EPOCH, base_config, spawn_run

pytestmark = pytest.mark.slow

ZERO2 = {"deepspeed.zero_optimization.stage": 2}
SCENARIOS_1 = {
    "zero0": {"no_event": True},
    # bf16 on CPU: DeepSpeed wraps torch Adam in its unfused low-precision optimizer at ZeRO 0.
    "bf16_zero0": {"overrides": {"deepspeed.dtype": "bf16"}},
}
SCENARIOS_2 = {
    "zero0": {"uneven": True, "no_event": True, "nan": True},
    "zero1": {"overrides": {"deepspeed.zero_optimization.stage": 1}},
    "zero2": {"overrides": ZERO2, "checkpoint": True},
    "none": {"overrides": {"balance.mode": "none"}},
    "noise": {"overrides": {"balance.noise": True}},
    "noise_zero2": {"overrides": {"balance.noise": True, **ZERO2}},
}
TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("engine")
    return {1: spawn_run(1, SCENARIOS_1, base / "w1"), 2: spawn_run(2, SCENARIOS_2, base / "w2")}


def plain_training(modulated: bool) -> tuple[list[dict], list[float]]:
    """The same training in one process with plain torch: Adam, L1, linear decay, lr * k by hand."""
    train = base_config()["train"]
    model = TwoBranch(seed=0)
    groups = [{"params": ps, "name": name} for name, ps in model.param_groups().items()]
    opt = torch.optim.Adam(
        groups, lr=train["lr"], weight_decay=train["weight_decay"], eps=train["adam_eps"]
    )
    params, losses = [], []
    for step in range(STEPS):
        epoch = step // STEPS_PER_EPOCH
        batch = make_batch(16, seed=step)
        out = model(batch)
        l1 = sum(p.abs().sum() for p in model.param_groups()["genomic"])
        loss = cox_nll(out["theta"], batch["time"], batch["event"]) + train["l1_genomic"] * l1
        rho_g, rho_p = rho(out["theta_g"], out["theta_p"], batch["time"], batch["event"])
        k = {"genomic": coefficient(rho_g), "image": coefficient(rho_p), "head": 1.0}
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            scale = k[group["name"]] if modulated else 1.0
            group["lr"] = train["lr"] * (1 - epoch / (train["epochs"] + 1)) * scale
        opt.step()
        losses.append(float(loss.detach()))
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return params, losses


def assert_params_close(got: dict, want: dict) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("scenario", ["zero0", "zero1", "zero2"])
def test_two_ranks_equal_one_process_and_plain_torch(runs, scenario):
    """ZeRO 0, 1 and 2 on 2 ranks, DeepSpeed on 1 rank (ZeRO 0) and plain torch: the same run."""
    want_params, want_losses = plain_training(modulated=True)
    one, two = runs[1][0]["zero0"], runs[2][0][scenario]
    for step in range(STEPS):
        for got in (one, two):
            assert got["stats"][step]["loss"] == pytest.approx(want_losses[step], rel=1e-6)
            assert_params_close(got["params"][step + 1], want_params[step])
        for key in ("rho_g", "rho_p", "k_g", "k_p"):
            assert two["stats"][step][key] == pytest.approx(one["stats"][step][key], rel=1e-6)


def test_ranks_stay_identical(runs):
    for scenario in ("zero0", "zero2", "noise"):
        rank0, rank1 = runs[2][0][scenario], runs[2][1][scenario]
        assert rank0["stats"] == rank1["stats"]
        for a, b in zip(rank0["params"], rank1["params"], strict=True):
            assert_params_close(a, b)


@pytest.mark.parametrize("scenario", ["zero0", "zero1", "zero2"])
def test_first_step_update_is_lr_times_coefficient(runs, scenario):
    """Adam's first step with tiny eps moves every weight by lr exactly; modulated: lr * k."""
    got = runs[2][0][scenario]
    stats, before, after = got["stats"][0], got["params"][0], got["params"][1]
    lr = base_config()["train"]["lr"]
    assert min(stats["k_g"], stats["k_p"]) < 0.95, "the test batch must make one modality dominant"
    expected = {"genomic": stats["k_g"], "image": stats["k_p"], "w_g": 1.0, "w_p": 1.0}
    for name, start in before.items():
        if name.startswith("rna."):  # frozen: never moves
            assert torch.equal(after[name], start)
            continue
        ratio = (after[name] - start).abs() / lr
        k = expected[name.split(".")[0]]
        torch.testing.assert_close(ratio, torch.full_like(ratio, k), rtol=2e-5, atol=0)
    assert stats["lr_genomic"] == pytest.approx(lr * stats["k_g"])
    assert stats["lr_image"] == pytest.approx(lr * stats["k_p"])


def test_bf16_first_step_is_lr_times_coefficient_too(runs):
    """bf16 ZeRO 0: DeepSpeed's set-up step on zero gradients must not move the weights."""
    got = runs[1][0]["bf16_zero0"]
    stats, before, after = got["stats"][0], got["params"][0], got["params"][1]
    lr = base_config()["train"]["lr"]
    expected = {"genomic": stats["k_g"], "image": stats["k_p"], "w_g": 1.0, "w_p": 1.0}
    for name, start in before.items():
        if not name.startswith("rna."):
            median = ((after[name] - start).abs() / lr).median().item()
            assert median == pytest.approx(expected[name.split(".")[0]], rel=0.03), name


def test_balance_none_equals_plain_training(runs):
    want_params, want_losses = plain_training(modulated=False)
    got = runs[2][0]["none"]
    for step in range(STEPS):
        assert (got["stats"][step]["k_g"], got["stats"][step]["k_p"]) == (1.0, 1.0)
        assert got["stats"][step]["loss"] == pytest.approx(want_losses[step], rel=1e-6)
        assert_params_close(got["params"][step + 1], want_params[step])


def test_batch_without_events_gives_zero_cox_loss_and_coefficient_one(runs):
    for world in (1, 2):  # world 2: a batch of 0 + 0 events across ranks of 7 and 9 samples
        got = runs[world][0]["zero0"]
        stats = got["no_event"]
        assert stats["cox"] == 0.0
        assert (stats["rho_g"], stats["rho_p"], stats["k_g"], stats["k_p"]) == (1.0, 1.0, 1.0, 1.0)
        assert stats["loss"] == pytest.approx(stats["l1"])
        assert all(torch.isfinite(p).all() for p in got["params_no_event"].values())


def test_nan_loss_stops_with_step_and_epoch(runs):
    for rank in (0, 1):
        message = runs[2][rank]["zero0"]["nan_error"]
        assert message is not None and "\n" not in message
        assert "loss is nan" in message and "epoch 1" in message and f"step {STEPS + 1}" in message


def test_noise_changes_the_update_and_is_refused_under_zero2(runs):
    plain_mod = runs[2][0]["zero0"]["params"][STEPS]
    noisy = runs[2][0]["noise"]["params"][STEPS]
    assert not torch.allclose(noisy["genomic.0.weight"], plain_mod["genomic.0.weight"])
    assert "balance.noise=true needs ZeRO stage 0" in runs[2][0]["noise_zero2"]["build_error"]


def test_checkpoint_resume_takes_the_same_next_step(runs):
    for rank in (0, 1):
        got = runs[2][rank]["zero2"]
        assert got["client_state"] == {"epoch": 1, "note": "x"}
        assert_params_close(got["loaded_params"], got["params"][STEPS])
        assert got["resumed"] == got["continued"]
        assert_params_close(got["resumed_params"], got["continued_params"])
