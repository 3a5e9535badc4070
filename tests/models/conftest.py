"""hpc_pgo must be imported before timm (it makes torchvision importable on CPU torch, see
hpc_pgo/compat.py); test modules import timm above hpc_pgo in isort order, so do it here first."""

import hpc_pgo  # noqa: F401
