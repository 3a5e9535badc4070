"""The names the config rules accept are the registries' (no copy in rules.py), and micro_batch."""

from __future__ import annotations

import pytest

from hpc_pgo.config import compose, registry, rules
from hpc_pgo.config.registry import Registry
from hpc_pgo.engine.engine import DTYPES, ZERO_STAGES, deepspeed_config
from hpc_pgo.engine.global_batch import micro_batch
from hpc_pgo.engine.modulation import BALANCE_MODES, BalanceWindow
from hpc_pgo.engine.schedule import SCHEDULES
from hpc_pgo.errors import PgoError


def test_rules_accept_exactly_the_registries_names():
    from hpc_pgo.models import survival
    from hpc_pgo.models.fusion import FUSIONS
    from hpc_pgo.models.genomic import RNA_ENCODERS

    assert rules.CHOICES["model.fusion"] == registry.FUSIONS.names() == tuple(FUSIONS)
    assert (
        rules.CHOICES["model.genomic.rna_encoder"]
        == registry.RNA_ENCODERS.names()
        == tuple(RNA_ENCODERS)
    )
    assert rules.MODALITIES == registry.MODALITIES.names() == survival.MODALITIES
    from hpc_pgo.models.bags import IMAGE_ENCODERS

    assert (
        rules.CHOICES["model.image.encoder"]
        == registry.IMAGE_ENCODERS.names()
        == tuple(IMAGE_ENCODERS)
        == ("backbone", "mean", "abmil")
    )
    assert rules.CHOICES["train.lr_schedule"] == tuple(SCHEDULES)
    assert rules.CHOICES["balance.mode"] == BALANCE_MODES
    assert rules.CHOICES["deepspeed.dtype"] == tuple(DTYPES)
    assert rules.CHOICES["deepspeed.zero_optimization.stage"] == ZERO_STAGES


@pytest.mark.parametrize(
    "key,names",
    [
        ("model.fusion", registry.FUSIONS),
        ("model.genomic.rna_encoder", registry.RNA_ENCODERS),
        ("model.image.encoder", registry.IMAGE_ENCODERS),
        ("train.lr_schedule", SCHEDULES),
        ("balance.mode", BALANCE_MODES),
    ],
)
def test_a_name_no_registry_holds_is_refused_with_the_registrys_list(key, names):
    with pytest.raises(PgoError) as caught:
        compose([f"{key}=nope"])
    assert str(caught.value) == f"{key}=nope is not valid; valid: {', '.join(names)}"
    for name in names:  # and each registered name is accepted by the rules
        assert rules.check_override(key, f"{key}={name}", "x", name) == name


def test_every_registered_name_composes():
    for name in registry.FUSIONS:
        assert compose([f"model.fusion={name}", "balance.mode=none"]).model.fusion == name
    for name in registry.RNA_ENCODERS:
        cfg = compose([f"model.genomic.rna_encoder={name}"])
        assert cfg.model.genomic.rna_encoder == name
    for name in SCHEDULES:
        assert compose([f"train.lr_schedule={name}"]).train.lr_schedule == name
    for name in registry.IMAGE_ENCODERS:
        assert compose([f"model.image.encoder={name}"]).model.image.encoder == name


def test_the_models_refuse_what_the_registry_does_not_hold_with_its_list():
    from hpc_pgo.models.survival import resolve_model_cfg

    with pytest.raises(PgoError, match=r"valid: concat, kronecker$"):
        resolve_model_cfg({"fusion": "sum"})
    with pytest.raises(
        PgoError, match=r"model.image.encoder='clam' is unknown; valid: backbone, mean, abmil$"
    ):
        resolve_model_cfg({"image": {"encoder": "clam"}})
    with pytest.raises(PgoError, match=r"balance.mode='x' is unknown; valid: none, rho$"):
        BalanceWindow(mode="x")


def test_registry_api_and_bind():
    fusions = registry.FUSIONS
    assert fusions.is_registered("concat") and "kronecker" in fusions
    assert not fusions.is_registered("sum") and len(fusions) == 2
    reg = Registry("model.x", ("a", "b"))
    assert list(reg.bind({"b": 2, "a": 1})) == ["a", "b"]  # in the registry's order
    with pytest.raises(RuntimeError, match=r"missing: \['b'\], unregistered: \['c'\]"):
        reg.bind({"a": 1, "c": 3})
    with pytest.raises(ValueError, match="repeat"):
        Registry("model.y", ("a", "a"))


def test_rules_import_no_model_code():
    import subprocess
    import sys

    code = (
        "import sys, hpc_pgo.config; "
        "print(sorted(m for m in ('timm', 'deepspeed', 'hpc_pgo.models') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- micro_batch: the per-rank batch, one function for rules, engine and fold -------------------
def test_micro_batch_divides_exactly():
    assert micro_batch(32, 1) == 32
    assert micro_batch(32, 4) == 8
    assert micro_batch(64, 8) == 8


@pytest.mark.parametrize("batch,world", [(32, 3), (7, 2), (1, 2)])
def test_micro_batch_refuses_what_does_not_divide(batch, world):
    with pytest.raises(PgoError) as caught:
        micro_batch(batch, world, ranks_from="cluster.nodes=1 x cluster.tasks_per_node=3")
    assert str(caught.value) == (
        f"train.batch_size={batch} does not split over {world} ranks per fold (cluster.nodes=1 x "
        f"cluster.tasks_per_node=3); valid: a multiple of {world}"
    )


def test_micro_batch_refuses_no_ranks():
    with pytest.raises(PgoError, match="0 ranks per fold"):
        micro_batch(32, 0)


def test_rules_and_engine_use_micro_batch():
    cfg = compose(["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=4"])
    assert cfg.deepspeed.train_micro_batch_size_per_gpu == micro_batch(32, 8) == 4
    with pytest.raises(PgoError) as caught:
        compose(["cluster.tasks_per_node=5"])
    assert str(caught.value) == (
        "train.batch_size=32 does not split over 5 ranks per fold (cluster.nodes=1 x "
        "cluster.tasks_per_node=5); valid: a multiple of 5"
    )
    conf = deepspeed_config({}, batch_size=48, world_size=6, device_type="cpu")
    assert conf["train_micro_batch_size_per_gpu"] == 8 and conf["train_batch_size"] == 48
    with pytest.raises(PgoError, match="does not split over 5 ranks per fold"):
        deepspeed_config({}, batch_size=32, world_size=5, device_type="cpu")


def test_the_fold_takes_its_loader_batch_from_micro_batch():
    import inspect

    from hpc_pgo.train import fold

    source = inspect.getsource(fold)
    assert fold.micro_batch is micro_batch
    assert "micro = micro_batch(int(cfg.train.batch_size), " in source
    assert "batch_size) //" not in source and "ceil(" not in source
