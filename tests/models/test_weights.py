"""Reading weight files: only tensors are unpickled, wrappers are unwrapped, bad files are named."""

import pytest
import torch

from hpc_pgo.errors import PgoError
from hpc_pgo.models.weights import read_state_dict


class NotATensor:
    """A class torch.load(weights_only=True) must refuse to build."""


def test_plain_and_wrapped_state_dicts(tmp_path):
    state = {"layer.weight": torch.arange(4.0), "layer.bias": torch.zeros(2)}
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        loaded = read_state_dict(path, "model.image.pretrained")
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"layer.weight": NotATensor()}, path)
    with pytest.raises(
        PgoError, match=r"model.genomic.mlp_a_weights=.*evil.pt.* is not a readable"
    ):
        read_state_dict(path, "model.genomic.mlp_a_weights")


def test_text_file_and_missing_file_are_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(PgoError, match=r"notes.pt' is not a readable weights file") as info:
        read_state_dict(path, "model.image.pretrained")
    assert "\n" not in str(info.value)
    with pytest.raises(PgoError, match=r"absent.pt': no such file"):
        read_state_dict(tmp_path / "absent.pt", "model.image.pretrained")
