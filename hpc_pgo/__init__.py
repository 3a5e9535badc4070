"""hpc_pgo: Path-GPTomic survival prediction as a Slurm/DeepSpeed training toolkit."""

from hpc_pgo import compat as _compat
from hpc_pgo.errors import PgoError

_compat.ensure_torchvision_importable()
_compat.ensure_torchtext_vocab()

__all__ = ["PgoError"]
__version__ = "0.1.0"
