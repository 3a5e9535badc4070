"""concordance(): Harrell's C with theta = log hazard (higher = worse), via lifelines."""

import numpy as np
import pytest
import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.survival.concordance import concordance


def harrell_loop(time, theta, event):
    """Independent reference for untied times: comparable if the shorter time is a death."""
    correct = tied = pairs = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if time[i] < time[j] and event[i]:
                pairs += 1
                correct += theta[i] > theta[j]
                tied += theta[i] == theta[j]
    return (correct + 0.5 * tied) / pairs


def test_hand_computed_case():
    # times 1,2,3,4, events 1,1,0,1. Comparable pairs (shorter time died):
    # (0,1) (0,2) (0,3): theta 3 > 1, 2, 0 -> 3 concordant; (1,2): 1 < 2 discordant;
    # (1,3): 1 > 0 concordant. C = 4 / 5.
    time, event = [1, 2, 3, 4], [1, 1, 0, 1]
    assert concordance(time, [3.0, 1.0, 2.0, 0.0], event) == pytest.approx(0.8)
    # Same with theta_3 = 1: pair (1,3) is tied in theta and counts 1/2: C = 3.5 / 5.
    assert concordance(time, [3.0, 1.0, 2.0, 1.0], event) == pytest.approx(0.7)


def test_sign_convention_higher_theta_dies_sooner():
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    event = torch.ones(5)
    theta = -time.clone().requires_grad_(True)  # tensors with autograd state are accepted
    assert concordance(time, theta, event) == 1.0
    assert concordance(time, -theta, event) == 0.0


def test_matches_pairwise_loop_on_random_untied_data():
    rng = np.random.default_rng(3)
    time = rng.exponential(size=60)
    theta = rng.normal(size=60) - 0.5 * time
    event = (rng.random(60) < 0.6).astype(int)
    assert concordance(time, theta, event) == pytest.approx(harrell_loop(time, theta, event))


def test_undefined_and_invalid_input():
    with pytest.raises(PgoError, match="no comparable pair"):
        concordance([1, 2, 3], [0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(PgoError, match="theta nan at index 1"):
        concordance([1, 2, 3], [0.1, float("nan"), 0.3], [1, 1, 0])
    with pytest.raises(PgoError, match="survival time -2.0 at index 2"):
        concordance([1, 2, -2], [0.1, 0.2, 0.3], [1, 1, 0], where="fold 3")
    with pytest.raises(PgoError, match="^fold 3: event 3.0"):
        concordance([1, 2, 2], [0.1, 0.2, 0.3], [1, 3, 0], where="fold 3")
