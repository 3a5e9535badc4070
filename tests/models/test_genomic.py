"""SNN and MLP: parameter counts by hand, initialisation statistics, shapes, weight loading."""

import math

import pytest
import torch
from torch import nn

from hpc_pgo.errors import PgoError
from hpc_pgo.models.genomic import MLP, SNN, FrozenMLPA, load_mlp_weights


def test_snn_parameter_count_by_hand():
    # in_dim 84 (80 CNV + 4 mutations), blocks 84 -> 64 -> 48 -> 32 -> 32, (fan_in + 1) * fan_out each:
    # 85*64 = 5440; 65*48 = 3120; 49*32 = 1568; 33*32 = 1056; total 11184
    snn = SNN(84)
    assert sum(p.numel() for p in snn.parameters()) == 5440 + 3120 + 1568 + 1056
    assert snn.out_dim == 32


def test_snn_blocks_are_linear_elu_alphadropout():
    snn = SNN(10, hidden=[64, 48, 32, 32], dropout=0.25)
    assert len(snn.net) == 4
    for block in snn.net:
        linear, act, drop = block
        assert isinstance(linear, nn.Linear)
        assert isinstance(act, nn.ELU)
        assert isinstance(drop, nn.AlphaDropout) and drop.p == 0.25
    assert [b[0].out_features for b in snn.net] == [64, 48, 32, 32]


def test_snn_init_normal_with_std_one_over_sqrt_fan_in_and_zero_bias():
    torch.manual_seed(0)
    snn = SNN(4000)
    for block in snn.net:
        linear = block[0]
        w = linear.weight.detach().double()
        expected_std = 1 / math.sqrt(linear.in_features)
        n = w.numel()
        # sample std of n normal draws has relative standard error ~ 1/sqrt(2n); allow 5 of those
        assert abs(w.std().item() / expected_std - 1) < 5 / math.sqrt(2 * n)
        assert abs(w.mean().item()) < 5 * expected_std / math.sqrt(n)
        assert torch.count_nonzero(linear.bias) == 0


def test_snn_alpha_dropout_active_only_in_training():
    torch.manual_seed(0)
    snn = SNN(20)
    x = torch.randn(8, 20)
    snn.eval()
    assert torch.equal(snn(x), snn(x))
    snn.train()
    assert not torch.equal(snn(x), snn(x))


def test_mlp_three_layers_hidden_128_shapes_and_count():
    mlp = MLP(512, hidden=128, out_dim=32, layers=3)
    linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(128, 512), (128, 128), (32, 128)]
    # 513*128 + 129*128 + 129*32
    assert sum(p.numel() for p in mlp.parameters()) == 65664 + 16512 + 4128
    assert isinstance(mlp.net[-1], nn.Linear)  # linear read-out, no activation after it
    assert mlp(torch.randn(5, 512)).shape == (5, 32)


def test_mlp_rejects_zero_layers():
    with pytest.raises(PgoError, match="layers=0"):
        MLP(4, layers=0)


def test_mlp_weights_round_trip_and_frozen_wrapper(tmp_path):
    torch.manual_seed(0)
    source = MLP(16, 8, 4)
    path = tmp_path / "mlp_a.pt"
    torch.save(source.state_dict(), path)
    target = MLP(16, 8, 4)
    load_mlp_weights(target, path, "model.genomic.mlp_a_weights")
    x = torch.randn(3, 16)
    assert torch.equal(source(x), target(x))
    frozen = FrozenMLPA(target).train()
    assert not frozen.training and not frozen.mlp.training
    assert all(not p.requires_grad for p in frozen.parameters())


def test_mlp_weights_of_wrong_shape_or_missing_file(tmp_path):
    path = tmp_path / "mlp_a.pt"
    torch.save(MLP(16, 8, 4).state_dict(), path)
    with pytest.raises(PgoError, match=r"model.genomic.mlp_a_weights=.*does not fit an MLP 32->4"):
        load_mlp_weights(MLP(32, 8, 4), path, "model.genomic.mlp_a_weights")
    with pytest.raises(PgoError, match="no such file"):
        load_mlp_weights(MLP(16, 8, 4), tmp_path / "absent.pt", "model.genomic.mlp_a_weights")
