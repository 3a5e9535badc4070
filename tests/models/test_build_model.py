"""build_model: config keys, modality subsets, RNA encoders, parameter groups, field checks, errors."""

import pytest
import timm
import torch
from omegaconf import OmegaConf

from hpc_pgo.errors import PgoError
from hpc_pgo.models import MLP, build_model

DIMS = {"cnv": 12, "mut": 3, "rna": 20, "rna_emb": 24}
SIDE = 32
# timm's tiny test ViT keeps these tests fast; the default test builds the default T2T-ViT-7
SMALL_IMAGE = {"arch": "test_vit", "out": 8}


def _batch(b=5, fields=("cnv", "mut", "rna", "rna_emb", "image")):
    torch.manual_seed(0)
    tensors = {k: torch.randn(b, d) for k, d in DIMS.items()}
    tensors["image"] = torch.randn(b, 3, SIDE, SIDE)
    return {k: tensors[k] for k in fields}


def _trainable(model):
    return {id(p) for p in model.parameters() if p.requires_grad}


@pytest.fixture
def mlp_a_weights(tmp_path):
    torch.manual_seed(3)
    mlp = MLP(DIMS["rna_emb"], hidden=16, out_dim=6, layers=3)
    path = tmp_path / "mlp_a.pt"
    torch.save(mlp.state_dict(), path)
    return path, mlp


def test_default_concat_model_theta_identity_and_param_groups():
    model = build_model({}, feature_dims=DIMS, image_size=SIDE)  # t2t_vit_7, concat, rna snn
    assert model.required_fields == {"cnv", "mut", "rna", "image"}
    assert model.field_modality["rna"] == "genomic" and model.field_modality["image"] == "image"
    out = model(_batch())
    assert set(out) == {"theta", "theta_g", "theta_p"}
    assert torch.equal(out["theta"], out["theta_g"] + out["theta_p"])
    assert model.supports_balance
    model.require_per_modality_theta("balance.mode=rho")  # no error
    groups = model.param_groups()
    assert set(groups) == {"genomic", "image", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))  # disjoint
    assert set(ids) == _trainable(model)  # and complete
    head_ids = {id(p) for p in groups["head"]}
    assert head_ids == {id(model.fusion.linear.weight), id(model.fusion.linear.bias)}
    # W^G is as wide as G (MLP-B out, 32 by default), W^P as P (image.out)
    assert model.fusion.weight_block("genomic").shape == (1, 32)
    assert model.fusion.weight_block("image").shape == (1, 32)


def test_config_as_omegaconf_with_overrides():
    cfg = OmegaConf.create(
        {
            "modalities": ["genomic"],
            "genomic": {"snn": {"hidden": [16, 8]}, "mlp_b": {"out": 4}, "rna_encoder": "none"},
        }
    )
    model = build_model(cfg, feature_dims=DIMS, image_size=None)
    assert model.genomic.snn.out_dim == 8 and model.genomic.out_dim == 4
    assert model.required_fields == {"cnv", "mut"}


def test_genomic_only_gives_theta_only_and_refuses_balance():
    model = build_model(
        {"modalities": ["genomic"]}, feature_dims={"cnv": 12, "mut": 3, "rna": 20}, image_size=None
    )
    assert model.image is None
    out = model(_batch(fields=("cnv", "mut", "rna")))
    assert set(out) == {"theta"} and out["theta"].shape == (5,)
    assert set(model.param_groups()) == {"genomic", "head"}
    assert not model.supports_balance
    with pytest.raises(PgoError, match=r"balance.mode=rho needs .*modalities \[genomic\]"):
        model.require_per_modality_theta("balance.mode=rho")


def test_image_only_gives_theta_only():
    model = build_model(
        {"modalities": ["image"], "image": SMALL_IMAGE}, feature_dims={}, image_size=SIDE
    )
    assert model.genomic is None and model.required_fields == {"image"}
    out = model({"image": torch.randn(2, 3, SIDE, SIDE)})
    assert set(out) == {"theta"} and out["theta"].shape == (2,)
    assert set(model.param_groups()) == {"image", "head"}


