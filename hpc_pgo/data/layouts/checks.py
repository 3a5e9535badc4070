"""Checks of cohort-spec values, shared by the spec (hpc_pgo.data.cohort) and the layouts' own
sections of `images` (images.tile, images.slides). Each raises PgoError naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpc_pgo.errors import PgoError


def check_keys(section: Mapping, valid: tuple[str, ...], where: str) -> None:
    """Reject keys outside `valid` (catches typos that would otherwise be ignored)."""
    for key in section:
        if key not in valid:
            raise PgoError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")


def mapping(value: Any, where: str) -> dict:
    """A copy of `value` without the keys set to None (None means "not given", the default)."""
    if not isinstance(value, Mapping):
        raise PgoError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return {k: v for k, v in value.items() if v is not None}


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PgoError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PgoError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
        raise PgoError(f"{where}: expected a number in ({low}, {high}), got {value!r}")
    return float(value)
