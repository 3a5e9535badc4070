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
    """The choices of a group as the folder lists them."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture
def configs_copy(tmp_path: Path) -> Path:
    """A copy of configs/ that a test may edit."""
    return Path(shutil.copytree(CONFIGS, tmp_path / "configs"))
