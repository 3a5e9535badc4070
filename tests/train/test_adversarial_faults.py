"""Adversarial faults of a fold's inputs (issue 10), kept so that a regression is caught. Classes:

- a checkpoint directory that lies: `latest` naming a step that is not there, a truncated file,
  a file whose pickle runs code (issue 21); each must be one error naming the checkpoint
  directory (and the tag, or the file), and the planted code must never run;
- a modulation that never turns on (balance.alpha 0, a start epoch past the last epoch, an empty
  window) while the config says rho: refused when the config is composed and on the direct entry;
- a hand-written config run by `python -m hpc_pgo.train RUN_DIR --fold K`: it gets the same rules
  and derived keys as a composed one (a null balance.mode trains with rho, as submit would).

Everything runs for real: DeepSpeed engines on gloo, `pgo-shards demo` shards, the entry in a
fresh interpreter.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from omegaconf import OmegaConf

from hpc_pgo.config import compose, config_digest, load_config, save_config
from hpc_pgo.config.compose import finish_loaded
from hpc_pgo.errors import PgoError
from hpc_pgo.train.fold import train_fold
from tests.engine.toy import TwoBranch, make_batch
from tests.engine.workers import base_config
from tests.train.conftest import fold_config
from tests.train.test_cli import run_cli

GENOMIC = ("model=genomic", "train.epochs=2", "train.batch_size=16")
SMALL_FUSION = ("model=fusion_small", "train.epochs=1", "train.batch_size=16")


def last_error_line(result) -> str:
    """The entry's stderr must end in one `error: ...` line, without a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    return line


# --- checkpoints that lie ------------------------------------------------------------------------


@pytest.fixture
def saved_engine(tmp_path):
    """A real single-process DeepSpeed engine (the toy two-branch model) with one checkpoint,
    step00000001, in tmp_path/ckpt; returns (engine, checkpoint directory)."""
    from hpc_pgo.engine import build_engine, setup_distributed

    engine = build_engine(
        TwoBranch(), base_config(), steps_per_epoch=2, dist_env=setup_distributed()
    )
    engine.train_step(make_batch(), epoch=0)
    ckpt = tmp_path / "ckpt"
    engine.save(ckpt, {"epoch": 0})
    assert (ckpt / "latest").read_text() == "step00000001"
    return engine, ckpt


@pytest.mark.slow
def test_dangling_latest_names_the_directory_the_tag_and_what_exists(saved_engine):
    engine, ckpt = saved_engine
    (ckpt / "latest").write_text("step00000009")
    with pytest.raises(PgoError) as caught:
        engine.load(ckpt)
    message = str(caught.value)
    assert message.startswith(f"{ckpt}: 'latest' names checkpoint 'step00000009', which does not")
    assert "the directory holds step00000001" in message and "\n" not in message
    (ckpt / "step00000001").rename(ckpt / "moved")
    (ckpt / "latest").write_text("step00000001")
    with pytest.raises(PgoError, match="'step00000001', which does not exist; the directory holds"):
        engine.load(ckpt)


@pytest.mark.slow
def test_truncated_checkpoint_file_is_named(saved_engine):
    engine, ckpt = saved_engine
    state = ckpt / "step00000001" / "mp_rank_00_model_states.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    with pytest.raises(PgoError) as caught:
        engine.load(ckpt)
    message = str(caught.value)
    assert message.startswith(f"{state}: a file of checkpoint 'step00000001' in {ckpt} is trunc")
    assert "\n" not in message
    # the intact checkpoint still loads (the check reads, it does not change anything)
    state.write_bytes(data)
    assert engine.load(ckpt) == {"epoch": 0}


