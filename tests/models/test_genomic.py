"""SNN and MLP: parameter counts by hand, initialisation statistics, shapes, weight loading;
the RNA SNN's front end (input dropout, train-fitted principal components, its own widths)."""

import math

import numpy as np
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


# --------------------------------------------------------------------------- the RNA front end


def _rna_cfg(**genomic) -> dict:
    """The resolved genomic config of a model with RNA only (rna_snn's nulls filled in)."""
    from hpc_pgo.models.survival import resolve_model_cfg

    given = {"modalities": ["genomic"], "genomic": {"groups": [], **genomic}}
    return resolve_model_cfg(given)["genomic"]


def test_rna_projection_gives_whitened_principal_components_of_the_fitted_rows():
    from hpc_pgo.models.genomic import RnaProjection
    from hpc_pgo.train.coxph import project

    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 3.0
    other = rng.normal(size=(7, 12))
    proj = RnaProjection(12, 5)
    proj.fit(torch.from_numpy(train))
    z = proj(torch.from_numpy(train).float()).double().numpy()
    # unit variance, uncorrelated, centred over the rows it was fitted on
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(5), atol=1e-4)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    # the same components as the CoxPH reference's PCA (coxph.project), up to sign and scale
    ref_train, ref_other = project(train, other, 5)
    scale = ref_train.std(0, ddof=1)
    got = proj(torch.from_numpy(other).float()).double().numpy()
    np.testing.assert_allclose(np.abs(got), np.abs(ref_other / scale), rtol=1e-3, atol=1e-3)
    # buffers: in the state dict (saved with checkpoints), not parameters (never trained)
    assert set(proj.state_dict()) == {"mean", "basis", "fitted"} and not list(proj.parameters())


def test_rna_projection_must_be_fitted_and_pads_components_beyond_the_rank():
    from hpc_pgo.models.genomic import RnaProjection

    proj = RnaProjection(6, 4)
    with pytest.raises(PgoError, match="never fitted"):
        proj(torch.zeros(2, 6))
    with pytest.raises(PgoError, match=r"fit needs \(n >= 2, 6\)"):
        proj.fit(torch.zeros(1, 6))
    proj.fit(torch.randn(3, 6, dtype=torch.float64))  # rank 2 after centring
    out = proj(torch.randn(5, 6))
    assert out.shape == (5, 4) and torch.count_nonzero(out[:, 2:]) == 0


def test_rna_snn_front_end_options_build_what_they_say():
    from hpc_pgo.models.genomic import GenomicEncoder, RnaProjection

    plain = GenomicEncoder(_rna_cfg(), {"rna": 30})
    assert isinstance(plain.rna.encoder, SNN) and plain.rna_projection is None
    assert [b[0].out_features for b in plain.rna.encoder.net] == [64, 48, 32, 32]
    plain.fit_rna_projection(torch.zeros(4, 30))  # nothing to fit: a no-op
    # rna_snn's null keys take the omics SNN's values (snn.dropout=0 turns off both)
    inherits = GenomicEncoder(_rna_cfg(snn={"hidden": [8], "dropout": 0.0}), {"rna": 30})
    assert [b[0].out_features for b in inherits.rna.encoder.net] == [8]
    assert inherits.rna.encoder.net[0][2].p == 0.0

    cfg = _rna_cfg(rna_input_dropout=0.5, rna_pcs=8, rna_snn={"hidden": [16], "dropout": 0.1})
    enc = GenomicEncoder(cfg, {"rna": 30})
    dropout, projection, snn = enc.rna.encoder
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.5
    assert isinstance(projection, RnaProjection) and enc.rna_projection is projection
    assert snn.net[0][0].in_features == 8 and snn.out_dim == 16 and snn.net[0][2].p == 0.1
    assert enc.mlp_b.in_dim == 16
    values = torch.randn(20, 30, dtype=torch.float64)
    enc.fit_rna_projection(values)
    enc.eval()
    g = enc({"rna": values.float()})
    assert g.shape == (20, enc.out_dim) and torch.isfinite(g).all()
    enc.train()  # input dropout: whole genes zeroed in training only
    assert not torch.equal(enc.rna.encoder[0](values), values)


@pytest.mark.parametrize(
    ("genomic", "message"),
    [
        ({"rna_pcs": -1}, r"model.genomic.rna_pcs=-1 is not valid; valid: an integer >= 0"),
        ({"rna_input_dropout": 1.0}, r"rna_input_dropout=1.0 is not valid; valid: .*\[0, 1\)"),
        ({"rna_snn": {"hidden": []}}, r"rna_snn.hidden=\[\] is not valid"),
    ],
)
def test_rna_front_end_values_are_checked(genomic, message):
    from hpc_pgo.models import build_model

    with pytest.raises(PgoError, match=message):
        build_model(
            {"modalities": ["genomic"], "genomic": genomic},
            feature_dims={"cnv": 4, "mut": 2, "rna": 8},
            image_size=None,
        )
