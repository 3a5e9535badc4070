"""rho and coefficient (Eq. 5-8): hand-computed cases, a loop reference, symmetry, stability."""

import math

import pytest
import torch

from hpc_pgo.balance import Modulation, coefficient, log_contribution, modulation, rho
from hpc_pgo.errors import PgoError

LN2, LN3 = math.log(2.0), math.log(3.0)


def contribution_loop(theta_m, time, event):
    """Independent reference: s^m = sum over deaths k of exp(theta_k) / sum_{t_j >= t_k} exp(theta_j)."""
    s = 0.0
    for k in range(len(time)):
        if event[k]:
            s += math.exp(theta_m[k]) / sum(
                math.exp(theta_m[j]) for j in range(len(time)) if time[j] >= time[k]
            )
    return s


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def test_hand_computed_three_samples():
    # sample (time, event, theta_g, theta_p): A (1, 1, ln2, 0), B (2, 0, 0, 0), C (3, 1, 0, ln3)
    # s^G: A: 2 / (2 + 1 + 1) = 0.5;  C: 1 / 1 = 1   -> s^G = 1.5
    # s^P: A: 1 / (1 + 1 + 3) = 0.2;  C: 3 / 3 = 1   -> s^P = 1.2
    # rho^G = 1.5 / 1.2 = 1.25, rho^P = 0.8
    time, event = f64([1, 2, 3]), f64([1, 0, 1])
    theta_g, theta_p = f64([LN2, 0, 0]), f64([0, 0, LN3])
    rho_g, rho_p = rho(theta_g, theta_p, time, event)
    assert rho_g == pytest.approx(1.25, rel=1e-12) and rho_p == pytest.approx(0.8, rel=1e-12)
    assert type(rho_g) is float and type(rho_p) is float
    assert math.exp(log_contribution(theta_g, time, event).item()) == pytest.approx(1.5)
    # The shared b/2 (and any constant per modality) cancels in every s^m_k.
    shifted = rho(theta_g + 0.7, theta_p - 3.0, time, event)
    assert shifted == pytest.approx((1.25, 0.8), rel=1e-12)


def test_hand_computed_ties():
    # (time, event, theta_g): (1, 1, 0), (1, 1, ln3), (2, 0, 0); theta_p = 0 everywhere.
    # Both deaths at t=1 have the whole batch as risk set (Breslow):
    # s^G = 1/(1+3+1) + 3/(1+3+1) = 0.8;  s^P = 1/3 + 1/3 = 2/3;  rho^G = 0.8 / (2/3) = 1.2
    rho_g, rho_p = rho(f64([0, LN3, 0]), f64([0, 0, 0]), f64([1, 1, 2]), f64([1, 1, 0]))
    assert rho_g == pytest.approx(1.2, rel=1e-12) and rho_p == pytest.approx(1 / 1.2, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_on_tied_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    n = 30
    theta_g = torch.randn(n, generator=g, dtype=torch.float64)
    theta_p = 2 * torch.randn(n, generator=g, dtype=torch.float64)
    time = torch.randint(0, 6, (n,), generator=g).to(torch.float64)
    event = (torch.rand(n, generator=g) < 0.5).to(torch.int64)
    event[0] = 1
    expected = contribution_loop(
        theta_g.tolist(), time.tolist(), event.tolist()
    ) / contribution_loop(theta_p.tolist(), time.tolist(), event.tolist())
    rho_g, rho_p = rho(theta_g, theta_p, time, event)
    assert rho_g == pytest.approx(expected, rel=1e-10)
    assert rho_g * rho_p == pytest.approx(1.0, rel=1e-14)
    # Swapping the modalities inverts the ratios.
    assert rho(theta_p, theta_g, time, event) == pytest.approx((rho_p, rho_g), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_at_theta_50(dtype):
    # (time, event, theta_g, theta_p): (1,1,50,-50), (2,0,-50,50), (3,1,50,-50)
    # s^G = e^50/(2e^50 + e^-50) + 1 = 1.5 (to 1e-43); s^P = e^-50/(e^50 + 2e^-50) + 1 = 1 + ~e^-100
    time, event = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 0, 1])
    rho_g, rho_p = rho(
        torch.tensor([50.0, -50, 50], dtype=dtype),
        torch.tensor([-50.0, 50, -50], dtype=dtype),
        time,
        event,
    )
    assert rho_g == pytest.approx(1.5, rel=1e-12) and rho_p == pytest.approx(1 / 1.5, rel=1e-12)


def test_extreme_ratio_is_clipped_to_finite_values():
    # s^P ~ e^-2000 in float64 would overflow rho^G; |log rho| is clipped at 700.
    time, event = f64([1, 2]), f64([1, 0])
    rho_g, rho_p = rho(f64([0, 0]), f64([-1000, 1000]), time, event)
    assert rho_g == math.exp(700) and rho_p == math.exp(-700)
    assert coefficient(rho_g) == 0.0 and coefficient(rho_p) == 1.0


def test_no_event_gives_ratio_and_coefficients_one():
    theta = torch.tensor([50.0, -50.0, 1.0], requires_grad=True)  # no gradient is taken
    result = modulation(
        theta, -theta, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.bool)
    )
    assert result == Modulation(rho_g=1.0, rho_p=1.0, k_g=1.0, k_p=1.0)
    assert (
        log_contribution(theta.detach(), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)).item()
        == -math.inf
    )


def test_coefficient_values():
    # 1 - tanh(0.25) = 1 - (e^0.5 - 1)/(e^0.5 + 1) = 2 / (e^0.5 + 1)
    assert coefficient(1.25) == pytest.approx(2 / (math.exp(0.5) + 1), rel=1e-14)
    assert coefficient(1.25, alpha=2.0) == pytest.approx(2 / (math.exp(1.0) + 1), rel=1e-14)
    assert coefficient(0.8) == 1.0 and coefficient(1.0) == 1.0 and coefficient(5.0, alpha=0) == 1.0
    assert coefficient(torch.tensor(1.25)) == coefficient(1.25)
    assert 0.0 < coefficient(3.0) < coefficient(2.0) < coefficient(1.1) < 1.0


def test_modulation_slows_only_the_dominant_modality():
    m = modulation(f64([LN2, 0, 0]), f64([0, 0, LN3]), f64([1, 2, 3]), f64([1, 0, 1]))
    assert m.rho_g == pytest.approx(1.25) and m.k_g == pytest.approx(coefficient(1.25))
    assert m.k_p == 1.0


def test_bad_input():
    ok = torch.zeros(3)
    with pytest.raises(PgoError, match="survival time -1.0 at index 0"):
        rho(ok, ok, torch.tensor([-1.0, 1, 2]), torch.ones(3))
    with pytest.raises(PgoError, match="event 2.0 at index 2"):
        rho(ok, ok, torch.ones(3), torch.tensor([0, 1, 2]))
    with pytest.raises(PgoError, match="theta_p has shape"):
        rho(ok, torch.zeros(2), torch.ones(3), torch.ones(3))
    with pytest.raises(PgoError, match="alpha -1.0"):
        coefficient(1.2, alpha=-1)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PgoError, match="valid: a finite number > 0"):
            coefficient(bad)
