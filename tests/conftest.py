"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

import hpc_pgo  # noqa: F401  (before timm anywhere: makes torchvision importable on CPU torch)

# The real TCGA-KIRC release lives in ../shared beside the checkout on development machines and
# in CI; users do not have it, so tests that need it skip and say where it was looked for.
KIRC_TABLE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "tcga-kirc"
    / "tcga_kirc_all_clean.csv.gz"
).resolve()


@pytest.fixture(scope="session")
def kirc_table() -> Path:
    """Path of the real TCGA-KIRC table; skips the test (with the path looked at) when absent."""
    if not KIRC_TABLE.is_file():
        pytest.skip(f"real TCGA-KIRC table not present at {KIRC_TABLE} (../shared is not shipped)")
    return KIRC_TABLE