def test_kronecker_model_trains_and_refuses_balance():
    model = build_model(
        {"fusion": "kronecker", "image": SMALL_IMAGE, "kronecker": {"hidden": 16}},
        feature_dims=DIMS,
        image_size=SIDE,
    )
    out = model(_batch())
    assert set(out) == {"theta"}
    out["theta"].sum().backward()
    assert all(p.grad is not None for p in model.param_groups()["head"])
    assert not model.supports_balance
    with pytest.raises(PgoError, match=r"balance.mode=rho needs .*fusion=kronecker"):
        model.require_per_modality_theta("balance.mode=rho")


def test_rna_snn_encoder_reads_rna_values():
    model = build_model({"modalities": ["genomic"]}, feature_dims=DIMS, image_size=None)
    assert model.genomic.rna.field == "rna"
    # the RNA SNN has the same widths as the CNV/mutation SNN: 64 * 20 + 5808 parameters
    assert sum(p.numel() for p in model.genomic.rna.parameters()) == 64 * 20 + 5808
    batch = _batch(fields=("cnv", "mut", "rna"))
    model.eval()
    before = model(batch)["theta"]
    batch["rna"] = batch["rna"] + 1
    assert not torch.allclose(before, model(batch)["theta"])


def test_scgpt_reads_the_embedding_field_as_is():
    cfg = {"modalities": ["genomic"], "genomic": {"rna_encoder": "scgpt"}}
    model = build_model(cfg, feature_dims=DIMS, image_size=None)
    assert model.required_fields == {"cnv", "mut", "rna_emb"}
    assert model.genomic.mlp_b.in_dim == 32 + DIMS["rna_emb"]
    batch = _batch(fields=("cnv", "mut", "rna_emb"))
    assert torch.equal(model.genomic.rna(batch), batch["rna_emb"])
    assert model(batch)["theta"].shape == (5,)


def test_scgpt_mlpa_uses_frozen_pretrained_mlp_a(mlp_a_weights):
    path, reference = mlp_a_weights
    cfg = {
        "modalities": ["genomic"],
        "genomic": {
            "rna_encoder": "scgpt_mlpa",
            "rna_embedding_field": "rna_emb",
            "mlp_a_weights": str(path),
            "mlp_a": {"hidden": 16, "out": 6},
        },
    }
    model = build_model(cfg, feature_dims=DIMS, image_size=None).train()
    batch = _batch(fields=("cnv", "mut", "rna_emb"))
    assert torch.equal(model.genomic.rna(batch), reference(batch["rna_emb"]))
    mlp_a = model.genomic.rna.encoder
    assert not mlp_a.training  # stays in eval mode when the model trains
    frozen = {id(p) for p in mlp_a.parameters()}
    assert all(not p.requires_grad for p in mlp_a.parameters())
    grouped = {id(p) for ps in model.param_groups().values() for p in ps}
    assert not frozen & grouped
    model(batch)["theta"].sum().backward()
    assert all(p.grad is None for p in mlp_a.parameters())
    assert all(p.grad is not None for p in model.param_groups()["genomic"])


def test_scgpt_mlpa_without_weights_is_an_error():
    cfg = {"modalities": ["genomic"], "genomic": {"rna_encoder": "scgpt_mlpa"}}
    with pytest.raises(PgoError, match="needs model.genomic.mlp_a_weights"):
        build_model(cfg, feature_dims=DIMS, image_size=None)


def test_local_image_weights_through_build_model(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("test_vit", num_classes=1000, img_size=SIDE)
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    model = build_model(
        {"modalities": ["image"], "image": {**SMALL_IMAGE, "pretrained": str(path)}},
        feature_dims={},
        image_size=SIDE,
    )
    for key, tensor in model.image.backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[key]), key


