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


# --------------------------------------------------------------------------- torchtext.vocab
# scgpt's GeneVocab subclasses torchtext.vocab.Vocab. torchtext's last release (0.18) ships a
# compiled library that does not load with torch 2.13, so `import torchtext` fails here. The
# stand-in below is a pure-Python Vocab with the part of torchtext's API that scgpt uses
# (GeneVocab in scgpt/tokenizer/gene_tokenizer.py, embed_data in scgpt/tasks/cell_emb.py).


class _VocabTable:
    """token <-> index table (torchtext's C++ VocabPybind, in Python): indices are 0..n-1."""

    def __init__(self, tokens: list[str]):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.default_index: int | None = None
        for token in tokens:
            self.append(token)

    def append(self, token: str) -> None:
        if token in self.stoi:
            raise RuntimeError(f"token {token!r} already exists in the Vocab")
        self.stoi[token] = len(self.itos)
        self.itos.append(token)

    def insert(self, token: str, index: int) -> None:
        if token in self.stoi:
            raise RuntimeError(f"token {token!r} already exists in the Vocab")
        if not 0 <= index <= len(self.itos):
            raise RuntimeError(f"index {index} is out of bounds for a Vocab of {len(self.itos)}")
        self.itos.insert(index, token)
        # tokens at and after `index` move one place up
        for i in range(index, len(self.itos)):
            self.stoi[self.itos[i]] = i

    def lookup(self, token: str) -> int:
        index = self.stoi.get(token)
        if index is not None:
            return index
        if self.default_index is None:
            raise RuntimeError(f"token {token!r} not found and the default index is not set")
        return self.default_index


class StandInVocab(torch.nn.Module):
    """torchtext.vocab.Vocab in pure Python (the subset scgpt uses).

    `Vocab(table)` wraps a table made by `vocab()`; `vocab[token]` -> index (the default index
    for an unknown token, RuntimeError when none is set); `vocab(tokens)` -> list of indices.
    """

    def __init__(self, vocab: _VocabTable):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens: list[str]) -> list[int]:
        return self.lookup_indices(tokens)

    def __len__(self) -> int:
        return len(self.vocab.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.vocab.stoi

    def __getitem__(self, token: str) -> int:
        return self.vocab.lookup(token)

    def __prepare_scriptable__(self):  # torchtext API; nothing to do in pure Python
        return self

    def set_default_index(self, index: int | None) -> None:
        self.vocab.default_index = index

    def get_default_index(self) -> int | None:
        return self.vocab.default_index

    def insert_token(self, token: str, index: int) -> None:
        self.vocab.insert(token, index)

    def append_token(self, token: str) -> None:
        self.vocab.append(token)

    def lookup_token(self, index: int) -> str:
        if not 0 <= index < len(self.vocab.itos):
            raise RuntimeError(f"index {index} is out of bounds for a Vocab of {len(self)}")
        return self.vocab.itos[index]

    def lookup_tokens(self, indices: list[int]) -> list[str]:
        return [self.lookup_token(i) for i in indices]

    def lookup_indices(self, tokens: list[str]) -> list[int]:
        return [self.vocab.lookup(t) for t in tokens]

    def get_stoi(self) -> dict[str, int]:
        return dict(self.vocab.stoi)

    def get_itos(self) -> list[str]:
        return list(self.vocab.itos)


def stand_in_vocab_factory(
    ordered_dict, min_freq: int = 1, specials=None, special_first: bool = True
) -> StandInVocab:
    """torchtext.vocab.vocab: tokens of `ordered_dict` (token -> frequency) with frequency >=
    min_freq, in its order; `specials` put first (or last) and never dropped."""
    specials = list(specials or [])
    tokens = [t for t, freq in ordered_dict.items() if freq >= min_freq and t not in specials]
    tokens = specials + tokens if special_first else tokens + specials
    return StandInVocab(_VocabTable(tokens))


def ensure_torchtext_vocab() -> bool:
    """Make `import torchtext.vocab` work; returns True when the stand-in was installed.

    The real torchtext is used whenever `import torchtext.vocab` succeeds. Otherwise (not
    installed, or its compiled library does not load on this torch) modules `torchtext` and
    `torchtext.vocab` holding the stand-in are put into sys.modules. Call before importing scgpt.
    """
    import sys
    import types

    current = sys.modules.get("torchtext.vocab")
    if current is not None:
        return getattr(current, "__pgo_stand_in__", False)
    try:
        import torchtext.vocab  # noqa: F401

        return False
    except Exception as err:  # ImportError, OSError (undefined symbol), RuntimeError ...
        log.debug("torchtext.vocab does not import (%s); using hpc_pgo's stand-in", err)
    for name in [m for m in sys.modules if m == "torchtext" or m.startswith("torchtext.")]:
        del sys.modules[name]  # a half-imported real torchtext must not shadow the stand-in
    package = types.ModuleType("torchtext")
    package.__path__ = []  # a package, so that `import torchtext.vocab` resolves the submodule
    package.__pgo_stand_in__ = True
    module = types.ModuleType("torchtext.vocab")
    module.Vocab = StandInVocab
    module.vocab = stand_in_vocab_factory
    module.__pgo_stand_in__ = True
    package.vocab = module
    sys.modules["torchtext"] = package
    sys.modules["torchtext.vocab"] = module
    return True
