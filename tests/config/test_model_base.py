"""configs/model/_base.yaml: the base every model= choice is merged onto, and DEFAULTS' one source."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from hpc_pgo.config import compose, config_digest, group_choices
from hpc_pgo.config.store import drop_unused_additions
from hpc_pgo.errors import PgoError
from tests.config.conftest import CONFIGS, choices_on_disk, deep_merge, read_choice, read_yaml

BASE = read_yaml(CONFIGS / "model" / "_base.yaml")

# config_digest(cfg.model, exclude=()) of each preset as composed when every configs/model file
# still held every key (before _base.yaml): the merge must compose the same model configs, since
# a fold run directory refuses a config whose digest changed.
DIGESTS_BEFORE_BASE = {
    "fusion": "2c895d87e24219ac6a8ce149aae0b3c2b3c59053ab3ce2dfc04040a1d7ca8da6",
    "fusion_small": "7e7038098ed405fabfe3cdaa7263ea6d93d8c7a023b122b38c21e92c1f4ff916",
    "genomic": "75a8cc2f9e21f0fb913d334562925bbb54066715a3175c96bf71638781528a35",
    "image": "5327402c77fd0fde561a696d4f3cf4fd0c8fd832961e6816a41d43e276036089",
    "kronecker": "5c43cfbd10a60f441b8dc955e930a1b5c1fca27a15f3659d4a4b8618b2f501a7",
    "path_gptomic": "d678b90b5e8f480e6971d9c62e45380ce226c0f33a10fdc34e0478a84f3aed11",
}

# Presets added after _base.yaml: no digest from before it.
PRESETS_AFTER_BASE = ("fusion_abmil", "image_abmil", "image_mean")
PRESETS = sorted([*DIGESTS_BEFORE_BASE, *PRESETS_AFTER_BASE])


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_base_is_not_a_choice():
    assert "_base" not in group_choices(CONFIGS)["model"]
    assert PRESETS == choices_on_disk("model")
    with pytest.raises(PgoError) as caught:
        compose(["model=_base"])
    message = str(caught.value)
    assert "unknown choice '_base' for group 'model'" in message
    assert f"valid: {', '.join(PRESETS)}" in message


@pytest.mark.parametrize("preset", sorted(DIGESTS_BEFORE_BASE))
def test_every_preset_composes_the_model_it_did_before(preset):
    cfg = compose([f"model={preset}"])
    tree = OmegaConf.to_container(cfg.model)
    drop_unused_additions(tree)  # what config_digest leaves out of a whole config (see there)
    assert config_digest(OmegaConf.create(tree), exclude=()) == DIGESTS_BEFORE_BASE[preset]
    # a whole config saved before model.image.encoder/bag existed has the same digest
    before = OmegaConf.to_container(cfg)
    del before["model"]["image"]["encoder"], before["model"]["image"]["bag"]
    assert config_digest(OmegaConf.create(before)) == config_digest(cfg)


def test_a_bag_encoder_is_in_the_digest():
    base = config_digest(compose(["model=image"]))
    assert config_digest(compose(["model=image", "model.image.encoder=abmil"])) != base
    mean = compose(["model=image", "model.image.encoder=mean"])
    assert config_digest(
        compose(["model=image", "model.image.encoder=mean", "model.image.bag.max_tiles=8"])
    ) != config_digest(mean)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_states_only_what_differs_and_composes_to_every_key(preset):
    written = leaves(read_yaml(CONFIGS / "model" / f"{preset}.yaml"))
    base = leaves(BASE)
    assert written and set(written) < set(base)
    restated = [key for key, value in written.items() if base[key] == value]
    assert not restated, f"{preset}.yaml restates base values of {restated}"
    composed = leaves(OmegaConf.to_container(compose([f"model={preset}"]).model))
    assert composed == {**base, **written}  # every key of the base, the preset's values on top


def test_merging_a_base_composes_what_full_files_compose(configs_copy):
    """The old layout (every choice a complete file, no _base.yaml) and the new one compose the
    same configs, to the byte of their YAML, with the same digests."""
    presets = choices_on_disk("model")
    merged = {p: read_choice("model", p) for p in presets}
    (configs_copy / "model" / "_base.yaml").unlink()
    for preset, tree in merged.items():
        text = yaml.safe_dump(tree, sort_keys=False)
        (configs_copy / "model" / f"{preset}.yaml").write_text(text)
    for preset in presets:
        for extra in ([], ["cluster=slurm", "model.genomic.rna_encoder=scgpt"]):
            args = [f"model={preset}", *extra]
            new, old = compose(args), compose(args, config_dir=configs_copy)
            assert OmegaConf.to_yaml(new) == OmegaConf.to_yaml(old)
            assert config_digest(new) == config_digest(old)


def test_a_preset_key_the_base_lacks_is_refused_naming_the_file(configs_copy):
    path = configs_copy / "model" / "kronecker.yaml"
    path.write_text(path.read_text() + "genomic:\n  rna_encodr: scgpt\n")
    with pytest.raises(PgoError) as caught:
        compose(["model=kronecker"], config_dir=configs_copy)
    message = str(caught.value)
    assert message.startswith(f"{path}: key model.genomic.rna_encodr is not in ")
    assert "did you mean 'rna_encoder'?" in message
    compose(["model=fusion"], config_dir=configs_copy)  # only that choice is refused


def test_an_override_of_a_key_only_the_base_writes_works_on_every_preset():
    cfg = compose(["model=genomic", "model.genomic.snn.dropout=0.1", "model.image.out=null"])
    assert cfg.model.genomic.snn.dropout == 0.1 and cfg.model.image.out is None
    assert list(cfg.model.modalities) == ["genomic"]


def test_a_group_without_a_base_places_its_file_as_it_is(configs_copy):
    assert not (configs_copy / "cluster" / "_base.yaml").exists()
    cfg = compose(["cluster=slurm"], config_dir=configs_copy)
    assert (
        leaves(OmegaConf.to_container(cfg.cluster)).keys()
        == leaves(read_yaml(configs_copy / "cluster" / "slurm.yaml")).keys()
    )


def test_model_defaults_are_read_from_the_base_file():
    from hpc_pgo.models.survival import DEFAULTS, resolve_model_cfg

    assert DEFAULTS == BASE
    assert leaves(resolve_model_cfg({}))["fusion"] == BASE["fusion"]
    # a composed preset's model config is exactly what build_model resolves it to (rna_snn's
    # nulls aside, which it fills in from snn)
    model = OmegaConf.to_container(compose(["model=path_gptomic"]).model)
    resolved = resolve_model_cfg(model)
    resolved["genomic"]["rna_snn"] = model["genomic"]["rna_snn"]
    assert resolved == deep_merge(BASE, read_yaml(CONFIGS / "model" / "path_gptomic.yaml"))


def test_a_bag_encoder_needs_no_image_size_and_a_backbone_does():
    cfg = compose(["model=image_abmil", "data.image_size=null"])
    assert cfg.model.image.encoder == "abmil" and cfg.balance.mode == "none"
    assert compose(["model=fusion_abmil"]).balance.mode == "rho"
    with pytest.raises(
        PgoError, match=r"model.modalities includes image but data.image_size is null"
    ):
        compose(["model=image", "data.image_size=null"])
    with pytest.raises(
        PgoError, match=r"model.image.encoder=clam is not valid; valid: backbone, mean, abmil"
    ):
        compose(["model.image.encoder=clam"])


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.image.bag.max_tiles=0",
            "model.image.bag.max_tiles=0 is not valid; valid: a number >= 1",
        ),
        (
            "model.image.bag.dropout=1.0",
            "model.image.bag.dropout=1.0 is not valid; valid: a number in [0, 1)",
        ),
    ],
)
def test_bad_bag_values_are_refused_at_compose_time(override, message):
    with pytest.raises(PgoError) as caught:
        compose(["model=image_abmil", override])
    assert str(caught.value).startswith(message)