def test_image_weights_of_another_architecture_are_refused(tmp_path):
    # same widths, so no shape error: only the names of test_vit2's extra tensors are missing
    path = tmp_path / "test_vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    cfg = {"modalities": ["image"], "image": {"arch": "test_vit2", "pretrained": str(path)}}
    with pytest.raises(PgoError, match=r"lacks \d+ of the \d+ tensors of test_vit2"):
        build_model(cfg, feature_dims={}, image_size=SIDE)
    cfg["image"]["arch"] = "test_vit3"  # wider: the same names with other shapes
    with pytest.raises(
        PgoError, match=r"could not be built with model.image.pretrained=.*size mismatch"
    ):
        build_model(cfg, feature_dims={}, image_size=SIDE)
    cfg["image"]["pretrained"] = str(tmp_path / "absent.pth")
    with pytest.raises(PgoError, match="model.image.pretrained=.*no such file"):
        build_model(cfg, feature_dims={}, image_size=SIDE)


def test_any_timm_architecture_as_image_encoder():
    # a convolutional net (any input size) and a ViT (fixed input size: img_size is passed)
    for arch in ("test_efficientnet", "test_vit"):
        model = build_model(
            {"modalities": ["image"], "image": {"arch": arch, "out": 4, "drop_path": 0.1}},
            feature_dims={},
            image_size=SIDE,
        )
        assert model({"image": torch.randn(2, 3, SIDE, SIDE)})["theta"].shape == (2,)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"fusion": "sum"}, r"model.fusion='sum' is unknown; valid: concat, kronecker"),
        (
            {"genomic": {"rna_encoder": "geneformer"}},
            r"rna_encoder='geneformer' is unknown; valid: snn, scgpt, scgpt_mlpa, none",
        ),
        ({"image": {"arch": "t2t_vit_15"}}, r"arch='t2t_vit_15' is not a timm .*t2t_vit_14"),
        ({"modalities": ["genomic", "text"]}, r"model.modalities=.*valid: \[genomic, image\]"),
        ({"fusoin": "concat"}, r"model.fusoin is not a model config key; valid under model: "),
        ({"genomic": {"snn": {"widths": [8]}}}, r"model.genomic.snn.widths is not a model config"),
        ({"genomic": {"snn": {"dropout": 1.5}}}, r"model.genomic.snn.dropout=1.5 is not valid"),
        ({"genomic": {"mlp_b": {"hidden": 0}}}, r"model.genomic.mlp_b.hidden=0 is not valid"),
        ({"image": {"arch": 7}}, r"model.image.arch=7 is not valid; valid: a non-empty string"),
        (
            {"modalities": ["genomic"], "fusion": "kronecker"},
            r"kronecker needs modalities \[genomic, image\]",
        ),
    ],
)
def test_bad_config_names_the_key_and_the_valid_values(cfg, message):
    cfg = {"image": SMALL_IMAGE, **cfg}
    with pytest.raises(PgoError, match=message):
        build_model(cfg, feature_dims=DIMS, image_size=SIDE)


def test_shard_set_lacking_a_field_names_field_and_modality():
    with pytest.raises(PgoError, match=r"lacks field 'mut' needed by the genomic modality"):
        build_model({"modalities": ["genomic"]}, feature_dims={"cnv": 4, "rna": 3}, image_size=None)
    cfg = {"modalities": ["genomic"], "genomic": {"rna_encoder": "scgpt"}}
    with pytest.raises(
        PgoError, match=r"lacks field 'rna_emb' .*genomic .*rna_encoder=scgpt.*cnv, mut, rna"
    ):
        build_model(cfg, feature_dims={"cnv": 12, "mut": 3, "rna": 20}, image_size=None)


def test_check_fields_and_forward_name_missing_field_and_modality():
    model = build_model({"image": SMALL_IMAGE}, feature_dims=DIMS, image_size=SIDE)
    model.check_fields({"cnv", "mut", "rna", "image", "time", "event"})  # no error
    with pytest.raises(
        PgoError,
        match=r"shards/demo lacks field 'image' needed by the image modality \(model.image.field\)",
    ):
        model.check_fields({"cnv", "mut", "rna"}, source="shards/demo")
    with pytest.raises(PgoError, match=r"the batch lacks field 'rna' needed by the genomic"):
        model(_batch(fields=("cnv", "mut", "image")))
