"""benchmarks/cox_loss.py: its N x N baseline is the same loss as cox_nll (up to 1/N)."""

from pathlib import Path

import torch

from hpc_pgo.survival.cox import cox_nll
from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cox_loss.py"


def load_benchmark():
    return load_script(SCRIPT)


def test_nxn_baseline_equals_cox_nll_sum_over_n_with_ties():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(200, generator=g, dtype=torch.float64, requires_grad=True)
    time = torch.randint(0, 20, (200,), generator=g).to(torch.float64)
    event = torch.rand(200, generator=g) < 0.5
    baseline = load_benchmark().pathomic_fusion_nxn(theta, time, event)
    ours = cox_nll(theta, time, event, reduction="sum") / 200
    torch.testing.assert_close(ours, baseline)
    torch.testing.assert_close(*(torch.autograd.grad(x, theta)[0] for x in (ours, baseline)))
