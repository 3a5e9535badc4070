"""cox_nll and breslow_log_risk against an O(N^2) loop, lifelines' CoxPHFitter, and edge cases."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.cox import breslow_log_risk, cox_nll


def cox_nll_loop(theta, time, event):
    """Independent reference: the Breslow sum written as a double loop over samples."""
    total = theta.new_zeros(())
    for k in range(len(theta)):
        if event[k]:
            denom = sum(torch.exp(theta[j]) for j in range(len(theta)) if time[j] >= time[k])
            total = total - (theta[k] - torch.log(denom))
    return total


def make_batch(n, tied, seed):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    if tied:
        time = torch.randint(0, 5, (n,), generator=g).to(torch.float64)  # many ties, some t=0
    else:
        time = torch.rand(n, generator=g, dtype=torch.float64) * 10
    event = (torch.rand(n, generator=g) < 0.6).to(torch.int64)
    event[0] = 1
    return theta, time, event


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_match_loop(tied, seed):
    theta, time, event = make_batch(40, tied, seed)
    if tied:
        assert len(torch.unique(time)) < len(time)
    fast_theta = theta.clone().requires_grad_(True)
    loop_theta = theta.clone().requires_grad_(True)
    fast = cox_nll(fast_theta, time, event, reduction="sum")
    loop = cox_nll_loop(loop_theta, time, event)
    torch.testing.assert_close(fast, loop, rtol=1e-12, atol=1e-12)
    (g_fast,) = torch.autograd.grad(fast, fast_theta)
    (g_loop,) = torch.autograd.grad(loop, loop_theta)
    torch.testing.assert_close(g_fast, g_loop, rtol=1e-10, atol=1e-12)


def test_breslow_log_risk_includes_tied_samples():
    # times 2, 1, 1, 3: both samples at t=1 have risk set {all four}; t=2 -> {t=2, t=3}.
    theta = torch.tensor([0.0, math.log(2.0), math.log(3.0), math.log(4.0)], dtype=torch.float64)
    time = torch.tensor([2.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    expected = torch.log(
        torch.tensor([1 + 4, 1 + 2 + 3 + 4, 1 + 2 + 3 + 4, 4], dtype=torch.float64)
    )
    torch.testing.assert_close(breslow_log_risk(theta, time), expected)


def test_mean_divides_by_number_of_events():
    theta, time, event = make_batch(30, tied=True, seed=3)
    total = cox_nll(theta, time, event, reduction="sum")
    mean = cox_nll(theta, time, event, reduction="mean")
    torch.testing.assert_close(mean, total / event.sum())


def test_matches_lifelines_coxph_log_likelihood_on_untied_data():
    rng = np.random.default_rng(7)
    n = 80
    x = rng.normal(size=(n, 2))
    time = rng.exponential(np.exp(-(x @ np.array([0.8, -0.5]))))
    censor = rng.exponential(2.0, size=n)
    df = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": np.minimum(time, censor)})
    df["E"] = (time <= censor).astype(int)
    assert df["T"].is_unique
    cph = CoxPHFitter(penalizer=0.0).fit(
        df, duration_col="T", event_col="E", fit_options={"precision": 1e-12}
    )
    params = torch.tensor(cph.params_[["x0", "x1"]].to_numpy(), requires_grad=True)
    x_t = torch.tensor(x)
    # lifelines centres covariates; the partial likelihood ignores a constant shift of theta.
    nll = cox_nll(
        x_t @ params, torch.tensor(df["T"].to_numpy()), torch.tensor(df["E"].to_numpy()), "sum"
    )
    assert -nll.item() == pytest.approx(cph.log_likelihood_, rel=1e-9)
    # lifelines' estimate is the maximiser: our gradient with respect to the coefficients vanishes.
    (grad,) = torch.autograd.grad(nll, params)
    assert grad.abs().max().item() < 1e-8


def test_no_event_gives_zero_loss_and_zero_gradient():
    theta = torch.tensor([50.0, -50.0, 3.0], requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = cox_nll(theta, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), reduction=reduction)
        (grad,) = torch.autograd.grad(loss, theta)
        assert loss.item() == 0.0 and not math.copysign(1.0, loss.item()) < 0
        assert torch.equal(grad, torch.zeros(3))


def test_empty_batch_gives_zero():
    empty = torch.zeros(0)
    assert cox_nll(empty, empty, empty).item() == 0.0


def test_extreme_theta_is_finite_and_shift_invariant_in_float32():
    theta, time, event = make_batch(20, tied=True, seed=5)
    big = (theta * 500).to(torch.float32).requires_grad_(True)  # |theta| up to ~1000
    loss = cox_nll(big, time.float(), event)
    (grad,) = torch.autograd.grad(loss, big)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    reference = cox_nll_loop(big.detach().double() - big.detach().double().max(), time, event)
    torch.testing.assert_close(loss.double() * event.sum(), reference, rtol=1e-5, atol=1e-3)


def test_float32_matches_float64_and_event_dtypes_agree():
    theta, time, event = make_batch(50, tied=True, seed=11)
    expected = cox_nll(theta, time, event)
    torch.testing.assert_close(
        cox_nll(theta.float(), time.float(), event.float()).double(), expected, rtol=1e-5, atol=1e-6
    )
    for ev in (event.bool(), event.float(), event.to(torch.int32)):
        torch.testing.assert_close(cox_nll(theta, time, ev), expected)


def test_permutation_invariant():
    theta, time, event = make_batch(35, tied=True, seed=2)
    perm = torch.randperm(35, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        cox_nll(theta[perm], time[perm], event[perm]), cox_nll(theta, time, event)
    )


@pytest.mark.parametrize(
    ("time", "event", "needles"),
    [
        ([1.0, -1.5, 2.0], [1, 0, 1], ["survival time -1.5", "index 1", ">= 0"]),
        ([1.0, float("nan"), 2.0], [1, 0, 1], ["survival time nan", "index 1"]),
        ([1.0, 2.0, float("inf")], [1, 0, 1], ["survival time inf", "index 2"]),
        ([1.0, 2.0, 3.0], [1, 2, 1], ["event 2.0", "index 1", "0 (censored) or 1"]),
        ([1.0, 2.0, 3.0], [0.5, 1, 1], ["event 0.5", "index 0"]),
        ([1.0, 2.0, 3.0], [1, 1, -1], ["event -1.0", "index 2"]),
    ],
)
def test_bad_survival_input_is_one_line_error(time, event, needles):
    with pytest.raises(PgoError) as info:
        cox_nll(torch.zeros(3), torch.tensor(time), torch.tensor(event))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_bad_shapes_and_reduction():
    t, e = torch.ones(4), torch.ones(4)
    with pytest.raises(PgoError, match=r"\(4, 1\)"):
        cox_nll(torch.zeros(4, 1), t, e)
    with pytest.raises(PgoError, match="same length"):
        cox_nll(torch.zeros(4), t, torch.ones(3))
    with pytest.raises(PgoError, match="valid: mean, sum"):
        cox_nll(torch.zeros(4), t, e, reduction="none")
