"""compose(): base.yaml + group files + key=value overrides, struct mode, derived values, errors."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from hpc_pgo.config import CONFIG_DIR_ENV, compose, group_choices, usable_cores
from hpc_pgo.errors import PgoError
from tests.config.conftest import CONFIGS, choices_on_disk, read_choice, read_yaml

BASE = read_yaml(CONFIGS / "base.yaml")


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """{dotted.key: value} of every leaf of a nested dict (empty dicts count as leaves)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


def compose_error(*args: str, **kwargs) -> str:
    """The one-line PgoError message compose() raises for these arguments."""
    with pytest.raises(PgoError) as caught:
        compose(list(args), **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# --- composition -------------------------------------------------------------------------------


def test_defaults_come_from_base_yaml():
    cfg = compose([])
    assert isinstance(cfg, DictConfig) and OmegaConf.is_struct(cfg)
    assert dict(cfg.groups) == BASE["groups"]
    n_splits = read_yaml(CONFIGS / "data" / f"{BASE['groups']['data']}.yaml")["n_splits"]
    assert cfg.data.n_splits == n_splits
    assert list(cfg.folds) == list(range(n_splits))  # folds: all
    assert cfg.name == f"{BASE['groups']['data']}-{BASE['groups']['model']}"
    assert cfg.train.lr == BASE["train"]["lr"]
    assert cfg.run_dir is None  # filled in at submit by resolve_run_dir


def test_group_choices_are_the_files_of_each_group_folder():
    assert group_choices(CONFIGS) == {g: choices_on_disk(g) for g in BASE["groups"]}
    assert {"demo", "tcga_kirc"} <= set(choices_on_disk("data"))
    assert {"local", "slurm"} <= set(choices_on_disk("cluster"))
    assert {"zero0", "zero1", "zero2"} <= set(choices_on_disk("deepspeed"))
    assert {"fusion", "genomic", "image", "kronecker"} <= set(choices_on_disk("model"))


@pytest.mark.parametrize(
    "group,choice",
    [(g, c) for g in ("data", "model", "cluster", "deepspeed") for c in choices_on_disk(g)],
)
def test_each_choice_places_its_file_under_the_group_key(group, choice):
    # a genomic-only model composes with every cohort; every model composes with the demo cohort
    extra = ["model=genomic"] if group == "data" else []
    cfg = compose([f"{group}={choice}", *extra])
    assert cfg.groups[group] == choice
    written = leaves(read_choice(group, choice))
    composed = leaves(OmegaConf.to_container(cfg[group]))
    assert composed.keys() == written.keys()
    for key, value in written.items():
        if value is not None and not (isinstance(value, str) and "${" in value):
            assert composed[key] == value, key


@pytest.mark.parametrize("group", ["data", "model", "deepspeed"])
def test_choices_of_a_group_share_one_key_set(group):
    # so that `model=genomic model.image.arch=...` means the same key whatever the choice
    key_sets = {c: set(leaves(read_choice(group, c))) for c in choices_on_disk(group)}
    first = next(iter(key_sets.values()))
    assert all(keys == first for keys in key_sets.values()), key_sets


def test_slurm_choices_share_one_key_set():
    slurm = [
        c
        for c in choices_on_disk("cluster")
        if read_yaml(CONFIGS / "cluster" / f"{c}.yaml")["kind"] == "slurm"
    ]
    assert len(slurm) >= 2
    key_sets = [set(read_yaml(CONFIGS / "cluster" / f"{c}.yaml")) for c in slurm]
    assert all(keys == key_sets[0] for keys in key_sets)


def test_group_selection_and_overrides():
    cfg = compose(["data=tcga_kirc", "model=genomic", "train.lr=0.001", "folds=0,3,7"])
    assert cfg.groups.data == "tcga_kirc" and cfg.groups.model == "genomic"
    assert cfg.data.shards == read_yaml(CONFIGS / "data" / "tcga_kirc.yaml")["shards"]
    assert cfg.name == "tcga_kirc-genomic"
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert list(cfg.folds) == [0, 3, 7]


def test_group_choices_apply_before_overrides_whatever_the_order():
    before = compose(["data.n_splits=5", "data=demo"])
    after = compose(["data=demo", "data.n_splits=5"])
    assert before.data.n_splits == after.data.n_splits == 5
    assert list(before.folds) == list(range(5))


def test_later_override_wins():
    assert compose(["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


@pytest.mark.parametrize(
    "token,key,expected",
    [
        ("train.lr=1e-3", "train.lr", 0.001),  # YAML 1.2 float, as OmegaConf reads it
        ("train.epochs=3", "train.epochs", 3),
        ("train.lr=1", "train.lr", 1),  # an int is a number
        ("force=true", "force", True),
        ("model.modalities=[genomic]", "model.modalities", ["genomic"]),
        ("model.image.pretrained=/weights/t2t.pth", "model.image.pretrained", "/weights/t2t.pth"),
        ("balance.end_epoch=10", "balance.end_epoch", 10),
        ("name=2024", "name", "2024"),  # text keys take numbers as text
        ("name=${groups.model}-x", "name", "fusion-x"),  # interpolations resolve
    ],
)
def test_override_values_are_yaml(token, key, expected):
    value = OmegaConf.select(compose([token]), key)
    if isinstance(expected, list):
        value = list(value)
    assert value == expected and type(value) is type(expected)


def test_pass_through_mapping_takes_new_keys():
    cfg = compose(
        ["cluster=slurm", "cluster.sbatch.mail-type=END", "cluster.sbatch={exclude: node7}"]
    )
    assert dict(cfg.cluster.sbatch) == {"mail-type": "END", "exclude": "node7"}


def test_result_is_struct_and_resolved():
    cfg = compose([])
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        _ = cfg.train.lrr
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        cfg.train.lrr = 1.0
    text = OmegaConf.to_yaml(cfg)  # unresolved view: no interpolation left
    assert "${" not in text


# --- derived values ------------------------------------------------------------------------------


def test_wait_defaults_by_cluster_kind():
    assert compose(["cluster=local"]).wait is True
    assert compose(["cluster=slurm"]).wait is False
    assert compose(["cluster=local", "wait=false"]).wait is False


def test_local_parallel_derived_from_cores_and_threads():
    cores = usable_cores()
    assert compose(["cluster=local"]).cluster.parallel == max(1, cores)
    assert compose(["cluster.threads_per_fold=2"]).cluster.parallel == max(1, cores // 2)
    assert compose([f"cluster.threads_per_fold={cores + 1}"]).cluster.parallel == 1
    assert compose(["cluster.parallel=7"]).cluster.parallel == 7


def test_micro_batch_is_batch_over_ranks():
    cfg = compose(
        ["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=4", "train.batch_size=64"]
    )
    assert cfg.deepspeed.train_batch_size == 64
    assert cfg.deepspeed.train_micro_batch_size_per_gpu == 8
    assert cfg.deepspeed.gradient_accumulation_steps == 1
    assert compose([]).deepspeed.train_micro_batch_size_per_gpu == compose([]).train.batch_size


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_choice_sets_zero_stage_and_no_clipping(stage):
    cfg = compose([f"deepspeed=zero{stage}"])
    assert cfg.deepspeed.zero_optimization.stage == stage
    assert cfg.deepspeed.gradient_clipping == 0.0
    assert cfg.deepspeed.dtype == "fp32"


def test_deepspeed_dtype_auto_is_accepted_as_the_engine_documents():
    # auto stays auto in the config: the fold's device decides (hpc_pgo.engine.deepspeed_config)
    assert compose(["deepspeed.dtype=auto"]).deepspeed.dtype == "auto"
    assert compose(["deepspeed=zero2", "deepspeed.dtype=auto"]).deepspeed.dtype == "auto"


def test_a_balance_that_turns_on_or_no_balance_is_accepted():
    assert compose(["balance.start_epoch=29"]).balance.start_epoch == 29  # the last epoch
    assert compose(["balance.start_epoch=3", "balance.end_epoch=4"]).balance.end_epoch == 4
    # no balancing asked for: alpha and the window do not matter
    assert compose(["balance.mode=none", "balance.alpha=0"]).balance.alpha == 0
    assert compose(["balance.mode=none", "balance.start_epoch=99"]).balance.mode == "none"
    assert compose(["model=genomic", "balance.alpha=0"]).balance.mode == "none"  # derived


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["train.lrr=0.001"],
            "unknown config key 'train.lrr' in 'train.lrr=0.001'; did you mean 'train.lr'?",
        ),
        (["trian.lr=1"], "did you mean 'train.lr'?"),
        (["dat=demo"], "did you mean 'data'?"),
        (["train={lrr: 1}"], "unknown config key 'train.lrr'"),
        (["model.image.arc=resnet18"], "did you mean 'model.image.arch'?"),
        (["train.zzz=1"], "valid keys under 'train': batch_size, checkpoint_every, epochs,"),
        (["zzz=1"], "valid keys at the top level: balance, cluster, coxph, data,"),
        (["train.lr.x=1"], "'train.lr' is a value, not a section of keys"),
        (["cluster=local", "cluster.sbatch.x=1"], "unknown config key 'cluster.sbatch.x'"),
        (
            ["cluster.partition=gpu"],
            "cluster=local has no such key, it is a key of cluster=slurm, cluster=slurm_cpu",
        ),
        (["cluster=slurm", "cluster.parallel=2"], "it is a key of cluster=local"),
    ],
)
def test_unknown_key_names_key_and_closest_valid(args, expected):
    assert expected in compose_error(*args)


@pytest.mark.parametrize("group", ["data", "model", "cluster", "deepspeed"])
def test_unknown_group_choice_lists_valid_choices(group):
    message = compose_error(f"{group}=nope")
    assert f"unknown choice 'nope' for group '{group}'" in message
    assert message.endswith("valid: " + ", ".join(choices_on_disk(group)))


@pytest.mark.parametrize("token", ["train.lr", "=3", " =x"])
def test_malformed_token(token):
    assert f"malformed argument {token!r}: expected key=value" in compose_error(token)


def test_group_record_is_not_an_override():
    assert "choose a group with group=choice" in compose_error("groups.data=tcga_kirc")


@pytest.mark.parametrize(
    "token,expected",
    [
        ("train.lr=abc", "train.lr takes a number (default 0.002), not 'abc'"),
        ("train.epochs=2.5", "train.epochs takes an integer"),
        ("train.lr=null", "train.lr may not be null"),
        ("force=maybe", "force takes a boolean"),
        ("model.modalities=genomic", "model.modalities takes a list"),
        ("wait=1", "wait=1 is not valid; valid: true, false"),
    ],
)
def test_wrong_type_names_key_and_expected_type(token, expected):
    assert expected in compose_error(token)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["model.fusion=kron"], "model.fusion=kron is not valid; valid: concat, kronecker"),
        (["model.genomic.rna_encoder=gpt"], "valid: snn, scgpt, scgpt_mlpa"),
        (["train.lr_schedule=step"], "valid: linear, cosine"),
        (["balance.mode=ogm"], "valid: none, rho"),
        (["deepspeed.dtype=fp16"], "deepspeed.dtype=fp16 is not valid; valid: fp32, bf16, auto"),
        (["deepspeed.zero_optimization.stage=3"], "valid: 0, 1, 2"),
        (["train.batch_size=0"], "train.batch_size=0 is not valid; valid: a number >= 1"),
        (["train.lr=0"], "valid: a number > 0"),
        (["name=a/b"], "name='a/b' is not valid"),
        (["balance.start_epoch=5", "balance.end_epoch=2"], "balance.end_epoch=2 is before"),
        (["balance.start_epoch=3", "balance.end_epoch=3"], "balance.end_epoch=3 equals balance"),
        (["balance.alpha=0"], "balance.alpha=0 with balance.mode=rho (model=fusion) never"),
        (["balance.start_epoch=30"], "balance.start_epoch=30 with train.epochs=30: balance.mode"),
        (["cluster.nodes=2"], "cluster.nodes=2 with cluster=local; valid: 1"),
        (["cluster.tasks_per_node=5"], "train.batch_size=32 does not split over 5 ranks per fold"),
        (["deepspeed.train_micro_batch_size_per_gpu=4"], "it is derived"),
        (["deepspeed.gradient_accumulation_steps=2"], "valid: 1"),
        (["deepspeed.train_batch_size=16"], "differs from train.batch_size=32"),
        (["model.modalities=[genomic, rna]"], "model.modalities=[genomic, rna] is not valid"),
        (["data=tcga_kirc"], "model=fusion needs image, which data=tcga_kirc does not hold"),
        (["data.image_size=null"], "data.image_size is null"),
        (["name=${nope}"], "cannot resolve the config"),
        (["folds=3-1"], "folds=3-1: range 3-1 is descending; use e.g. folds=1-3"),
        (["folds=0-20"], "out of range for 15 splits (valid 0-14)"),
        (["data.n_splits=5", "folds=5"], "folds=5: fold 5 out of range for 5 splits (valid 0-4)"),
    ],
)
def test_invalid_values_fail_with_key_value_and_valid_set(args, expected):
    assert expected in compose_error(*args)


