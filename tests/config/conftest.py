"""Shared helpers of the config tests: the repository's configs directory and a writable copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def read_yaml(path: Path) -> dict:
    """A config file as plain Python, read with PyYAML (independently of OmegaConf)."""
    return yaml.safe_load(path.read_text()) or {}


def choices_on_disk(group: str) -> list[str]:
    """The choices of a group as the folder lists them (a name starting with '_', like the
    group's base _base.yaml, is not a choice)."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged onto `base`: mappings key by key, anything else (lists too) replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_choice(group: str, choice: str) -> dict:
    """A choice's file merged onto its group's _base.yaml when there is one, read with PyYAML
    (independently of compose): what compose() places under the group key."""
    base = CONFIGS / group / "_base.yaml"
    written = read_yaml(CONFIGS / group / f"{choice}.yaml")
    return deep_merge(read_yaml(base), written) if base.is_file() else written


@pytest.fixture
def configs_copy(tmp_path: Path) -> Path:
    """A copy of configs/ that a test may edit."""
    return Path(shutil.copytree(CONFIGS, tmp_path / "configs"))
