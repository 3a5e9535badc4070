"""The names of the model registries, the one place they are written (like timm's list_models).

Each registry maps a name (the value of one config key) to what builds it; the builders live with
the models (hpc_pgo.models.fusion.FUSIONS, hpc_pgo.models.genomic.RNA_ENCODERS), which bind them
to the names here with ``Registry.bind``, and the config rules (hpc_pgo.config.rules) check a
config's names with ``names()`` / ``is_registered()``. The names live in this light module, not
in hpc_pgo.models, because importing hpc_pgo.models imports timm (seconds), which composing and
submitting a run do not need. No cycle: the models import hpc_pgo.config, and nothing in
hpc_pgo.config (nor the engine it reads) imports hpc_pgo.models.

The engine's registries (hpc_pgo.engine.schedule.SCHEDULES, hpc_pgo.engine.modulation.BALANCE_MODES)
are cheap to import, so the rules read those directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

__all__ = ["FUSIONS", "IMAGE_ENCODERS", "MODALITIES", "RNA_ENCODERS", "Registry", "reads_bags"]

T = TypeVar("T")


class Registry:
    """The registered names of one kind, in their documented order; `key` is the config key
    that names one of them (e.g. "model.fusion")."""

    def __init__(self, key: str, names: tuple[str, ...]):
        if len(set(names)) != len(names):
            raise ValueError(f"{key}: registry names repeat: {names}")
        self.key = key
        self._names = tuple(names)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in order."""
        return self._names

    def is_registered(self, name: object) -> bool:
        """True when `name` is one of the registered names."""
        return name in self._names

    def bind(self, entries: Mapping[str, T]) -> dict[str, T]:
        """`entries` (name -> implementation) in the registry's order; RuntimeError unless its
        names are exactly the registered ones (an implementation without a name here, or a name
        without an implementation, is a programming error caught at import)."""
        missing = [n for n in self._names if n not in entries]
        extra = [n for n in entries if n not in self._names]
        if missing or extra:
            raise RuntimeError(
                f"{self.key}: implementations {sorted(entries)} do not match the registered "
                f"names {list(self._names)} (hpc_pgo.config.registry); missing: {missing}, "
                f"unregistered: {extra}"
            )
        return {name: entries[name] for name in self._names}

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return self.is_registered(name)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {self._names!r})"


# model.modalities: the branches a model may have, in the order of the Cox head's weight blocks.
MODALITIES = Registry("model.modalities", ("genomic", "image"))
# model.fusion: the fusion heads (hpc_pgo.models.fusion).
FUSIONS = Registry("model.fusion", ("concat", "kronecker"))
# model.genomic.rna_encoder: the RNA inputs of the genomic branch (hpc_pgo.models.genomic).
RNA_ENCODERS = Registry("model.genomic.rna_encoder", ("snn", "scgpt", "scgpt_mlpa", "none"))
# model.image.encoder: how the image branch gives P (hpc_pgo.models.bags): backbone, the timm
# network trained end to end on one image unit per sample (hpc_pgo.models.image); mean and abmil,
# a MIL head over one patient's bag of frozen tile features (the side-car of
# `pgo-shards embed-tiles`, hpc_pgo.data.tile_features), one sample per patient.
IMAGE_ENCODERS = Registry("model.image.encoder", ("backbone", "mean", "abmil"))


def reads_bags(encoder: object) -> bool:
    """Whether model.image.encoder `encoder` reads bags of tile features (one sample = one
    patient, hpc_pgo.data.bags) rather than images (one sample = one unit)."""
    return encoder in IMAGE_ENCODERS and encoder != "backbone"
