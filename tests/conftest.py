"""Shared pytest fixtures for the napari-ncc tests.

The ``tests/`` directory is put on ``sys.path`` here so that every test module can import
the brute-force reference with ``from reference import brute_force_ncc``, whatever pytest's
import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded random generator (seed 12345): same data on every run."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def pyramid_cache(tmp_path_factory, monkeypatch) -> Path:
    """Where the pyramids of big files are cached (the reader, the widget): a folder of the
    test's own, never the user's ``~/.cache``."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "napari-ncc" / "pyramids"
