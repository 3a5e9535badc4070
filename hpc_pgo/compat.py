"""Makes third-party packages importable on this project's CPU-only torch, only where they fail as shipped."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

# Operators whose fake (meta) kernels torchvision registers at import time whether or not its
# compiled extension loaded. On PyPI the only torchvision build for torch 2.13 links CUDA, so on a
# CPU-only torch the extension cannot load and `import torchvision` (hence `import timm`) fails.
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_lib = None


def ensure_torchvision_importable() -> None:
    """Declare torchvision's operator schemas when its compiled ops cannot load.

    torchvision's pure-Python parts (transforms, FrozenBatchNorm2d, which timm uses) then import;
    its detection ops still raise torchvision's own "Couldn't load custom C++ ops" error. Where the
    extension loads (a matching CUDA or CPU build), nothing is changed.
    """
    global _torchvision_lib
    if _torchvision_lib is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    lib = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(lib)
        return
    except (OSError, ImportError):
        pass
    log.debug("torchvision C++ ops do not load on this torch; declaring schemas only")
    _torchvision_lib = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_SCHEMAS.values():
        _torchvision_lib.define(schema)
