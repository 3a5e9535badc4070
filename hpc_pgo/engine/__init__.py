"""Engine: DeepSpeed set-up, the modulated optimizer step, checkpoints.

- ``distributed``: environment -> torch.distributed (``setup_distributed``, ``teardown_distributed``).
- ``global_batch``: all-gather of the per-rank slices for the global-batch Cox loss.
- ``modulation``: named parameter groups, balance window, the lr-scaling step hooks.
- ``schedule``: LR schedules (linear as Pathomic Fusion, cosine) for LambdaLR.
- ``engine``: ``build_engine(model, cfg, steps_per_epoch=...) -> Engine`` with ``train_step``,
  ``eval_theta``, ``save``, ``load``.

Importing this package does not import DeepSpeed; building an engine does.
"""

from hpc_pgo.engine.distributed import DistEnv, setup_distributed, teardown_distributed
from hpc_pgo.engine.engine import Engine, build_engine, deepspeed_config

__all__ = [
    "DistEnv",
    "Engine",
    "build_engine",
    "deepspeed_config",
    "setup_distributed",
    "teardown_distributed",
]
