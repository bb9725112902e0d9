"""Fixtures of the synthetic benchmark tests: a few small scenes, shared by the test modules here."""
from __future__ import annotations

import pytest

from dam_model.synthetic import Scene, generate_dataset


@pytest.fixture(scope="session")
def small_scenes() -> list[Scene]:
    """Twelve deterministic scenes at the default (mostly small) sizes."""
    return generate_dataset(seed=7, n=12)


@pytest.fixture(scope="session")
def many_scenes() -> list[Scene]:
    """Sixty 64x64 scenes: enough to meet every context relation."""
    return generate_dataset(seed=3, n=60, size=(64, 64))