# --- where the configs live ---------------------------------------------------------------------


def test_config_dir_from_argument_and_environment(configs_copy, monkeypatch, tmp_path):
    base = (configs_copy / "base.yaml").read_text()
    (configs_copy / "base.yaml").write_text(base.replace("seed: 0", "seed: 11"))
    assert compose([], config_dir=configs_copy).seed == 11
    monkeypatch.setenv(CONFIG_DIR_ENV, str(configs_copy))
    assert compose([]).seed == 11
    assert compose([], config_dir=CONFIGS).seed == BASE["seed"]  # the argument wins
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "missing"))
    assert f"{tmp_path / 'missing'} (from ${CONFIG_DIR_ENV}) has no base.yaml" in compose_error()


def test_bad_yaml_in_a_group_file_names_file_and_line(configs_copy):
    bad = configs_copy / "model" / "fusion.yaml"
    bad.write_text("modalities: [genomic, image\nfusion: concat\n")
    message = compose_error(config_dir=configs_copy)
    assert f"{bad}:" in message and "not valid YAML" in message


def test_group_file_holding_a_list_is_rejected(configs_copy):
    (configs_copy / "data" / "listy.yaml").write_text("- 1\n- 2\n")
    assert "must hold a mapping" in compose_error("data=listy", config_dir=configs_copy)
