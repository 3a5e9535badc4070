"""save_config / load_config round trip and atomicity; config_digest stability."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from hpc_pgo.config import CONFIG_FILE, compose, config_digest, load_config, save_config
from hpc_pgo.errors import PgoError


def test_round_trip(tmp_path):
    cfg = compose(["cluster=slurm", "cluster.sbatch.mail-type=END", "folds=0,3"])
    path = save_config(cfg, tmp_path / "runs" / "x")  # missing folders are created
    assert path == tmp_path / "runs" / "x" / CONFIG_FILE
    loaded = load_config(path.parent)
    assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg, resolve=True)
    assert OmegaConf.is_struct(loaded)
    assert "${" not in path.read_text()  # written resolved
    assert config_digest(loaded) == config_digest(cfg)
    assert sorted(p.name for p in path.parent.iterdir()) == [CONFIG_FILE]  # no temporary left


def test_overwrite_replaces_the_whole_file(tmp_path):
    save_config(compose(["cluster=slurm", "cluster.sbatch={a: 1, b: 2}"]), tmp_path)
    save_config(compose([]), tmp_path)
    loaded = load_config(tmp_path / CONFIG_FILE)
    assert loaded.cluster.kind == "local" and "sbatch" not in loaded.cluster


def test_failed_write_leaves_old_state_and_no_temporary(tmp_path):
    # config.yaml is a non-empty directory: the final rename fails after the temporary was written
    blocker = tmp_path / CONFIG_FILE
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    with pytest.raises(OSError):
        save_config(compose([]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE]
    assert (blocker / "keep").read_text() == "x"


def test_load_missing_config_is_a_pgo_error(tmp_path):
    with pytest.raises(PgoError, match="no saved config at"):
        load_config(tmp_path)


def test_digest_ignores_key_order():
    cfg = compose([])
    tree = OmegaConf.to_container(cfg)
    reordered = OmegaConf.create({k: tree[k] for k in reversed(list(tree))})
    reordered.train = {k: tree["train"][k] for k in reversed(list(tree["train"]))}
    assert list(reordered.keys()) != list(cfg.keys())
    digest = config_digest(cfg)
    assert config_digest(reordered) == digest
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_digest_follows_what_a_fold_computes():
    base = config_digest(compose([]))
    assert config_digest(compose(["train.lr=0.001"])) != base
    assert config_digest(compose(["model=kronecker"])) != base
    assert config_digest(compose(["deepspeed=zero2"])) != base
    assert config_digest(compose(["balance.alpha=0.5"])) != base
    # where, how and which folds run does not change what a fold computes
    for args in (
        ["folds=0,3"],
        ["run_dir=/tmp/x"],
        ["cluster.time=5"],
        ["force=true"],
        ["name=other"],
    ):
        assert config_digest(compose(args)) == base, args
    assert config_digest(compose(["folds=0,3"]), exclude=()) != config_digest(
        compose([]), exclude=()
    )
