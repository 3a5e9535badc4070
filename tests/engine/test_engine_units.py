"""Engine parts that run without a process group: schedules, groups, hooks, configs, environment."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

from hpc_pgo.engine import build_engine, deepspeed_config
from hpc_pgo.engine.distributed import disable_shm_comm_build, rendezvous_env
from hpc_pgo.engine.global_batch import gather_global_batch
from hpc_pgo.engine.modulation import BalanceWindow, StepModulator, named_param_groups
from hpc_pgo.engine.schedule import LrSchedule
from hpc_pgo.errors import PgoError
from tests.engine.toy import TwoBranch, make_batch


# --- schedules ---------------------------------------------------------------------------------
def test_linear_schedule_is_pathomic_fusion_per_epoch_decay():
    sched = LrSchedule("linear", epochs=3, steps_per_epoch=2)
    assert [sched(s) for s in range(6)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5]


def test_cosine_schedule_goes_from_one_to_zero_per_step():
    sched = LrSchedule("cosine", epochs=2, steps_per_epoch=5)
    assert sched(0) == 1.0
    assert sched(5) == pytest.approx(0.5)
    assert sched(10) == pytest.approx(0.0, abs=1e-12)
    assert sched(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 10)))


def test_unknown_schedule_is_rejected_naming_the_choices():
    with pytest.raises(PgoError, match="train.lr_schedule='step'.*linear, cosine"):
        LrSchedule("step", epochs=3, steps_per_epoch=2)


def test_schedule_survives_lambdalr_state_dict():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LrSchedule("linear", 3, 2))
    state = sched.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, LrSchedule("cosine", 9, 9))
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0] == LrSchedule("linear", 3, 2)


# --- balance window and groups -----------------------------------------------------------------
def test_balance_window_is_half_open_and_none_never_modulates():
    window = BalanceWindow(mode="rho", start_epoch=2, end_epoch=4)
    assert [window.active(e) for e in range(6)] == [False, False, True, True, False, False]
    assert BalanceWindow(mode="rho", start_epoch=1).active(10**6)
    assert not BalanceWindow(mode="none").active(0)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "ogm"}, {"mode": "rho", "start_epoch": 5, "end_epoch": 2}]
)
def test_bad_balance_window_is_rejected(kwargs):
    with pytest.raises(PgoError, match="balance"):
        BalanceWindow(**kwargs)


def test_named_groups_drop_empty_and_reject_frozen_duplicate_unknown():
    model = TwoBranch()
    groups = named_param_groups({**model.param_groups(), "image": []}, lr=0.1, weight_decay=0.0)
    assert [g["name"] for g in groups] == ["genomic", "head"]
    assert all(g["coef"] == 1.0 for g in groups)
    with pytest.raises(PgoError, match="frozen"):
        named_param_groups({"genomic": [model.rna.weight]}, lr=0.1, weight_decay=0.0)
    with pytest.raises(PgoError, match="both"):
        named_param_groups(
            {"genomic": [model.w_g.weight], "head": [model.w_g.weight]}, lr=0.1, weight_decay=0.0
        )
    with pytest.raises(PgoError, match=r"group\(s\) text; valid: genomic, image, head"):
        named_param_groups({"text": [model.w_g.weight]}, lr=0.1, weight_decay=0.0)


# --- the step hooks on a plain torch Adam ------------------------------------------------------
def _adam_with_modulator(lr=0.1, schedule=None):
    model = TwoBranch()
    groups = named_param_groups(model.param_groups(), lr=lr, weight_decay=0.0)
    opt = torch.optim.Adam(groups, lr=lr, eps=1e-12)
    modulator = StepModulator(opt, noise_seed=1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    return model, opt, modulator, sched


def _loss(model, seed=0):
    out = model(make_batch(16, seed=seed))
    return (out["theta"] ** 2).mean() + out["theta_g"].mean()


def test_hooks_scale_each_groups_first_adam_step_by_its_coefficient_and_restore_lr():
    model, opt, modulator, _ = _adam_with_modulator(lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loss(model).backward()
    modulator.set(0.25, 0.5)
    assert modulator.effective_lr() == {"lr_genomic": 0.025, "lr_image": 0.05, "lr_head": 0.1}
    opt.step()
    want = {"genomic": 0.25, "image": 0.5, "w_g": 1.0, "w_p": 1.0, "rna": 0.0}
    for name, p in model.named_parameters():
        ratio = (p.detach() - before[name]).abs() / 0.1
        torch.testing.assert_close(
            ratio, torch.full_like(ratio, want[name.split(".")[0]]), rtol=1e-5, atol=0
        )
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.1]


def test_scheduler_sees_the_unmodulated_rate():
    model, opt, modulator, sched = _adam_with_modulator(lr=0.1, schedule=LrSchedule("linear", 3, 1))
    for _ in range(2):
        opt.zero_grad()
        _loss(model).backward()
        modulator.set(0.3, 0.3)
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05, 0.05])


def test_noise_is_reproducible_per_step_and_leaves_the_head_alone():
    def one_step(noise, step):
        model, opt, modulator, _ = _adam_with_modulator()
        _loss(model).backward()
        modulator.set(1.0, 1.0, noise=noise, step=step)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        return grads, {n: p.detach().clone() for n, p in model.named_parameters()}

    _, clean = one_step(False, 0)
    _, noisy_a = one_step(True, 0)
    _, noisy_b = one_step(True, 0)
    _, noisy_c = one_step(True, 1)
    for name in clean:
        torch.testing.assert_close(noisy_a[name], noisy_b[name], rtol=0, atol=0)
    assert not torch.equal(noisy_a["genomic.0.weight"], clean["genomic.0.weight"])
    assert not torch.equal(noisy_a["image.0.weight"], noisy_c["image.0.weight"])
    torch.testing.assert_close(noisy_a["w_g.weight"], clean["w_g.weight"], rtol=0, atol=0)


# --- DeepSpeed config ---------------------------------------------------------------------------
def test_deepspeed_config_fills_batch_precision_and_no_clipping():
    conf = deepspeed_config(
        {"zero_optimization": {"stage": 2}}, batch_size=32, world_size=4, device_type="cpu"
    )
    assert conf["train_micro_batch_size_per_gpu"] == 8 and conf["train_batch_size"] == 32
    with pytest.raises(PgoError, match="train.batch_size=32 does not split over 3 ranks"):
        deepspeed_config({}, batch_size=32, world_size=3, device_type="cpu")  # micro_batch's rule
    assert conf["gradient_accumulation_steps"] == 1 and conf["gradient_clipping"] == 0.0
    assert conf["bf16"] == {"enabled": False} and conf["zero_optimization"]["stage"] == 2
    gpu = deepspeed_config({"dtype": "auto"}, batch_size=32, world_size=1, device_type="cuda")
    assert gpu["bf16"]["enabled"] is True and gpu["zero_optimization"]["stage"] == 0
    assert "dtype" not in gpu
    cpu_bf16 = deepspeed_config({"dtype": "bf16"}, batch_size=8, world_size=1, device_type="cpu")
    assert cpu_bf16["bf16"]["enabled"] is True


def test_deepspeed_config_accepts_the_projects_zero_yaml_files():
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
    for stage in (0, 1, 2):
        group = OmegaConf.load(root / f"zero{stage}.yaml")
        group = OmegaConf.to_container(
            OmegaConf.merge({"train": {"batch_size": 32}}, {"ds": group}).ds, resolve=True
        )
        conf = deepspeed_config(group, batch_size=32, world_size=2, device_type="cpu")
        assert conf["zero_optimization"]["stage"] == stage
        assert conf["train_micro_batch_size_per_gpu"] == 16 and conf["bf16"]["enabled"] is False


def test_config_rules_accept_every_dtype_the_engine_documents_and_auto_resolves_by_device():
    from omegaconf import OmegaConf

    from hpc_pgo.config import compose
    from hpc_pgo.config.rules import CHOICES
    from hpc_pgo.engine.engine import DTYPES

    assert set(CHOICES["deepspeed.dtype"]) == set(DTYPES)  # the two lists cannot drift apart
    group = OmegaConf.to_container(compose(["deepspeed.dtype=auto"]).deepspeed, resolve=True)
    on = {
        device: deepspeed_config(group, batch_size=32, world_size=1, device_type=device)["bf16"]
        for device in ("cpu", "cuda")
    }
    assert on == {"cpu": {"enabled": False}, "cuda": {"enabled": True}}


@pytest.mark.parametrize(
    "group, match",
    [
        ({"zero_optimization": {"stage": 3}}, "stage=3.*valid: 0, 1, 2"),
        ({"optimizer": {"type": "Adam"}}, "defines optimizer"),
        ({"dtype": "fp16"}, "dtype='fp16' is unknown; valid: fp32, bf16, auto"),
    ],
)
def test_deepspeed_config_rejects_what_the_engine_cannot_honour(group, match):
    with pytest.raises(PgoError, match=match):
        deepspeed_config(group, batch_size=32, world_size=1, device_type="cpu")


def test_balance_needs_a_model_with_modality_theta():
    class Plain(TwoBranch):
        supports_balance = False

    cfg = {"train": {"lr": 0.1, "epochs": 2}, "balance": {"mode": "rho"}}
    with pytest.raises(PgoError, match="balance.mode=rho needs a model"):
        build_engine(Plain(), cfg, steps_per_epoch=1)
    with pytest.raises(PgoError, match="train.lr is missing"):
        build_engine(TwoBranch(), {"train": {"epochs": 2}}, steps_per_epoch=1)


# --- environment and gather ---------------------------------------------------------------------
def test_rendezvous_env_single_process_defaults_and_partial_env_error():
    env = rendezvous_env({})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("0", "1", "0")
    assert 0 < int(env["MASTER_PORT"]) < 65536
    with pytest.raises(PgoError, match="but not LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        rendezvous_env({"RANK": "0", "WORLD_SIZE": "2"})
    full = {
        "RANK": "2",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    with pytest.raises(PgoError, match="RANK=2 is not below WORLD_SIZE=2"):
        rendezvous_env(full)


def test_shm_comm_op_build_is_disabled():
    disable_shm_comm_build()
    # import_module, not `import deepspeed.comm.torch as m`: that resolves the attribute
    # deepspeed.comm.torch, which is the torch package.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    assert ds_comm_torch.build_shm_op() is None


def test_gather_without_process_group_is_identity_and_checks_shapes():
    theta = torch.randn(4, requires_grad=True)
    time, event = torch.rand(4), torch.ones(4)
    glob = gather_global_batch(theta, time, event, theta.detach() * 0.5, theta.detach() * 0.5)
    assert glob.theta is theta and glob.time is time and not glob.theta_g.requires_grad
    with pytest.raises(PgoError, match="'time' has shape \\(3,\\)"):
        gather_global_batch(theta, torch.rand(3), event)
    with pytest.raises(PgoError, match="only one of 'theta_g', 'theta_p'"):
        gather_global_batch(theta, time, event, theta.detach(), None)
