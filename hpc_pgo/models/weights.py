"""Reading local weight files (MLP-A, image backbones) safely, with errors that name the config key.

Files are read by timm's loader: torch.load(weights_only=True) (or safetensors), so no arbitrary
pickled object is ever built; a {"state_dict": ...} or {"model": ...} wrapper is unwrapped and
a DistributedDataParallel "module." prefix removed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models import load_state_dict

from hpc_pgo.errors import PgoError

__all__ = ["one_line", "read_state_dict"]


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), cut to `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors stored in the weights file `path`, named by config key `key` in errors."""
    path = Path(path)
    if not path.is_file():
        raise PgoError(
            f"{key}={str(path)!r}: no such file (expected a state dict saved by torch.save)"
        )
    try:
        state = load_state_dict(str(path))
    except Exception as err:  # torch.load raises many types for files that are not checkpoints
        raise PgoError(
            f"{key}={str(path)!r} is not a readable weights file (torch.load with weights_only=True "
            f"or safetensors): {type(err).__name__}: {one_line(err)}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PgoError(f"{key}={str(path)!r} does not hold a state dict (names -> tensors)")
    return state