class _Planted:
    """Unpickling this runs code: it writes `marker` (what a planted checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, name",
    [(0, "mp_rank_00_model_states.pt"), (1, "zero_pp_rank_0_mp_rank_00_optim_states.pt")],
)
def test_a_checkpoint_file_that_runs_code_on_unpickling_is_refused_unrun(tmp_path, stage, name):
    """Issue 21: DeepSpeed's own loader unpickles with weights_only=False, so a file planted in a
    run dir (the model states; under ZeRO 1 the optimizer states, which hold DeepSpeed's own
    types) ran code as the training user. It must be refused, naming the file, without running
    anything; the intact checkpoint (ZeRO 1: LossScaler, ZeroStageEnum ...) still resumes."""
    import torch

    from hpc_pgo.engine import build_engine, setup_distributed

    cfg = base_config(**{"deepspeed.zero_optimization.stage": stage})
    engine = build_engine(TwoBranch(), cfg, steps_per_epoch=2, dist_env=setup_distributed())
    engine.train_step(make_batch(), epoch=0)
    ckpt = tmp_path / "ckpt"
    engine.save(ckpt, {"epoch": 0})
    planted = ckpt / "step00000001" / name
    original = planted.read_bytes()
    with torch.serialization.safe_globals(_deepspeed_types()):
        state = torch.load(planted, weights_only=True)
    marker = tmp_path / "ran"
    state["payload"] = _Planted(str(marker))
    torch.save(state, planted)
    with pytest.raises(PgoError) as caught:
        engine.load(ckpt)
    assert not marker.exists(), "loading the checkpoint ran the code pickled in it"
    message = str(caught.value)
    assert message.startswith(f"{planted}: a file of checkpoint 'step00000001' in {ckpt} pickles")
    assert "builtins.exec" in message and "refused without unpickling it" in message
    assert "\n" not in message
    planted.write_bytes(original)
    assert engine.load(ckpt) == {"epoch": 0}
    assert engine.global_step == 1


def _deepspeed_types() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@pytest.mark.slow
def test_fold_entry_with_a_dangling_latest_exits_2_naming_it(small_shards, tmp_path, monkeypatch):
    cfg = fold_config(small_shards, *GENOMIC, "train.stop_after_steps=2")
    assert train_fold(cfg, 0, tmp_path)["status"] == "stopped"
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # this process's 1-rank group, not the child's
        monkeypatch.delenv(name, raising=False)
    ckpt = tmp_path / "fold_0" / "checkpoints"
    (ckpt / "latest").write_text("step00000005")
    cfg.train.stop_after_steps = None
    saved = save_config(cfg, tmp_path)
    line = last_error_line(run_cli(str(saved), "--fold", "0"))
    assert f"{ckpt}: 'latest' names checkpoint 'step00000005'" in line
    assert "the directory holds step00000002" in line
    assert "'step00000005'" in (tmp_path / "fold_0" / "error.txt").read_text()


# --- a modulation that never turns on ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["balance.alpha=0"], "balance.alpha=0 with balance.mode=rho (model=fusion) never "
                              "modulates (k = 1 - tanh(0 * (rho - 1)) = 1 at every step); valid: "
                              "balance.alpha > 0 (1 is the paper's), or balance.mode=none"),
        (["balance.mode=rho", "balance.alpha=0.0"], "balance.alpha=0.0 with balance.mode=rho"),
        (["train.epochs=5", "balance.start_epoch=5"],
         "balance.start_epoch=5 with train.epochs=5: balance.mode=rho (model=fusion) would never "
         "turn on (epochs are 0..4); valid: balance.start_epoch < 5, or balance.mode=none"),
        (["train.epochs=5", "balance.start_epoch=12", "balance.end_epoch=20"],
         "balance.start_epoch=12 with train.epochs=5"),
        (["balance.start_epoch=4", "balance.end_epoch=4"],
         "balance.end_epoch=4 equals balance.start_epoch=4, so balancing would never turn on"),
        (["balance.start_epoch=4", "balance.end_epoch=1"], "balance.end_epoch=1 is before"),
    ],
)  # fmt: skip
def test_a_modulation_that_never_turns_on_is_refused_at_compose(args, expected):
    with pytest.raises(PgoError) as caught:
        compose(args)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_fold_entry_refuses_a_saved_modulation_that_never_turns_on(small_shards, tmp_path):
    cfg = fold_config(small_shards, *SMALL_FUSION)
    cfg.balance.start_epoch = 1  # edited after composing: the only epoch is 0
    saved = save_config(cfg, tmp_path)
    line = last_error_line(run_cli(str(saved), "--fold", "0"))
    assert line.startswith(f"error: {saved}: balance.start_epoch=1 with train.epochs=1: ")
    assert not (tmp_path / "fold_0").exists()  # refused before the fold started


# --- a hand-written config through the direct entry ----------------------------------------------


def test_a_composed_config_passes_the_entry_rules_unchanged(tmp_path):
    for args in ([], ["cluster=slurm", "deepspeed=zero2"], ["model=genomic", "folds=0-3"],
                 ["deepspeed.dtype=auto", "balance.mode=none"]):  # fmt: skip
        cfg = compose(args)
        loaded = finish_loaded(load_config(save_config(cfg, tmp_path)), tmp_path)
        assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg)
        assert config_digest(loaded) == config_digest(cfg)


def test_a_hand_written_config_gets_the_derived_keys_or_a_clear_error(tmp_path):
    cfg = compose([])
    for key in ("balance.mode", "wait", "deepspeed.train_micro_batch_size_per_gpu"):
        OmegaConf.update(cfg, key, None)
    cfg.folds = "0-2"
    path = save_config(cfg, tmp_path)
    loaded = finish_loaded(load_config(path), path)
    assert loaded.balance.mode == "rho" and loaded.wait is True and list(loaded.folds) == [0, 1, 2]
    assert loaded.deepspeed.train_micro_batch_size_per_gpu == loaded.train.batch_size

    text = path.read_text()
    path.write_text(text.replace("balance:\n  mode: null", "balance:\n  mode: ogm"))
    with pytest.raises(
        PgoError, match=rf"^{re.escape(str(path))}: balance.mode=ogm is not valid; valid: none, rho"
    ):
        finish_loaded(load_config(path), path)
    partial = OmegaConf.to_container(compose([]))
    del partial["cluster"]
    path.write_text(OmegaConf.to_yaml(partial))
    with pytest.raises(
        PgoError, match=rf"^{re.escape(str(path))}: not a complete config \(.*cluster"
    ):
        finish_loaded(load_config(path), path)


@pytest.mark.slow
def test_fold_entry_derives_a_null_balance_mode_and_modulates(small_shards, tmp_path):
    cfg = fold_config(small_shards, *SMALL_FUSION, "train.stop_after_steps=2")
    assert cfg.balance.mode == "rho"  # what submit would train: concat over both modalities
    cfg.balance.mode = None  # a hand-written config leaves the derived key null
    saved = save_config(cfg, tmp_path)
    assert load_config(saved).balance.mode is None

    result = run_cli(str(saved), "--fold", "0")
    assert result.returncode == 0, result.stderr
    fold_cfg = load_config(tmp_path / "fold_0")
    assert fold_cfg.balance.mode == "rho"
    log = pd.read_csv(tmp_path / "fold_0" / "modulation.csv")
    assert len(log) == 2 and ((log["k_g"] < 1) | (log["k_p"] < 1)).any()  # rho slowed a branch
